//! `cargo xtask bench`: times a stage's hot loop on the real data, with peak memory.

use std::time::Instant;

use anyhow::{anyhow, Result};
use artifacts::{RunOptions, Store};

use crate::config::Config;
use crate::stages::{self, Context};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Target {
    /// Train the configured MLP (default: the notebook's, 5 epochs of SGD) on the fast path.
    Mlp,
    /// Train the notebook's SAE on the cached fc2.pre activations: fast path
    /// (L1 and TopK), the candle reference for one epoch, and a 4-point sweep.
    Sae,
    /// The config's first circuit (`--preset circuits`): one image's graph
    /// (trace, both layers, pruning, scores) over 200 test images, then the
    /// whole stage's computation over the 10000.
    Circuits,
}

/// Builds (or finds cached) the stages `target` names and returns their artifact folders.
fn prepare(
    config: &Config,
    ctx: &Context,
    store: &Store,
    target: &str,
) -> Result<std::path::PathBuf> {
    let pipeline = stages::build(config, ctx);
    let outcomes = pipeline.run(
        store,
        &RunOptions {
            targets: [target.to_string()].into(),
            ..Default::default()
        },
        &|_| {},
    )?;
    let found = outcomes
        .iter()
        .find(|o| o.name() == target)
        .and_then(|o| o.manifest())
        .ok_or_else(|| anyhow!("stage {target} could not be built"))?;
    Ok(store.artifact_dir(&found.stage, &found.key))
}

pub fn run(target: Target, config: &Config, ctx: &Context, store: &Store) -> Result<()> {
    println!("{}", machine());
    match target {
        Target::Mlp => bench_mlp(config, ctx, store),
        Target::Sae => bench_sae(config, ctx, store),
        Target::Circuits => bench_circuits(config, ctx, store),
    }
}

fn bench_circuits(config: &Config, ctx: &Context, store: &Store) -> Result<()> {
    let circuit = stages::circuits::stages(&config.sae.points(), &config.circuits)
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("bench circuits needs a circuit: a T1 from `input` to fc1.post and a T2 from fc1.post to fc2.post (`--preset circuits`)"))?;
    let data = stages::mlp::load_mnist(&prepare(config, ctx, store, "mnist")?)
        .map_err(|e| anyhow!("{e}"))?;
    let r = stages::circuits::load_replacement(
        &prepare(config, ctx, store, "mlp")?,
        &prepare(config, ctx, store, &circuit.t1)?,
        &prepare(config, ctx, store, &circuit.t2)?,
    )
    .map_err(|e| anyhow!("{e}"))?;
    let input = circuits::Network::input_rows(&data.test.images.pixels);
    println!(
        "circuits bench: {} ({} threads available)",
        circuit.name,
        rayon::current_num_threads()
    );
    let options = config.circuits.prune();
    for kind in [
        circuits::GraphKind::Transcoders,
        circuits::GraphKind::Neurons,
    ] {
        let (mut times, mut nodes) = (Vec::new(), Vec::new());
        for image in 0..200 {
            let started = Instant::now();
            let trace = r.trace(&input[image * mlp::INPUT..(image + 1) * mlp::INPUT])?;
            let g = match kind {
                circuits::GraphKind::Transcoders => {
                    r.graph(&trace[0], circuits::LogitTargets::default())
                }
                circuits::GraphKind::Neurons => r
                    .network
                    .graph(&trace[0].input, circuits::LogitTargets::default()),
            };
            let pruned = circuits::prune(&g, options)?;
            let scores = circuits::scores(&g)?;
            std::hint::black_box((&pruned, &scores));
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            nodes.push(g.len());
        }
        times.sort_by(f64::total_cmp);
        let mean_nodes = nodes.iter().sum::<usize>() as f64 / nodes.len() as f64;
        println!(
            "  one image's {} graph (trace, edges, pruning, scores): median {:.2} ms, max {:.2} ms over 200 images; {mean_nodes:.0} nodes on average, adjacency {:.2} MiB",
            kind.name(),
            times[times.len() / 2],
            times[times.len() - 1],
            mean_nodes * mean_nodes * 8.0 / (1 << 20) as f64,
        );
    }
    let started = Instant::now();
    let study = circuits::study(&r, &input, &data.test.labels.labels, config.circuits)?;
    println!(
        "  every test image ({}: both graphs, faithfulness with {} random draws, ablations of {} images, digit graphs, splicing): {:.2} s; peak RSS {:.0} MiB",
        study.images.len() / 2,
        config.circuits.random_draws,
        config.circuits.ablation_images,
        started.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
    Ok(())
}

fn bench_mlp(config: &Config, ctx: &Context, store: &Store) -> Result<()> {
    let data = stages::mlp::load_mnist(&prepare(config, ctx, store, "mnist")?)
        .map_err(|e| anyhow!("{e}"))?;
    let cfg = &config.mlp;
    println!(
        "mlp bench: {:?} lr {} batch {} epochs {} shuffle {} on {} rows ({} threads available)",
        cfg.optimizer,
        cfg.lr,
        cfg.batch_size,
        cfg.epochs,
        cfg.shuffle,
        data.train.len(),
        rayon::current_num_threads()
    );
    let mut times = Vec::new();
    for run in 1..=3 {
        let started = Instant::now();
        let (weights, _) = mlp::train(
            cfg,
            stages::mlp::examples(&data.train),
            &mlp::TrainPath::Fast,
            &mut |_, _| {},
        )?;
        let seconds = started.elapsed().as_secs_f64();
        let eval = mlp::Mlp::new(&weights, &candle_core::Device::Cpu)?
            .evaluate(stages::mlp::examples(&data.test))?;
        println!(
            "  run {run}: {seconds:.3} s training, test accuracy {:.2}%",
            100.0 * eval.accuracy
        );
        times.push(seconds);
    }
    times.sort_by(f64::total_cmp);
    let steps = cfg.epochs * data.train.len().div_ceil(cfg.batch_size);
    println!(
        "mlp: best {:.3} s, median {:.3} s for {steps} steps ({:.0} steps/s); peak RSS {:.0} MiB",
        times[0],
        times[1],
        steps as f64 / times[1],
        peak_rss_mib()
    );
    Ok(())
}

fn bench_sae(config: &Config, ctx: &Context, store: &Store) -> Result<()> {
    let dir = prepare(config, ctx, store, "extract")?;
    let activations = activations::ActivationStore::open_dir(&dir, activations::VerifyMode::Sizes)
        .map_err(|e| anyhow!("{e}"))?;
    let data = activations.layer("train", "fc2.pre")?.to_vec();
    // fc2's sublayer, for the transcoders.
    let (fc1_post, fc2_post) = (
        activations.layer("train", "fc1.post")?.to_vec(),
        activations.layer("train", "fc2.post")?.to_vec(),
    );
    let notebook = sae::SaeConfig {
        epochs: 5,
        ..sae::SaeConfig::default()
    };
    let rows = data.len() / notebook.d_in;
    println!("sae bench: notebook config (d_sae 1024, batch 64, Adam, L1 3e-3) on {rows} cached fc2.pre rows");
    let point = |name: &str, cfg: sae::SaeConfig| sae::SweepPoint {
        name: name.into(),
        cfg,
    };
    let topk = sae::SaeConfig {
        architecture: sae::Architecture::top_k(32),
        ..notebook.clone()
    };
    let reference = sae::SaeConfig {
        epochs: 1,
        ..notebook.clone()
    };
    let sweep: Vec<_> = [1e-3, 3e-3, 1e-2, 3e-2]
        .iter()
        .map(|&c| {
            let architecture = sae::Architecture::l1(c);
            point(
                &architecture.label(),
                sae::SaeConfig {
                    architecture,
                    ..notebook.clone()
                },
            )
        })
        .collect();
    // The newer architectures, each at its paper's init (tied encoder; the
    // TopK family's b_dec at the data mean).
    let family = |architecture: sae::Architecture, epochs: usize| {
        let (encoder_init, b_dec_init) = architecture.paper_init();
        let cfg = sae::SaeConfig {
            architecture,
            epochs,
            encoder_init,
            b_dec_init,
            ..notebook.clone()
        };
        vec![point(&cfg.architecture.label(), cfg)]
    };
    let reference_path = || sae::TrainPath::Reference {
        device: candle_core::Device::Cpu,
    };
    let transcoder = |skip: bool, epochs: usize| {
        let cfg = sae::SaeConfig {
            epochs,
            transcoder: Some(sae::Transcoder {
                d_out: notebook.d_in,
                skip,
            }),
            ..notebook.clone()
        };
        vec![point(
            if skip {
                "skip_transcoder"
            } else {
                "transcoder"
            },
            cfg,
        )]
    };
    let transcoding =
        sae::TrainData::transcoding(&fc1_post, notebook.d_in, &fc2_post, notebook.d_in);
    let autoencoding = sae::TrainData::autoencoding(&data, notebook.d_in);
    let sae_runs: Vec<(&str, Vec<sae::SweepPoint>, sae::TrainPath)> = vec![
        (
            "fast path, L1",
            vec![point("l1", notebook.clone())],
            sae::TrainPath::Fast,
        ),
        (
            "fast path, TopK k=32",
            vec![point("topk", topk)],
            sae::TrainPath::Fast,
        ),
        (
            "reference path (candle autograd), L1",
            vec![point("reference", reference)],
            sae::TrainPath::Reference {
                device: candle_core::Device::Cpu,
            },
        ),
        ("fast path, 4-point L1 sweep", sweep, sae::TrainPath::Fast),
        (
            "fast path, BatchTopK k=32",
            family(sae::Architecture::batch_top_k(32), 5),
            sae::TrainPath::Fast,
        ),
        (
            "fast path, Matryoshka BatchTopK k=32",
            family(sae::Architecture::matryoshka_batch_top_k(32), 5),
            sae::TrainPath::Fast,
        ),
        (
            "fast path, JumpReLU l0 0.1",
            family(sae::Architecture::jump_relu(0.1), 5),
            sae::TrainPath::Fast,
        ),
        (
            "fast path, Gated l1 3e-3",
            family(sae::Architecture::gated(3e-3), 5),
            sae::TrainPath::Fast,
        ),
        (
            "reference path, BatchTopK k=32",
            family(sae::Architecture::batch_top_k(32), 1),
            reference_path(),
        ),
        (
            "reference path, Matryoshka BatchTopK k=32",
            family(sae::Architecture::matryoshka_batch_top_k(32), 1),
            reference_path(),
        ),
        (
            "reference path, JumpReLU l0 0.1",
            family(sae::Architecture::jump_relu(0.1), 1),
            reference_path(),
        ),
        (
            "reference path, Gated l1 3e-3",
            family(sae::Architecture::gated(3e-3), 1),
            reference_path(),
        ),
    ];
    let transcoder_runs: Vec<(&str, Vec<sae::SweepPoint>, sae::TrainPath)> = vec![
        (
            "fast path, transcoder L1 3e-3 (fc1.post -> fc2.post)",
            transcoder(false, 5),
            sae::TrainPath::Fast,
        ),
        (
            "fast path, skip transcoder L1 3e-3 (fc1.post -> fc2.post)",
            transcoder(true, 5),
            sae::TrainPath::Fast,
        ),
        (
            "reference path, skip transcoder L1 3e-3",
            transcoder(true, 1),
            reference_path(),
        ),
    ];
    // saelab's figure per architecture, for the ratio to PyTorch.
    let mut epochs_seconds: Vec<(&str, f64)> = Vec::new();
    let runs = sae_runs
        .into_iter()
        .map(|(label, points, path)| (label, points, path, autoencoding))
        .chain(
            transcoder_runs
                .into_iter()
                .map(|(label, points, path)| (label, points, path, transcoding)),
        );
    for (label, points, path, data) in runs {
        let started = Instant::now();
        let results = sae::train_sweep(&points, data, &path, &|_| {});
        let seconds = started.elapsed().as_secs_f64();
        let epochs = points[0].cfg.epochs;
        let steps: usize = points
            .iter()
            .map(|p| p.cfg.epochs * p.cfg.steps_per_epoch(rows))
            .sum();
        let last = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter_map(|t| t.curve.last())
            .map(|c| format!("L0 {:.1} EV {:.3}", c.l0, c.explained_variance))
            .collect::<Vec<_>>();
        println!(
            "  {label}: {:.3} s per epoch ({} point(s), {epochs} epoch(s)), {:.0} steps/s, peak RSS {:.0} MiB; last epoch: {}",
            seconds / epochs as f64,
            points.len(),
            steps as f64 / seconds,
            peak_rss_mib(),
            last.join(", ")
        );
        if let Some((_, torch_name)) = PYTORCH_NAMES.iter().find(|(l, _)| *l == label) {
            epochs_seconds.push((torch_name, seconds / epochs as f64));
        }
    }
    compare_with_pytorch(&dir, &epochs_seconds);
    Ok(())
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), 0 where unavailable.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The fast-path runs above and the names `bench/saelens_epoch.py` gives the
/// same SAEs trained by SAELens (PyTorch).
const PYTORCH_NAMES: &[(&str, &str)] = &[
    ("fast path, L1", "L1 (standard) 3e-3"),
    ("fast path, TopK k=32", "TopK k=32"),
    ("fast path, BatchTopK k=32", "BatchTopK k=32"),
    (
        "fast path, Matryoshka BatchTopK k=32",
        "Matryoshka BatchTopK k=32",
    ),
    ("fast path, JumpReLU l0 0.1", "JumpReLU l0 0.1"),
    ("fast path, Gated l1 3e-3", "Gated l1 3e-3"),
    (
        "fast path, transcoder L1 3e-3 (fc1.post -> fc2.post)",
        "transcoder L1 3e-3",
    ),
    (
        "fast path, skip transcoder L1 3e-3 (fc1.post -> fc2.post)",
        "skip transcoder L1 3e-3",
    ),
];

/// Runs `bench/saelens_epoch.py` on the same activation cache, in this run
/// and on as many threads as saelab trains with, and prints the ratio per
/// architecture; says why not where Python lacks torch or sae_lens.
fn compare_with_pytorch(cache: &std::path::Path, saelab: &[(&str, f64)]) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/saelens_epoch.py");
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2);
    let has_torch = std::process::Command::new("python3")
        .args(["-c", "import torch, sae_lens"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_torch {
        println!("PyTorch: python3 cannot import torch and sae_lens here (pip install sae-lens), so no ratio");
        return;
    }
    println!("PyTorch (SAELens), the same SAEs on the same rows, {threads} thread(s), 2 epochs each (the second timed):");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(cache)
        .args(["2", "--threads", &threads.to_string(), "--json"])
        .stderr(std::process::Stdio::inherit())
        .output();
    let out = match out {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            println!(
                "  {} failed ({}), so no ratio",
                script.display(),
                out.status
            );
            return;
        }
        Err(e) => {
            println!("  {} could not run ({e}), so no ratio", script.display());
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(torch) = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str::<std::collections::BTreeMap<String, f64>>(l).ok())
    else {
        println!(
            "  {} printed no JSON line, so no ratio:\n{stdout}",
            script.display()
        );
        return;
    };
    println!(
        "  {:<28} {:>16} {:>17} {:>8}",
        "architecture", "saelab s/epoch", "PyTorch s/epoch", "ratio"
    );
    for (name, seconds) in saelab {
        match torch.get(*name) {
            Some(t) => println!(
                "  {name:<28} {seconds:>16.3} {t:>17.3} {:>7.1}x",
                t / seconds
            ),
            None => println!(
                "  {name:<28} {seconds:>16.3} {:>17} {:>8}",
                "(not run)", "-"
            ),
        }
    }
}

/// The machine a figure was measured on, for every bench's first line: the CPU
/// model, its cores, the instruction sets that decide saelab's speed and
/// arithmetic, and which of them saelab's kernels run here.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .and_then(|l| l.split_once(':'))
        .map_or(Vec::new(), |(_, f)| f.split_whitespace().collect());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shown: Vec<&str> = [
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512dq",
        "avx512vl",
        "avx512_bf16",
        "amx_tile",
    ]
    .into_iter()
    .filter(|f| flags.contains(f))
    .collect();
    let has = |f: &str| flags.contains(&f);
    let sae_kernels = if has("avx2") && has("fma") {
        "AVX2+FMA"
    } else {
        "portable"
    };
    let mlp_kernels = if ["avx512f", "avx512bw", "avx512dq", "avx512vl"]
        .iter()
        .all(|f| has(f))
    {
        "AVX-512"
    } else {
        sae_kernels
    };
    format!(
        "machine: {model}, {cores} cores; flags {}; kernels: SAE {sae_kernels}, MLP {mlp_kernels}; subnormals flushed",
        if shown.is_empty() {
            "(none of avx2, fma, avx512*, amx)".to_string()
        } else {
            shown.join(" ")
        }
    )
}
