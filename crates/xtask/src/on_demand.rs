//! `cargo xtask dashboard`: feature dashboards rendered when asked, from the
//! fresh artifacts of this config, into `<store>/.dashboards/<sae key>/`
//! (outside every artifact: nothing stored changes).

use std::path::PathBuf;

use activations::{ActivationStore, VerifyMode};
use anyhow::{Context, Result};
use artifacts::Graph;
use candle_core::Device;

use crate::stages::analysis::LayerCopy;
use crate::stages::mlp::{load_mnist, load_weights};
use crate::Session;

/// The store's folder of on-demand dashboards, one folder per SAE key.
const DASHBOARDS: &str = ".dashboards";

/// `gc`'s share for what is drawn on demand: a dashboard folder (named by
/// its SAE's key) or a circuit folder (`<T1 key>-<T2 key>`, `cargo xtask
/// circuit`) goes when an SAE it was drawn from is gone (or being removed by
/// this gc), and is counted in `report`.
pub fn collect_drawn(
    store: &artifacts::Store,
    report: &mut artifacts::GcReport,
    dry_run: bool,
) -> Result<()> {
    let removed_saes: Vec<PathBuf> = report
        .removed
        .iter()
        .filter(|p| p.parent().and_then(|k| k.file_name()) == Some("sae".as_ref()))
        .cloned()
        .collect();
    for drawn in [DASHBOARDS, crate::circuit::CIRCUITS_DIR] {
        let Ok(entries) = std::fs::read_dir(store.root().join(drawn)) else {
            continue;
        };
        for entry in entries.flatten() {
            let folder = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            let orphan = name.split('-').any(|key| {
                let sae = store.root().join("sae").join(key);
                !sae.exists() || removed_saes.contains(&sae)
            });
            if !orphan || !folder.is_dir() {
                continue;
            }
            report.removed_bytes += artifacts::folder_bytes(&folder);
            if !dry_run {
                std::fs::remove_dir_all(&folder)
                    .with_context(|| format!("gc: cannot remove {}", folder.display()))?;
            }
            report.removed.push(folder);
        }
    }
    Ok(())
}

pub fn dashboards(
    session: &Session,
    graph: &Graph<'_>,
    sae_stage: Option<&str>,
    features: &[usize],
) -> Result<(PathBuf, String)> {
    let points = session.config.sae.points();
    let point = match sae_stage {
        Some(name) => points.iter().find(|p| p.name == name).with_context(|| {
            let names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
            format!(
                "--sae {name}: this config has no such SAE; it has {}",
                names.join(", ")
            )
        })?,
        None => points.first().context("this config has no SAE")?,
    };
    let (sae_dir, sae_manifest) = crate::fresh(session, graph, &point.name)?;
    let (mnist_dir, _) = crate::fresh(session, graph, "mnist")?;
    let (mlp_dir, _) = crate::fresh(session, graph, "mlp")?;
    let (extract_dir, _) = crate::fresh(session, graph, "extract")?;
    let data = load_mnist(&mnist_dir).map_err(anyhow::Error::msg)?;
    let model = mlp::Mlp::new(
        &load_weights(&mlp_dir).map_err(anyhow::Error::msg)?,
        &Device::Cpu,
    )?;
    let store = ActivationStore::open_dir(&extract_dir, VerifyMode::Sizes)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The neurons it is compared with are its report's; it encodes its own layer.
    let report = crate::stages::analysis::report_layer(point, &points);
    let read = |name: &str| LayerCopy::read(&store, name).map_err(anyhow::Error::msg);
    let (copy, input_copy) = (read(report)?, read(&point.layer)?);
    let pixels = &data.train.images.pixels;
    let layer = copy.data(report, pixels, &model);
    let reads = input_copy.data(&point.layer, pixels, &model);
    let sae = sae::load(&sae_dir)?;
    let name = point.name.trim_start_matches("sae/").replace('/', "_");
    let run = analysis::SaeRun {
        name: &name,
        sae: &sae,
        reads: &reads,
        writes: &point.output,
        curve: &[],
        latents: None,
        downstream: None,
        dashboard_command: String::new(),
        metrics: analysis::SaeMetrics::default(),
    };
    let out = session
        .store
        .root()
        .join(DASHBOARDS)
        .join(sae_manifest.key.as_str());
    let page =
        analysis::dashboards_on_demand(&layer, &run, features, &session.config.analysis, &out)?;
    Ok((page, point.name.clone()))
}
