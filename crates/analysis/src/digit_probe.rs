//! SAEBench's k-sparse probing, one digit against the rest (its
//! `sparse_probing` eval): for each digit a balanced train set (every row of
//! that digit among the first `train_rows` train rows, and as many rows of
//! other digits, the first ones), the k units whose mean value differs most
//! between the two (absolute difference, as SAEBench's top-k mean-difference
//! mask), and a logistic regression on them (sklearn's default, L2 with C = 1,
//! on standardised inputs, solved by Newton's method in f64). Scored on a
//! balanced test set built the same way from the test rows.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::probe::{Columns, ProbeData};
use crate::stats::CLASSES;

/// SAEBench's default k values.
pub const DIGIT_PROBE_KS: [usize; 3] = [1, 2, 5];

/// One digit's probe on k units.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DigitProbe {
    pub digit: u8,
    pub k: usize,
    /// The units it read, largest mean difference first.
    pub units: Vec<usize>,
    pub test_accuracy: f64,
}

/// Rows `0..limit` split into the digit's rows and as many others (the first ones).
pub(crate) fn balanced(labels: &[u8], limit: usize, digit: u8) -> (Vec<usize>, Vec<usize>) {
    let limit = limit.min(labels.len());
    let positive: Vec<usize> = (0..limit).filter(|&r| labels[r] == digit).collect();
    let negative: Vec<usize> = (0..limit)
        .filter(|&r| labels[r] != digit)
        .take(positive.len())
        .collect();
    (positive, negative)
}

/// Every unit's mean over `positive` minus its mean over `negative`, absolute.
fn mean_differences(
    columns: &Columns,
    width: usize,
    positive: &[usize],
    negative: &[usize],
) -> Vec<f64> {
    let rows = positive.iter().chain(negative).max().map_or(0, |&r| r + 1);
    // 1: positive, 0: negative, -1: not in the set.
    let mut side = vec![-1i8; rows];
    positive.iter().for_each(|&r| side[r] = 1);
    negative.iter().for_each(|&r| side[r] = 0);
    let mut sums = [vec![0.0f64; width], vec![0.0f64; width]];
    let mut add = |r: usize, u: usize, v: f32| {
        if let Some(&s) = side.get(r) {
            if s >= 0 {
                sums[s as usize][u] += v as f64;
            }
        }
    };
    match columns {
        Columns::Dense { values, width } => {
            for (r, row) in values.chunks_exact(*width).take(rows).enumerate() {
                for (u, &v) in row.iter().enumerate() {
                    add(r, u, v);
                }
            }
        }
        Columns::Sparse(acts) => {
            for ((&r, &u), &v) in acts.row.iter().zip(&acts.unit).zip(&acts.value) {
                add(r as usize, u as usize, v);
            }
        }
    }
    let (np, nn) = (positive.len().max(1) as f64, negative.len().max(1) as f64);
    (0..width)
        .map(|u| (sums[1][u] / np - sums[0][u] / nn).abs())
        .collect()
}

/// The `k` largest entries' indices, largest first (lower index on ties).
fn top_k(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// A logistic regression on standardised inputs: `p = sigmoid(w . z + b)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Logistic {
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    pub weights: Vec<f64>,
    pub bias: f64,
}

impl Logistic {
    /// Minimises sum of log-losses + `l2`/2 ||w||^2 over rows `x` (`[n, k]`)
    /// with 0/1 targets `y`, by Newton's method with step halving.
    pub fn fit(x: &[f64], y: &[bool], k: usize, l2: f64) -> Logistic {
        let n = y.len();
        let mut mean = vec![0.0; k];
        let mut inv_std = vec![1.0; k];
        for j in 0..k {
            let column = || x.chunks_exact(k).map(move |row| row[j]);
            mean[j] = column().sum::<f64>() / n.max(1) as f64;
            let var = column().map(|v| (v - mean[j]).powi(2)).sum::<f64>() / n.max(1) as f64;
            if var > 0.0 {
                inv_std[j] = 1.0 / var.sqrt();
            }
        }
        let z: Vec<f64> = x
            .chunks_exact(k)
            .flat_map(|row| {
                (0..k)
                    .map(|j| (row[j] - mean[j]) * inv_std[j])
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut theta = vec![0.0f64; k + 1];
        let objective = |theta: &[f64]| -> f64 {
            let mut loss = 0.5 * l2 * theta[..k].iter().map(|w| w * w).sum::<f64>();
            for (row, &t) in z.chunks_exact(k).zip(y) {
                let s = theta[k] + row.iter().zip(theta).map(|(a, w)| a * w).sum::<f64>();
                // log(1 + e^s) - t s, stably.
                loss += s.max(0.0) + (-s.abs()).exp().ln_1p() - if t { s } else { 0.0 };
            }
            loss
        };
        let mut current = objective(&theta);
        for _ in 0..100 {
            let (mut grad, mut hess) = newton_terms(&z, y, &theta, k);
            for j in 0..k {
                grad[j] += l2 * theta[j];
                hess[j * (k + 1) + j] += l2;
            }
            // A tiny ridge keeps the system solvable when the data separate.
            hess[k * (k + 1) + k] += 1e-12;
            let step = solve(&mut hess, &mut grad, k + 1);
            let mut scale = 1.0;
            let mut next;
            loop {
                next = theta
                    .iter()
                    .zip(&step)
                    .map(|(t, s)| t - scale * s)
                    .collect::<Vec<_>>();
                let value = objective(&next);
                if value <= current || scale < 1e-8 {
                    current = value.min(current);
                    break;
                }
                scale *= 0.5;
            }
            let moved = step.iter().map(|s| (scale * s).abs()).fold(0.0, f64::max);
            theta = next;
            if moved < 1e-10 {
                break;
            }
        }
        Logistic {
            mean,
            inv_std,
            bias: theta[k],
            weights: theta[..k].to_vec(),
        }
    }

    /// The weights on raw inputs (the standardisation folded in).
    pub fn raw_direction(&self) -> Vec<f64> {
        self.weights
            .iter()
            .zip(&self.inv_std)
            .map(|(w, s)| w * s)
            .collect()
    }

    /// The log-odds of the positive class for one row of raw inputs.
    pub fn logit(&self, row: &[f64]) -> f64 {
        self.bias
            + row
                .iter()
                .enumerate()
                .map(|(j, v)| (v - self.mean[j]) * self.inv_std[j] * self.weights[j])
                .sum::<f64>()
    }

    /// The probability of the positive class for one row of raw inputs.
    pub fn probability(&self, row: &[f64]) -> f64 {
        1.0 / (1.0 + (-self.logit(row)).exp())
    }
}

/// The log-loss's gradient and Hessian (`[k+1, k+1]`, the bias last) at
/// `theta`, summed over the rows of `z`. The Hessian `V^T diag(p(1-p)) V` is
/// one gemm (`sae::matmul`): the layer probes' 129 x 129 Hessians, summed row by row, were
/// most of the baseline's time.
fn newton_terms(z: &[f64], y: &[bool], theta: &[f64], k: usize) -> (Vec<f64>, Vec<f64>) {
    let n = k + 1;
    let rows = y.len();
    let mut grad = vec![0.0f64; n];
    // Each row's inputs with the bias input 1, and the same times p (1 - p).
    let mut inputs = vec![0.0f64; rows * n];
    let mut weighted = vec![0.0f64; rows * n];
    for (((row, &t), v), w) in z
        .chunks_exact(k)
        .zip(y)
        .zip(inputs.chunks_exact_mut(n))
        .zip(weighted.chunks_exact_mut(n))
    {
        let s = theta[k] + row.iter().zip(theta).map(|(a, w)| a * w).sum::<f64>();
        let p = 1.0 / (1.0 + (-s).exp());
        let (e, c) = (p - if t { 1.0 } else { 0.0 }, p * (1.0 - p));
        v[..k].copy_from_slice(row);
        v[k] = 1.0;
        for ((g, w), &x) in grad.iter_mut().zip(w.iter_mut()).zip(v.iter()) {
            *g += e * x;
            *w = c * x;
        }
    }
    let mut hess = vec![0.0f64; n * n];
    // Fixed blocks of at most 512 rows (gemm would size them from the cache).
    sae::matmul(
        &mut hess,
        n,
        n,
        rows,
        false,
        sae::MatRef::transposed(&weighted, n),
        sae::MatRef::row_major(&inputs, n),
    );
    (grad, hess)
}

/// Solves `a x = b` (`a` is `[n, n]`) by Gaussian elimination with partial pivoting.
fn solve(a: &mut [f64], b: &mut [f64], n: usize) -> Vec<f64> {
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))
            .expect("a column");
        if pivot != col {
            for c in 0..n {
                a.swap(col * n + c, pivot * n + c);
            }
            b.swap(col, pivot);
        }
        let d = a[col * n + col];
        if d == 0.0 {
            continue;
        }
        for row in col + 1..n {
            let f = a[row * n + col] / d;
            for c in col..n {
                a[row * n + c] -= f * a[col * n + c];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let d = a[row * n + row];
        let rest: f64 = (row + 1..n).map(|c| a[row * n + c] * x[c]).sum();
        x[row] = if d == 0.0 { 0.0 } else { (b[row] - rest) / d };
    }
    x
}

/// The rows `rows` of columns `units`, as f64 `[rows.len(), units.len()]`.
fn gathered(columns: &Columns, rows: &[usize], units: &[usize]) -> Vec<f64> {
    let through = rows.iter().max().map_or(0, |&r| r + 1);
    let all = columns.gather(through, units);
    let k = units.len();
    rows.iter()
        .flat_map(|&r| all[r * k..(r + 1) * k].iter().map(|&v| v as f64))
        .collect()
}

/// Every digit's probe at every k of [`DIGIT_PROBE_KS`] (capped at `width`).
pub fn digit_probes(data: &ProbeData, width: usize, train_rows: usize) -> Vec<DigitProbe> {
    // One digit per task, collected in digit order.
    let per_digit = (0..CLASSES as u8).into_par_iter().map(|digit| {
        let mut out = Vec::new();
        let (train_pos, train_neg) = balanced(data.train_labels, train_rows, digit);
        let (test_pos, test_neg) = balanced(data.test_labels, usize::MAX, digit);
        if train_pos.is_empty() || test_pos.is_empty() {
            return out;
        }
        let ranking = top_k(
            &mean_differences(&data.train, width, &train_pos, &train_neg),
            DIGIT_PROBE_KS.iter().copied().max().unwrap_or(1),
        );
        let train_rows_used: Vec<usize> = train_pos.iter().chain(&train_neg).copied().collect();
        let test_rows_used: Vec<usize> = test_pos.iter().chain(&test_neg).copied().collect();
        let targets = |pos: usize, neg: usize| {
            std::iter::repeat_n(true, pos)
                .chain(std::iter::repeat_n(false, neg))
                .collect::<Vec<bool>>()
        };
        let y_train = targets(train_pos.len(), train_neg.len());
        let y_test = targets(test_pos.len(), test_neg.len());
        for k in DIGIT_PROBE_KS {
            let units: Vec<usize> = ranking.iter().take(k.min(width)).copied().collect();
            let k = units.len();
            let x_train = gathered(&data.train, &train_rows_used, &units);
            let probe = Logistic::fit(&x_train, &y_train, k, 1.0);
            let x_test = gathered(&data.test, &test_rows_used, &units);
            let correct = x_test
                .chunks_exact(k)
                .zip(&y_test)
                .filter(|(row, &t)| (probe.probability(row) > 0.5) == t)
                .count();
            out.push(DigitProbe {
                digit,
                k,
                units,
                test_accuracy: correct as f64 / y_test.len() as f64,
            });
        }
        out
    });
    per_digit.collect::<Vec<_>>().concat()
}

/// Mean test accuracy over digits of the probes on `k` units (NaN if none).
pub fn mean_accuracy(probes: &[DigitProbe], k: usize) -> f64 {
    let at: Vec<f64> = probes
        .iter()
        .filter(|p| p.k == k)
        .map(|p| p.test_accuracy)
        .collect();
    if at.is_empty() {
        return f64::NAN;
    }
    at.iter().sum::<f64>() / at.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::SparseActs;

    #[test]
    fn the_fit_is_the_penalised_optimum() {
        // Overlapping classes on two inputs, one of them uninformative.
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..200 {
            let t = i % 2 == 0;
            let noise = ((i * 37 % 101) as f64 / 101.0) - 0.5;
            x.extend([if t { 1.0 } else { 0.0 } + 1.5 * noise, (i % 7) as f64]);
            y.push(t);
        }
        let fit = Logistic::fit(&x, &y, 2, 1.0);
        // The gradient of the objective, recomputed here, vanishes at the fit.
        let mut grad = [0.0f64; 3];
        for (row, &t) in x.chunks_exact(2).zip(&y) {
            let z: Vec<f64> = (0..2)
                .map(|j| (row[j] - fit.mean[j]) * fit.inv_std[j])
                .collect();
            let p = fit.probability(row);
            let e = p - if t { 1.0 } else { 0.0 };
            grad[0] += e * z[0];
            grad[1] += e * z[1];
            grad[2] += e;
        }
        grad[0] += fit.weights[0];
        grad[1] += fit.weights[1];
        assert!(grad.iter().all(|g| g.abs() < 1e-6), "{grad:?}");
        assert!(
            fit.weights[0] > 1.0 && fit.weights[1].abs() < 0.3,
            "{:?}",
            fit.weights
        );
    }

    #[test]
    fn a_digit_is_probed_on_the_units_that_differ_most_on_balanced_rows() {
        // 4 units; unit 2 is on exactly for digit 3, unit 0 weakly for digit 3,
        // unit 1 is noise and unit 3 is never on.
        let labels: Vec<u8> = (0..400).map(|r| (r % 10) as u8).collect();
        let mut dense = vec![0.0f32; 400 * 4];
        for r in 0..400 {
            let three = labels[r] == 3;
            dense[r * 4] = if three && r % 20 != 3 { 0.5 } else { 0.0 };
            dense[r * 4 + 1] = ((r * 7) % 3) as f32;
            dense[r * 4 + 2] = if three { 2.0 } else { 0.0 };
        }
        let sparse = SparseActs::from_dense(&dense, 4);
        for columns in [
            Columns::Dense {
                values: &dense,
                width: 4,
            },
            Columns::Sparse(&sparse),
        ] {
            let data = ProbeData {
                train: columns,
                test: Columns::Dense {
                    values: &dense,
                    width: 4,
                },
                train_labels: &labels,
                test_labels: &labels,
            };
            let probes = digit_probes(&data, 4, 300);
            let three: Vec<&DigitProbe> = probes.iter().filter(|p| p.digit == 3).collect();
            assert_eq!(three.iter().map(|p| p.k).collect::<Vec<_>>(), [1, 2, 4]);
            assert_eq!(three[0].units, [2]);
            assert_eq!(three[1].units, [2, 0]);
            assert_eq!(three[0].test_accuracy, 1.0);
        }
        // Balanced: every 3 among the first 300 rows, and as many others, the first.
        let (pos, neg) = balanced(&labels, 300, 3);
        assert_eq!(pos.len(), 30);
        assert_eq!(neg, (0..33).filter(|r| r % 10 != 3).collect::<Vec<_>>());
        assert!(mean_accuracy(&[], 1).is_nan());
    }
}
