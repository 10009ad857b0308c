//! What is checked before a run builds anything, beyond the config itself:
//! a named MNIST folder, and whether the sweep can fit in memory.

use anyhow::{bail, Result};

use crate::{stages, sweep, Session};

/// Refuses, before anything runs, a sweep whose two largest points (one per
/// core) cannot be trained at once in this machine's memory, by a lower
/// bound ([`sweep::Point::training_bytes`]): a config that could only end in
/// an allocation failure is named instead.
pub fn check_memory(session: &Session) -> Result<()> {
    let Some(total) = memory_total_bytes() else {
        return Ok(());
    };
    let mut points: Vec<(u64, sweep::Point)> = session
        .config
        .sae
        .points()
        .into_iter()
        .map(|p| (p.training_bytes(), p))
        .collect();
    points.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
    let at_once: u64 = points.iter().take(2).map(|(bytes, _)| bytes).sum();
    if let Some((largest, point)) = points.first() {
        if at_once > total {
            let gb = |b: u64| b as f64 / 1e9;
            let beside = if points.len() > 1 {
                format!(", {:.1} GB with the point trained beside it", gb(at_once))
            } else {
                String::new()
            };
            bail!(
                "sae.d_sae = {} needs at least {:.1} GB to train point {}{beside}, more than this machine's {:.1} GB of memory",
                point.cfg.d_sae,
                gb(*largest),
                point.name,
                gb(total)
            );
        }
    }
    Ok(())
}

/// This machine's memory, where the system says it (Linux: /proc/meminfo).
fn memory_total_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// A named MNIST folder is used or refused, cached store or not.
pub fn check_named_mnist_dir(session: &Session) -> Result<()> {
    if let Some(dir) = &session.ctx.mnist_dir {
        stages::mnist::check_named_dir(dir, &session.ctx.store_root)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}
