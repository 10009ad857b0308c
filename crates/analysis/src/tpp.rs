//! SAEBench's targeted probe perturbation (TPP, its `scr_and_tpp` eval) for
//! the ten digits: a logistic probe per digit on the layer itself (one digit
//! against the rest, balanced rows as `digit_probe`), then for each digit the
//! N latents with the largest effect on its probe (mean over the digit's
//! train rows of activation times the decoder row's projection on the probe's
//! direction; only positive effects) are ablated from the layer (`x - sum of a_f W_dec[f]`). A
//! disentangled dictionary lowers that digit's probe accuracy (intended) and
//! leaves the other digits' probes alone (unintended); TPP = intended -
//! unintended.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::digit_probe::{balanced, Logistic};
use crate::stats::CLASSES;
use crate::tables::SparseActs;

/// How many latents are ablated per digit (SAEBench's thresholds, up to 20).
pub const TPP_LATENTS: [usize; 4] = [2, 5, 10, 20];

/// The probes TPP perturbs: one per digit on the layer's own values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerProbes {
    width: usize,
    probes: Vec<(u8, Logistic)>,
}

/// TPP at one number of ablated latents (accuracy differences, mean over digits).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TppResult {
    pub latents: usize,
    /// Mean drop of a digit's probe accuracy when its own latents are ablated.
    pub intended: f64,
    /// Mean drop of the other digits' probes under the same ablations.
    pub unintended: f64,
}

impl TppResult {
    pub fn score(&self) -> f64 {
        self.intended - self.unintended
    }
}

impl LayerProbes {
    /// A probe per digit on `[rows, width]` `train` (its first `train_rows` rows).
    pub fn fit(train: &[f32], width: usize, labels: &[u8], train_rows: usize) -> LayerProbes {
        // One digit per task, collected in digit order.
        let probes = (0..CLASSES as u8)
            .into_par_iter()
            .filter_map(|digit| {
                let (pos, neg) = balanced(labels, train_rows, digit);
                if pos.is_empty() {
                    return None;
                }
                let rows: Vec<usize> = pos.iter().chain(&neg).copied().collect();
                let x: Vec<f64> = rows
                    .iter()
                    .flat_map(|&r| train[r * width..(r + 1) * width].iter().map(|&v| v as f64))
                    .collect();
                let y: Vec<bool> = (0..rows.len()).map(|i| i < pos.len()).collect();
                Some((digit, Logistic::fit(&x, &y, width, 1.0)))
            })
            .collect();
        LayerProbes { width, probes }
    }
}

/// Each row's non-zeros among `latents` (of `d_sae`), as (row, latent, value).
fn active_among(acts: &SparseActs, latents: &[usize], d_sae: usize) -> Vec<(usize, usize, f32)> {
    let mut chosen = vec![false; d_sae];
    latents.iter().for_each(|&f| chosen[f] = true);
    acts.row
        .iter()
        .zip(&acts.unit)
        .zip(&acts.value)
        .filter(|((_, &u), _)| chosen.get(u as usize) == Some(&true))
        .map(|((&r, &u), &v)| (r as usize, u as usize, v))
        .collect()
}

/// TPP of an SAE whose decoder `w_dec` (`[d_sae, width]`, raw units) writes
/// the layer `test` (`[rows, width]`) the probes read; `acts_*` are its
/// activations on the train and test rows.
pub fn tpp(
    probes: &LayerProbes,
    w_dec: &[f32],
    acts_train: &SparseActs,
    acts_test: &SparseActs,
    test: &[f32],
    train_labels: &[u8],
    test_labels: &[u8],
    train_rows: usize,
) -> Vec<TppResult> {
    let width = probes.width;
    let d_sae = w_dec.len() / width.max(1);
    // Each probe's balanced test rows.
    let test_sets: Vec<(Vec<usize>, usize)> = probes
        .probes
        .iter()
        .map(|(digit, _)| {
            let (pos, neg) = balanced(test_labels, usize::MAX, *digit);
            (pos.iter().chain(&neg).copied().collect(), pos.len())
        })
        .collect();
    // Each probe is linear before its sigmoid, so ablating `a W_dec[f]` from
    // a row moves probe j's logit by exactly `-a (W_dec[f] . u_j)`, with u_j
    // its direction on raw values: the ablated accuracies need only the clean
    // logits and these projections, not the ablated rows.
    let along: Vec<Vec<f64>> = probes
        .probes
        .iter()
        .map(|(_, probe)| {
            let u = probe.raw_direction();
            (0..d_sae)
                .map(|f| {
                    w_dec[f * width..(f + 1) * width]
                        .iter()
                        .zip(&u)
                        .map(|(&w, u)| w as f64 * u)
                        .sum()
                })
                .collect()
        })
        .collect();
    // Probe j's logit on each of its test rows.
    let clean_logits: Vec<Vec<f64>> = probes
        .probes
        .par_iter()
        .zip(&test_sets)
        .map(|((_, probe), (rows, _))| {
            let mut row_values = vec![0.0f64; width];
            rows.iter()
                .map(|&r| {
                    for (v, &x) in row_values.iter_mut().zip(&test[r * width..(r + 1) * width]) {
                        *v = x as f64;
                    }
                    probe.logit(&row_values)
                })
                .collect()
        })
        .collect();
    // Accuracy of probe j on its test rows, each row's logit moved by `shift[row]`.
    let accuracy = |j: usize, shift: &[f64]| -> f64 {
        let (rows, positives) = &test_sets[j];
        let correct = rows
            .iter()
            .zip(&clean_logits[j])
            .enumerate()
            .filter(|&(i, (&r, &logit))| (logit + shift[r] > 0.0) == (i < *positives))
            .count();
        correct as f64 / rows.len().max(1) as f64
    };
    let unmoved = vec![0.0f64; test_labels.len()];
    let clean: Vec<f64> = (0..probes.probes.len())
        .map(|j| accuracy(j, &unmoved))
        .collect();
    // Each latent's effect on each digit's probe, over that digit's train rows.
    let effects: Vec<Vec<f64>> = probes
        .probes
        .iter()
        .zip(&along)
        .map(|((digit, _), along)| {
            let (pos, _) = balanced(train_labels, train_rows, *digit);
            let mut is_pos = vec![false; train_labels.len()];
            pos.iter().for_each(|&r| is_pos[r] = true);
            let mut effect = vec![0.0f64; d_sae];
            for ((&r, &f), &a) in acts_train
                .row
                .iter()
                .zip(&acts_train.unit)
                .zip(&acts_train.value)
            {
                if is_pos.get(r as usize) == Some(&true) {
                    effect[f as usize] += a as f64 * along[f as usize];
                }
            }
            effect
                .iter_mut()
                .for_each(|e| *e /= pos.len().max(1) as f64);
            effect
        })
        .collect();
    TPP_LATENTS
        .iter()
        .map(|&n| {
            let (mut intended, mut unintended, mut pairs) = (0.0, 0.0, 0usize);
            for (i, effect) in effects.iter().enumerate() {
                // Only latents that push the probe towards the digit (a latent
                // with no effect on it has nothing to ablate).
                let mut order: Vec<usize> = (0..d_sae).filter(|&f| effect[f] > 0.0).collect();
                order.sort_by(|&a, &b| effect[b].total_cmp(&effect[a]).then(a.cmp(&b)));
                order.truncate(n);
                let ablated = active_among(acts_test, &order, d_sae);
                let mut shift = vec![0.0f64; test_labels.len()];
                for (j, along) in along.iter().enumerate() {
                    shift.fill(0.0);
                    for &(r, f, a) in &ablated {
                        shift[r] -= a as f64 * along[f];
                    }
                    let drop = clean[j] - accuracy(j, &shift);
                    if j == i {
                        intended += drop;
                    } else {
                        unintended += drop;
                        pairs += 1;
                    }
                }
            }
            TppResult {
                latents: n,
                intended: intended / effects.len().max(1) as f64,
                unintended: unintended / pairs.max(1) as f64,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten one-hot digit directions plus noise; a dictionary whose latent d is
    /// direction d is perfectly disentangled, one that mixes two digits is not.
    #[test]
    fn a_disentangled_dictionary_scores_high_and_an_entangled_one_low() {
        let width = 10;
        let rows = 2000;
        let labels: Vec<u8> = (0..rows).map(|r| (r % 10) as u8).collect();
        let noise = |r: usize, j: usize| (((r * 31 + j * 17) % 13) as f32 / 13.0 - 0.5) * 0.2;
        let mut x = vec![0.0f32; rows * width];
        for r in 0..rows {
            for j in 0..width {
                let on = if labels[r] as usize == j { 2.0 } else { 0.0 };
                x[r * width + j] = on + noise(r, j);
            }
        }
        let probes = LayerProbes::fit(&x, width, &labels, rows);
        // Latent d: direction d, active (value 2) on digit d's rows.
        let identity: Vec<f32> = (0..width * width)
            .map(|e| if e / width == e % width { 1.0 } else { 0.0 })
            .collect();
        // One latent per row, value 2: latent_of(label).
        let one_per_row = |latent_of: fn(u8) -> u32| SparseActs {
            row: (0..rows as u32).collect(),
            unit: labels.iter().map(|&l| latent_of(l)).collect(),
            value: vec![2.0; rows],
        };
        let score = |w_dec: &[f32], acts: &SparseActs| {
            tpp(&probes, w_dec, acts, acts, &x, &labels, &labels, rows)
        };
        let clean = score(&identity, &one_per_row(|l| l as u32));
        assert_eq!(
            clean.iter().map(|t| t.latents).collect::<Vec<_>>(),
            TPP_LATENTS
        );
        // Ablating digit d's latent removes its direction: its probe falls to chance.
        assert!(
            clean[0].intended > 0.4 && clean[0].unintended.abs() < 0.01,
            "{clean:?}"
        );
        // Entangled: latent p fires on digits 2p and 2p + 1 and writes both
        // directions, so ablating it for digit 2p also breaks digit 2p + 1.
        let mut pairs = vec![0.0f32; 5 * width];
        for p in 0..5 {
            pairs[p * width + 2 * p] = 1.0;
            pairs[p * width + 2 * p + 1] = 1.0;
        }
        let entangled = score(&pairs, &one_per_row(|l| l as u32 / 2));
        assert!(entangled[0].unintended > 0.04, "{entangled:?}");
        assert!(
            entangled[0].score() < clean[0].score() - 0.04,
            "{entangled:?} vs {clean:?}"
        );
    }
}
