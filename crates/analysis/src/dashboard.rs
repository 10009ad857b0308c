//! Per-feature dashboards (after sae_vis, for images): top-activating digits by
//! activation quantile, the mean input image, activation histograms overall and
//! per class, the label distribution and the effect of removing the feature on
//! each class logit.

use std::path::Path;

use crate::plots::{self, DigitGrid, Figure, Layer, Mark, Tile};
use crate::stats::{UnitCounts, UnitStats, CLASSES};
pub use crate::types::Dashboard;
use crate::types::{AnalysisConfig, LayerData};
use crate::AnalysisError;

/// Features to show, each with why: the top `dashboards_per_criterion` live
/// features by binary MI, binned MI, detector F1, purity (where supported) and
/// frequency, in that order, none twice.
pub fn pick(stats: &[UnitStats], cfg: &AnalysisConfig) -> Vec<(usize, String)> {
    let live = |f: &usize| !stats[*f].dead;
    let by = |key: fn(&UnitStats) -> Option<f64>| -> Vec<usize> {
        let mut order: Vec<usize> = (0..stats.len())
            .filter(|&f| live(&f) && key(&stats[f]).is_some())
            .collect();
        order.sort_by(|&a, &b| {
            key(&stats[b])
                .unwrap()
                .total_cmp(&key(&stats[a]).unwrap())
                .then(a.cmp(&b))
        });
        order
    };
    // Each criterion names its own picks; a feature already shown for an
    // earlier one is skipped and the next of this criterion taken instead.
    let criteria: [(&str, usize, Vec<usize>); 5] = [
        (
            "top binary MI",
            cfg.dashboards_per_criterion,
            by(|s| Some(s.mi_bits)),
        ),
        (
            "top binned MI",
            cfg.dashboards_per_criterion,
            by(|s| Some(s.mi_binned_bits)),
        ),
        (
            "best detector F1",
            cfg.dashboards_per_criterion,
            by(|s| s.detector.as_ref().map(|d| d.f1)),
        ),
        (
            "purest (with support)",
            cfg.dashboards_per_criterion,
            by(|s| s.purity),
        ),
        (
            "most frequent",
            cfg.dashboards_per_criterion,
            by(|s| Some(s.freq_train)),
        ),
    ];
    let mut chosen: Vec<(usize, String)> = Vec::new();
    for (why, count, order) in criteria {
        let mut taken = 0;
        for f in order {
            if taken == count {
                break;
            }
            if chosen.iter().all(|(c, _)| *c != f) {
                chosen.push((f, why.to_string()));
                taken += 1;
            }
        }
    }
    chosen
}

pub struct DashboardInput<'a> {
    /// The layer whose neurons the features are compared with (labels, pixels, the MLP).
    pub layer: &'a LayerData<'a>,
    pub sae: &'a sae::Sae,
    /// The layer the SAE reads (a skip transcoder's output depends on it).
    pub reads: &'a LayerData<'a>,
    /// The layer its output replaces, for the logit effect.
    pub writes: &'a str,
    /// The train and test rows' non-zero activations.
    pub acts_train: &'a crate::tables::SparseActs,
    pub acts_test: &'a crate::tables::SparseActs,
    pub stats: &'a UnitStats,
    pub counts: &'a UnitCounts,
    pub cfg: &'a AnalysisConfig,
    /// Draw its figures (PNG and SVG); without, only its numbers (the
    /// analysis links its feature page, which draws them).
    pub draw: bool,
}

/// Renders feature `feature`'s dashboard into `<out_dir>/dashboards/feature_<id>_*`.
pub fn render(
    input: &DashboardInput,
    feature: usize,
    reason: &str,
    out_dir: &Path,
) -> Result<Dashboard, AnalysisError> {
    let dir = out_dir.join("dashboards");
    std::fs::create_dir_all(&dir).map_err(AnalysisError::io(&dir))?;
    let labels = input.layer.train_labels;
    // (row, value) of every active train row, in dataset order.
    let active: Vec<(usize, f32)> = input.acts_train.column(feature);
    let stem = |name: &str| dir.join(format!("feature_{feature}_{name}"));
    let mut images = Vec::new();

    if input.draw {
        images.push(plots::save_digit_grid(
            &digit_grid(input, feature, &active),
            &stem("digits"),
        )?);
    }
    let mut top_rows: Vec<(usize, f32, u8)> =
        active.iter().map(|&(r, v)| (r, v, labels[r])).collect();
    top_rows.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    top_rows.truncate(TOP_ROWS);
    // The detector's false negatives: rows of its class the feature misses.
    let misses = input.stats.detector.as_ref().map(|d| {
        let fired: std::collections::HashSet<usize> = active.iter().map(|&(r, _)| r).collect();
        let class_rows: Vec<usize> = (0..labels.len())
            .filter(|&r| labels[r] == d.class)
            .collect();
        let missed: Vec<usize> = class_rows
            .iter()
            .copied()
            .filter(|r| !fired.contains(r))
            .collect();
        (missed.len(), class_rows.len(), missed)
    });
    if let (Some((_, _, missed)), true) = (&misses, input.draw) {
        if !missed.is_empty() {
            let pixels = input.layer.train_pixels;
            let grid = DigitGrid {
                title: format!(
                    "feature {feature}: its detector's false negatives (digits {} it does not fire on, first {})",
                    input.stats.detector.as_ref().map_or(0, |d| d.class),
                    missed.len().min(input.cfg.digits_per_group.max(1))
                ),
                columns: input.cfg.digits_per_group.max(1),
                tiles: missed
                    .iter()
                    .take(input.cfg.digits_per_group.max(1))
                    .map(|&r| digit_tile(pixels, r, format!("#{r}")))
                    .collect(),
            };
            images.push(plots::save_digit_grid(&grid, &stem("misses"))?);
        }
    }
    let misses = misses.map(|(n, of, missed)| (n, of, missed.into_iter().take(TOP_ROWS).collect()));

    if input.draw {
        let values: Vec<f64> = active.iter().map(|&(_, v)| v as f64).collect();
        let (bins, width) = plots::histogram(&values, 30);
        // Both splits as shares of their rows, on the train bins, so a feature
        // that fires differently on test shows it.
        let (train_rows, test_rows) = (
            labels.len().max(1) as f64,
            input.layer.test_labels.len().max(1) as f64,
        );
        let active_test: Vec<(usize, f32)> = input.acts_test.column(feature);
        let mut test_share = vec![0.0; bins.len()];
        if let (Some(first), true) = (bins.first(), width > 0.0) {
            let lo = first.0 - width / 2.0;
            for &(_, v) in &active_test {
                let b = (((v as f64 - lo) / width).max(0.0) as usize).min(bins.len() - 1);
                test_share[b] += 1.0 / test_rows;
            }
        }
        images.push(
            plots::save_figure(
                &Figure {
                    title: format!(
                        "feature {feature}: activation where active (train {} rows, test {})",
                        active.len(),
                        active_test.len()
                    ),
                    x_label: "activation".into(),
                    y_label: "share of the split's rows".into(),
                    layers: vec![
                        Layer {
                            name: "train".into(),
                            mark: Mark::Bars { width },
                            points: bins.iter().map(|&(x, c)| (x, c / train_rows)).collect(),
                        },
                        Layer {
                            name: "test".into(),
                            mark: Mark::Lines,
                            points: bins.iter().map(|b| b.0).zip(test_share).collect(),
                        },
                    ],
                    ..Default::default()
                },
                &stem("acts"),
            )?[0]
                .clone(),
        );
        let per_class = (0..CLASSES)
            .map(|y| {
                let class_values: Vec<f64> = active
                    .iter()
                    .filter(|&&(r, _)| labels[r] as usize == y)
                    .map(|&(_, v)| v as f64)
                    .collect();
                let mut counts = vec![0.0; bins.len()];
                if let (Some(first), true) = (bins.first(), width > 0.0) {
                    let lo = first.0 - width / 2.0;
                    for v in class_values {
                        let b = (((v - lo) / width) as usize).min(bins.len() - 1);
                        counts[b] += 1.0;
                    }
                }
                Layer {
                    name: format!("digit {y}"),
                    mark: Mark::Lines,
                    points: bins.iter().zip(counts).map(|(b, c)| (b.0, c)).collect(),
                }
            })
            .collect();
        images.push(
            plots::save_figure(
                &Figure {
                    title: format!("feature {feature}: activation per class"),
                    x_label: "activation".into(),
                    y_label: "train rows".into(),
                    layers: per_class,
                    ..Default::default()
                },
                &stem("acts_by_class"),
            )?[0]
                .clone(),
        );
        let on = input.counts.active_of(feature);
        let total: u64 = on.iter().sum();
        images.push(
            plots::save_figure(
                &Figure {
                    title: format!("feature {feature}: P(label | active)"),
                    x_label: "digit".into(),
                    y_label: "P(y | A = 1)".into(),
                    layers: vec![
                        Layer {
                            name: "P(y | active)".into(),
                            mark: Mark::Bars { width: 1.0 },
                            points: (0..CLASSES)
                                .map(|y| (y as f64, on[y] as f64 / total.max(1) as f64))
                                .collect(),
                        },
                        Layer {
                            name: "base rate P(y)".into(),
                            mark: Mark::Lines,
                            points: (0..CLASSES)
                                .map(|y| {
                                    let rows = input.counts.rows.max(1) as f64;
                                    (y as f64, input.counts.label_totals[y] as f64 / rows)
                                })
                                .collect(),
                        },
                    ],
                    ..Default::default()
                },
                &stem("labels"),
            )?[0]
                .clone(),
        );
    }
    let rows: Vec<(usize, f32)> = active
        .iter()
        .take(input.cfg.logit_effect_rows)
        .copied()
        .collect();
    let logit_effect = logit_effect(input, feature, &rows)?;
    if input.draw {
        images.push(
            plots::save_figure(
                &Figure {
                    title: format!(
                        "feature {feature}: its effect on each class logit ({} rows)",
                        rows.len()
                    ),
                    x_label: "class".into(),
                    y_label: "logit(with) - logit(without)".into(),
                    layers: vec![Layer {
                        name: "effect".into(),
                        mark: Mark::Bars { width: 1.0 },
                        points: logit_effect
                            .iter()
                            .enumerate()
                            .map(|(c, &d)| (c as f64, d))
                            .collect(),
                    }],
                    ..Default::default()
                },
                &stem("logit_effect"),
            )?[0]
                .clone(),
        );
    }
    Ok(Dashboard {
        feature,
        reason: reason.to_string(),
        top_rows,
        misses,
        mi_bits: input.stats.mi_bits,
        mi_binned_bits: input.stats.mi_binned_bits,
        freq_train: input.stats.freq_train,
        purity: input.stats.purity,
        top_label: input.stats.top_label,
        detector: input.stats.detector.clone(),
        logit_effect,
        logit_effect_rows: rows.len(),
        decoder_top_units: decoder_top_units(input.sae, feature, NEIGHBOURS),
        correlated_units: correlated_units(input.layer, &active, NEIGHBOURS),
        nearest_features: nearest_features(input.sae, feature, NEIGHBOURS),
        images: images
            .iter()
            .map(|p| p.strip_prefix(out_dir).unwrap_or(p).to_path_buf())
            .collect(),
    })
}

/// Train image `row` as a tile captioned `caption`.
fn digit_tile(pixels: &[u8], row: usize, caption: String) -> Tile {
    Tile {
        caption,
        pixels: pixels[row * 784..(row + 1) * 784]
            .iter()
            .map(|&p| p as f32)
            .collect(),
    }
}

/// Top-activating digits at several activation quantiles, then the mean input image.
fn digit_grid(input: &DashboardInput, feature: usize, active: &[(usize, f32)]) -> DigitGrid {
    let per_group = input.cfg.digits_per_group.max(1);
    let mut sorted = active.to_vec();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let pixels = input.layer.train_pixels;
    let labels = input.layer.train_labels;
    let tile = |group: &str, (row, value): (usize, f32)| {
        digit_tile(pixels, row, format!("{group} {value:.2} y{}", labels[row]))
    };
    let mut tiles = Vec::new();
    // Quantile q of the activation: ranks around (1 - q) * n in the descending order.
    for (group, quantile) in [("top", 1.0), ("p75", 0.75), ("p50", 0.5), ("p25", 0.25)] {
        if sorted.is_empty() {
            break;
        }
        let centre = ((1.0 - quantile) * sorted.len() as f64) as usize;
        let start = centre
            .saturating_sub(per_group / 2)
            .min(sorted.len().saturating_sub(per_group));
        tiles.extend(
            sorted
                .iter()
                .skip(start)
                .take(per_group)
                .map(|&e| tile(group, e)),
        );
    }
    let mut mean = vec![0.0f32; 784];
    for &(row, _) in active {
        for (m, &p) in mean.iter_mut().zip(&pixels[row * 784..(row + 1) * 784]) {
            *m += p as f32;
        }
    }
    tiles.push(Tile {
        caption: format!("mean of {}", active.len()),
        pixels: mean,
    });
    DigitGrid {
        title: format!(
            "feature {feature}: top, p75, p50, p25 activating digits (rows), mean input last"
        ),
        columns: per_group,
        tiles,
    }
}

/// The feature's own effect over `rows` ([`crate::atlas::EffectBatch`]),
/// from the SAE's output on those rows, decoded from the codes already computed.
fn logit_effect(
    input: &DashboardInput,
    feature: usize,
    rows: &[(usize, f32)],
) -> Result<Vec<f64>, AnalysisError> {
    let d_in = input.sae.d_in();
    // Re-encoding 2048 rows of a 16384-wide SAE costs a second; the codes are at hand.
    let acts = input.acts_train;
    let mut x_hat = Vec::with_capacity(rows.len() * input.sae.d_out());
    for &(row, _) in rows {
        let start = acts.row.partition_point(|&r| (r as usize) < row);
        let end = acts.row.partition_point(|&r| (r as usize) <= row);
        x_hat.extend(sae::decode_row(
            input.sae,
            &input.reads.train[row * d_in..(row + 1) * d_in],
            &acts.unit[start..end],
            &acts.value[start..end],
        ));
    }
    // Row i of `x_hat` is the i-th of `rows`.
    let local: Vec<(u32, f32)> = rows
        .iter()
        .enumerate()
        .map(|(i, &(_, act))| (i as u32, act))
        .collect();
    let effects = crate::atlas::EffectBatch {
        layer: input.layer,
        sae: input.sae,
        writes: input.writes,
        x_hat: &x_hat,
        features: &[feature],
        rows: &[&local],
    }
    .effects()?;
    Ok(effects.into_iter().next().expect("one feature, one effect"))
}

/// How many units or features each neighbour list of a dashboard shows.
const NEIGHBOURS: usize = 5;
/// Top activations and false negatives listed by dataset index.
const TOP_ROWS: usize = 10;

/// The `n` largest of `(index, value)` by |value|, ties by index.
fn top_by_magnitude(values: impl Iterator<Item = (usize, f64)>, n: usize) -> Vec<(usize, f64)> {
    let mut all: Vec<(usize, f64)> = values.filter(|(_, v)| v.is_finite()).collect();
    all.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
    all.truncate(n);
    all
}

/// The layer units feature `f`'s decoder row writes to most.
pub fn decoder_top_units(sae: &sae::Sae, f: usize, n: usize) -> Vec<(usize, f64)> {
    let d_out = sae.d_out();
    let row = &sae.w_dec[f * d_out..(f + 1) * d_out];
    top_by_magnitude(row.iter().map(|&w| w as f64).enumerate(), n)
}

/// The features whose decoder rows have the highest cosine with feature `f`'s.
pub fn nearest_features(sae: &sae::Sae, f: usize, n: usize) -> Vec<(usize, f64)> {
    let d_out = sae.d_out();
    let row = |g: usize| &sae.w_dec[g * d_out..(g + 1) * d_out];
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let (mine, my_norm) = (row(f), norm(row(f)));
    let mut cosines: Vec<(usize, f64)> = (0..sae.d_sae())
        .filter(|&g| g != f)
        .map(|g| {
            let dot: f64 = mine
                .iter()
                .zip(row(g))
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            (g, dot / (my_norm * norm(row(g))).max(f64::MIN_POSITIVE))
        })
        .collect();
    cosines.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    cosines.truncate(n);
    cosines
}

/// The layer units whose train values correlate most (Pearson, by |r|) with
/// a feature whose non-zero train activations are `active` (zero elsewhere).
fn correlated_units(layer: &LayerData, active: &[(usize, f32)], n: usize) -> Vec<(usize, f64)> {
    let width = layer.width;
    let rows = layer.train_labels.len() as f64;
    let (mut sum_a, mut sum_aa) = (0.0f64, 0.0f64);
    let (mut sum_u, mut sum_uu, mut sum_au) = (
        vec![0.0f64; width],
        vec![0.0f64; width],
        vec![0.0f64; width],
    );
    for units in layer.train.chunks_exact(width) {
        for (j, &u) in units.iter().enumerate() {
            sum_u[j] += u as f64;
            sum_uu[j] += (u as f64).powi(2);
        }
    }
    for &(r, a) in active {
        let a = a as f64;
        sum_a += a;
        sum_aa += a * a;
        for (j, &u) in layer.train[r * width..(r + 1) * width].iter().enumerate() {
            sum_au[j] += a * u as f64;
        }
    }
    let var_a = sum_aa / rows - (sum_a / rows).powi(2);
    top_by_magnitude(
        (0..width).map(|j| {
            let var_u = sum_uu[j] / rows - (sum_u[j] / rows).powi(2);
            let cov = sum_au[j] / rows - sum_a / rows * sum_u[j] / rows;
            (j, cov / (var_a * var_u).sqrt())
        }),
        n,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three features over a 3-unit layer with hand-picked decoder rows.
    fn sae_with_rows(rows: [[f32; 3]; 3]) -> sae::Sae {
        let mut sae = sae::Sae::init(
            &sae::SaeConfig {
                d_in: 3,
                d_sae: 3,
                ..Default::default()
            },
            &[],
        )
        .unwrap();
        sae.w_dec = rows.concat();
        sae
    }

    #[test]
    fn decoder_neighbours_of_hand_made_rows() {
        let sae = sae_with_rows([[0.6, -0.8, 0.0], [0.6, -0.7, 0.1], [0.0, 0.0, 1.0]]);
        assert_eq!(
            decoder_top_units(&sae, 0, 2),
            vec![(1, -0.800000011920929), (0, 0.6000000238418579)]
        );
        let nearest = nearest_features(&sae, 0, 2);
        assert_eq!(nearest.iter().map(|n| n.0).collect::<Vec<_>>(), [1, 2]);
        let expected = (0.36 + 0.56) / (0.36f64 + 0.49 + 0.01).sqrt();
        assert!((nearest[0].1 - expected).abs() < 1e-6, "{nearest:?}");
        assert!(nearest[1].1.abs() < 1e-12);
    }
}
