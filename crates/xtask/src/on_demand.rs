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

pub fn dashboards(
    session: &Session,
    graph: &Graph<'_>,
    sae_stage: Option<&str>,
    features: &[usize],
) -> Result<PathBuf> {
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
        metrics: analysis::SaeMetrics::default(),
    };
    let out = session
        .store
        .root()
        .join(".dashboards")
        .join(sae_manifest.key.as_str());
    Ok(analysis::dashboards_on_demand(
        &layer,
        &run,
        features,
        &session.config.analysis,
        &out,
    )?)
}
