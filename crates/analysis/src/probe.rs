//! k-sparse probing (after SAEBench): a multinomial logistic regression on the
//! k units with the highest train MI, scored on test.
//!
//! Deterministic full-batch gradient descent with momentum on standardised
//! inputs (train mean and std), zero initialisation, until the largest
//! gradient component is below `tolerance` or `iterations` steps have run
//! (the result says which). A non-finite loss is an error, never a score.

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
    pub tolerance: f64,
    /// f64 like every float of the config, so it reads back as written
    /// (`1e-4`, not `9.999999747378752e-05`); the probe itself runs in f32.
    pub learning_rate: f64,
    pub momentum: f64,
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
            learning_rate: 1.0,
            momentum: 0.9,
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
    /// `[k, CLASSES]`
    weights: Vec<f32>,
    bias: [f32; CLASSES],
}

const CHUNK_ROWS: usize = 1024;

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
        let mut velocity = vec![0.0f32; (k + 1) * CLASSES];
        let (mut steps, mut converged, mut loss) = (0, false, f64::NAN);
        for _ in 0..cfg.iterations {
            // The last slot of each chunk's vector carries its summed loss.
            let mut grad = z
                .par_chunks(CHUNK_ROWS * k)
                .zip(labels.par_chunks(CHUNK_ROWS))
                .map(|(block, block_labels)| {
                    let mut g = vec![0.0f32; (k + 1) * CLASSES + 1];
                    for (row, &y) in block.chunks_exact(k).zip(block_labels) {
                        let p = model.probabilities(row);
                        g[(k + 1) * CLASSES] -= p[y as usize].max(f32::MIN_POSITIVE).ln();
                        let mut d = p;
                        d[y as usize] -= 1.0;
                        // Unit-major: each unit's CLASSES gradients are contiguous (vectorises).
                        for (j, &x) in row.iter().enumerate() {
                            let gj = &mut g[j * CLASSES..(j + 1) * CLASSES];
                            for c in 0..CLASSES {
                                gj[c] += d[c] * x;
                            }
                        }
                        for c in 0..CLASSES {
                            g[k * CLASSES + c] += d[c];
                        }
                    }
                    g
                })
                // Collected in chunk order and summed sequentially: bit-identical across runs.
                .collect::<Vec<_>>()
                .into_iter()
                .fold(vec![0.0f32; (k + 1) * CLASSES + 1], |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                });
            loss = grad.pop().expect("the loss slot") as f64 / n;
            if !loss.is_finite() || grad.iter().any(|g| !g.is_finite()) {
                return Err(format!(
                    "the k = {k} probe's loss became {loss} at step {steps}: its inputs or learning rate are out of range"
                ));
            }
            let largest = grad
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    let g = g / n as f32;
                    if i < k * CLASSES {
                        (g + cfg.l2 as f32 * model.weights[i]).abs()
                    } else {
                        g.abs()
                    }
                })
                .fold(0.0f32, f32::max);
            if (largest as f64) < cfg.tolerance {
                converged = true;
                break;
            }
            steps += 1;
            let (l2, momentum, learning_rate) =
                (cfg.l2 as f32, cfg.momentum as f32, cfg.learning_rate as f32);
            for (i, v) in velocity.iter_mut().enumerate() {
                let mut g = grad[i] / n as f32;
                if i < k * CLASSES {
                    g += l2 * model.weights[i];
                }
                *v = momentum * *v - learning_rate * g;
            }
            for (i, v) in velocity.iter().enumerate() {
                if i < k * CLASSES {
                    model.weights[i] += v;
                } else {
                    model.bias[i - k * CLASSES] += v;
                }
            }
        }
        Ok((model, steps, converged, loss))
    }

    /// Class probabilities of one standardised row.
    fn probabilities(&self, z: &[f32]) -> [f32; CLASSES] {
        let mut logits = self.bias;
        for (j, &v) in z.iter().enumerate() {
            let w = &self.weights[j * CLASSES..(j + 1) * CLASSES];
            for c in 0..CLASSES {
                logits[c] += w[c] * v;
            }
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0;
        for l in logits.iter_mut() {
            *l = (*l - max).exp();
            total += *l;
        }
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
                let position: std::collections::HashMap<u32, usize> = units
                    .iter()
                    .enumerate()
                    .map(|(j, &u)| (u as u32, j))
                    .collect();
                for ((&r, &u), &v) in acts.row.iter().zip(&acts.unit).zip(&acts.value) {
                    if (r as usize) < rows {
                        if let Some(&j) = position.get(&u) {
                            out[r as usize * k + j] = v;
                        }
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
