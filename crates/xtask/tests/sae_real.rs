//! The SAE's fast path against the candle-autograd reference on the real
//! cached activations (fc2.pre of an MLP trained by the pipeline).

use std::process::Command;

use activations::{ActivationStore, ShardInfo, VerifyMode};
use sae::{loss_trajectory, SaeConfig, Variant};

/// Train rows of `fc2.pre`, extracted by `xtask run extract` into a fresh store.
fn real_fc2_pre(rows: usize) -> Vec<f32> {
    let store = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .env("SAELAB_ARTIFACTS", store.path())
        .env("SAELAB_MNIST_DIR", testkit::mnist_dir())
        .args([
            "run",
            "extract",
            "--set",
            "mlp.epochs=1",
            "--set",
            "extract.layers=[\"fc2.pre\"]",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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

fn largest_relative_gap(cfg: &SaeConfig, data: &[f32], steps: usize) -> f64 {
    let fast = loss_trajectory(cfg, data, &sae::TrainPath::Fast, steps).unwrap();
    let reference = loss_trajectory(
        cfg,
        data,
        &sae::TrainPath::Reference {
            device: candle_core::Device::Cpu,
        },
        steps,
    )
    .unwrap();
    assert!(
        fast.losses[steps - 1] < 0.5 * fast.losses[0],
        "no progress: {} -> {}",
        fast.losses[0],
        fast.losses[steps - 1]
    );
    fast.losses
        .iter()
        .zip(&reference.losses)
        .map(|(f, r)| ((f - r) / r).abs())
        .fold(0.0, f64::max)
}

#[test]
fn fast_and_reference_paths_agree_for_300_steps_on_real_activations() {
    let data = real_fc2_pre(64 * 300);
    // The notebook's SAE: d_sae 1024, L1 3e-3 summed over the batch, Adam 1e-3.
    let l1 = SaeConfig {
        epochs: 1,
        ..SaeConfig::default()
    };
    let gap = largest_relative_gap(&l1, &data, 300);
    eprintln!("L1: largest relative loss gap over 300 steps {gap:e}");
    assert!(
        gap < 1e-4,
        "L1: loss trajectories differ by {gap:e} (relative)"
    );
    // TopK with AuxK, dead window short enough that AuxK is active.
    let topk = SaeConfig {
        epochs: 1,
        dead_window_steps: 50,
        variant: Variant::top_k(32),
        ..SaeConfig::default()
    };
    let gap = largest_relative_gap(&topk, &data, 300);
    eprintln!("TopK: largest relative loss gap over 300 steps {gap:e}");
    assert!(
        gap < 1e-4,
        "TopK: loss trajectories differ by {gap:e} (relative)"
    );
}
