//! SAE training speed on activation-like data at the notebook's shapes.
//!
//! `cargo run --release -p sae --example bench [-- --quick] [fast=N] [reference=N] [sweep=N]`
//! (epochs per part; 0 skips a part). Outside `src/`, so editing it changes
//! no stage's fingerprint and invalidates no cached SAE.

use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use sae::synthetic;
use sae::{
    train_sweep, Architecture, ProgressEvent, ProgressKind, SaeConfig, SaeError, SweepPoint,
    TrainData, TrainPath,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = BenchConfig::default();
    for arg in std::env::args().skip(1) {
        match arg.split_once('=') {
            None if arg == "--quick" => {
                cfg.fast_epochs = 2;
                cfg.reference_epochs = 0;
                cfg.sweep_epochs = 2;
            }
            Some(("fast", n)) => cfg.fast_epochs = n.parse()?,
            Some(("reference", n)) => cfg.reference_epochs = n.parse()?,
            Some(("sweep", n)) => cfg.sweep_epochs = n.parse()?,
            _ => return Err(format!("unknown argument `{arg}`").into()),
        }
    }
    print!("{}", run(&cfg)?);
    Ok(())
}

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub rows: usize,
    pub d_in: usize,
    pub d_sae: usize,
    pub fast_epochs: usize,
    /// 0 skips the reference path (about 13 s per epoch at the notebook's shapes).
    pub reference_epochs: usize,
    /// L1 coefficients of the sweep.
    pub sweep_l1_coeffs: Vec<f64>,
    /// 0 skips the sweep.
    pub sweep_epochs: usize,
    pub seed: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            rows: 60_000,
            d_in: 128,
            d_sae: 1024,
            fast_epochs: 5,
            reference_epochs: 1,
            sweep_l1_coeffs: vec![1e-3, 3e-3, 1e-2, 3e-2],
            sweep_epochs: 3,
            seed: 0,
        }
    }
}

/// Timings of one training run (or one sweep of several points).
#[derive(Clone, Debug, Serialize)]
pub struct RunTiming {
    pub label: String,
    pub points: usize,
    /// Wall time of each epoch (all points of a sweep together).
    pub epoch_seconds: Vec<f64>,
    /// Mean over epochs after the first (the first is slower: the code starts dense).
    pub steady_seconds_per_epoch: f64,
    /// Optimisation steps per second, summed over points.
    pub steps_per_second: f64,
    pub final_l0: f64,
    pub final_explained_variance: f64,
    /// VmHWM after the run: the process's peak resident memory so far.
    pub peak_rss_mib: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub rows: usize,
    pub d_in: usize,
    pub d_sae: usize,
    pub threads: usize,
    pub runs: Vec<RunTiming>,
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), 0 where unavailable.
pub fn peak_rss_mib() -> f64 {
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

fn notebook_config(bench: &BenchConfig, epochs: usize) -> SaeConfig {
    SaeConfig {
        d_in: bench.d_in,
        d_sae: bench.d_sae,
        epochs,
        seed: bench.seed,
        ..SaeConfig::default()
    }
}

fn time_run(
    label: &str,
    points: &[SweepPoint],
    data: &[f32],
    d_in: usize,
    path: &TrainPath,
) -> Result<RunTiming, SaeError> {
    let epoch_ends = Mutex::new(Vec::new());
    let progress = |e: &ProgressEvent| {
        // The first point reports for the group: all points share each epoch.
        if e.kind == ProgressKind::EpochEnd && e.point == points[0].name {
            epoch_ends.lock().unwrap().push(Instant::now());
        }
    };
    let start = Instant::now();
    let results = train_sweep(points, TrainData::autoencoding(data, d_in), path, &progress);
    let total = start.elapsed().as_secs_f64();
    let mut steps = 0;
    let mut last = None;
    for result in results {
        let trained = result?;
        steps += trained.steps;
        last = trained.curve.last().cloned();
    }
    let mut epoch_seconds = Vec::new();
    let mut previous = start;
    for end in epoch_ends.into_inner().unwrap() {
        epoch_seconds.push((end - previous).as_secs_f64());
        previous = end;
    }
    let steady = if epoch_seconds.len() > 1 {
        &epoch_seconds[1..]
    } else {
        &epoch_seconds[..]
    };
    let last = last.expect("at least one epoch");
    Ok(RunTiming {
        label: label.to_string(),
        points: points.len(),
        steady_seconds_per_epoch: steady.iter().sum::<f64>() / steady.len() as f64,
        epoch_seconds,
        steps_per_second: steps as f64 / total,
        final_l0: last.l0,
        final_explained_variance: last.explained_variance,
        peak_rss_mib: peak_rss_mib(),
    })
}

/// Trains the fast path, the reference path and an L1-coefficient sweep on
/// `activation_like` data and times them.
pub fn run(bench: &BenchConfig) -> Result<BenchReport, SaeError> {
    let data = synthetic::activation_like(bench.rows, bench.d_in, bench.seed);
    let d_in = bench.d_in;
    let mut runs = Vec::new();
    if bench.fast_epochs > 0 {
        let point = [SweepPoint {
            name: "fast".into(),
            cfg: notebook_config(bench, bench.fast_epochs),
        }];
        runs.push(time_run(
            "fast path (L1)",
            &point,
            &data,
            d_in,
            &TrainPath::Fast,
        )?);
        let mut topk = notebook_config(bench, bench.fast_epochs);
        topk.architecture = Architecture::top_k(32);
        let point = [SweepPoint {
            name: "fast-topk".into(),
            cfg: topk,
        }];
        runs.push(time_run(
            "fast path (TopK k=32)",
            &point,
            &data,
            d_in,
            &TrainPath::Fast,
        )?);
    }
    if bench.reference_epochs > 0 {
        let point = [SweepPoint {
            name: "reference".into(),
            cfg: notebook_config(bench, bench.reference_epochs),
        }];
        let path = TrainPath::Reference {
            device: Device::Cpu,
        };
        runs.push(time_run(
            "reference path (L1, candle CPU)",
            &point,
            &data,
            d_in,
            &path,
        )?);
    }
    if bench.sweep_epochs > 0 && !bench.sweep_l1_coeffs.is_empty() {
        let points: Vec<SweepPoint> = bench
            .sweep_l1_coeffs
            .iter()
            .map(|&l1_coeff| {
                let architecture = Architecture::l1(l1_coeff);
                SweepPoint {
                    name: architecture.label(),
                    cfg: SaeConfig {
                        architecture,
                        ..notebook_config(bench, bench.sweep_epochs)
                    },
                }
            })
            .collect();
        let label = format!("fast sweep ({} L1 points)", points.len());
        runs.push(time_run(&label, &points, &data, d_in, &TrainPath::Fast)?);
    }
    Ok(BenchReport {
        rows: bench.rows,
        d_in,
        d_sae: bench.d_sae,
        threads: rayon::current_num_threads(),
        runs,
    })
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "SAE training, {} rows, {} -> {}, batch 64, {} threads",
            self.rows, self.d_in, self.d_sae, self.threads
        )?;
        for r in &self.runs {
            let epochs: Vec<String> = r.epoch_seconds.iter().map(|s| format!("{s:.3}")).collect();
            writeln!(
                f,
                "{:<34} {:>8.3} s/epoch (steady)  {:>8.0} steps/s  epochs [{}] s  L0 {:.1}  EV {:.3}  peak RSS {:.0} MiB",
                r.label,
                r.steady_seconds_per_epoch,
                r.steps_per_second,
                epochs.join(", "),
                r.final_l0,
                r.final_explained_variance,
                r.peak_rss_mib
            )?;
        }
        Ok(())
    }
}
