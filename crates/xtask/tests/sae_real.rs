//! The SAE's fast path and the candle-autograd reference on the real cached
//! activations (fc2.pre of an MLP trained by the pipeline): their training
//! steps against f64.

// The sae crate's f64 oracle, shared rather than copied.
#[path = "../../sae/tests/common/mod.rs"]
mod common;
mod support;

use activations::{ActivationStore, ShardInfo, VerifyMode};
use sae::{checked_steps_on, loss_trajectory_on, Architecture, SaeConfig, TrainData, TrainPath};

/// Train rows of `fc2.pre`, extracted by `xtask run extract` into a fresh store.
fn real_fc2_pre(rows: usize) -> Vec<f32> {
    let store = tempfile::tempdir().unwrap();
    // The quick MLP (one epoch).
    let run = support::xtask(
        store.path(),
        &["run", "extract", "--set", "extract.layers=[\"fc2.pre\"]"],
    );
    assert!(run.ok, "{}", run.stderr);
    let dir = std::fs::read_dir(store.path().join("activations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("shards.json").exists())
        .unwrap();
    let shards: Vec<ShardInfo> =
        serde_json::from_slice(&std::fs::read(dir.join("shards.json")).unwrap()).unwrap();
    let store = ActivationStore::open(&dir, &shards, VerifyMode::Digests).unwrap();
    let view = store.layer("train", "fc2.pre").unwrap();
    view.to_vec()[..rows * 128].to_vec()
}

/// Every 50th of 300 steps on each path, checked against f64 from the same
/// parameters, moments and gradient (`sae/tests/common`'s oracle); the
/// recorded fast run ends in the same bits as an unrecorded one.
fn check_steps(cfg: &SaeConfig, data: &[f32], label: &str) {
    let data = TrainData::autoencoding(data, cfg.d_in);
    let plain = loss_trajectory_on(cfg, data, &TrainPath::Fast, 300).unwrap();
    assert!(
        plain.losses[299] < 0.5 * plain.losses[0],
        "{label}: no progress: {} -> {}",
        plain.losses[0],
        plain.losses[299]
    );
    for path in [
        TrainPath::Fast,
        TrainPath::Reference {
            device: candle_core::Device::Cpu,
        },
    ] {
        let (steps, sae) = checked_steps_on(cfg, data, &path, 300, 50).unwrap();
        assert_eq!(steps.len(), 6);
        for step in &steps {
            common::assert_step_matches_f64(cfg, step, &format!("{label} {path:?}"));
        }
        if matches!(path, TrainPath::Fast) {
            assert!(sae == plain.sae, "{label}: recording changed the SAE");
        }
    }
}

#[test]
fn training_steps_on_real_activations_match_f64_on_both_paths() {
    let data = real_fc2_pre(64 * 300);
    // The notebook's SAE: d_sae 1024, L1 3e-3 summed over the batch, Adam 1e-3.
    let l1 = SaeConfig {
        epochs: 1,
        ..SaeConfig::default()
    };
    check_steps(&l1, &data, "L1");
    // TopK with AuxK, dead window short enough that AuxK is active.
    let topk = SaeConfig {
        epochs: 1,
        dead_window_steps: 50,
        architecture: Architecture::top_k(32),
        ..SaeConfig::default()
    };
    check_steps(&topk, &data, "TopK");
}
