//! The full analysis on the pipeline's real artifacts, with timings.
//!
//! Needs `cargo xtask all` to have run (artifacts/{mlp,activations}) and the
//! MNIST files (through the fetch chain, `testkit`). Ignored by default:
//! `cargo test --release -p analysis --test real_data -- --ignored --nocapture`.
//! Set ANALYSIS_OUT to keep the output folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use analysis::{AnalysisConfig, Baseline, LayerData, SaeMetrics, SaeRun};

fn first_dir(stage: &str, file: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../artifacts")
        .join(stage);
    std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask all` first", root.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join(file).is_file())
        .unwrap_or_else(|| panic!("no {stage} artifact with {file}"))
}

#[test]
#[ignore = "needs the pipeline's artifacts; run with --ignored"]
fn real_sae_analysis_with_timings() {
    let data = testkit::mnist();
    let weights =
        mlp::Weights::load(&first_dir("mlp", "model.safetensors").join("model.safetensors"))
            .unwrap();
    let model = mlp::Mlp::new(&weights, &candle_core::Device::Cpu).unwrap();
    let act_dir = first_dir("activations", "shards.json");
    let shards: Vec<activations::ShardInfo> =
        serde_json::from_slice(&std::fs::read(act_dir.join("shards.json")).unwrap()).unwrap();
    // One store per split: the shards of different splits record different dataset digests.
    let open = |split: &str| {
        let listed: Vec<_> = shards
            .iter()
            .filter(|s| s.split == split)
            .cloned()
            .collect();
        activations::ActivationStore::open(&act_dir, &listed, activations::VerifyMode::Sizes)
            .unwrap()
    };
    let (train_store, test_store) = (open("train"), open("test"));
    let (train_view, test_view) = (
        train_store.layer("train", "fc2.pre").unwrap(),
        test_store.layer("test", "fc2.pre").unwrap(),
    );
    let (train, test) = (train_view.to_vec(), test_view.to_vec());
    let (train_labels, test_labels) = (train_view.labels(), test_view.labels());
    assert_eq!(
        train_labels, data.train.labels.labels,
        "activations are in dataset order"
    );

    let cfg = sae::SaeConfig {
        d_in: 128,
        d_sae: 1024,
        epochs: 2,
        ..Default::default()
    };
    let start = Instant::now();
    let trained = sae::train_sweep(
        &[sae::SweepPoint::single(cfg.clone())],
        sae::TrainData::autoencoding(&train, cfg.d_in),
        &sae::TrainPath::Fast,
        &|_| {},
    )
    .pop()
    .unwrap()
    .unwrap();
    println!(
        "trained a 2-epoch SAE in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let eval = sae::evaluate(&trained.sae, &test).unwrap();

    let layer = LayerData {
        layer: "fc2.pre",
        width: 128,
        train: &train,
        test: &test,
        train_labels: &train_labels,
        test_labels: &test_labels,
        train_pixels: &data.train.images.pixels,
        mlp: &model,
    };
    let analysis_cfg = AnalysisConfig::default();
    let start = Instant::now();
    let baseline = Baseline::compute(&layer, &analysis_cfg).unwrap();
    println!(
        "neuron baseline (stats + probes): {:.2} s",
        start.elapsed().as_secs_f64()
    );

    let out = std::env::var("ANALYSIS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("saelab_analysis_real"));
    let run = SaeRun {
        name: "l1_2epochs",
        sae: &trained.sae,
        reads: &layer,
        writes: layer.layer,
        curve: &trained.curve,
        latents: Some(&trained.latents),
        downstream: None,
        dashboard_command: String::new(),
        metrics: SaeMetrics {
            l0: eval.l0,
            mse: eval.mse,
            explained_variance: eval.explained_variance,
            dead: eval.dead,
            ..Default::default()
        },
    };
    let start = Instant::now();
    let summary = analysis::analyse_sae(
        &layer,
        &baseline,
        &run,
        &analysis_cfg,
        &out.join("l1_2epochs"),
    )
    .unwrap();
    println!("analyse_sae total: {:.2} s", start.elapsed().as_secs_f64());
    println!("timings: {:?}", summary.timings);
    println!("nonzeros: {}", summary.nonzeros);
    println!("features: {:?}", summary.features);
    println!("neurons: {:?}", summary.neurons);
    for (f, n) in summary.feature_probes.iter().zip(&summary.neuron_probes) {
        println!(
            "probe k={}: features {:.3}, neurons {:.3}",
            f.k, f.test_accuracy, n.test_accuracy
        );
    }
    let mlp_losses: Vec<f32> = serde_json::from_slice::<serde_json::Value>(
        &std::fs::read(first_dir("mlp", "metrics.json").join("metrics.json")).unwrap(),
    )
    .unwrap()["step_losses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_f64())
                .map(|v| v as f32)
                .collect()
        })
        .unwrap_or_default();
    let report = analysis::write_report(
        std::slice::from_ref(&summary),
        &analysis::RunInfo {
            mlp_losses: mlp_losses.clone(),
            ..Default::default()
        },
        &analysis_cfg,
        &out,
    )
    .unwrap();
    println!("report: {}", report.display());
    assert!(
        summary.timings.tables_s < 1.0,
        "tables took {:.2} s",
        summary.timings.tables_s
    );
}
