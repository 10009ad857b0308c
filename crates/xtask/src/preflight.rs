//! What is checked before a run builds anything, beyond the config itself:
//! a named MNIST folder, and whether the SAE sweep fits in memory (with the
//! estimates `stages` prints).

use anyhow::{bail, Result};

use crate::{stages, sweep, Session};

/// MNIST's rows (train and test): every layer the store caches has them.
const ROWS: u64 = 70_000;
const TRAIN_ROWS: u64 = 60_000;
/// The process before any stage's data: binary, thread stacks, allocator.
const BASE_BYTES: u64 = 16_000_000;

/// Set to `off` to skip the memory check (an estimate that misjudges a machine).
pub const MEMORY_CHECK_ENV: &str = "SAELAB_MEMORY_CHECK";

/// An estimate of the peak memory of training `point` alone: the trainer's
/// weights with Adam's two moments, the encoder's packed copy, the
/// gradients and the exported SAE (6 copies), two batch-by-d_sae buffers,
/// and when it runs past one epoch the copy a kept training state takes (2
/// more: measured, a d_sae 65536 point over 2 epochs peaked at 568 MB), all
/// f32.
pub fn point_training_bytes(point: &sweep::Point) -> u64 {
    let c = &point.cfg;
    let skip = match c.transcoder {
        Some(t) if t.skip => (c.d_in * t.d_out) as u64,
        _ => 0,
    };
    let weights = c.d_sae as u64 * (c.d_in + c.d_out()) as u64 + skip;
    let copies = if c.epochs > 1 { 8 } else { 6 };
    4 * (copies * weights + 2 * c.batch_size as u64 * c.d_sae as u64)
}

/// An estimate of the SAE stage's peak. Points train in groups, one per
/// layer pair (`layer`, `output`), each group with its layers' activations
/// (mapped and copied, train and test; a normalised copy of train where a
/// point normalises) and its points training at once, one per thread: the
/// largest group's.
pub fn sae_stage_bytes(points: &[sweep::Point], threads: usize) -> u64 {
    let mut groups: std::collections::BTreeMap<(&str, &str), Vec<&sweep::Point>> =
        std::collections::BTreeMap::new();
    for p in points {
        groups.entry((&p.layer, &p.output)).or_default().push(p);
    }
    let group_bytes = |members: &[&sweep::Point]| {
        let c = &members[0].cfg;
        let width = (c.d_in + if c.transcoder.is_some() { c.d_out() } else { 0 }) as u64;
        let normalised = members.iter().any(|p| {
            p.cfg.normalize_activations == sae::NormalizeActivations::ExpectedAverageOnlyIn
        });
        let data = 4 * width * (2 * ROWS + if normalised { TRAIN_ROWS } else { 0 });
        let mut each: Vec<u64> = members.iter().map(|p| point_training_bytes(p)).collect();
        each.sort_by_key(|b| std::cmp::Reverse(*b));
        data + each.iter().take(threads.max(1)).sum::<u64>()
    };
    BASE_BYTES + groups.values().map(|g| group_bytes(g)).max().unwrap_or(0)
}

/// The analysis's fixed share, fitted to the default run's peak: MNIST's
/// images, the MLP, the neuron baseline's probes, polars and the report.
const ANALYSIS_BASE_BYTES: u64 = 200_000_000;
/// Per non-zero activation at the analysis's peak (measured at d_sae 65536,
/// L0 1324): its sparse code (12 bytes) and its row of `feature_acts`
/// before that table is written.
const ANALYSIS_BYTES_PER_ACTIVE: f64 = 44.0;

/// What the analysis estimate needs of one trained SAE.
pub struct AnalysedSae {
    pub d_in: usize,
    pub d_out: usize,
    pub d_sae: usize,
    /// Features that fired on the training rows.
    pub live: usize,
    /// Mean active features per row.
    pub l0: f64,
}

/// An estimate of the analysis stage's peak: the fixed share, the cached
/// layers it copies (`width`: their summed widths; mapped and copied), every
/// SAE's weights and decoder matcher, and the largest working set of one
/// SAE analysed at a time: its codes on every row with their table, its
/// reconstruction of the train rows, a feature card per live feature, and
/// the decoder-cosine block.
pub fn analysis_bytes(width: usize, saes: &[AnalysedSae]) -> u64 {
    let held: u64 = saes
        .iter()
        .map(|s| 4 * s.d_sae as u64 * (s.d_in + 2 * s.d_out) as u64)
        .sum();
    let working = saes
        .iter()
        .map(|s| {
            let codes = ANALYSIS_BYTES_PER_ACTIVE * ROWS as f64 * s.l0.max(0.0);
            let x_hat = 4 * TRAIN_ROWS * s.d_out as u64;
            let cards = 8_000 * s.live as u64;
            let cosines = 8 * analysis::atlas::BLOCK_PRODUCTS.min(s.live * s.live) as u64;
            codes as u64 + x_hat + cards + cosines
        })
        .max()
        .unwrap_or(0);
    ANALYSIS_BASE_BYTES + 8 * ROWS * width as u64 + held + working
}

/// Refuses an analysis that cannot fit ([`analysis_bytes`]), naming the
/// widest SAE's key and the estimate.
pub fn check_analysis_memory(widest: &str, d_sae: usize, needed: u64) -> Result<(), String> {
    let Some((available, what)) = memory_limit() else {
        return Ok(());
    };
    if needed > available {
        let gb = |b: u64| b as f64 / 1e9;
        return Err(format!(
            "sae.d_sae = {d_sae} (point {widest}): the analysis needs about {:.2} GB, more than {what} of {:.2} GB; lower sae.d_sae, or set {MEMORY_CHECK_ENV}=off if this estimate is wrong here",
            gb(needed),
            gb(available)
        ));
    }
    Ok(())
}

/// Refuses, before anything runs, a sweep whose SAE stage cannot fit in this
/// machine's memory (or the process's address-space limit) by
/// [`sae_stage_bytes`], naming the key and the estimate: a config that could
/// only end in an allocation failure.
pub fn check_memory(session: &Session) -> Result<()> {
    let Some((available, what)) = memory_limit() else {
        return Ok(());
    };
    let points = session.config.sae.points();
    let threads = rayon::current_num_threads().min(points.len());
    let needed = sae_stage_bytes(&points, threads);
    if needed > available {
        let largest = points
            .iter()
            .max_by_key(|p| point_training_bytes(p))
            .expect("a sweep has a point");
        let gb = |b: u64| b as f64 / 1e9;
        let fewer = if threads > 1 {
            ", train fewer points at once (--threads 1)"
        } else {
            ""
        };
        bail!(
            "sae.d_sae = {} needs about {:.1} GB to train (point {}, {} at once, with its activations), more than {what} of {:.1} GB; lower sae.d_sae or sae.batch_size{fewer}, or set {MEMORY_CHECK_ENV}=off if this estimate is wrong here",
            largest.cfg.d_sae,
            gb(needed),
            largest.name,
            threads,
            gb(available)
        );
    }
    Ok(())
}

/// What the estimates are checked against ([`memory_available`]); `None`
/// when the check is off ([`MEMORY_CHECK_ENV`]) or the system does not say.
fn memory_limit() -> Option<(u64, &'static str)> {
    if std::env::var(MEMORY_CHECK_ENV).is_ok_and(|v| v == "off") {
        return None;
    }
    memory_available()
}

/// The smaller of this machine's memory and the process's address-space
/// limit, where the system says them (Linux: /proc), with what it is.
fn memory_available() -> Option<(u64, &'static str)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    let total = (kib * 1024, "this machine's memory");
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits
                .lines()
                .find(|l| l.starts_with("Max address space"))?
                .to_string();
            line.split_whitespace().nth(3)?.parse::<u64>().ok()
        })
        .map(|bytes| (bytes, "the address-space limit (ulimit -v)"));
    Some(match limit {
        Some(limit) if limit.0 < total.0 => limit,
        _ => total,
    })
}

/// The SAE stage's estimated peak memory, and the analysis's once every
/// SAE it reads is built (it needs their live features and L0).
pub fn memory_estimates(session: &Session, graph: &artifacts::Graph<'_>) -> Vec<String> {
    let points = session.config.sae.points();
    let threads = rayon::current_num_threads().min(points.len());
    let gb = |b: u64| b as f64 / 1e9;
    let mut lines = vec![format!(
        "memory estimate: SAE stage {:.2} GB at peak ({threads} point(s) at once)",
        gb(sae_stage_bytes(&points, threads))
    )];
    let built: std::collections::BTreeMap<String, std::path::PathBuf> = graph
        .plan(&session.store)
        .into_iter()
        .filter(|p| matches!(p.state, artifacts::State::Fresh(_)))
        .map(|p| {
            let dir = session.store.root().join(&p.kind).join(p.key.as_str());
            (p.name, dir)
        })
        .collect();
    lines.push(
        match stages::analysis::memory_estimate(&points, &|p| built.get(&p.name).cloned()) {
            Ok((bytes, _)) => format!("memory estimate: analysis {:.2} GB at peak", gb(bytes)),
            Err(_) => "memory estimate: analysis, once every SAE is built".to_string(),
        },
    );
    lines
}

/// A named MNIST folder is used or refused, cached store or not.
pub fn check_named_mnist_dir(session: &Session) -> Result<()> {
    if let Some(dir) = &session.ctx.mnist_dir {
        stages::mnist::check_named_dir(dir, &session.ctx.store_root)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}
