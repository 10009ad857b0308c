//! The feature atlas: what each live feature's own page shows (top
//! activations, activation histograms, labels, the detector's misses, the
//! direction in pixel space, logit effects, neighbours), computed for every
//! live feature of one SAE in one pass, and each feature's best match in the
//! other SAEs of the run. `report::feature_page` writes the pages.
//!
//! Just over 600 lines with its test, which needs the private logit-effect
//! batch to compare its two ways of computing.

use std::path::PathBuf;

use candle_core::Tensor;
use rayon::prelude::*;

use crate::stats::{UnitCounts, UnitStats, CLASSES};
use crate::tables::SparseActs;
use crate::types::{AnalysisConfig, LayerData, SaeRun};
use crate::AnalysisError;

/// Top activations shown, and averaged over for the pixel view.
pub const TOP: usize = 12;
/// False negatives of the detector shown.
pub const MISSES: usize = 8;
/// Histogram bins over a feature's train activations.
pub const BINS: usize = 24;
/// Nearest features (decoder cosine) listed from the same SAE.
pub const NEAREST: usize = 5;

/// One live feature's page data.
#[derive(Clone, Debug)]
pub struct FeatureCard {
    pub feature: usize,
    pub stats: UnitStats,
    /// Its largest train activations: (dataset row, value, label), largest first.
    pub top: Vec<(usize, f32, u8)>,
    /// Train rows of the detector's class it does not fire on: (first rows, missed, of).
    pub misses: Option<(Vec<usize>, usize, usize)>,
    /// Train and test activations where active, binned on `[0, max train]`,
    /// each bin as a share of its split's rows.
    pub hist_max: f64,
    pub hist_train: Vec<f64>,
    pub hist_test: Vec<f64>,
    pub active_train: usize,
    pub active_test: usize,
    /// P(label | active) on train.
    pub label_share: [f64; CLASSES],
    /// `[784]`: the input gradient of its direction (see [`Atlas::pixel_view_of`]),
    /// averaged over its `top` images; `None` for a layer the MLP does not have.
    pub pixel_view: Option<Vec<f32>>,
    /// Mean over `logit_rows` active train rows of logits(x_hat) - logits(x_hat without it).
    pub logit_effect: Vec<f64>,
    pub logit_rows: usize,
    /// Live features of the same SAE with the most similar decoder rows: (feature, cosine).
    pub nearest: Vec<(usize, f64)>,
}

/// Every live feature of one SAE. Its pages are written at once; only its
/// [`Matcher`] is kept until every SAE of the run has one.
pub struct Atlas {
    pub matcher: Matcher,
    /// What the pixel view is the gradient of, in words.
    pub pixel_view_of: String,
    pub base_rate: [f64; CLASSES],
    pub train_rows: usize,
    pub test_rows: usize,
    pub cards: Vec<FeatureCard>,
    /// Raw MNIST train pixels of every row a card shows, by row.
    pub tiles: std::collections::BTreeMap<usize, Vec<u8>>,
}

/// What matching one SAE's features against another's needs.
pub struct Matcher {
    pub name: String,
    /// Its analysis folder; pages go to `<dir>/features/<id>.html`.
    pub dir: PathBuf,
    /// The layer its decoder writes: SAEs are matched only within one space.
    pub writes: String,
    pub d_out: usize,
    /// The live features, ascending, and their unit-length decoder rows `[live, d_out]`.
    pub live: Vec<usize>,
    pub unit_decoders: Vec<f32>,
}

/// One feature's best match in another SAE: that SAE's index in the run,
/// and the matched live feature with the decoder cosine (`None`: that SAE
/// writes another layer, or has no live feature).
pub struct Match {
    pub other: usize,
    pub best: Option<(usize, f64)>,
}

impl Atlas {
    /// The atlas of every live feature of `run`.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        layer: &LayerData,
        run: &SaeRun,
        acts_train: &SparseActs,
        acts_test: &SparseActs,
        stats: &[UnitStats],
        counts: &UnitCounts,
        cfg: &AnalysisConfig,
        dir: PathBuf,
    ) -> Result<Atlas, AnalysisError> {
        let sae = run.sae;
        let (d_sae, d_out) = (sae.d_sae(), sae.d_out());
        let live: Vec<usize> = (0..d_sae).filter(|&f| !stats[f].dead).collect();
        let (columns_train, columns_test) =
            rayon::join(|| acts_train.columns(d_sae), || acts_test.columns(d_sae));
        let labels = layer.train_labels;
        let (train_rows, test_rows) = (labels.len(), layer.test_labels.len());
        let unit_decoders = unit_rows(&sae.w_dec, d_out, &live);
        let nearest = top_cosines(&unit_decoders, &unit_decoders, d_out, NEAREST, true)?;
        let x_hat = reconstruct(sae, run.reads, acts_train);
        let mut cards: Vec<FeatureCard> = live
            .par_iter()
            .zip(nearest)
            .map(|(&f, nearest)| {
                let active = &columns_train[f];
                let mut top: Vec<(usize, f32, u8)> = active
                    .iter()
                    .map(|&(r, v)| (r as usize, v, labels[r as usize]))
                    .collect();
                top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                top.truncate(TOP);
                // Else each card keeps room for every active row.
                top.shrink_to_fit();
                let hist_max = active.iter().map(|&(_, v)| v as f64).fold(0.0, f64::max);
                let histogram = |column: &[(u32, f32)], rows: usize| {
                    let mut bins = vec![0.0; BINS];
                    for &(_, v) in column {
                        let b = ((v as f64 / hist_max.max(f64::MIN_POSITIVE) * BINS as f64)
                            as usize)
                            .min(BINS - 1);
                        bins[b] += 1.0 / rows.max(1) as f64;
                    }
                    bins
                };
                let on = counts.active_of(f);
                let total = on.iter().sum::<u64>().max(1) as f64;
                let misses = stats[f].detector.as_ref().map(|d| {
                    let mut fired = vec![false; train_rows];
                    active.iter().for_each(|&(r, _)| fired[r as usize] = true);
                    let class: Vec<usize> =
                        (0..train_rows).filter(|&r| labels[r] == d.class).collect();
                    let missed: Vec<usize> = class.iter().copied().filter(|&r| !fired[r]).collect();
                    let first = missed.iter().copied().take(MISSES).collect();
                    (first, missed.len(), class.len())
                });
                Ok(FeatureCard {
                    feature: f,
                    stats: stats[f].clone(),
                    top,
                    misses,
                    hist_max,
                    hist_train: histogram(active, train_rows),
                    hist_test: histogram(&columns_test[f], test_rows),
                    active_train: active.len(),
                    active_test: columns_test[f].len(),
                    label_share: std::array::from_fn(|y| on[y] as f64 / total),
                    pixel_view: None,
                    logit_effect: Vec::new(),
                    logit_rows: active.len().min(cfg.logit_effect_rows),
                    nearest: nearest
                        .into_iter()
                        .map(|(i, c)| (live[i], c as f64))
                        .collect(),
                })
            })
            .collect::<Result<_, AnalysisError>>()?;
        // Many features per forward pass: one small pass per feature costs more in overhead than in arithmetic.
        cards
            .par_chunks_mut(16)
            .try_for_each(|chunk| -> Result<(), AnalysisError> {
                let rows: Vec<&[(u32, f32)]> = chunk
                    .iter()
                    .map(|c| &columns_train[c.feature][..c.logit_rows])
                    .collect();
                let features: Vec<usize> = chunk.iter().map(|c| c.feature).collect();
                let effects = EffectBatch {
                    layer,
                    sae: run.sae,
                    writes: run.writes,
                    x_hat: &x_hat,
                    features: &features,
                    rows: &rows,
                }
                .effects()?;
                for (card, effect) in chunk.iter_mut().zip(effects) {
                    card.logit_effect = effect;
                }
                Ok(())
            })?;
        let transcoder = run.reads.layer != run.writes;
        let pixel_view_of = pixel_views(layer, run, transcoder, &mut cards)?;
        let mut tiles = std::collections::BTreeMap::new();
        for card in &cards {
            let misses = card.misses.iter().flat_map(|m| m.0.iter().copied());
            for r in card.top.iter().map(|t| t.0).chain(misses) {
                tiles
                    .entry(r)
                    .or_insert_with(|| layer.train_pixels[r * 784..(r + 1) * 784].to_vec());
            }
        }
        Ok(Atlas {
            matcher: Matcher {
                name: run.name.to_string(),
                dir,
                writes: run.writes.to_string(),
                d_out,
                live,
                unit_decoders,
            },
            pixel_view_of,
            base_rate: std::array::from_fn(|y| {
                counts.label_totals[y] as f64 / counts.rows.max(1) as f64
            }),
            train_rows,
            test_rows,
            cards,
            tiles,
        })
    }
}

/// For every live feature of every SAE, a [`Match`] per other SAE of the run
/// (in `matchers` order).
pub fn best_matches(matchers: &[Matcher]) -> Result<Vec<Vec<Vec<Match>>>, AnalysisError> {
    let mut all: Vec<Vec<Vec<Match>>> = matchers
        .iter()
        .map(|m| m.live.iter().map(|_| Vec::new()).collect())
        .collect();
    for (i, mine) in matchers.iter().enumerate() {
        for (j, other) in matchers.iter().enumerate() {
            if i == j {
                continue;
            }
            let comparable = other.writes == mine.writes && other.d_out == mine.d_out;
            let best: Vec<Option<(usize, f64)>> = if comparable && !other.live.is_empty() {
                top_cosines(
                    &mine.unit_decoders,
                    &other.unit_decoders,
                    mine.d_out,
                    1,
                    false,
                )?
                .into_iter()
                .map(|b| b.first().map(|&(k, c)| (other.live[k], c as f64)))
                .collect()
            } else {
                vec![None; mine.live.len()]
            };
            for (feature, best) in all[i].iter_mut().zip(best) {
                feature.push(Match { other: j, best });
            }
        }
    }
    Ok(all)
}

/// Rows `which` of `matrix` ([_, width]) scaled to unit length (zero rows stay zero).
fn unit_rows(matrix: &[f32], width: usize, which: &[usize]) -> Vec<f32> {
    which
        .iter()
        .flat_map(|&f| {
            let row = &matrix[f * width..(f + 1) * width];
            let norm = row.iter().map(|&w| (w as f64).powi(2)).sum::<f64>().sqrt();
            let scale = if norm > 0.0 { (1.0 / norm) as f32 } else { 0.0 };
            row.iter().map(move |&w| w * scale)
        })
        .collect()
}

/// The most products [`top_cosines`] holds at once.
pub const BLOCK_PRODUCTS: usize = 1 << 24;

/// For each row of `a` (`[na, d]`), the `k` rows of `b` with the largest dot
/// product, largest first (ties by index); with `skip_same`, row i of `b` is
/// never row i's own match (`a` and `b` are the same matrix).
pub fn top_cosines(
    a: &[f32],
    b: &[f32],
    d: usize,
    k: usize,
    skip_same: bool,
) -> Result<Vec<Vec<(usize, f32)>>, AnalysisError> {
    let (na, nb) = (a.len() / d.max(1), b.len() / d.max(1));
    if na == 0 || nb == 0 {
        return Ok(vec![Vec::new(); na]);
    }
    let device = candle_core::Device::Cpu;
    let bt = Tensor::from_slice(b, (nb, d), &device)?.t()?;
    // Blocks of at most 16M products (64 MB, twice with the copy out), so
    // that memory grows with the width of `b`, not its square.
    let block = (BLOCK_PRODUCTS / nb).clamp(1, 4096);
    let mut out = Vec::with_capacity(na);
    for start in (0..na).step_by(block) {
        let rows = block.min(na - start);
        let block = Tensor::from_slice(&a[start * d..(start + rows) * d], (rows, d), &device)?;
        let dots = block.matmul(&bt)?.to_vec2::<f32>()?;
        let block_top: Vec<Vec<(usize, f32)>> = dots
            .into_par_iter()
            .enumerate()
            .map(|(r, dots)| {
                let mut order: Vec<(usize, f32)> = dots
                    .into_iter()
                    .enumerate()
                    .filter(|&(c, _)| !(skip_same && c == start + r))
                    .collect();
                let k = k.min(order.len());
                if k > 0 {
                    order.select_nth_unstable_by(k - 1, |x, y| {
                        y.1.total_cmp(&x.1).then(x.0.cmp(&y.0))
                    });
                    order.truncate(k);
                    order.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
                }
                // Else every row keeps room for all of `b` (52 GB at 57k live features).
                order.shrink_to_fit();
                order
            })
            .collect();
        out.extend(block_top);
    }
    Ok(out)
}

/// The SAE's output for every train row, `[rows, d_out]`, from the codes already computed.
fn reconstruct(sae: &sae::Sae, reads: &LayerData, acts: &SparseActs) -> Vec<f32> {
    let (d_in, rows) = (sae.d_in(), reads.train_labels.len());
    // The non-zeros of row r are acts[starts[r]..starts[r + 1]].
    let mut starts = vec![0usize; rows + 1];
    for &r in &acts.row {
        starts[r as usize + 1] += 1;
    }
    for r in 0..rows {
        starts[r + 1] += starts[r];
    }
    (0..rows)
        .into_par_iter()
        .flat_map_iter(|r| {
            let (s, e) = (starts[r], starts[r + 1]);
            sae::decode_row(
                sae,
                &reads.train[r * d_in..(r + 1) * d_in],
                &acts.unit[s..e],
                &acts.value[s..e],
            )
        })
        .collect()
}

/// Features whose logit effects are measured, each over its `rows` (index
/// into `x_hat`, activation), from the SAE's output `x_hat` `[_, d_out]`.
pub(crate) struct EffectBatch<'a> {
    pub layer: &'a LayerData<'a>,
    pub sae: &'a sae::Sae,
    /// The layer its output replaces.
    pub writes: &'a str,
    pub x_hat: &'a [f32],
    pub features: &'a [usize],
    pub rows: &'a [&'a [(u32, f32)]],
}

impl EffectBatch<'_> {
    /// Each feature's own effect, as sae_vis and Neuronpedia show it: mean over
    /// its `rows` of logits(x_hat) - logits(x_hat - act_f * W_dec[f]), per class.
    pub fn effects(&self) -> Result<Vec<Vec<f64>>, AnalysisError> {
        if self.rows.iter().all(|r| r.is_empty()) {
            return Ok(vec![vec![0.0; CLASSES]; self.features.len()]);
        }
        match self.linear_tail()? {
            Some(effects) => Ok(effects),
            None => self.two_pass(),
        }
    }

    /// [`Self::effects`] by its definition: every row with the feature, then
    /// every row without it, through the rest of the MLP in one batch.
    fn two_pass(&self) -> Result<Vec<Vec<f64>>, AnalysisError> {
        let EffectBatch {
            layer,
            sae,
            writes,
            x_hat,
            features,
            rows,
        } = *self;
        let d_out = sae.d_out();
        let total: usize = rows.iter().map(|r| r.len()).sum();
        let mut values = Vec::with_capacity(2 * total * d_out);
        for &rows in rows {
            for &(r, _) in rows {
                values.extend_from_slice(&x_hat[r as usize * d_out..(r as usize + 1) * d_out]);
            }
        }
        for (&f, &rows) in features.iter().zip(rows) {
            let direction = &sae.w_dec[f * d_out..(f + 1) * d_out];
            for &(r, act) in rows {
                let row = &x_hat[r as usize * d_out..(r as usize + 1) * d_out];
                values.extend(row.iter().zip(direction).map(|(v, w)| v - act * w));
            }
        }
        let t = Tensor::from_vec(values, (2 * total, d_out), layer.mlp.device())?;
        let logits = layer.mlp.logits_from(writes, &t)?;
        let classes = logits.dim(1)?;
        let logits = logits.flatten_all()?.to_vec1::<f32>()?;
        let (with, without) = logits.split_at(total * classes);
        let mut at = 0;
        Ok(rows
            .iter()
            .map(|rows| {
                let mut effect = vec![0.0f64; CLASSES];
                for r in at..at + rows.len() {
                    for (c, e) in effect.iter_mut().enumerate().take(classes) {
                        *e += (with[r * classes + c] - without[r * classes + c]) as f64;
                    }
                }
                at += rows.len();
                effect
                    .into_iter()
                    .map(|e| e / rows.len().max(1) as f64)
                    .collect()
            })
            .collect())
    }

    /// [`Self::effects`] where the MLP is linear from `fc2.post` to the logits:
    /// the mean change at `fc2.post` (relu(x_hat) - relu(x_hat - act * d) for an
    /// SAE of `fc2.pre`; act * d for one of `fc2.post`) mapped once, instead of
    /// every row through the tail twice. `None` for other layers.
    fn linear_tail(&self) -> Result<Option<Vec<Vec<f64>>>, AnalysisError> {
        let EffectBatch {
            layer,
            sae,
            writes,
            x_hat,
            features,
            rows,
        } = *self;
        let gated = match writes {
            "fc2.pre" => true,
            "fc2.post" => false,
            _ => return Ok(None),
        };
        let d_out = sae.d_out();
        let mut changes = Vec::with_capacity(features.len() * d_out);
        for (&f, &rows) in features.iter().zip(rows) {
            let direction = &sae.w_dec[f * d_out..(f + 1) * d_out];
            let mut sum = vec![0.0f64; d_out];
            for &(r, act) in rows {
                let row = &x_hat[r as usize * d_out..(r as usize + 1) * d_out];
                for ((s, &v), &w) in sum.iter_mut().zip(row).zip(direction) {
                    *s += if gated {
                        (v.max(0.0) - (v - act * w).max(0.0)) as f64
                    } else {
                        (act * w) as f64
                    };
                }
            }
            let n = rows.len().max(1) as f64;
            changes.extend(sum.iter().map(|s| (s / n) as f32));
        }
        let device = layer.mlp.device();
        let t = Tensor::from_vec(changes, (features.len(), d_out), device)?;
        let zero = Tensor::zeros((1, d_out), candle_core::DType::F32, device)?;
        // The tail is affine: subtracting its value at zero leaves the linear part.
        let at_zero = layer.mlp.logits_from("fc2.post", &zero)?;
        let effects = layer
            .mlp
            .logits_from("fc2.post", &t)?
            .broadcast_sub(&at_zero)?
            .to_vec2::<f32>()?;
        Ok(Some(
            effects
                .into_iter()
                .map(|e| e.into_iter().map(f64::from).collect())
                .collect(),
        ))
    }
}

/// Fills each card's pixel view: the input gradient of an SAE feature's
/// decoder row read at the layer it writes, or of a transcoder feature's
/// encoder column at the layer it reads, averaged over its top images.
/// Returns what it is, in words.
fn pixel_views(
    layer: &LayerData,
    run: &SaeRun,
    transcoder: bool,
    cards: &mut [FeatureCard],
) -> Result<String, AnalysisError> {
    let sae = run.sae;
    let (site, width) = if transcoder {
        (run.reads.layer, sae.d_in())
    } else {
        (run.writes, sae.d_out())
    };
    let row = if transcoder {
        "its encoder column"
    } else {
        "its decoder row"
    };
    if mlp::layer_width(site) != Some(width) {
        return Ok(format!(
            "none: {site} is not a layer of the MLP, so {row} has no way back to the pixels"
        ));
    }
    let direction = |f: usize| -> Vec<f32> {
        if transcoder {
            (0..width).map(|i| sae.w_enc[i * sae.d_sae() + f]).collect()
        } else {
            sae.w_dec[f * width..(f + 1) * width].to_vec()
        }
    };
    let pixels = layer.train_pixels;
    cards
        .par_chunks_mut(64)
        .try_for_each(|chunk| -> Result<(), AnalysisError> {
            let (mut images, mut directions) = (Vec::new(), Vec::new());
            for card in chunk.iter() {
                let d = direction(card.feature);
                for &(r, _, _) in &card.top {
                    images.extend_from_slice(&pixels[r * 784..(r + 1) * 784]);
                    directions.extend_from_slice(&d);
                }
            }
            let grads = layer.mlp.input_gradients(&images, site, &directions)?;
            let mut at = 0;
            for card in chunk.iter_mut() {
                let n = card.top.len();
                let mut mean = vec![0.0f32; 784];
                for g in grads[at * 784..(at + n) * 784].chunks_exact(784) {
                    mean.iter_mut().zip(g).for_each(|(m, v)| *m += v / n as f32);
                }
                at += n;
                card.pixel_view = (n > 0).then_some(mean);
            }
            Ok(())
        })?;
    Ok(format!(
        "the gradient with respect to the input pixels of {site} projected on {row}, averaged over its top {TOP} train images (each image's ReLU gates held)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of computing the logit effect, on an SAE of fc2.pre (a ReLU
    /// between it and the logits) and of fc2.post.
    #[test]
    fn the_linear_tail_gives_the_effects_of_two_forward_passes() {
        let mlp = mlp::Mlp::new(&mlp::Weights::init(3), &candle_core::Device::Cpu).unwrap();
        let rows = 40;
        let values: Vec<f32> = (0..rows * 128)
            .map(|i| (i * 7919 % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let (labels, pixels) = (vec![0u8; rows], vec![0u8; rows * 784]);
        let layer = LayerData {
            layer: "fc2.pre",
            width: 128,
            train: &values,
            test: &values,
            train_labels: &labels,
            test_labels: &labels,
            train_pixels: &pixels,
            mlp: &mlp,
        };
        let cfg = sae::SaeConfig {
            d_in: 128,
            d_sae: 6,
            ..Default::default()
        };
        let sae = sae::Sae::init(&cfg, &[]).unwrap();
        let columns: Vec<Vec<(u32, f32)>> = (0..6u32)
            .map(|f| {
                (0..rows as u32)
                    .filter(|r| (r + f) % 3 != 0)
                    .map(|r| (r, 2.0 + f as f32 + r as f32 * 0.1))
                    .collect()
            })
            .collect();
        let rows: Vec<&[(u32, f32)]> = columns.iter().map(|c| c.as_slice()).collect();
        let features: Vec<usize> = (0..6).collect();
        for writes in ["fc2.pre", "fc2.post", "fc1.post"] {
            let batch = EffectBatch {
                layer: &layer,
                sae: &sae,
                writes,
                x_hat: &values,
                features: &features,
                rows: &rows,
            };
            let Some(fast) = batch.linear_tail().unwrap() else {
                // Two ReLUs from fc1.post to the logits: no linear tail.
                assert_eq!(writes, "fc1.post");
                continue;
            };
            assert_ne!(writes, "fc1.post", "fc1.post has no linear tail");
            let slow = batch.two_pass().unwrap();
            let largest = slow.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(
                largest > 1e-3,
                "{writes}: effects too small to compare: {slow:?}"
            );
            for (a, b) in fast.iter().flatten().zip(slow.iter().flatten()) {
                // Logits of a few units differenced in f32: rounding is about
                // 1e-6 of them, far under 1e-4 of the largest effect.
                assert!((a - b).abs() <= 1e-4 * largest, "{writes}: {a} against {b}");
            }
        }
    }
}
