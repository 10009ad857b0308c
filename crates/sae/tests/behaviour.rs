//! Training behaviour: invariants, resampling, divergence, determinism,
//! config validation, metrics.

mod common;

use candle_core::Device;
use common::*;
use sae::{
    encode, evaluate, explained_variance, loss_trajectory, reconstruct, AdamConfig, Architecture,
    DecoderBiasInit, LrSchedule, NormalizeActivations, ResampleConfig, ResampleSchedule, Sae,
    SaeConfig, SaeError, SweepPoint, TrainPath,
};

fn reference() -> TrainPath {
    TrainPath::Reference {
        device: Device::Cpu,
    }
}

fn quiet() -> impl Fn(&sae::ProgressEvent) + Sync {
    |_| {}
}

#[test]
fn explained_variance_hand_case() {
    // mean = [1, 2]; total = (1 + 4) + (1 + 4) = 10; residual = 1 + 1 = 2.
    let x = [2.0, 0.0, 0.0, 4.0];
    let x_hat = [2.0, 1.0, 0.0, 3.0];
    let ev = explained_variance(&x, &x_hat, 2).unwrap();
    assert!((ev - 0.8).abs() < 1e-12, "{ev}");
}

#[test]
fn decoder_rows_stay_unit_norm_after_every_step() {
    let data = structured_data(64 * 4, 32, 21);
    for (architecture, path) in [
        (Architecture::l1(3e-3), TrainPath::Fast),
        (Architecture::l1(3e-3), reference()),
        (Architecture::top_k(4), TrainPath::Fast),
        (Architecture::top_k(4), reference()),
    ] {
        let cfg = SaeConfig {
            // lr large enough that an unconstrained row would drift visibly.
            optimizer: AdamConfig {
                lr: 1e-2,
                ..AdamConfig::default()
            },
            epochs: 3,
            ..config(architecture.clone(), 32, 96)
        };
        for steps in 1..=12 {
            let sae = loss_trajectory(&cfg, &data, &path, steps).unwrap().sae;
            for (f, norm) in row_norms(&sae.w_dec, 32).iter().enumerate() {
                assert!(
                    (norm - 1.0).abs() < 1e-5,
                    "{architecture:?} {path:?}: row {f} has norm {norm} after step {steps}"
                );
            }
        }
    }
}

#[test]
fn norm_weighted_l1_leaves_decoder_norms_free() {
    let data = structured_data(64 * 4, 32, 22);
    let cfg = SaeConfig {
        epochs: 2,
        optimizer: AdamConfig {
            lr: 1e-2,
            ..AdamConfig::default()
        },
        ..config(Architecture::norm_weighted_l1(1e-2), 32, 64)
    };
    let trained = train(&cfg, &data, &TrainPath::Fast, &quiet()).unwrap();
    let norms = row_norms(&trained.sae.w_dec, 32);
    let spread = norms.iter().fold(0.0f64, |m, n| m.max((n - 1.0).abs()));
    assert!(spread > 1e-2, "decoder norms stayed at 1: {norms:?}");
    assert!(trained.curve[1].loss < trained.curve[0].loss);
}

fn resampling_config(at_step: usize) -> SaeConfig {
    SaeConfig {
        // A strong L1 penalty and a large lr kill many features quickly.
        epochs: 4,
        dead_window_steps: 10,
        lr_schedule: LrSchedule::Constant,
        optimizer: AdamConfig {
            lr: 1e-2,
            ..AdamConfig::default()
        },
        resample: Some(ResampleConfig {
            schedule: ResampleSchedule::AtSteps {
                steps: vec![at_step],
            },
            sample_rows: 512,
        }),
        ..config(Architecture::l1(0.1), 32, 128)
    }
}

#[test]
fn resampling_sets_documented_values_and_resets_adam() {
    let data = structured_data(64 * 16, 32, 23);
    let at = 40;
    let cfg = resampling_config(at);
    for path in [TrainPath::Fast, reference()] {
        let before = loss_trajectory(&cfg, &data, &path, at - 1).unwrap().sae;
        let after = loss_trajectory(&cfg, &data, &path, at).unwrap();
        let next = loss_trajectory(&cfg, &data, &path, at + 1).unwrap().sae;
        assert_eq!(after.resamples.len(), 1, "{path:?}");
        let event = &after.resamples[0];
        assert_eq!(event.step, at);
        assert!(
            event.features.len() > 5,
            "too few dead features: {:?}",
            event.features
        );
        let sae = &after.sae;
        let (d, f_n) = (32, 128);
        let column_norm = |s: &Sae, f: usize| -> f64 {
            (0..d)
                .map(|i| (s.w_enc[i * f_n + f] as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        // Live features are untouched by the resampling itself, so their
        // encoder norms equal those right after the Adam step of step `at`.
        let live: Vec<usize> = (0..f_n).filter(|f| !event.features.contains(f)).collect();
        let live_mean = live.iter().map(|&f| column_norm(sae, f)).sum::<f64>() / live.len() as f64;
        for &f in &event.features {
            let row = &sae.w_dec[f * d..(f + 1) * d];
            let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5);
            // The row is a normalised training input.
            let best = data
                .chunks_exact(d)
                .map(|x| {
                    let xn = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
                    x.iter()
                        .zip(row)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        / xn
                })
                .fold(f64::MIN, f64::max);
            assert!(
                (best - 1.0).abs() < 1e-5,
                "row {f} matches no input (cos {best})"
            );
            // Encoder column: the same direction, norm 0.2 * mean live norm.
            let enc: Vec<f64> = (0..d).map(|i| sae.w_enc[i * f_n + f] as f64).collect();
            let enc_norm = column_norm(sae, f);
            assert!(
                ((enc_norm / live_mean) - 0.2).abs() < 1e-4,
                "{enc_norm} vs {live_mean}"
            );
            let cos = enc.iter().zip(row).map(|(a, &b)| a * b as f64).sum::<f64>() / enc_norm;
            assert!((cos - 1.0).abs() < 1e-5);
            assert_eq!(sae.b_enc[f], 0.0);
            // Fresh Adam moments: the first update is exactly
            // -lr * (1 - b1) / (1 - b1^t) * g / (sqrt((1 - b2) g^2 / (1 - b2^t)) + eps),
            // i.e. lr * 0.1 / (1 - 0.9^t) / sqrt(0.001 / (1 - 0.999^t)) in size,
            // or no move at all without gradient. Stale moments would move it otherwise.
            let t = (at + 1) as i32;
            let lr = cfg.optimizer.lr;
            let fresh =
                lr * 0.1 / (1.0 - 0.9f64.powi(t)) / (0.001 / (1.0 - 0.999f64.powi(t))).sqrt();
            let moved = next.b_enc[f].abs() as f64;
            assert!(
                moved == 0.0 || (moved / fresh - 1.0).abs() < 1e-3,
                "{path:?}: feature {f}'s b_enc moved {moved}, fresh moments move {fresh}"
            );
        }
        // Features not resampled keep the state they had before the step's resampling.
        let changed_live = live
            .iter()
            .filter(|&&f| before.w_dec[f * d..(f + 1) * d] == sae.w_dec[f * d..(f + 1) * d])
            .count();
        assert!(
            changed_live < live.len(),
            "live features should still train"
        );
    }
}

#[test]
fn resampling_revives_dead_features() {
    let data = structured_data(64 * 16, 32, 24);
    let without = SaeConfig {
        resample: None,
        ..resampling_config(40)
    };
    let with = SaeConfig {
        resample: Some(ResampleConfig {
            schedule: ResampleSchedule::Every {
                every_steps: 20,
                until: 60,
            },
            sample_rows: 1024,
        }),
        ..without.clone()
    };
    let plain = train(&without, &data, &TrainPath::Fast, &quiet()).unwrap();
    let resampled = train(&with, &data, &TrainPath::Fast, &quiet()).unwrap();
    let steps: Vec<usize> = resampled.resamples.iter().map(|e| e.step).collect();
    assert_eq!(steps, [20, 40, 60]);
    let never_fired = |s: &Sae| evaluate(s, &data).unwrap().dead;
    let (dead_plain, dead_resampled) = (never_fired(&plain.sae), never_fired(&resampled.sae));
    assert!(
        dead_resampled < dead_plain,
        "resampling should revive features: {dead_resampled} dead vs {dead_plain} without"
    );
}

#[test]
fn divergence_names_point_step_and_loss_and_others_finish() {
    let data = structured_data(64 * 8, 32, 25);
    let base = SaeConfig {
        epochs: 2,
        ..config(Architecture::l1(3e-3), 32, 64)
    };
    let exploding = SaeConfig {
        optimizer: AdamConfig {
            lr: 1e9,
            ..AdamConfig::default()
        },
        ..base.clone()
    };
    let points = [
        SweepPoint {
            name: "lr-1e9".into(),
            cfg: exploding,
        },
        SweepPoint {
            name: "sane".into(),
            cfg: base.clone(),
        },
        SweepPoint {
            name: "sane-topk".into(),
            cfg: SaeConfig {
                architecture: Architecture::top_k(8),
                ..base
            },
        },
    ];
    let results = train_sweep(&points, &data, 32, &quiet());
    match &results[0] {
        Err(e @ SaeError::Diverged { point, step, loss }) => {
            assert_eq!(point, "lr-1e9");
            assert!(!loss.is_finite());
            assert!(*step >= 2 && *step < 16, "step {step}");
            let message = e.to_string();
            assert!(message.contains("`lr-1e9`"), "{message}");
            assert!(message.contains(&format!("step {step}")), "{message}");
            assert!(message.contains(&loss.to_string()), "{message}");
        }
        other => panic!(
            "expected divergence, got {:?}",
            other.as_ref().map(|t| t.steps)
        ),
    }
    for result in &results[1..] {
        let trained = result.as_ref().unwrap();
        assert_eq!(trained.curve.len(), 2);
        assert_eq!(trained.steps, 16);
        assert!(trained.curve.iter().all(|p| p.loss.is_finite()));
    }
}

#[test]
fn same_seed_same_sae_and_sweeps_match_single_runs() {
    let data = structured_data(64 * 6, 32, 26);
    let cfg = SaeConfig {
        epochs: 2,
        shuffle: true,
        seed: 7,
        ..config(Architecture::l1(3e-3), 32, 96)
    };
    let topk = SaeConfig {
        architecture: Architecture::top_k(6),
        dead_window_steps: 5,
        ..cfg.clone()
    };
    let a = train(&cfg, &data, &TrainPath::Fast, &quiet()).unwrap();
    let b = train(&cfg, &data, &TrainPath::Fast, &quiet()).unwrap();
    assert_eq!(a.sae, b.sae, "same config and seed must give the same bits");
    assert_eq!(a.curve, b.curve);
    let other_seed = train(
        &SaeConfig {
            seed: 8,
            ..cfg.clone()
        },
        &data,
        &TrainPath::Fast,
        &quiet(),
    )
    .unwrap();
    assert_ne!(a.sae.w_dec, other_seed.sae.w_dec);
    let unshuffled = train(
        &SaeConfig {
            shuffle: false,
            ..cfg.clone()
        },
        &data,
        &TrainPath::Fast,
        &quiet(),
    )
    .unwrap();
    assert_ne!(a.sae.w_dec, unshuffled.sae.w_dec);
    // In a sweep, points trained side by side on both cores give the same
    // bits as when trained alone.
    let points = [
        SweepPoint {
            name: "l1".into(),
            cfg: cfg.clone(),
        },
        SweepPoint {
            name: "topk".into(),
            cfg: topk.clone(),
        },
        SweepPoint {
            name: "l1-again".into(),
            cfg: cfg.clone(),
        },
    ];
    let swept = train_sweep(&points, &data, 32, &quiet());
    let single_topk = train(&topk, &data, &TrainPath::Fast, &quiet()).unwrap();
    assert_eq!(swept[0].as_ref().unwrap().sae, a.sae);
    assert_eq!(swept[1].as_ref().unwrap().sae, single_topk.sae);
    assert_eq!(swept[2].as_ref().unwrap().sae, a.sae);
}

#[test]
fn sweep_points_report_their_own_training_time() {
    let data = structured_data(64 * 20, 32, 27);
    let base = SaeConfig {
        epochs: 30,
        ..config(Architecture::l1(3e-3), 32, 256)
    };
    // Batch 32 takes twice the steps of batch 64.
    let points = [
        SweepPoint {
            name: "b64".into(),
            cfg: base.clone(),
        },
        SweepPoint {
            name: "b32".into(),
            cfg: SaeConfig {
                batch_size: 32,
                ..base
            },
        },
    ];
    let started = std::time::Instant::now();
    let swept = train_sweep(&points, &data, 32, &quiet());
    let total = started.elapsed().as_secs_f64();
    let seconds: Vec<f64> = swept.iter().map(|r| r.as_ref().unwrap().seconds).collect();
    assert!(seconds.iter().all(|&s| s > 0.0), "{seconds:?}");
    // Each point's clock covers its own training, within the sweep's.
    assert!(
        seconds.iter().all(|&s| s <= total),
        "{seconds:?}: a point's clock ran past the sweep's {total} s"
    );
}

#[test]
fn bad_config_values_are_refused_naming_the_key() {
    let good = config(Architecture::l1(3e-3), 8, 16);
    good.validate().unwrap();
    let cases: Vec<(SaeConfig, &str)> = vec![
        (
            SaeConfig {
                d_sae: 0,
                ..good.clone()
            },
            "`d_sae`",
        ),
        (
            SaeConfig {
                d_in: 0,
                ..good.clone()
            },
            "`d_in`",
        ),
        (
            SaeConfig {
                architecture: Architecture::top_k(17),
                ..good.clone()
            },
            "`architecture.k`",
        ),
        (
            SaeConfig {
                architecture: Architecture::top_k(0),
                ..good.clone()
            },
            "`architecture.k`",
        ),
        (
            SaeConfig {
                optimizer: AdamConfig {
                    lr: -1e-3,
                    ..AdamConfig::default()
                },
                ..good.clone()
            },
            "`optimizer.lr`",
        ),
        (
            SaeConfig {
                optimizer: AdamConfig {
                    beta2: 1.0,
                    ..AdamConfig::default()
                },
                ..good.clone()
            },
            "`optimizer.beta2`",
        ),
        (
            SaeConfig {
                batch_size: 0,
                ..good.clone()
            },
            "`batch_size`",
        ),
        (
            SaeConfig {
                epochs: 0,
                ..good.clone()
            },
            "`epochs`",
        ),
        (
            SaeConfig {
                dead_window_steps: 0,
                ..good.clone()
            },
            "`dead_window_steps`",
        ),
        (
            SaeConfig {
                architecture: Architecture::l1(f64::NAN),
                ..good.clone()
            },
            "`architecture.l1_coeff`",
        ),
        (
            SaeConfig {
                lr_schedule: LrSchedule::StepLr {
                    step_epochs: 0,
                    gamma: 0.99,
                },
                ..good.clone()
            },
            "`lr_schedule.step_epochs`",
        ),
        (
            SaeConfig {
                resample: Some(ResampleConfig {
                    schedule: ResampleSchedule::Every {
                        every_steps: 0,
                        until: 10,
                    },
                    sample_rows: 10,
                }),
                ..good.clone()
            },
            "`resample.schedule.every_steps`",
        ),
    ];
    for (cfg, key) in cases {
        let message = cfg.validate().unwrap_err().to_string();
        assert!(message.contains(key), "{message} should name {key}");
        assert!(
            message.ends_with('.') && message.matches(". ").count() == 0,
            "{message}"
        );
        // Training refuses it too, before touching data.
        assert!(train(&cfg, &[0.0; 8], &TrainPath::Fast, &quiet()).is_err());
    }
    let wrong_width = train(&good, &[0.0; 12], &TrainPath::Fast, &quiet()).unwrap_err();
    assert!(wrong_width.to_string().contains("width 8"), "{wrong_width}");
}

#[test]
fn curve_metrics_schedule_and_partial_batches() {
    // 100 rows, batch 64: two steps per epoch, the second with 36 rows.
    let data = structured_data(100, 16, 27);
    let cfg = SaeConfig {
        epochs: 5,
        lr_schedule: LrSchedule::StepLr {
            step_epochs: 2,
            gamma: 0.5,
        },
        ..config(Architecture::l1(3e-3), 16, 32)
    };
    let trained = train(&cfg, &data, &TrainPath::Fast, &quiet()).unwrap();
    assert_eq!(trained.steps, 10);
    let lrs: Vec<f64> = trained.curve.iter().map(|p| p.lr).collect();
    assert_eq!(lrs, [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]);
    for p in &trained.curve {
        assert!((p.loss - (p.l2_sum + p.l1 + p.aux)).abs() < 1e-9 * p.loss);
        assert!(p.explained_variance < 1.0 && p.l0 > 0.0);
    }
    // The first epoch's losses are measured at the initial parameters for
    // batch 1: check the L2 term of batch 1 plus batch 2 against the loss
    // trajectory's first two steps.
    let steps = loss_trajectory(&cfg, &data, &TrainPath::Fast, 2).unwrap();
    assert!((trained.curve[0].loss - (steps.losses[0] + steps.losses[1])).abs() < 1e-9);
}

#[test]
fn encode_reconstruct_evaluate_agree_with_hand_computation() {
    let data = structured_data(300, 16, 28);
    let cfg = SaeConfig {
        epochs: 3,
        ..config(Architecture::l1(3e-3), 16, 40)
    };
    let sae = train(&cfg, &data, &TrainPath::Fast, &quiet()).unwrap().sae;
    let acts = encode(&sae, &data).unwrap();
    let x_hat = reconstruct(&sae, &data).unwrap();
    let (d, f_n) = (16, 40);
    let mut sq = 0.0;
    let mut active = 0usize;
    let mut firing = vec![0u64; f_n];
    for r in 0..300 {
        for f in 0..f_n {
            let pre: f64 = sae.b_enc[f] as f64
                + (0..d)
                    .map(|i| {
                        (data[r * d + i] - sae.b_dec[i]) as f64 * sae.w_enc[i * f_n + f] as f64
                    })
                    .sum::<f64>();
            let want = pre.max(0.0);
            assert!((acts[r * f_n + f] as f64 - want).abs() < 1e-5);
            if acts[r * f_n + f] > 0.0 {
                active += 1;
                firing[f] += 1;
            }
        }
        for i in 0..d {
            let want = sae.b_dec[i] as f64
                + (0..f_n)
                    .map(|f| acts[r * f_n + f] as f64 * sae.w_dec[f * d + i] as f64)
                    .sum::<f64>();
            assert!((x_hat[r * d + i] as f64 - want).abs() < 1e-5);
            sq += (data[r * d + i] as f64 - x_hat[r * d + i] as f64).powi(2);
        }
    }
    let m = evaluate(&sae, &data).unwrap();
    assert!((m.mse - sq / (300.0 * 16.0)).abs() < 1e-9);
    assert!((m.l0 - active as f64 / 300.0).abs() < 1e-12);
    assert_eq!(m.firing_counts, firing);
    assert_eq!(m.dead, firing.iter().filter(|&&c| c == 0).count());
    let ev = explained_variance(&data, &x_hat, d).unwrap();
    assert!((m.explained_variance - ev).abs() < 1e-9);
}

#[test]
fn top_k_codes_have_at_most_k_features() {
    let data = structured_data(256, 16, 29);
    let cfg = config(Architecture::top_k(3), 16, 40);
    let sae = train(&cfg, &data, &TrainPath::Fast, &quiet()).unwrap().sae;
    let acts = encode(&sae, &data).unwrap();
    for row in acts.chunks_exact(40) {
        assert!(row.iter().filter(|&&a| a > 0.0).count() <= 3);
    }
    assert!((evaluate(&sae, &data).unwrap().l0 - 3.0).abs() < 0.5);
}

#[test]
fn initialisations() {
    let data = structured_data(64, 8, 30);
    let cfg = config(Architecture::l1(3e-3), 8, 24);
    let notebook = Sae::init(&cfg, &data).unwrap();
    assert!(notebook
        .b_enc
        .iter()
        .chain(&notebook.b_dec)
        .all(|&b| b == 0.0));
    assert!(row_norms(&notebook.w_dec, 8)
        .iter()
        .all(|n| (n - 1.0).abs() < 1e-6));
    let bound = 1.0 / (8f32).sqrt();
    assert!(notebook.w_enc.iter().all(|w| w.abs() <= bound));
    assert!(notebook.w_enc.iter().any(|w| w.abs() > 0.8 * bound));

    let tied = Sae::init(&tied(cfg.clone()), &data).unwrap();
    for f in 0..24 {
        for i in 0..8 {
            assert_eq!(tied.w_enc[i * 24 + f], tied.w_dec[f * 8 + i]);
        }
    }
    let mean = Sae::init(
        &SaeConfig {
            b_dec_init: DecoderBiasInit::DataMean,
            ..cfg
        },
        &data,
    )
    .unwrap();
    for i in 0..8 {
        let want: f64 = data
            .iter()
            .skip(i)
            .step_by(8)
            .map(|&v| v as f64)
            .sum::<f64>()
            / 64.0;
        assert!((mean.b_dec[i] as f64 - want).abs() < 1e-6);
    }
    assert_eq!(mean.w_enc, notebook.w_enc);
}

#[test]
fn progress_reports_the_epoch_mean_loss_not_the_last_batch() {
    // 6,500 rows, batch 64: 102 steps an epoch, the last with 36 rows, so a
    // step event falls at step 100 of epoch 1 and at step 200 of epoch 2.
    let data = structured_data(6500, 16, 5);
    let cfg = SaeConfig {
        epochs: 2,
        ..config(Architecture::l1(3e-3), 16, 32)
    };
    let events = std::sync::Mutex::new(Vec::new());
    train(&cfg, &data, &TrainPath::Fast, &|e: &sae::ProgressEvent| {
        events.lock().unwrap().push((e.kind, e.step, e.loss))
    })
    .unwrap();
    let losses = loss_trajectory(&cfg, &data, &TrainPath::Fast, 204)
        .unwrap()
        .losses;
    let mean = |steps: std::ops::Range<usize>| {
        let n = steps.len() as f64;
        losses[steps].iter().sum::<f64>() / n
    };
    let expected = [
        (sae::ProgressKind::Step, 100, mean(0..100)),
        (sae::ProgressKind::EpochEnd, 102, mean(0..102)),
        (sae::ProgressKind::Step, 200, mean(102..200)),
        (sae::ProgressKind::EpochEnd, 204, mean(102..204)),
    ];
    let events = events.into_inner().unwrap();
    assert_eq!(events.len(), expected.len(), "{events:?}");
    for ((kind, step, loss), (want_kind, want_step, want_loss)) in events.iter().zip(expected) {
        assert_eq!((*kind, *step), (want_kind, want_step));
        assert!(
            (loss - want_loss).abs() <= 1e-9 * want_loss.abs(),
            "step {step}: {loss} vs {want_loss}"
        );
    }
    // The last batch alone differs from the epoch's mean: the test can tell them apart.
    assert!((losses[101] - mean(0..102)).abs() > 1e-3 * mean(0..102));
}

#[test]
fn the_first_step_moves_decoder_rows_along_the_projected_gradient() {
    // One batch of 64 rows, one Adam step. Adam's first step is lr * g / (|g| + eps)
    // per element, so the direction of every decoder row's step is exactly the
    // sign pattern of its (projected) gradient: computed here in f64 from the
    // raw gradients, projected onto the row's tangent space, stepped and renormalised.
    let (d_in, d_sae) = (16, 48);
    let data = structured_data(64, d_in, 9);
    let cfg = SaeConfig {
        epochs: 1,
        ..config(Architecture::l1(3e-3), d_in, d_sae)
    };
    let initial = Sae::init(&cfg, &data).unwrap();
    let (lr, eps) = (cfg.optimizer.lr, cfg.optimizer.eps);
    for path in [TrainPath::Fast, reference()] {
        let (_, raw) = sae::gradients(&initial, &data, &[], &path).unwrap();
        let step = |project: bool| -> Vec<f64> {
            let mut out = Vec::with_capacity(d_sae * d_in);
            for f in 0..d_sae {
                let w: Vec<f64> = initial.w_dec[f * d_in..(f + 1) * d_in]
                    .iter()
                    .map(|&x| x as f64)
                    .collect();
                let g: Vec<f64> = raw.w_dec[f * d_in..(f + 1) * d_in]
                    .iter()
                    .map(|&x| x as f64)
                    .collect();
                let along: f64 = w.iter().zip(&g).map(|(a, b)| a * b).sum();
                let moved: Vec<f64> = w
                    .iter()
                    .zip(&g)
                    .map(|(wi, gi)| {
                        let gi = if project { gi - along * wi } else { *gi };
                        wi - lr * gi / (gi.abs() + eps)
                    })
                    .collect();
                let norm = moved.iter().map(|x| x * x).sum::<f64>().sqrt();
                out.extend(moved.iter().map(|x| x / norm));
            }
            out
        };
        let trained = loss_trajectory(&cfg, &data, &path, 1).unwrap().sae.w_dec;
        let gap = |expected: &[f64]| {
            trained
                .iter()
                .zip(expected)
                .map(|(&t, e)| (t as f64 - e).abs())
                .fold(0.0, f64::max)
        };
        let (projected, unprojected) = (gap(&step(true)), gap(&step(false)));
        assert!(projected < 2e-6, "{path:?}: {projected}");
        // Without the projection the rows would land elsewhere: the check can fail.
        assert!(
            unprojected > 100.0 * projected.max(1e-7),
            "{path:?}: {unprojected}"
        );
    }
}

#[test]
fn the_scheduler_trains_a_group_once_and_hands_each_point_its_own_result() {
    let data = structured_data(128, 16, 8);
    let rows = sae::TrainData::autoencoding(&data, 16);
    let point = |name: &str, l1_coeff: f64, group: &str| sae::ScheduledPoint {
        point: SweepPoint {
            name: name.into(),
            cfg: SaeConfig {
                epochs: 2,
                ..config(Architecture::l1(l1_coeff), 16, 32)
            },
        },
        group: group.into(),
    };
    let points = vec![
        point("a", 1e-3, "g"),
        point("b", 1e-2, "g"),
        point("c", 3e-3, "other"),
        point("d", 3e-2, "g"),
    ];
    let scheduler = sae::SweepScheduler::new(points.clone());
    // d is fresh (not pending): it must not train with a and b.
    scheduler.set_pending(["a", "b", "c"].map(String::from).into());
    let trained_points = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let record = |e: &sae::ProgressEvent| {
        trained_points.lock().unwrap().insert(e.point.to_string());
    };
    let b = scheduler
        .trained("b", rows, &TrainPath::Fast, &record, &|_, _| {}, None)
        .unwrap();
    assert_eq!(
        *trained_points.lock().unwrap(),
        ["a", "b"].map(String::from).into()
    );
    trained_points.lock().unwrap().clear();
    let a = scheduler
        .trained("a", rows, &TrainPath::Fast, &record, &|_, _| {}, None)
        .unwrap();
    assert!(
        trained_points.lock().unwrap().is_empty(),
        "a was trained twice"
    );
    // Each result is the point's own, as if trained alone.
    for (got, p) in [(&a, &points[0]), (&b, &points[1])] {
        let alone = train(&p.point.cfg, &data, &TrainPath::Fast, &quiet()).unwrap();
        assert_eq!(got.sae.w_dec, alone.sae.w_dec, "{}", p.point.name);
    }
    scheduler
        .trained("c", rows, &TrainPath::Fast, &record, &|_, _| {}, None)
        .unwrap();
    assert_eq!(
        *trained_points.lock().unwrap(),
        ["c"].map(String::from).into()
    );
    let unknown = match scheduler.trained("nope", rows, &TrainPath::Fast, &record, &|_, _| {}, None)
    {
        Ok(_) => panic!("an unknown point trained"),
        Err(e) => e.to_string(),
    };
    assert!(unknown.contains("nope"), "{unknown}");
}

#[test]
fn sparse_codes_are_the_dense_encoding_and_decode_to_the_reconstruction() {
    let cfg = sae::SaeConfig {
        d_in: 16,
        d_sae: 48,
        ..Default::default()
    };
    let sae = sae::Sae::init(&cfg, &[]).unwrap();
    let x: Vec<f32> = (0..16 * 300)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let dense = sae::encode(&sae, &x).unwrap();
    let codes = sae::encode_sparse(&sae, &x).unwrap();
    let x_hat = sae::reconstruct(&sae, &x).unwrap();
    assert_eq!(codes.row_start.len(), 301);
    let mut nonzeros = 0;
    for r in 0..300 {
        let (start, end) = (codes.row_start[r], codes.row_start[r + 1]);
        let row = &dense[r * 48..(r + 1) * 48];
        let expected: Vec<(u32, f32)> = row
            .iter()
            .enumerate()
            .filter(|(_, &v)| v != 0.0)
            .map(|(f, &v)| (f as u32, v))
            .collect();
        let got: Vec<(u32, f32)> = codes.feature[start..end]
            .iter()
            .copied()
            .zip(codes.value[start..end].iter().copied())
            .collect();
        assert_eq!(got, expected, "row {r}");
        nonzeros += got.len();
        let decoded = sae::decode_row(
            &sae,
            &[],
            &codes.feature[start..end],
            &codes.value[start..end],
        );
        assert_eq!(decoded, x_hat[r * 16..(r + 1) * 16], "row {r}");
    }
    assert!(
        nonzeros > 300,
        "the check should cover active features: {nonzeros}"
    );
}

#[test]
fn a_sweep_gives_the_same_bits_on_any_number_of_threads() {
    // More points than some thread counts and fewer than others, so workers
    // both queue points and turn helpers; every architecture's mechanism.
    let data = structured_data(640, 16, 23);
    let points: Vec<SweepPoint> = sae::ArchitectureKind::ALL
        .iter()
        .flat_map(|kind| {
            kind.architectures(&sae::ArchitectureAxes {
                k: vec![4],
                ..sae::ArchitectureAxes::default()
            })
        })
        .enumerate()
        .map(|(i, architecture)| SweepPoint {
            name: format!("{i}-{}", architecture.label()),
            cfg: SaeConfig {
                epochs: 3,
                dead_window_steps: 20,
                ..config(architecture, 16, 40 + i)
            },
        })
        .collect();
    let trained_on = |threads: usize| -> Vec<sae::Sae> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| train_sweep(&points, &data, 16, &quiet()))
            .into_iter()
            .map(|r| r.unwrap().sae)
            .collect()
    };
    let one = trained_on(1);
    for threads in [2, 3, 4, 8] {
        let many = trained_on(threads);
        for (a, b) in one.iter().zip(&many) {
            assert!(a == b, "{threads} threads: {:?}", a.cfg.architecture);
        }
    }
}

#[test]
fn the_warmup_and_decay_schedule_is_saelens() {
    let cfg = SaeConfig {
        optimizer: AdamConfig {
            lr: 0.5,
            ..AdamConfig::default()
        },
        lr_schedule: LrSchedule::WarmupDecay {
            warmup_steps: 4,
            decay_steps: 3,
        },
        ..SaeConfig::default()
    };
    // SAELens: LinearLR(1/4 -> 1 over the first 4 steps), constant, then
    // from milestone 10 - 3 LinearLR(1 -> 0 over 3 steps).
    let expected = [
        1.0 / 4.0,
        2.0 / 4.0,
        3.0 / 4.0,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        2.0 / 3.0,
        1.0 / 3.0,
    ];
    for (step, factor) in expected.iter().enumerate() {
        let lr = cfg.lr_at(0, step, 10);
        assert!((lr - 0.5 * factor).abs() < 1e-15, "step {step}: {lr}");
    }
    // Overlapping ramps take the smaller factor; the StepLR default is per epoch.
    assert!((cfg.lr_at(0, 0, 2) - 0.5 / 4.0).abs() < 1e-15);
    assert!((cfg.lr_at(0, 1, 2) - 0.5 / 3.0).abs() < 1e-15);
    let notebook = SaeConfig::default();
    assert_eq!(notebook.lr_at(25, 9999, 1), 1e-3 * 0.99f64.powi(2));
    let warm = SaeConfig {
        sparsity_warmup_steps: 4,
        ..SaeConfig::default()
    };
    let factors: Vec<f64> = (0..6).map(|s| warm.penalty_factor_at(s)).collect();
    assert_eq!(factors, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    assert_eq!(notebook.penalty_factor_at(0), 1.0);
}

#[test]
fn warmup_steps_train_as_the_scaled_constant_they_equal_on_both_paths() {
    // One step (the batch is every row): lr warm-up over 4 steps takes lr / 4,
    // and the sparsity warm-up a quarter of the coefficient, to the bit
    // (a power of two scales exactly).
    let data = structured_data(64, 16, 29);
    for path in [
        TrainPath::Fast,
        TrainPath::Reference {
            device: Device::Cpu,
        },
    ] {
        for architecture in [
            Architecture::l1(0.02),
            Architecture::jump_relu(0.3),
            Architecture::gated(0.02),
        ] {
            let base = SaeConfig {
                batch_size: 64,
                lr_schedule: LrSchedule::Constant,
                ..config(architecture.clone(), 16, 48)
            };
            let warmed = SaeConfig {
                lr_schedule: LrSchedule::WarmupDecay {
                    warmup_steps: 4,
                    decay_steps: 0,
                },
                sparsity_warmup_steps: 4,
                ..base.clone()
            };
            let mut scaled_architecture = architecture.clone();
            match &mut scaled_architecture {
                Architecture::L1(a) => a.l1_coeff /= 4.0,
                Architecture::JumpRelu(a) => a.l0_coeff /= 4.0,
                Architecture::Gated(a) => a.l1_coeff /= 4.0,
                other => panic!("{other:?}"),
            }
            let scaled = SaeConfig {
                architecture: scaled_architecture,
                optimizer: AdamConfig {
                    lr: base.optimizer.lr / 4.0,
                    ..base.optimizer.clone()
                },
                ..base.clone()
            };
            let a = train(&warmed, &data, &path, &quiet()).unwrap().sae;
            let b = train(&scaled, &data, &path, &quiet()).unwrap().sae;
            assert_eq!(
                (&a.w_enc, &a.w_dec, &a.b_enc, &a.b_dec),
                (&b.w_enc, &b.w_dec, &b.b_enc, &b.b_dec),
                "{architecture:?} {path:?}"
            );
            assert_eq!(a.threshold, b.threshold);
            // And it differs from the cold start, so the test can fail.
            let cold = train(&base, &data, &path, &quiet()).unwrap().sae;
            assert_ne!(cold.w_enc, b.w_enc);
        }
    }
}

#[test]
fn normalised_training_folds_its_scale_into_raw_units() {
    // Rows far from a mean norm of sqrt(d_in), so the scale matters.
    let (rows, d) = (256, 16);
    let raw: Vec<f32> = structured_data(rows, d, 31)
        .iter()
        .map(|v| v * 7.5)
        .collect();
    let norms: f64 = raw
        .chunks_exact(d)
        .map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt())
        .sum();
    let s = (d as f64).sqrt() / (norms / rows as f64);
    assert!((s - 1.0).abs() > 0.5, "scale {s}");
    let scaled: Vec<f32> = raw.iter().map(|&v| v * s as f32).collect();
    let close = |x: &[f32], y: &[f32], factor: f64| {
        x.iter().zip(y).all(|(&p, &q)| {
            let want = q as f64 * factor;
            (p as f64 - want).abs() <= 1e-6 * (1.0 + want.abs())
        })
    };
    for architecture in [
        Architecture::l1(3e-3),
        Architecture::top_k(4),
        Architecture::jump_relu(0.05),
    ] {
        let plain = SaeConfig {
            epochs: 2,
            ..config(architecture.clone(), d, 48)
        };
        let normalised = SaeConfig {
            normalize_activations: NormalizeActivations::ExpectedAverageOnlyIn,
            ..plain.clone()
        };
        let a = train(&normalised, &raw, &TrainPath::Fast, &quiet())
            .unwrap()
            .sae;
        let b = train(&plain, &scaled, &TrainPath::Fast, &quiet())
            .unwrap()
            .sae;
        // `a` is `b` with the scale folded in: the encoder times s, the
        // decoder and b_dec over s, the pre-activation side unchanged.
        assert!(close(&a.w_enc, &b.w_enc, s), "{architecture:?}");
        assert!(close(&a.w_dec, &b.w_dec, 1.0 / s), "{architecture:?}");
        assert!(close(&a.b_dec, &b.b_dec, 1.0 / s), "{architecture:?}");
        assert_eq!((&a.b_enc, &a.threshold), (&b.b_enc, &b.threshold));
        // On raw rows it reconstructs as `b` does on scaled ones.
        let (ea, eb) = (evaluate(&a, &raw).unwrap(), evaluate(&b, &scaled).unwrap());
        assert!(
            (ea.explained_variance - eb.explained_variance).abs() < 1e-4,
            "{} {}",
            ea.explained_variance,
            eb.explained_variance
        );
        assert!((ea.l0 - eb.l0).abs() < 0.05, "{} {}", ea.l0, eb.l0);
        // And normalising changed the training.
        let unnormalised = train(&plain, &raw, &TrainPath::Fast, &quiet()).unwrap().sae;
        assert_ne!(unnormalised.b_enc, a.b_enc);
    }
}
