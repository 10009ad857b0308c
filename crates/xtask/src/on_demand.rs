//! `cargo xtask dashboard`: feature dashboards rendered when asked, from the
//! fresh artifacts of this config, into `<store>/.dashboards/<sae key>/`
//! (outside every artifact: nothing stored changes).

use std::path::PathBuf;

use activations::{ActivationStore, VerifyMode};
use anyhow::{Context, Result};
use artifacts::Graph;
use candle_core::Device;

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
    let (train_view, test_view) = (
        store
            .layer("train", &point.layer)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        store
            .layer("test", &point.layer)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let (train, test) = (train_view.to_vec(), test_view.to_vec());
    let (train_labels, test_labels) = (train_view.labels(), test_view.labels());
    let layer = analysis::LayerData {
        layer: &point.layer,
        width: train_view.width(),
        train: &train,
        test: &test,
        train_labels: &train_labels,
        test_labels: &test_labels,
        train_pixels: &data.train.images.pixels,
        mlp: &model,
    };
    let sae = sae::load(&sae_dir)?;
    let name = point.name.trim_start_matches("sae/").replace('/', "_");
    let run = analysis::SaeRun {
        name: &name,
        sae: &sae,
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
