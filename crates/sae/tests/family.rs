//! The BatchTopK family and JumpReLU: behaviour a wrong implementation would
//! fail (L0 per row, inference thresholds, prefixes that reconstruct alone,
//! thresholds that learn), their checkpoints, and their bad configs.

mod common;

use common::*;
use sae::{
    decode_row, encode_sparse, evaluate, explained_variance, load, save, Architecture, Origin, Sae,
    SaeConfig, TrainPath,
};

const D_IN: usize = 24;
const D_SAE: usize = 64;

fn trained(architecture: Architecture, epochs: usize, data: &[f32]) -> sae::Trained {
    trained_with(architecture, epochs, 1e-3, data)
}

fn trained_with(architecture: Architecture, epochs: usize, lr: f64, data: &[f32]) -> sae::Trained {
    let cfg = SaeConfig {
        epochs,
        optimizer: sae::AdamConfig {
            lr,
            ..sae::AdamConfig::default()
        },
        ..tied(config(architecture, D_IN, D_SAE))
    };
    train(&cfg, data, &TrainPath::Fast, &|_| {}).unwrap()
}

fn data() -> Vec<f32> {
    structured_data(64 * 24, D_IN, 5)
}

#[test]
fn batch_top_k_keeps_k_per_row_on_average_and_its_threshold_reproduces_it() {
    let data = data();
    // A fast running threshold: these runs are 144 steps long.
    let fast_threshold = |mut architecture: Architecture| {
        if let Architecture::BatchTopK(sae::BatchTopK { threshold_lr, .. })
        | Architecture::MatryoshkaBatchTopK(sae::MatryoshkaBatchTopK {
            threshold_lr, ..
        }) = &mut architecture
        {
            *threshold_lr = 0.1;
        }
        architecture
    };
    for architecture in [
        Architecture::batch_top_k(4),
        Architecture::matryoshka_batch_top_k(4),
    ] {
        let architecture = fast_threshold(architecture);
        let run = trained(architecture.clone(), 6, &data);
        // In training exactly k * rows activations survive per batch (the data
        // has far more than k positive pre-activations per row).
        for point in &run.curve {
            assert!(
                (point.l0 - 4.0).abs() < 1e-9,
                "{architecture:?}: training L0 {}",
                point.l0
            );
        }
        // Rows are not all given k: the batch's budget goes where it is needed.
        let codes = encode_sparse(&run.sae, &data).unwrap();
        let per_row: Vec<usize> = codes.row_start.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            per_row.iter().any(|&n| n != 4),
            "{architecture:?}: every row has exactly k"
        );
        // One threshold for every feature, positive, and at inference it keeps about k.
        let t = run.sae.threshold[0];
        assert!(
            t > 0.0 && run.sae.threshold.iter().all(|&u| u == t),
            "{architecture:?}"
        );
        let l0 = evaluate(&run.sae, &data).unwrap().l0;
        assert!(
            (l0 - 4.0).abs() < 1.0,
            "{architecture:?}: inference L0 {l0}"
        );
    }
}

/// Explained variance of the reconstruction from the first `width` features only.
fn prefix_explained_variance(sae: &Sae, data: &[f32], width: usize) -> f64 {
    let codes = encode_sparse(sae, data).unwrap();
    let mut x_hat = Vec::with_capacity(data.len());
    for r in 0..codes.row_start.len() - 1 {
        let span = codes.row_start[r]..codes.row_start[r + 1];
        let (features, values): (Vec<u32>, Vec<f32>) = codes.feature[span.clone()]
            .iter()
            .zip(&codes.value[span])
            .filter(|(&f, _)| (f as usize) < width)
            .unzip();
        x_hat.extend(decode_row(sae, &[], &features, &values));
    }
    explained_variance(data, &x_hat, D_IN).unwrap()
}

#[test]
fn matryoshka_prefixes_reconstruct_on_their_own() {
    let data = data();
    let plain = trained(Architecture::batch_top_k(4), 20, &data).sae;
    let nested = trained(Architecture::matryoshka_batch_top_k(4), 20, &data).sae;
    let full = |sae: &Sae| evaluate(sae, &data).unwrap().explained_variance;
    // The smallest prefix (1/16 of the dictionary: 4 features) and a half.
    for width in [D_SAE / 16, D_SAE / 2] {
        let (p, n) = (
            prefix_explained_variance(&plain, &data, width),
            prefix_explained_variance(&nested, &data, width),
        );
        eprintln!("prefix {width}: Matryoshka EV {n:.3}, plain BatchTopK EV {p:.3}");
        assert!(
            n > p + 0.05,
            "prefix {width}: Matryoshka EV {n:.3}, plain BatchTopK EV {p:.3}"
        );
    }
    // The nesting costs some, but not most, of the full reconstruction.
    let (p, n) = (full(&plain), full(&nested));
    eprintln!("full: Matryoshka EV {n:.3}, plain BatchTopK EV {p:.3}");
    assert!(
        n > 0.5 && n > p - 0.2,
        "full EV: Matryoshka {n:.3}, plain {p:.3}"
    );
}

#[test]
fn jump_relu_thresholds_learn_and_its_l0_follows_its_coefficient() {
    let data = data();
    let l0_at = |l0_coeff: f64| {
        let run = trained_with(
            Architecture::JumpRelu(sae::JumpRelu {
                l0_coeff,
                bandwidth: 0.1,
                init_threshold: 0.1,
            }),
            30,
            1e-2,
            &data,
        );
        let moved = run
            .sae
            .threshold
            .iter()
            .filter(|&&t| (t - 0.1).abs() > 1e-2)
            .count();
        assert!(
            moved > D_SAE / 4,
            "l0_coeff {l0_coeff}: only {moved} thresholds moved"
        );
        let metrics = evaluate(&run.sae, &data).unwrap();
        eprintln!(
            "l0_coeff {l0_coeff}: L0 {}, EV {}, {moved} thresholds moved",
            metrics.l0, metrics.explained_variance
        );
        (metrics.l0, metrics.explained_variance)
    };
    let (loose, tight) = (l0_at(1e-2), l0_at(1.0));
    assert!(
        tight.0 < 0.7 * loose.0,
        "L0 {} at coefficient 1 is not well below {} at 1e-2",
        tight.0,
        loose.0
    );
    assert!(loose.1 > 0.5, "EV {} at the small coefficient", loose.1);
}

#[test]
fn gated_magnitudes_share_the_gate_directions_and_its_l1_sparsifies_the_gate() {
    let data = data();
    let run = |l1_coeff: f64| trained_with(Architecture::gated(l1_coeff), 10, 3e-3, &data).sae;
    let (loose, tight) = (run(1e-4), run(3e-2));
    // Inference, computed here from the tensors: one W_enc for both paths.
    let codes = encode_sparse(&loose, &data).unwrap();
    let dense = sae::encode(&loose, &data).unwrap();
    let mut open_but_silent = 0;
    for r in 0..data.len() / D_IN {
        let x = &data[r * D_IN..(r + 1) * D_IN];
        for f in 0..D_SAE {
            let enc: f64 = (0..D_IN)
                .map(|i| (x[i] - loose.b_dec[i]) as f64 * loose.w_enc[i * D_SAE + f] as f64)
                .sum();
            let gate = enc + loose.b_enc[f] as f64;
            let magnitude = (loose.r_mag[f] as f64).exp() * enc + loose.b_mag[f] as f64;
            let want = if gate > 0.0 { magnitude.max(0.0) } else { 0.0 };
            let got = dense[r * D_SAE + f] as f64;
            assert!(
                (got - want).abs() < 1e-4,
                "row {r} feature {f}: {got} vs {want}"
            );
            open_but_silent += (gate > 0.0 && magnitude <= 0.0) as usize;
        }
    }
    assert_eq!(
        codes.value.len(),
        dense.iter().filter(|&&a| a > 0.0).count()
    );
    // The magnitude path learned its own scale and bias.
    assert!(loose.r_mag.iter().filter(|r| r.abs() > 1e-2).count() > D_SAE / 4);
    assert!(loose.b_mag.iter().filter(|b| b.abs() > 1e-2).count() > D_SAE / 4);
    eprintln!("gates open with a non-positive magnitude: {open_but_silent}");
    let (l0_loose, l0_tight) = (
        evaluate(&loose, &data).unwrap().l0,
        evaluate(&tight, &data).unwrap().l0,
    );
    assert!(
        l0_tight < 0.7 * l0_loose,
        "L0 {l0_tight} at l1 3e-2 vs {l0_loose} at 1e-4"
    );
    assert!(evaluate(&loose, &data).unwrap().explained_variance > 0.8);
}

fn origin() -> Origin {
    Origin {
        model_name: "test-mlp".into(),
        hook_name: "fc2.pre".into(),
        hook_name_out: None,
    }
}

#[test]
fn thresholds_round_trip_and_a_checkpoint_without_its_threshold_is_refused() {
    let data = data();
    let dir = tempfile::tempdir().unwrap();
    for architecture in [Architecture::batch_top_k(4), Architecture::jump_relu(1e-2)] {
        let sae = trained(architecture, 1, &data).sae;
        save(&sae, dir.path(), &origin()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), sae);
        let saelens: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(sae::SAELENS_CONFIG_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(saelens["architecture"], "jumprelu");
        assert_eq!(saelens["metadata"]["hook_name"], "fc2.pre");
    }
    // An L1 SAE's weights under a JumpReLU config: the threshold is missing.
    let l1 = trained(Architecture::l1(3e-3), 1, &data).sae;
    let jump_cfg = std::fs::read(dir.path().join(sae::CONFIG_FILE)).unwrap();
    save(&l1, dir.path(), &origin()).unwrap();
    std::fs::write(dir.path().join(sae::CONFIG_FILE), &jump_cfg).unwrap();
    let message = load(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains(sae::WEIGHTS_FILE) && message.contains("`threshold` is missing"),
        "{message}"
    );
    // The reverse: a threshold an L1 SAE does not have.
    let jump = trained(Architecture::jump_relu(1e-2), 1, &data).sae;
    save(&jump, dir.path(), &origin()).unwrap();
    let mut l1_cfg = serde_json::to_string(&l1.cfg).unwrap();
    l1_cfg.push('\n');
    std::fs::write(dir.path().join(sae::CONFIG_FILE), l1_cfg).unwrap();
    let message = load(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains("tensor `threshold` does not belong to a l1 SAE"),
        "{message}"
    );
}

#[test]
fn bad_family_configs_are_refused_naming_the_key() {
    let base = config(Architecture::batch_top_k(4), D_IN, D_SAE);
    let mut cases: Vec<(Architecture, &str)> = vec![
        (Architecture::batch_top_k(0), "`architecture.k`"),
        (
            Architecture::matryoshka_batch_top_k(D_SAE + 1),
            "`architecture.k`",
        ),
        (Architecture::jump_relu(-1.0), "`architecture.l0_coeff`"),
        (
            Architecture::JumpRelu(sae::JumpRelu {
                l0_coeff: 0.1,
                bandwidth: 0.0,
                init_threshold: 0.01,
            }),
            "`architecture.bandwidth`",
        ),
        (
            Architecture::JumpRelu(sae::JumpRelu {
                l0_coeff: 0.1,
                bandwidth: 0.05,
                init_threshold: f64::NAN,
            }),
            "`architecture.init_threshold`",
        ),
    ];
    for (fractions, threshold_lr) in [
        (vec![0.5, 0.25], 0.01),
        (vec![0.25, 1.0], 0.01),
        (vec![0.001], 0.01),
        (vec![0.25], 0.0),
    ] {
        let mut architecture = Architecture::matryoshka_batch_top_k(4);
        if let Architecture::MatryoshkaBatchTopK(sae::MatryoshkaBatchTopK {
            threshold_lr: lr,
            prefix_fractions,
            ..
        }) = &mut architecture
        {
            *lr = threshold_lr;
            *prefix_fractions = fractions;
        }
        let key = if threshold_lr == 0.0 {
            "`architecture.threshold_lr`"
        } else {
            "`architecture.prefix_fractions`"
        };
        cases.push((architecture, key));
    }
    for (architecture, key) in cases {
        let cfg = SaeConfig {
            architecture: architecture.clone(),
            ..base.clone()
        };
        let message = cfg.validate().unwrap_err().to_string();
        assert!(
            message.contains(key) && !message.contains('\n'),
            "{architecture:?}: {message}"
        );
    }
}
