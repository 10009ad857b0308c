//! `analysis`: what the sweep's features mean. Reads every SAE of the sweep,
//! the cached activations and the MLP, and writes (per layer) the feature,
//! neuron and probe tables, the plots, the dashboards and `report.html`.

use std::path::{Path, PathBuf};

use activations::{ActivationStore, VerifyMode};
use analysis::{AnalysisConfig, LayerData, SaeMetrics, SaeRun};
use artifacts::{Stage, StageError, StageInputs};
use candle_core::Device;
use serde_json::{json, Value};

use super::mlp::{load_mnist, load_weights, MlpMetricsFile, MLP_METRICS_FILE};
use super::sae::{SaeMetricsFile, METRICS_FILE};
use crate::config::Point;

pub struct AnalysisStage {
    pub points: Vec<Point>,
    pub cfg: AnalysisConfig,
}

/// The folder a layer's report goes to inside the artifact.
pub fn layer_folder(layer: &str) -> String {
    layer.replace('.', "_")
}

/// A sweep point's folder name: its instance name without the `sae/` prefix.
fn run_folder(point: &Point) -> String {
    point.name.trim_start_matches("sae/").replace('/', "_")
}

impl Stage for AnalysisStage {
    fn name(&self) -> &str {
        "analysis"
    }
    fn kind(&self) -> &str {
        "analysis"
    }
    fn fingerprint(&self) -> String {
        env!("SAELAB_FP_ANALYSIS").into()
    }
    fn params(&self) -> Value {
        json!({ "analysis": self.cfg })
    }
    fn inputs(&self) -> Vec<(String, String)> {
        let mut inputs = vec![
            ("mnist".to_string(), "mnist".to_string()),
            ("mlp".into(), "mlp".into()),
            ("activations".into(), "extract".into()),
        ];
        inputs.extend(self.points.iter().map(|p| (p.name.clone(), p.name.clone())));
        inputs
    }
    fn run(&self, inputs: &StageInputs, out: &Path) -> Result<Value, StageError> {
        let data = load_mnist(inputs.dir("mnist"))?;
        let model = mlp::Mlp::new(&load_weights(inputs.dir("mlp"))?, &Device::Cpu)?;
        let mlp_metrics: MlpMetricsFile = super::read_json(inputs.dir("mlp"), MLP_METRICS_FILE)?;
        let mlp_losses = mlp_metrics.step_losses;
        let store = ActivationStore::open_dir(inputs.dir("activations"), VerifyMode::Sizes)?;
        let mut layers: Vec<&str> = self.points.iter().map(|p| p.layer.as_str()).collect();
        layers.dedup();
        let mut reports = Vec::new();
        let mut headline = String::new();
        for layer in layers {
            let (train_view, test_view) =
                (store.layer("train", layer)?, store.layer("test", layer)?);
            let (train, test) = (train_view.to_vec(), test_view.to_vec());
            let (train_labels, test_labels) = (train_view.labels(), test_view.labels());
            let layer_data = LayerData {
                layer,
                width: train_view.width(),
                train: &train,
                test: &test,
                train_labels: &train_labels,
                test_labels: &test_labels,
                train_pixels: &data.train.images.pixels,
                mlp: &model,
            };
            let points: Vec<&Point> = self.points.iter().filter(|p| p.layer == layer).collect();
            let mut loaded = Vec::new();
            for point in &points {
                let dir = inputs.dir(&point.name);
                let sae = sae::load(dir)?;
                let curve = sae::TrainingRecord::load(dir)?.curve;
                let m: SaeMetricsFile = super::read_json(dir, METRICS_FILE)?;
                let metrics = SaeMetrics {
                    l0: m.test.l0,
                    mse: m.test.mse,
                    explained_variance: m.test.explained_variance,
                    dead: m.train.dead,
                    ce_recovered: m.downstream.ce_recovered_zero,
                    spliced_accuracy: m.downstream.spliced.accuracy,
                };
                loaded.push((run_folder(point), sweep_params(point), sae, curve, metrics));
            }
            let runs: Vec<SaeRun<'_>> = loaded
                .iter()
                .map(|(name, params, sae, curve, metrics)| SaeRun {
                    name,
                    params: params.clone(),
                    sae,
                    curve,
                    metrics: metrics.clone(),
                })
                .collect();
            let folder = out.join(layer_folder(layer));
            std::fs::create_dir_all(&folder)?;
            let (report, summaries) =
                analysis::analyse_sweep(&layer_data, &runs, &mlp_losses, &self.cfg, &folder)?;
            let best = |f: fn(&analysis::SaeSummary) -> f64| {
                summaries.iter().map(f).fold(f64::NAN, f64::max)
            };
            headline = format!(
                "{} SAE(s) on {layer}: best MI {:.3} bits (features) vs {:.3} (neurons)",
                summaries.len(),
                best(|s| s.features.max_mi_bits),
                best(|s| s.neurons.max_mi_bits)
            );
            reports.push(
                report
                    .strip_prefix(out)
                    .map(Path::to_path_buf)
                    .unwrap_or(report),
            );
        }
        Ok(serde_json::to_value(AnalysisMetrics { reports, headline })?)
    }
}

/// The point's sweep coordinates, flat, for the sweep table.
fn sweep_params(point: &Point) -> Value {
    let cfg = &point.cfg;
    let mut params = json!({
        "layer": point.layer,
        "variant": cfg.variant.architecture().name(),
        "d_sae": cfg.d_sae,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "resample": cfg.resample.is_some(),
    });
    for (key, value) in cfg.variant.sweep_coordinates() {
        params[key] = value;
    }
    params
}

/// The analysis artifact's manifest metrics, read back through this type.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisMetrics {
    /// `report.html` of each layer, relative to the artifact folder.
    pub reports: Vec<PathBuf>,
    pub headline: String,
}

/// The report pages of a fresh analysis artifact; a manifest without them is
/// an error naming the artifact.
pub fn report_paths(
    dir: &Path,
    manifest: &artifacts::Manifest,
) -> Result<Vec<PathBuf>, StageError> {
    let metrics: AnalysisMetrics =
        serde_json::from_value(manifest.metrics.clone()).map_err(|e| {
            format!(
                "{}: its manifest's metrics are not an analysis's: {e}",
                dir.display()
            )
        })?;
    Ok(metrics.reports.iter().map(|p| dir.join(p)).collect())
}
