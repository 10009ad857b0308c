//! Why latents die, read from a run's [`sae::LatentHistory`]: when the
//! latents dead at the end last fired, and how their firing margin and its
//! parts (b_enc, the b_dec term, the encoder's norm) drifted against the
//! living ones'.

use crate::plots::{Figure, Layer, Mark};

/// Which latents were dead at the end of training: silent for at least
/// `dead_window_steps` steps (or never fired).
pub fn dead_at_end(history: &sae::LatentHistory, dead_window_steps: usize) -> Vec<bool> {
    let steps = total_steps(history);
    history
        .last_fired_step
        .iter()
        .map(|&last| last == 0 || steps.saturating_sub(last) >= dead_window_steps as u64)
        .collect()
}

fn total_steps(history: &sae::LatentHistory) -> u64 {
    let epochs = history.snapshots.last().map_or(0, |s| s.epoch);
    (history.steps_per_epoch * epochs) as u64
}

/// The epoch (1-based) in which each latent last fired; 0: never.
pub fn last_fired_epoch(history: &sae::LatentHistory) -> Vec<usize> {
    let per_epoch = history.steps_per_epoch.max(1) as u64;
    history
        .last_fired_step
        .iter()
        .map(|&step| step.div_ceil(per_epoch) as usize)
        .collect()
}

/// The median of `values` (NaN when empty).
pub fn median(values: &mut [f32]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f32::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid] as f64
    } else {
        (values[mid - 1] as f64 + values[mid] as f64) / 2.0
    }
}

/// The two figures: the drift of the median margin and its parts (dead at
/// the end against alive), and how many of the dead had last fired by each
/// epoch. None without snapshots.
pub fn figures(
    name: &str,
    history: &sae::LatentHistory,
    dead_window_steps: usize,
) -> Option<[(&'static str, Figure); 2]> {
    let last = history.snapshots.last()?;
    let dead = dead_at_end(history, dead_window_steps);
    let n_dead = dead.iter().filter(|&&d| d).count();
    let mut layers = Vec::new();
    let parts: [(&str, fn(&sae::LatentSnapshot) -> &[f32]); 4] = [
        ("margin", |s| &s.margin),
        ("b_enc", |s| &s.b_enc),
        ("b_dec term", |s| &s.b_dec_term),
        ("encoder norm", |s| &s.encoder_norm),
    ];
    for (part, of) in parts {
        for (group, wanted) in [("dead at the end", true), ("alive", false)] {
            let points: Vec<(f64, f64)> = history
                .snapshots
                .iter()
                .map(|s| {
                    let mut values: Vec<f32> = of(s)
                        .iter()
                        .zip(&dead)
                        .filter(|(_, &d)| d == wanted)
                        .map(|(&v, _)| v)
                        .collect();
                    (s.epoch as f64, median(&mut values))
                })
                .filter(|(_, m)| m.is_finite())
                .collect();
            if !points.is_empty() {
                layers.push(Layer {
                    name: format!("{part}, {group}"),
                    mark: Mark::Lines,
                    points,
                });
            }
        }
    }
    let drift = Figure {
        title: format!(
            "{name}: why latents die ({n_dead} dead, {} alive)",
            dead.len() - n_dead
        ),
        x_label: "epoch".into(),
        // The margin: the largest pre-activation over the probe rows minus the firing level.
        y_label: "median, pre-activation units".into(),
        layers,
        log_x: last.epoch > 1,
        ..Default::default()
    };
    let epochs = last_fired_epoch(history);
    let cumulative: Vec<(f64, f64)> = (0..=last.epoch)
        .map(|e| {
            let by = epochs
                .iter()
                .zip(&dead)
                .filter(|(&last, &d)| d && last <= e)
                .count();
            (e as f64, by as f64)
        })
        .collect();
    let last_fired = Figure {
        title: format!("{name}: when its {n_dead} dead latents last fired"),
        x_label: "epoch (0: never fired)".into(),
        y_label: "dead latents silent since this epoch or earlier".into(),
        layers: vec![Layer {
            name: "dead at the end".into(),
            mark: Mark::Lines,
            points: cumulative,
        }],
        ..Default::default()
    };
    Some([("latent_drift", drift), ("latent_last_fired", last_fired)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> sae::LatentHistory {
        let snapshot = |epoch: usize, margin: Vec<f32>| sae::LatentSnapshot {
            epoch,
            b_enc: margin.iter().map(|m| m - 1.0).collect(),
            b_dec_term: vec![0.0; margin.len()],
            encoder_norm: vec![1.0; margin.len()],
            margin,
        };
        sae::LatentHistory {
            // 10 steps per epoch, 3 epochs: latent 0 fired last at step 30,
            // 1 at step 11 (epoch 2), 2 never, 3 at step 25.
            last_fired_step: vec![30, 11, 0, 25],
            steps_per_epoch: 10,
            snapshots: vec![
                snapshot(1, vec![1.0, 0.5, -1.0, 2.0]),
                snapshot(3, vec![1.5, -0.5, -2.0, 2.5]),
            ],
        }
    }

    #[test]
    fn dead_latents_and_their_last_epochs_follow_the_steps() {
        let h = history();
        assert_eq!(dead_at_end(&h, 10), [false, true, true, false]);
        assert_eq!(dead_at_end(&h, 5), [false, true, true, true]);
        assert_eq!(last_fired_epoch(&h), [3, 2, 0, 3]);
    }

    #[test]
    fn the_figures_hold_the_groups_medians_and_the_cumulative_count() {
        let [(_, drift), (_, last)] = figures("toy", &history(), 10).unwrap();
        let layer = |name: &str| {
            drift
                .layers
                .iter()
                .find(|l| l.name == name)
                .unwrap_or_else(|| panic!("{name}"))
                .points
                .clone()
        };
        assert_eq!(
            layer("margin, dead at the end"),
            [(1.0, -0.25), (3.0, -1.25)]
        );
        assert_eq!(layer("margin, alive"), [(1.0, 1.5), (3.0, 2.0)]);
        assert_eq!(layer("b_enc, alive"), [(1.0, 0.5), (3.0, 1.0)]);
        assert_eq!(
            last.layers[0].points,
            [(0.0, 1.0), (1.0, 1.0), (2.0, 2.0), (3.0, 2.0)]
        );
        assert!(figures("toy", &sae::LatentHistory::default(), 10).is_none());
    }

    #[test]
    fn the_median_of_nothing_is_nan_and_of_an_even_count_the_midpoint() {
        assert!(median(&mut []).is_nan());
        assert_eq!(median(&mut [3.0, 1.0, 2.0, 10.0]), 2.5);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
    }
}
