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
}

/// Peak resident memory of this process so far, in MiB (VmHWM).
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
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
    match target {
        Target::Mlp => bench_mlp(config, ctx, store),
    }
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
