//! k-sparse probing (after SAEBench): a multinomial logistic regression on the
//! k units with the highest train MI, scored on test.
//!
//! Fitted as SAEBench fits it (sklearn's `LogisticRegression`, whose default
//! solver is L-BFGS): deterministic full-batch L-BFGS (10 pairs, Armijo
//! backtracking) on standardised inputs (train mean and std) from zero, until
//! the largest gradient component is below `tolerance` or `iterations` steps
//! have run (the result says which). A non-finite loss is an error, never a
//! score.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::stats::CLASSES;

/// How the probes are trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    pub ks: Vec<usize>,
    /// Probes train on the first `train_rows` train rows (all when larger).
    pub train_rows: usize,
    /// At most this many full-batch steps.
    pub iterations: usize,
    /// Converged when no gradient component (mean over rows) exceeds this.
    /// f64 like every float of the config, so it reads back as written
    /// (`1e-4`, not `9.999999747378752e-05`).
    pub tolerance: f64,
    /// L2 penalty on the weights (not the bias).
    pub l2: f64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            ks: vec![1, 2, 4, 8, 16, 32],
            train_rows: 20_000,
            iterations: 500,
            tolerance: 1e-4,
            l2: 1e-4,
        }
    }
}

/// One probe's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub k: usize,
    /// The units it read, best MI first.
    pub units: Vec<usize>,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    /// Steps run, whether the gradient fell below the tolerance, and the final
    /// mean train cross-entropy (nats).
    pub steps: usize,
    pub converged: bool,
    pub train_loss: f64,
}

/// Gathers columns `units` of `[rows, width]` into `[rows, units.len()]`.
fn gather(values: &[f32], width: usize, rows: usize, units: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * units.len());
    for row in values.chunks_exact(width).take(rows) {
        out.extend(units.iter().map(|&u| row[u]));
    }
    out
}

/// A trained softmax classifier over k standardised inputs.
pub struct Softmax {
    k: usize,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// `[k, CLASSES]`, in f64: L-BFGS's last steps are below f32's resolution.
    weights: Vec<f64>,
    bias: [f64; CLASSES],
}

const CHUNK_ROWS: usize = 1024;
/// L-BFGS's memory: the curvature pairs it keeps (sklearn's default).
const MEMORY: usize = 10;

/// One block of rows' summed gradient (weights `[k, CLASSES]`, then the
/// bias), with the block's summed loss in the last slot. Compiled for AVX2
/// too and picked at run time: Rust never fuses a multiply and an add, so
/// both builds give the same bits, and the wider one is twice as fast.
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn block_gradient(model: &Softmax, block: &[f32], labels: &[u8]) -> Vec<f64> {
    let k = model.k;
    let params = (k + 1) * CLASSES;
    let mut g = vec![0.0f64; params + 1];
    for (row, &y) in block.chunks_exact(k).zip(labels) {
        let p = model.probabilities(row);
        g[params] -= p[y as usize].max(f64::MIN_POSITIVE).ln();
        let mut d = p;
        d[y as usize] -= 1.0;
        // Unit-major: each unit's CLASSES gradients are contiguous (vectorises).
        for (j, &x) in row.iter().enumerate() {
            let gj = &mut g[j * CLASSES..(j + 1) * CLASSES];
            for c in 0..CLASSES {
                gj[c] += d[c] * x as f64;
            }
        }
        for c in 0..CLASSES {
            g[k * CLASSES + c] += d[c];
        }
    }
    g
}

impl Softmax {
    /// Trains on `x` `[labels.len(), k]`; returns the model, the steps run,
    /// whether it converged and the last mean train loss. Errs on a non-finite loss.
    pub fn fit(
        x: &[f32],
        k: usize,
        labels: &[u8],
        cfg: &ProbeConfig,
    ) -> Result<(Softmax, usize, bool, f64), String> {
        let rows = labels.len();
        let mut mean = vec![0.0f64; k];
        let mut sq = vec![0.0f64; k];
        for row in x.chunks_exact(k) {
            for j in 0..k {
                mean[j] += row[j] as f64;
                sq[j] += (row[j] as f64).powi(2);
            }
        }
        let n = rows.max(1) as f64;
        let inv_std: Vec<f32> = (0..k)
            .map(|j| {
                let var = sq[j] / n - (mean[j] / n).powi(2);
                if var > 1e-12 {
                    (1.0 / var.sqrt()) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let mean: Vec<f32> = mean.iter().map(|m| (m / n) as f32).collect();
        let z: Vec<f32> = x
            .chunks_exact(k)
            .flat_map(|row| {
                (0..k)
                    .map(|j| (row[j] - mean[j]) * inv_std[j])
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut model = Softmax {
            k,
            mean,
            inv_std,
            weights: vec![0.0; k * CLASSES],
            bias: [0.0; CLASSES],
        };
        let params = (k + 1) * CLASSES;
        let l2 = cfg.l2;
        // The mean loss plus the L2 term, and its gradient, at `theta`
        // (weights `[k, CLASSES]`, then the bias).
        let evaluate = |model: &mut Softmax, theta: &[f64]| -> (f64, Vec<f64>) {
            model.set(theta);
            let model = &*model;
            let summed = z
                .par_chunks(CHUNK_ROWS * k)
                .zip(labels.par_chunks(CHUNK_ROWS))
                .map(|(block, block_labels)| block_gradient(model, block, block_labels))
                // Collected in chunk order and summed sequentially: bit-identical across runs.
                .collect::<Vec<_>>()
                .into_iter()
                .fold(vec![0.0f64; params + 1], |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, &y)| *x += y);
                    a
                });
            let mut loss = summed[params] / n;
            let mut grad: Vec<f64> = summed[..params].iter().map(|g| g / n).collect();
            for i in 0..k * CLASSES {
                loss += 0.5 * l2 * theta[i] * theta[i];
                grad[i] += l2 * theta[i];
            }
            (loss, grad)
        };
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let largest = |g: &[f64]| g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let not_finite = |loss: f64, steps: usize| {
            format!(
                "the k = {k} probe's loss became {loss} at step {steps}: its inputs are out of range"
            )
        };
        let mut theta = vec![0.0f64; params];
        let (mut loss, mut grad) = evaluate(&mut model, &theta);
        let mut pairs: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> =
            std::collections::VecDeque::new();
        let (mut steps, mut converged) = (0, false);
        while steps < cfg.iterations {
            if !loss.is_finite() || grad.iter().any(|g| !g.is_finite()) {
                return Err(not_finite(loss, steps));
            }
            if largest(&grad) < cfg.tolerance {
                converged = true;
                break;
            }
            // The two-loop recursion: direction = -H grad.
            let mut q = grad.clone();
            let mut alphas = Vec::with_capacity(pairs.len());
            for (s, y, rho) in pairs.iter().rev() {
                let a = rho * dot(s, &q);
                q.iter_mut().zip(y).for_each(|(q, y)| *q -= a * y);
                alphas.push(a);
            }
            let gamma = pairs
                .back()
                .map_or(1.0 / largest(&grad).max(1.0), |(s, y, _)| {
                    dot(s, y) / dot(y, y)
                });
            q.iter_mut().for_each(|q| *q *= gamma);
            for ((s, y, rho), a) in pairs.iter().zip(alphas.iter().rev()) {
                let b = rho * dot(y, &q);
                q.iter_mut().zip(s).for_each(|(q, s)| *q += (a - b) * s);
            }
            let mut direction: Vec<f64> = q.iter().map(|v| -v).collect();
            let mut slope = dot(&grad, &direction);
            if slope >= 0.0 {
                // Not a descent direction (rounding): start again from the gradient.
                pairs.clear();
                direction = grad.iter().map(|g| -g).collect();
                slope = dot(&grad, &direction);
            }
            // Armijo backtracking from the full step.
            let mut t = 1.0;
            let (next_theta, next_loss, next_grad) = loop {
                let candidate: Vec<f64> = theta
                    .iter()
                    .zip(&direction)
                    .map(|(x, d)| x + t * d)
                    .collect();
                let (l, g) = evaluate(&mut model, &candidate);
                if l.is_finite() && l <= loss + 1e-4 * t * slope {
                    break (candidate, l, g);
                }
                t *= 0.5;
                if t < 1e-20 {
                    if !l.is_finite() {
                        return Err(not_finite(l, steps));
                    }
                    // No decrease left to find: as flat as f64 can tell.
                    break (theta.clone(), loss, grad.clone());
                }
            };
            steps += 1;
            let s: Vec<f64> = next_theta.iter().zip(&theta).map(|(a, b)| a - b).collect();
            let y: Vec<f64> = next_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
            let sy = dot(&s, &y);
            // Flat to f64's resolution (scipy's ftol): no step left to take.
            let flat = loss - next_loss <= 1e-13 * loss.abs().max(1.0);
            (theta, loss, grad) = (next_theta, next_loss, next_grad);
            if flat {
                converged = largest(&grad) < cfg.tolerance;
                break;
            }
            if sy > 1e-12 {
                if pairs.len() == MEMORY {
                    pairs.pop_front();
                }
                pairs.push_back((s, y, 1.0 / sy));
            }
        }
        if !converged && steps == cfg.iterations && largest(&grad) < cfg.tolerance {
            converged = true;
        }
        model.set(&theta);
        // The mean train cross-entropy, without the L2 term.
        let penalty: f64 = theta[..k * CLASSES].iter().map(|w| 0.5 * l2 * w * w).sum();
        Ok((model, steps, converged, loss - penalty))
    }

    /// Loads flattened parameters (weights `[k, CLASSES]`, then the bias).
    fn set(&mut self, theta: &[f64]) {
        let k = self.k;
        self.weights.copy_from_slice(&theta[..k * CLASSES]);
        self.bias.copy_from_slice(&theta[k * CLASSES..]);
    }

    /// Class probabilities of one standardised row.
    #[inline(always)]
    fn probabilities(&self, z: &[f32]) -> [f64; CLASSES] {
        let mut logits = self.bias;
        for (j, &v) in z.iter().enumerate() {
            let w = &self.weights[j * CLASSES..(j + 1) * CLASSES];
            for c in 0..CLASSES {
                logits[c] += w[c] * v as f64;
            }
        }
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        logits.iter_mut().for_each(|l| *l -= max);
        exp_nonpositive(&mut logits);
        let total: f64 = logits.iter().sum();
        logits.map(|l| l / total)
    }

    /// Fraction of rows of `x` `[labels.len(), k]` whose argmax is the label.
    pub fn accuracy(&self, x: &[f32], labels: &[u8]) -> f64 {
        let hits = x
            .par_chunks(self.k)
            .zip(labels)
            .filter(|(row, &y)| {
                let z: Vec<f32> = (0..self.k)
                    .map(|j| (row[j] - self.mean[j]) * self.inv_std[j])
                    .collect();
                let p = self.probabilities(&z);
                let best = (0..CLASSES).fold(0, |b, c| if p[c] > p[b] { c } else { b });
                best == y as usize
            })
            .count();
        hits as f64 / labels.len().max(1) as f64
    }
}

/// `e^x` for each of the ten `x <= 0` in place, to within a few ulp of
/// `f64::exp`: `2^n e^r` with `|r| <= ln 2 / 2` and Taylor's series to r^13
/// (truncation below 2e-17). Written lane-wise so it vectorises: libm's
/// scalar `exp` was a third of the probes' time. Below -700 it returns
/// `e^-700`, which no sum of a 1 and nine such terms can tell from zero.
#[inline(always)]
fn exp_nonpositive(x: &mut [f64; CLASSES]) {
    const LN2_HI: f64 = 0.693_147_180_369_123_8;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    const ROUNDER: f64 = 6_755_399_441_055_744.0;
    let mut scale = [0.0f64; CLASSES];
    for (v, s) in x.iter_mut().zip(&mut scale) {
        let clamped = v.max(-700.0);
        // n = round(x / ln 2) by the 1.5 * 2^52 trick (no libm call, so the
        // loop vectorises); t's low mantissa bits then hold n itself.
        let t = clamped * std::f64::consts::LOG2_E + ROUNDER;
        let n = t - ROUNDER;
        // Cody and Waite's two-part ln 2: r is exact to f64.
        let r = (clamped - n * LN2_HI) - n * LN2_LO;
        // 2^n: n + 1023 in the exponent field (shifting drops the rest).
        *s = f64::from_bits(t.to_bits().wrapping_add(1023) << 52);
        let mut p = 1.0 / 6_227_020_800.0;
        for d in [
            479_001_600.0,
            39_916_800.0,
            3_628_800.0,
            362_880.0,
            40_320.0,
            5_040.0,
            720.0,
            120.0,
            24.0,
            6.0,
            2.0,
            1.0,
            1.0,
        ] {
            p = p * r + 1.0 / d;
        }
        *v = p;
    }
    x.iter_mut().zip(&scale).for_each(|(v, s)| *v *= s);
}

/// A `[rows, width]` matrix of unit values, dense or as its non-zeros.
pub enum Columns<'a> {
    Dense { values: &'a [f32], width: usize },
    Sparse(&'a crate::tables::SparseActs),
}

impl Columns<'_> {
    /// Columns `units` of the first `rows` rows, as `[rows, units.len()]`.
    pub(crate) fn gather(&self, rows: usize, units: &[usize]) -> Vec<f32> {
        match self {
            Columns::Dense { values, width } => gather(values, *width, rows, units),
            Columns::Sparse(acts) => {
                let k = units.len();
                let mut out = vec![0.0f32; rows * k];
                // A unit's slot among `units` by direct lookup (a hash per
                // non-zero cost more than the probe it feeds).
                let width = units.iter().max().map_or(0, |&u| u + 1);
                let mut position = vec![usize::MAX; width];
                units.iter().enumerate().for_each(|(j, &u)| position[u] = j);
                // Rows in order: the first `rows` rows are a prefix.
                let end = acts.row.partition_point(|&r| (r as usize) < rows);
                for ((&r, &u), &v) in acts.row[..end].iter().zip(&acts.unit).zip(&acts.value) {
                    if let Some(&j) = position.get(u as usize).filter(|&&j| j != usize::MAX) {
                        out[r as usize * k + j] = v;
                    }
                }
                out
            }
        }
    }
}

/// Data for probing one set of units.
pub struct ProbeData<'a> {
    pub train: Columns<'a>,
    pub test: Columns<'a>,
    pub train_labels: &'a [u8],
    pub test_labels: &'a [u8],
}

/// One probe per k in `cfg.ks` (k capped at the width), reading the first k of `ranking`.
pub fn k_sparse_probes(
    data: &ProbeData,
    ranking: &[usize],
    cfg: &ProbeConfig,
) -> Result<Vec<ProbeResult>, crate::AnalysisError> {
    let train_rows = cfg.train_rows.min(data.train_labels.len());
    let test_rows = data.test_labels.len();
    cfg.ks
        .iter()
        .filter(|&&k| k > 0 && !ranking.is_empty())
        .map(|&k| {
            let units: Vec<usize> = ranking.iter().take(k).copied().collect();
            let x_train = data.train.gather(train_rows, &units);
            let x_test = data.test.gather(test_rows, &units);
            let labels = &data.train_labels[..train_rows];
            let (model, steps, converged, train_loss) =
                Softmax::fit(&x_train, units.len(), labels, cfg)
                    .map_err(crate::AnalysisError::Input)?;
            Ok(ProbeResult {
                k,
                train_accuracy: model.accuracy(&x_train, labels),
                test_accuracy: model.accuracy(&x_test, data.test_labels),
                units,
                steps,
                converged,
                train_loss,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gradient of the mean cross-entropy plus the L2 term, in f64 from
    /// the definition, at the fitted weights.
    fn gradient_f64(model: &Softmax, x: &[f32], labels: &[u8], l2: f64) -> Vec<f64> {
        let k = model.k;
        let mut g = vec![0.0f64; (k + 1) * CLASSES];
        for (row, &y) in x.chunks_exact(k).zip(labels) {
            let z: Vec<f64> = (0..k)
                .map(|j| (row[j] as f64 - model.mean[j] as f64) * model.inv_std[j] as f64)
                .collect();
            let logits: Vec<f64> = (0..CLASSES)
                .map(|c| {
                    model.bias[c]
                        + (0..k)
                            .map(|j| model.weights[j * CLASSES + c] * z[j])
                            .sum::<f64>()
                })
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            for c in 0..CLASSES {
                let d = (logits[c] - max).exp() / total - (c == y as usize) as u8 as f64;
                for j in 0..k {
                    g[j * CLASSES + c] += d * z[j];
                }
                g[k * CLASSES + c] += d;
            }
        }
        let n = labels.len() as f64;
        g.iter_mut().for_each(|v| *v /= n);
        for (i, w) in model.weights.iter().enumerate() {
            g[i] += l2 * w;
        }
        g
    }

    #[test]
    fn the_vectorised_exp_is_libms_to_a_few_ulp() {
        // Dense near 0, where the probabilities live, then out to the clamp.
        let xs = (0..200_000)
            .map(|i| -(i as f64) * 1e-4)
            .chain((0..6_990).map(|i| -(i as f64) * 0.1 - 0.123_456_789));
        let mut worst = 0.0f64;
        let mut batch = [0.0f64; CLASSES];
        let mut inputs = [0.0f64; CLASSES];
        for (i, x) in xs.enumerate() {
            inputs[i % CLASSES] = x;
            if i % CLASSES == CLASSES - 1 {
                batch.copy_from_slice(&inputs);
                exp_nonpositive(&mut batch);
                for (x, e) in inputs.iter().zip(&batch) {
                    let exact = x.exp();
                    worst = worst.max(((e - exact) / exact).abs());
                }
            }
        }
        assert!(worst < 1e-15, "largest relative error {worst:e}");
        let mut extremes = [
            0.0,
            -1e-300,
            -0.5,
            -700.0,
            -800.0,
            f64::NEG_INFINITY,
            -1.0,
            -2.0,
            -3.0,
            -4.0,
        ];
        exp_nonpositive(&mut extremes);
        assert_eq!(extremes[0], 1.0);
        assert_eq!(extremes[1], 1.0);
        assert!(extremes[4] > 0.0 && extremes[4] < 1e-300 && extremes[5] == extremes[4]);
    }

    #[test]
    fn sparse_columns_gather_what_dense_columns_gather() {
        // 50 rows of 7 units, about a third non-zero; units asked out of order.
        let (rows, width) = (50, 7);
        let dense: Vec<f32> = (0..rows * width)
            .map(|i| {
                if i * 31 % 3 == 0 {
                    (i % 11) as f32 + 0.5
                } else {
                    0.0
                }
            })
            .collect();
        let sparse = crate::tables::SparseActs::from_dense(&dense, width);
        for (take, units) in [
            (50, vec![6, 0, 3]),
            (17, vec![2]),
            (0, vec![5, 1]),
            (50, vec![]),
        ] {
            let expected = gather(&dense, width, take, &units);
            assert_eq!(
                Columns::Sparse(&sparse).gather(take, &units),
                expected,
                "{take} rows of {units:?}"
            );
        }
    }

    #[test]
    fn a_converged_probe_sits_where_the_f64_gradient_vanishes() {
        // Three noisy units, each leaning towards a few digits.
        let (rows, k) = (3000, 3);
        let mut state = 12345u64;
        let mut noise = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) as f32 - 0.5
        };
        let labels: Vec<u8> = (0..rows).map(|r| (r * 7 % CLASSES) as u8).collect();
        let x: Vec<f32> = labels
            .iter()
            .flat_map(|&y| {
                let y = y as f32;
                [
                    y + 3.0 * noise(),
                    (y - 4.5).abs() + 2.0 * noise(),
                    (y % 3.0) + noise(),
                ]
            })
            .collect();
        let cfg = ProbeConfig {
            tolerance: 1e-5,
            ..Default::default()
        };
        let (model, steps, converged, loss) = Softmax::fit(&x, k, &labels, &cfg).unwrap();
        assert!(converged && steps < cfg.iterations, "{steps} steps");
        let largest = gradient_f64(&model, &x, &labels, cfg.l2)
            .iter()
            .fold(0.0f64, |m, g| m.max(g.abs()));
        // The data are f32 and standardised in f32: a little slack on the tolerance.
        assert!(
            largest < 1.5 * cfg.tolerance,
            "gradient {largest:e} after {steps} steps"
        );
        assert!(loss.is_finite() && loss < (CLASSES as f64).ln(), "{loss}");
        // Three steps are not enough, and it says so.
        let short = ProbeConfig {
            iterations: 3,
            ..cfg
        };
        let (_, steps, converged, _) = Softmax::fit(&x, k, &labels, &short).unwrap();
        assert!(!converged && steps == 3);
    }
}
