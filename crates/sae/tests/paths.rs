//! The fast path and the reference path against an independent f64
//! implementation: gradients at perturbed parameters, and recorded training
//! steps (projection, Adam, renormalisation) along 320 steps of each path.

mod common;

use candle_core::Device;
use common::*;
use sae::{
    checked_steps_on, gradients_on, loss_trajectory_on, Architecture, AuxInput, Reduction,
    SaeConfig, TrainData, TrainPath, Transcoder,
};

fn reference() -> TrainPath {
    TrainPath::Reference {
        device: Device::Cpu,
    }
}

/// Both paths' loss and gradients match the f64 host computation (a
/// transcoder's target is independent of its input, so every term is live).
fn check_gradients(cfg: &SaeConfig, dead: &[usize], seed: u64) {
    let sae = perturbed_sae(cfg, seed);
    let batch = structured_data(24, cfg.d_in, seed + 1);
    let target = match cfg.transcoder {
        Some(t) => structured_data(24, t.d_out, seed + 2),
        None => batch.clone(),
    };
    let data = TrainData::transcoding(&batch, cfg.d_in, &target, cfg.d_out());
    let mut dead_mask = vec![false; cfg.d_sae];
    dead.iter().for_each(|&f| dead_mask[f] = true);
    let host = match cfg.architecture {
        Architecture::Gated(sae::Gated { .. }) => host_gradients_gated_on(&sae, &batch, &target),
        _ => host_gradients_on(&sae, &batch, &target, &dead_mask),
    };
    for path in [TrainPath::Fast, reference()] {
        let (loss, g) = gradients_on(&sae, data, dead, &path).unwrap();
        let label = format!("{:?} {:?}", cfg.architecture, path);
        assert!(
            ((loss - host.loss) / host.loss).abs() < 1e-5,
            "{label}: loss {loss} vs {}",
            host.loss
        );
        for (name, got, want) in [
            ("W_enc", &g.w_enc, &host.w_enc),
            ("W_dec", &g.w_dec, &host.w_dec),
            ("b_enc", &g.b_enc, &host.b_enc),
            ("b_dec", &g.b_dec, &host.b_dec),
            ("W_skip", &g.w_skip, &host.w_skip),
            ("log-threshold", &g.threshold, &host.threshold),
            ("r_mag", &g.r_mag, &host.r_mag),
            ("b_mag", &g.b_mag, &host.b_mag),
        ] {
            assert_eq!(got.len(), want.len(), "{label}: {name}");
            if want.is_empty() {
                continue;
            }
            let err = relative_error(got, want);
            assert!(
                err < 2e-5,
                "{label}: {name} gradient off by {err:e} (relative)"
            );
        }
        if !host.threshold.is_empty() {
            assert!(
                host.threshold.iter().filter(|&&t| t != 0.0).count() >= 3,
                "{label}: the batch puts too few pre-activations near a threshold to test"
            );
        }
    }
}

#[test]
fn batch_top_k_and_matryoshka_gradients_match_f64_host() {
    // Prefixes on both sides of the fast path's split (d_sae / 2 = 24).
    let mut crossing = Architecture::matryoshka_batch_top_k(3);
    if let Architecture::MatryoshkaBatchTopK(sae::MatryoshkaBatchTopK {
        prefix_fractions, ..
    }) = &mut crossing
    {
        *prefix_fractions = vec![0.25, 0.5, 0.75, 0.9];
    }
    for (seed, architecture) in [
        (11, Architecture::batch_top_k(3)),
        (12, Architecture::matryoshka_batch_top_k(3)),
        (13, crossing),
    ] {
        let cfg = config(architecture, 16, 48);
        check_gradients(&cfg, &[], seed);
        // AuxK on dead latents, as TopK's, from ReLU'd or raw pre-activations.
        for (offset, input) in [(10, AuxInput::Relu), (20, AuxInput::Raw)] {
            let with_aux = SaeConfig {
                architecture: with_aux(cfg.architecture.clone(), 6, 0.5, input),
                ..cfg.clone()
            };
            check_gradients(&with_aux, &[0, 5, 9, 17, 30, 41, 47], seed + offset);
        }
    }
}

/// `architecture` as a transcoder from 16 to 12 wide (different widths, so no
/// index can mix them up), with or without the skip.
fn transcoder(architecture: Architecture, skip: bool) -> SaeConfig {
    SaeConfig {
        transcoder: Some(Transcoder { d_out: 12, skip }),
        ..config(architecture, 16, 48)
    }
}

#[test]
fn transcoder_and_skip_transcoder_gradients_match_f64_host_for_every_variant() {
    let jump = Architecture::JumpRelu(sae::JumpRelu {
        l0_coeff: 0.3,
        bandwidth: 0.2,
        init_threshold: 0.01,
    });
    let aux = |v: Architecture| with_aux(v, 6, 0.5, AuxInput::Raw);
    let dead = [0, 5, 9, 17, 30, 41, 47];
    for skip in [false, true] {
        for (seed, architecture, dead) in [
            (41, Architecture::l1(3e-3), &[][..]),
            (42, Architecture::norm_weighted_l1(0.02), &[]),
            (43, aux(Architecture::top_k(6)), &dead[..]),
            (44, aux(Architecture::batch_top_k(3)), &dead),
            (45, aux(Architecture::matryoshka_batch_top_k(3)), &dead),
            (46, jump.clone(), &[]),
            (47, Architecture::gated(3e-3), &[]),
        ] {
            check_gradients(
                &transcoder(architecture, skip),
                dead,
                seed + 10 * skip as u64,
            );
        }
    }
}

#[test]
fn skip_transcoder_training_steps_match_f64_on_both_paths() {
    // fc2's sublayer in miniature: the target is a ReLU layer of the input,
    // scaled to O(1) values like the SAE tests' data.
    let (rows, d_in, d_out) = (64 * 80, 128, 96);
    let input = structured_data(rows, d_in, 17);
    let weights = structured_data(d_out, d_in, 18);
    let target: Vec<f32> = input
        .chunks_exact(d_in)
        .flat_map(|x| {
            weights
                .chunks_exact(d_in)
                .map(|w| 0.1 * w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>().max(0.0))
                .collect::<Vec<f32>>()
        })
        .collect();
    let data = TrainData::transcoding(&input, d_in, &target, d_out);
    for architecture in [
        Architecture::l1(3e-3),
        with_aux(Architecture::top_k(16), 48, 1.0 / 32.0, AuxInput::Relu),
    ] {
        let cfg = SaeConfig {
            epochs: 10,
            dead_window_steps: 25,
            transcoder: Some(Transcoder { d_out, skip: true }),
            ..config(architecture.clone(), d_in, 512)
        };
        check_steps_on(&cfg, data);
    }
}

#[test]
fn gated_gradients_match_f64_host_on_both_paths() {
    for (seed, l1_coeff, reduction) in [(31, 3e-3, Reduction::Sum), (32, 0.05, Reduction::Mean)] {
        let cfg = SaeConfig {
            l1_reduction: reduction,
            ..config(Architecture::gated(l1_coeff), 16, 48)
        };
        check_gradients(&cfg, &[], seed);
    }
}

#[test]
fn gated_training_steps_match_f64_on_both_paths() {
    let data = structured_data(64 * 80, 128, 15);
    let cfg = SaeConfig {
        epochs: 10,
        ..tied(config(Architecture::gated(1e-3), 128, 512))
    };
    check_steps(&cfg, &data);
}

#[test]
fn jump_relu_gradients_including_thresholds_match_f64_host() {
    for (seed, l0_coeff) in [(21, 0.0), (22, 0.3)] {
        let cfg = config(
            Architecture::JumpRelu(sae::JumpRelu {
                l0_coeff,
                bandwidth: 0.2,
                init_threshold: 0.01,
            }),
            16,
            48,
        );
        check_gradients(&cfg, &[], seed);
    }
}

#[test]
fn l1_gradients_match_f64_host_on_both_paths() {
    let cfg = config(Architecture::l1(3e-3), 16, 48);
    check_gradients(&cfg, &[], 1);
    let mean = SaeConfig {
        l1_reduction: Reduction::Mean,
        architecture: Architecture::l1(0.05),
        ..cfg
    };
    check_gradients(&mean, &[], 2);
}

#[test]
fn top_k_and_aux_k_gradients_match_f64_host_on_both_paths() {
    let cfg = config(
        with_aux(Architecture::top_k(6), 10, 0.25, AuxInput::Relu),
        16,
        48,
    );
    check_gradients(&cfg, &[], 3);
    // Half the features dead: AuxK reconstructs the residual from them.
    let dead: Vec<usize> = (0..48).filter(|f| f % 2 == 1).collect();
    check_gradients(&cfg, &dead, 4);
    // SAELens' AuxK: the dead latents' raw pre-activations, negative ones too.
    let raw = config(
        with_aux(Architecture::top_k(6), 10, 0.25, AuxInput::Raw),
        16,
        48,
    );
    check_gradients(&raw, &dead, 6);

    // One row: the residual has no spread, so AuxK adds nothing (and no NaN).
    let sae = perturbed_sae(&cfg, 4);
    let row = structured_data(1, cfg.d_in, 5);
    let host = host_gradients(&sae, &row, &vec![true; cfg.d_sae]);
    for path in [TrainPath::Fast, reference()] {
        let (loss, g) = sae::gradients(&sae, &row, &dead, &path).unwrap();
        assert!(loss.is_finite() && ((loss - host.loss) / host.loss).abs() < 1e-5);
        assert!(relative_error(&g.w_enc, &host.w_enc) < 2e-5, "{path:?}");
    }
}

#[test]
fn norm_weighted_l1_gradients_match_f64_host() {
    let cfg = config(Architecture::norm_weighted_l1(0.02), 16, 48);
    check_gradients(&cfg, &[], 5);
}

#[test]
fn norm_weighted_l1_training_steps_match_f64_on_both_paths() {
    let data = structured_data(64 * 80, 128, 16);
    let cfg = SaeConfig {
        epochs: 10,
        ..config(Architecture::norm_weighted_l1(3e-3), 128, 512)
    };
    check_steps(&cfg, &data);
}

/// Trains 320 steps on each path, recording every 40th step, and checks each
/// recorded step against f64 from the same parameters, moments and gradient
/// (`assert_step_matches_f64`). The recorded fast run is the real one: it ends
/// in the same bits as an unrecorded run. Returns the fast path's losses.
fn check_steps(cfg: &SaeConfig, data: &[f32]) -> Vec<f64> {
    check_steps_on(cfg, TrainData::autoencoding(data, cfg.d_in))
}

fn check_steps_on(cfg: &SaeConfig, data: TrainData) -> Vec<f64> {
    const STEPS: usize = 320;
    let plain = loss_trajectory_on(cfg, data, &TrainPath::Fast, STEPS).unwrap();
    for path in [TrainPath::Fast, reference()] {
        let label = format!("{:?} {path:?}", cfg.architecture);
        let (steps, sae) = checked_steps_on(cfg, data, &path, STEPS, 40).unwrap();
        assert_eq!(steps.len(), STEPS / 40, "{label}");
        for step in &steps {
            assert_step_matches_f64(cfg, step, &label);
        }
        if matches!(path, TrainPath::Fast) {
            assert!(
                sae == plain.sae,
                "{label}: recording changed the trained SAE"
            );
        }
    }
    let losses = plain.losses;
    assert_eq!(losses.len(), STEPS);
    assert!(
        losses[STEPS - 1] < 0.5 * losses[0],
        "training should make progress: {} -> {}",
        losses[0],
        losses[STEPS - 1]
    );
    losses
}

#[test]
fn l1_training_steps_match_f64_on_both_paths() {
    let data = structured_data(64 * 80, 128, 11);
    let cfg = SaeConfig {
        epochs: 10,
        ..config(Architecture::l1(3e-3), 128, 512)
    };
    check_steps(&cfg, &data);
}

#[test]
fn batch_top_k_family_training_steps_match_f64_on_both_paths() {
    let data = structured_data(64 * 80, 128, 13);
    for architecture in [
        Architecture::batch_top_k(16),
        Architecture::matryoshka_batch_top_k(16),
    ] {
        let cfg = SaeConfig {
            epochs: 10,
            dead_window_steps: 25,
            ..tied(config(architecture.clone(), 128, 512))
        };
        check_steps(&cfg, &data);
    }
}

#[test]
fn jump_relu_training_steps_match_f64_on_both_paths() {
    let data = structured_data(64 * 80, 128, 14);
    // A bandwidth wide enough that thresholds move within 320 steps.
    let cfg = SaeConfig {
        epochs: 10,
        optimizer: sae::AdamConfig {
            lr: 3e-3,
            ..sae::AdamConfig::default()
        },
        ..tied(config(
            Architecture::JumpRelu(sae::JumpRelu {
                l0_coeff: 0.05,
                bandwidth: 0.2,
                init_threshold: 0.05,
            }),
            128,
            512,
        ))
    };
    check_steps(&cfg, &data);
    let fast = sae::loss_trajectory(&cfg, &data, &TrainPath::Fast, 320)
        .unwrap()
        .sae;
    let moved = fast
        .threshold
        .iter()
        .filter(|&&t| (t - 0.05).abs() > 5e-3)
        .count();
    assert!(moved > 100, "only {moved} thresholds moved");
}

#[test]
fn top_k_training_steps_match_f64_on_both_paths() {
    let data = structured_data(64 * 80, 128, 12);
    // A short dead window so AuxK is active for most of the run.
    let cfg = SaeConfig {
        epochs: 10,
        dead_window_steps: 25,
        ..config(
            with_aux(Architecture::top_k(16), 64, 1.0 / 32.0, AuxInput::Relu),
            128,
            512,
        )
    };
    check_steps(&cfg, &data);
    // The same 320 steps (4 epochs of 80) had dead latents, so AuxK was exercised.
    let cfg = SaeConfig { epochs: 4, ..cfg };
    let trained = train(&cfg, &data, &TrainPath::Fast, &|_| {}).unwrap();
    assert!(
        trained.curve.iter().all(|p| p.aux > 0.0),
        "{:?}",
        trained.curve
    );
}

/// Gradient clipping (SAELens clips every step at norm 1): recorded steps
/// of clipped runs match f64 from the same gradients scaled by torch's
/// factor on both paths, the clip binds at some of them, and a clip no
/// gradient reaches changes no bit.
#[test]
fn clipped_training_steps_match_f64_on_both_paths() {
    let (rows, d_in) = (64 * 40, 128);
    let data = structured_data(rows, d_in, 19);
    let target = structured_data(rows, 96, 20);
    let jump = Architecture::JumpRelu(sae::JumpRelu {
        l0_coeff: 0.05,
        bandwidth: 0.2,
        init_threshold: 0.05,
    });
    let cases = [
        (Architecture::l1(3e-3), None),
        (
            with_aux(Architecture::top_k(16), 64, 1.0 / 32.0, AuxInput::Relu),
            None,
        ),
        (jump, None),
        (Architecture::gated(1e-3), None),
        (
            Architecture::l1(3e-3),
            Some(Transcoder {
                d_out: 96,
                skip: true,
            }),
        ),
    ];
    for (architecture, transcoder) in cases {
        let cfg = SaeConfig {
            epochs: 5,
            dead_window_steps: 25,
            clip_grad_norm: 0.05,
            transcoder,
            ..config(architecture, d_in, 256)
        };
        let data = match transcoder {
            Some(t) => TrainData::transcoding(&data, d_in, &target, t.d_out),
            None => TrainData::autoencoding(&data, d_in),
        };
        for path in [TrainPath::Fast, reference()] {
            let label = format!("{:?} {transcoder:?} {path:?}", cfg.architecture);
            let (steps, _) = checked_steps_on(&cfg, data, &path, 160, 20).unwrap();
            let factors: Vec<f64> = steps
                .iter()
                .map(|step| assert_step_matches_f64(&cfg, step, &label))
                .collect();
            assert!(
                factors.iter().any(|&f| f < 0.5),
                "{label}: the clip never bound ({factors:?})"
            );
            let never_binds = SaeConfig {
                clip_grad_norm: 1e9,
                ..cfg.clone()
            };
            let off = SaeConfig {
                clip_grad_norm: 0.0,
                ..cfg.clone()
            };
            // The weights, under one config (which records the clip).
            let trained = |cfg: &SaeConfig| {
                let mut sae = loss_trajectory_on(cfg, data, &path, 160).unwrap().sae;
                sae.cfg = off.clone();
                sae
            };
            assert!(
                trained(&never_binds) == trained(&off),
                "{label}: a clip that never binds changed the SAE"
            );
        }
    }
}

#[test]
fn a_clip_that_is_negative_or_not_finite_is_refused_naming_its_key() {
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let cfg = SaeConfig {
            clip_grad_norm: bad,
            ..SaeConfig::default()
        };
        let message = cfg.validate().unwrap_err().to_string();
        assert!(message.contains("clip_grad_norm"), "{message}");
    }
}
