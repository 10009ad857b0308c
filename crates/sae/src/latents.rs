//! When each latent last fired and how its encoder drifted while it trained:
//! what "why do latents die" is read from (`curve.json`'s `latents`).
//!
//! A latent fires on a row when its pre-activation
//! `(x - b_dec) . W_enc[:, f] + b_enc[f]` (a transcoder reads `x`) clears its
//! firing level: 0, or JumpReLU's threshold. Its *margin* is the largest
//! pre-activation minus that level over a fixed probe of training rows; a
//! latent whose margin is negative fires on none of them. The margin splits
//! into b_enc, the b_dec term `-b_dec . W_enc[:, f]` and the data term, whose
//! scale is the encoder column's norm, so a snapshot says which one moved.

use serde::{Deserialize, Serialize};

use crate::kernels::{self, MatRef};
use crate::model::Sae;

/// Rows of the training data every snapshot measures margins on.
pub const PROBE_ROWS: usize = 2048;

/// Per-latent history of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentHistory {
    /// Per latent, the 1-based training step at which it last fired; 0: never.
    pub last_fired_step: Vec<u64>,
    /// Training steps per epoch (to read `last_fired_step` in epochs).
    pub steps_per_epoch: usize,
    /// At the end of epochs 1, 2, 5, 10, 20, 50, 100, ... and of the last one,
    /// in the units the run trains in (normalised rows where it normalises).
    pub snapshots: Vec<LatentSnapshot>,
}

/// Every latent's encoder at the end of one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentSnapshot {
    pub epoch: usize,
    /// The largest pre-activation minus the firing level over the probe rows.
    pub margin: Vec<f32>,
    pub b_enc: Vec<f32>,
    /// `-b_dec . W_enc[:, f]` (0 for a transcoder, whose encoder reads `x`).
    pub b_dec_term: Vec<f32>,
    /// `||W_enc[:, f]||`.
    pub encoder_norm: Vec<f32>,
}

/// Whether the end of (1-based) `epoch` of `epochs` is snapshotted: 1, 2, 5
/// times the powers of ten, and the last.
pub fn snapshot_at(epoch: usize, epochs: usize) -> bool {
    if epoch == epochs {
        return true;
    }
    let mut scale = 1;
    while scale <= epoch {
        if [1, 2, 5].iter().any(|m| m * scale == epoch) {
            return true;
        }
        scale *= 10;
    }
    false
}

impl LatentSnapshot {
    /// `sae`'s latents on `rows` (row-major `[n, d_in]`, the first
    /// [`PROBE_ROWS`] are used) at the end of `epoch`.
    pub fn take(sae: &Sae, rows: &[f32], epoch: usize) -> LatentSnapshot {
        let (d_in, d_sae) = (sae.d_in(), sae.d_sae());
        let n = (rows.len() / d_in).min(PROBE_ROWS);
        let centred = sae.cfg.centres_input();
        let mut input = rows[..n * d_in].to_vec();
        if centred {
            for row in input.chunks_exact_mut(d_in) {
                row.iter_mut().zip(&sae.b_dec).for_each(|(x, b)| *x -= b);
            }
        }
        // A few rows at a time, so a wide SAE's snapshot stays small.
        let chunk = 64;
        let mut pre = vec![0.0f32; chunk.min(n) * d_sae];
        let mut margin = vec![f32::NEG_INFINITY; d_sae];
        for rows in input.chunks(chunk * d_in) {
            let m = rows.len() / d_in;
            kernels::matmul(
                &mut pre,
                m,
                d_sae,
                d_in,
                false,
                MatRef::row_major(rows, d_in),
                MatRef::row_major(&sae.w_enc, d_sae),
            );
            for row in pre[..m * d_sae].chunks_exact(d_sae) {
                for (m, &p) in margin.iter_mut().zip(row) {
                    *m = m.max(p);
                }
            }
        }
        let level = |f: usize| {
            if sae.cfg.architecture.learned_threshold().is_some() {
                sae.threshold[f]
            } else {
                0.0
            }
        };
        let column = |f: usize| (0..d_in).map(move |i| sae.w_enc[i * d_sae + f] as f64);
        LatentSnapshot {
            epoch,
            margin: (0..d_sae)
                .map(|f| margin[f] + sae.b_enc[f] - level(f))
                .collect(),
            b_enc: sae.b_enc.clone(),
            b_dec_term: (0..d_sae)
                .map(|f| {
                    if centred {
                        -column(f)
                            .zip(&sae.b_dec)
                            .map(|(w, &b)| w * b as f64)
                            .sum::<f64>() as f32
                    } else {
                        0.0
                    }
                })
                .collect(),
            encoder_norm: (0..d_sae)
                .map(|f| column(f).map(|w| w * w).sum::<f64>().sqrt() as f32)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Architecture, SaeConfig};

    #[test]
    fn snapshots_fall_on_1_2_5_decades_and_the_last_epoch() {
        let at: Vec<usize> = (1..=200).filter(|&e| snapshot_at(e, 200)).collect();
        assert_eq!(at, [1, 2, 5, 10, 20, 50, 100, 200]);
        let at: Vec<usize> = (1..=7).filter(|&e| snapshot_at(e, 7)).collect();
        assert_eq!(at, [1, 2, 5, 7]);
    }

    #[test]
    fn a_snapshot_is_the_f64_margin_and_its_parts() {
        let cfg = SaeConfig {
            d_in: 3,
            d_sae: 4,
            architecture: Architecture::l1(1e-3),
            ..SaeConfig::default()
        };
        let rows = [1.0f32, -2.0, 0.5, 0.0, 1.0, 3.0, -1.0, 0.5, 0.25];
        let mut sae = Sae::init(&cfg, &rows).unwrap();
        sae.b_dec = vec![0.1, -0.2, 0.3];
        sae.b_enc = vec![0.5, -4.0, 0.0, 1.0];
        let snapshot = LatentSnapshot::take(&sae, &rows, 3);
        for f in 0..4 {
            let w = |i: usize| sae.w_enc[i * 4 + f] as f64;
            let pre = |r: usize| -> f64 {
                (0..3)
                    .map(|i| (rows[r * 3 + i] - sae.b_dec[i]) as f64 * w(i))
                    .sum::<f64>()
                    + sae.b_enc[f] as f64
            };
            let margin = (0..3).map(pre).fold(f64::NEG_INFINITY, f64::max);
            assert!((snapshot.margin[f] as f64 - margin).abs() < 1e-5, "{f}");
            let b_dec_term: f64 = -(0..3).map(|i| sae.b_dec[i] as f64 * w(i)).sum::<f64>();
            assert!((snapshot.b_dec_term[f] as f64 - b_dec_term).abs() < 1e-6);
            let norm = (0..3).map(|i| w(i) * w(i)).sum::<f64>().sqrt();
            assert!((snapshot.encoder_norm[f] as f64 - norm).abs() < 1e-6);
        }
        assert_eq!(snapshot.b_enc, sae.b_enc);
        assert_eq!(snapshot.epoch, 3);
    }
}
