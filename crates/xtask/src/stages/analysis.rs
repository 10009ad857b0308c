//! `analysis`: what the sweep's features mean. Reads every SAE of the sweep,
//! the cached activations and the MLP, and writes (per layer) the feature,
//! neuron and probe tables, the plots, the dashboards and `report.html`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use activations::{ActivationStore, VerifyMode};
use analysis::{AnalysisConfig, LayerData, SaeRun};
use artifacts::{Stage, StageError, StageInputs};
use candle_core::Device;
use serde_json::{json, Value};

use super::mlp::{load_mnist, load_weights, MlpMetricsFile, MLP_METRICS_FILE};
use super::sae::{SaeMetricsFile, METRICS_FILE};
use crate::progress::Progress;
use crate::sweep::Point;

/// A cached layer's train and test values and labels, copied out of the store.
pub struct LayerCopy {
    pub width: usize,
    pub train: Vec<f32>,
    pub test: Vec<f32>,
    pub train_labels: Vec<u8>,
    pub test_labels: Vec<u8>,
}

impl LayerCopy {
    pub fn read(store: &ActivationStore, layer: &str) -> Result<LayerCopy, StageError> {
        let (train, test) = (store.layer("train", layer)?, store.layer("test", layer)?);
        Ok(LayerCopy {
            width: train.width(),
            train: train.to_vec(),
            test: test.to_vec(),
            train_labels: train.labels(),
            test_labels: test.labels(),
        })
    }

    /// The analysis's view of it, with the train images and the MLP.
    pub fn data<'a>(
        &'a self,
        layer: &'a str,
        train_pixels: &'a [u8],
        mlp: &'a mlp::Mlp,
    ) -> LayerData<'a> {
        LayerData {
            layer,
            width: self.width,
            train: &self.train,
            test: &self.test,
            train_labels: &self.train_labels,
            test_labels: &self.test_labels,
            train_pixels,
            mlp,
        }
    }
}

pub struct AnalysisStage {
    pub points: Vec<Point>,
    pub cfg: AnalysisConfig,
    /// The `--config`, `--preset` and `--set` flags of the command that
    /// builds it, for the report's rebuild commands (not a param: two
    /// commands that reach the same key share one report).
    pub flags: String,
    /// The circuits stages whose answers the report shows.
    pub circuits: Vec<String>,
}

/// The folder a layer's report goes to inside the artifact.
pub fn layer_folder(layer: &str) -> String {
    layer.replace('.', "_")
}

/// A sweep point's folder name: its instance name without the `sae/` prefix.
pub fn run_folder(point: &Point) -> String {
    point.name.trim_start_matches("sae/").replace('/', "_")
}

/// The neurons a layer's values belong to: `fc2.pre` and `fc2.post` are
/// fc2's before and after the ReLU (active = positive in both, so the neuron
/// baseline is the same).
fn neurons_of(layer: &str) -> &str {
    layer.split('.').next().unwrap_or(layer)
}

/// The layer whose report a point joins: an SAE's own; a transcoder's, the
/// layer of the sweep's first SAE on the neurons it writes (so SAEs and
/// transcoders of fc2 share one report's panels), else the layer it writes.
pub fn report_layer<'a>(point: &'a Point, points: &'a [Point]) -> &'a str {
    if point.layer == point.output {
        return &point.layer;
    }
    points
        .iter()
        .filter(|p| p.layer == p.output)
        .find(|p| neurons_of(&p.layer) == neurons_of(&point.output))
        .map_or(&point.output, |p| &p.layer)
}

/// Every report layer of a sweep, once each, in the order of their first points.
pub fn report_layers(points: &[Point]) -> Vec<&str> {
    let mut layers: Vec<&str> = Vec::new();
    for point in points {
        let layer = report_layer(point, points);
        if !layers.contains(&layer) {
            layers.push(layer);
        }
    }
    layers
}

/// The analysis's estimated peak memory (`preflight::analysis_bytes`) from
/// each SAE's width, live features and L0 (`metrics.json` in the folder
/// `dir_of` gives each point), with the widest point.
pub fn memory_estimate<'p>(
    points: &'p [Point],
    dir_of: &dyn Fn(&Point) -> Option<PathBuf>,
) -> Result<(u64, &'p Point), StageError> {
    let mut saes = Vec::new();
    let mut widths: BTreeMap<&str, usize> = BTreeMap::new();
    for point in points {
        let dir = dir_of(point).ok_or_else(|| format!("{} is not built yet", point.name))?;
        let m: SaeMetricsFile = super::read_json(&dir, METRICS_FILE)?;
        saes.push(crate::preflight::AnalysedSae {
            d_in: point.cfg.d_in,
            d_out: point.cfg.d_out(),
            d_sae: point.cfg.d_sae,
            live: point.cfg.d_sae.saturating_sub(m.train.dead),
            l0: m.test.l0,
        });
        widths.insert(&point.layer, point.cfg.d_in);
        widths.entry(&point.output).or_insert(point.cfg.d_out());
    }
    // The layers it copies: each point's input and each report's layer.
    let mut copied: Vec<&str> = points.iter().map(|p| p.layer.as_str()).collect();
    copied.extend(report_layers(points));
    copied.sort();
    copied.dedup();
    let width = copied
        .iter()
        .map(|l| widths.get(l).copied().unwrap_or(0))
        .sum();
    let widest = points
        .iter()
        .max_by_key(|p| p.cfg.d_sae)
        .ok_or("an analysis has a point")?;
    Ok((crate::preflight::analysis_bytes(width, &saes), widest))
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
        inputs.extend(report_layers(&self.points).into_iter().map(|layer| {
            let name = super::neurons::stage_name(layer);
            (name.clone(), name)
        }));
        inputs.extend(self.circuits.iter().map(|c| (c.clone(), c.clone())));
        inputs
    }
    fn run(&self, inputs: &StageInputs, out: &Path) -> Result<Value, StageError> {
        // Before anything is loaded: refused if it cannot fit.
        let (needed, widest) =
            memory_estimate(&self.points, &|p| Some(inputs.dir(&p.name).to_path_buf()))?;
        crate::preflight::check_analysis_memory(&widest.name, widest.cfg.d_sae, needed)?;
        let data = load_mnist(inputs.dir("mnist"))?;
        let model = mlp::Mlp::new(&load_weights(inputs.dir("mlp"))?, &Device::Cpu)?;
        let mlp_metrics: MlpMetricsFile = super::read_json(inputs.dir("mlp"), MLP_METRICS_FILE)?;
        let run_info = analysis::RunInfo {
            reproduce: format!("cargo xtask all{}", self.flags),
            version: env!("CARGO_PKG_VERSION").into(),
            built: crate::progress::iso_utc(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            ),
            mlp_test: Some((mlp_metrics.test.loss, mlp_metrics.test.accuracy)),
            mlp_losses: mlp_metrics.step_losses,
            circuits: self
                .circuits
                .iter()
                .map(|name| super::circuits::link(inputs.dir(name)))
                .collect::<Result<_, _>>()?,
        };
        let store = ActivationStore::open_dir(inputs.dir("activations"), VerifyMode::Sizes)?;
        let layers = report_layers(&self.points);
        let mut copies: BTreeMap<&str, LayerCopy> = BTreeMap::new();
        for name in self
            .points
            .iter()
            .map(|p| p.layer.as_str())
            .chain(layers.iter().copied())
        {
            if !copies.contains_key(name) {
                copies.insert(name, LayerCopy::read(&store, name)?);
            }
        }
        let pixels = &data.train.images.pixels;
        let views: BTreeMap<&str, LayerData<'_>> = copies
            .iter()
            .map(|(&name, copy)| (name, copy.data(name, pixels, &model)))
            .collect();
        let mut reports = Vec::new();
        let mut headline = String::new();
        for &layer in &layers {
            let layer_data = &views[layer];
            let mut loaded = Vec::new();
            for point in self
                .points
                .iter()
                .filter(|p| report_layer(p, &self.points) == layer)
            {
                let dir = inputs.dir(&point.name);
                let m: SaeMetricsFile = super::read_json(dir, METRICS_FILE)?;
                let record = sae::TrainingRecord::load(dir)?;
                loaded.push((
                    point,
                    run_folder(point),
                    sae::load(dir)?,
                    record,
                    m.analysed(),
                    analysis::Downstream {
                        clean_loss: m.downstream.clean.loss,
                        clean_accuracy: m.downstream.clean.accuracy,
                        spliced_loss: m.downstream.spliced.loss,
                    },
                ));
            }
            let runs: Vec<SaeRun<'_>> = loaded
                .iter()
                .map(|(point, name, sae, record, metrics, downstream)| SaeRun {
                    name,
                    sae,
                    reads: &views[point.layer.as_str()],
                    writes: &point.output,
                    curve: &record.curve,
                    latents: Some(&record.latents),
                    metrics: metrics.clone(),
                    downstream: Some(*downstream),
                    dashboard_command: format!(
                        "cargo xtask dashboard --sae {}{}",
                        point.name, self.flags
                    ),
                })
                .collect();
            let folder = out.join(layer_folder(layer));
            std::fs::create_dir_all(&folder)?;
            // A line per SAE where stderr is not a terminal, a bar where it is.
            let progress =
                Progress::new(&format!("analysis of {layer}"), runs.len() as u64, "SAEs");
            let baseline =
                super::neurons::read_baseline(inputs.dir(&super::neurons::stage_name(layer)))?;
            let since = std::cell::Cell::new(std::time::Instant::now());
            let (report, summaries) = analysis::analyse_sweep(
                layer_data,
                &baseline,
                &runs,
                &run_info,
                &self.cfg,
                &folder,
                // Wall time since the last SAE (its parts overlap, so their sum overstates it).
                &|done, s| {
                    let seconds = since.replace(std::time::Instant::now()).elapsed();
                    let seconds = seconds.as_secs_f64();
                    progress.set(done as u64, || format!("{} in {seconds:.1} s", s.name));
                },
            )?;
            progress.finish();
            headline = analysis::headline(layer, &summaries);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::{ArchitectureChoice, SaeSweep};

    #[test]
    fn transcoders_join_the_report_of_the_sae_on_their_neurons_and_each_report_is_made_once() {
        let sweep = SaeSweep {
            layer: vec!["fc2.pre".into(), "fc1.pre".into()],
            architecture: vec![
                ArchitectureChoice::Sae(sae::ArchitectureKind::L1),
                ArchitectureChoice::SkipTranscoder,
            ],
            ..SaeSweep::default()
        };
        let points = sweep.points();
        let reports: Vec<(&str, &str)> = points
            .iter()
            .map(|p| (p.name.as_str(), report_layer(p, &points)))
            .collect();
        assert_eq!(
            reports,
            [
                ("sae/fc2.pre/l1-0.003/d1024/s0", "fc2.pre"),
                ("sae/fc1.pre/l1-0.003/d1024/s0", "fc1.pre"),
                (
                    "sae/fc1.post_to_fc2.post/skip_transcoder-l1-0.003/d1024/s0",
                    "fc2.pre"
                ),
            ]
        );
        assert_eq!(report_layers(&points), ["fc2.pre", "fc1.pre"]);
        // Without an SAE on fc2's neurons, the transcoder has a report of its own.
        let alone = SaeSweep {
            architecture: vec![ArchitectureChoice::Transcoder],
            ..SaeSweep::default()
        }
        .points();
        assert_eq!(report_layers(&alone), ["fc2.post"]);
    }
}
