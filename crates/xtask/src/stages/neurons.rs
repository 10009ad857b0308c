//! `neurons/<layer>`: the MLP neurons' statistics and probes on one report
//! layer (`analysis::Baseline`), which every SAE of that layer is compared
//! with. Its own artifact, so retraining or adding an SAE reuses it.

use std::path::Path;

use activations::{ActivationStore, VerifyMode};
use analysis::{AnalysisConfig, Baseline};
use artifacts::{Stage, StageError, StageInputs};
use candle_core::Device;
use serde_json::{json, Value};

use super::analysis::LayerCopy;
use super::mlp::{load_mnist, load_weights};

/// The file a neurons artifact holds.
pub const BASELINE_FILE: &str = "baseline.json";

/// The stage name of `layer`'s neuron baseline.
pub fn stage_name(layer: &str) -> String {
    format!("neurons/{layer}")
}

pub struct NeuronsStage {
    pub name: String,
    pub layer: String,
    pub cfg: AnalysisConfig,
}

impl NeuronsStage {
    pub fn new(layer: &str, cfg: &AnalysisConfig) -> NeuronsStage {
        NeuronsStage {
            name: stage_name(layer),
            layer: layer.to_string(),
            cfg: cfg.clone(),
        }
    }
}

impl Stage for NeuronsStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &str {
        "neurons"
    }
    fn fingerprint(&self) -> String {
        env!("SAELAB_FP_ANALYSIS").into()
    }
    /// Only the keys the baseline reads: a dashboard or display setting
    /// leaves it fresh.
    fn params(&self) -> Value {
        json!({ "neurons": {
            "layer": self.layer,
            "mi_bins": self.cfg.mi_bins,
            "min_support": self.cfg.min_support,
            "probe": self.cfg.probe,
        }})
    }
    fn inputs(&self) -> Vec<(String, String)> {
        vec![
            ("mnist".into(), "mnist".into()),
            ("mlp".into(), "mlp".into()),
            ("activations".into(), "extract".into()),
        ]
    }
    fn run(&self, inputs: &StageInputs, out: &Path) -> Result<Value, StageError> {
        let data = load_mnist(inputs.dir("mnist"))?;
        let model = mlp::Mlp::new(&load_weights(inputs.dir("mlp"))?, &Device::Cpu)?;
        let store = ActivationStore::open_dir(inputs.dir("activations"), VerifyMode::Sizes)?;
        let copy = LayerCopy::read(&store, &self.layer)?;
        let layer = copy.data(&self.layer, &data.train.images.pixels, &model);
        let baseline = Baseline::compute(&layer, &self.cfg)?;
        let path = out.join(BASELINE_FILE);
        let text = serde_json::to_string(&baseline)?;
        // JSON has no NaN: a baseline that would not read back is refused now,
        // not when the analysis needs it.
        serde_json::from_str::<Baseline>(&text).map_err(|e| {
            format!(
                "{}: the neuron baseline of {} does not read back ({e})",
                path.display(),
                self.layer
            )
        })?;
        std::fs::write(&path, text)?;
        let best_probe = baseline
            .probes
            .iter()
            .max_by_key(|p| p.k)
            .map_or(String::new(), |p| {
                format!(", k = {} probe {:.3} test", p.k, p.test_accuracy)
            });
        Ok(json!({
            "headline": format!(
                "{} neurons of {}: best MI {:.3} bits{best_probe}",
                baseline.stats.len(),
                self.layer,
                baseline.mi.max_mi_bits
            ),
        }))
    }
}

/// Reads the baseline a neurons artifact in `dir` holds; an unreadable one
/// is an error naming the file.
pub fn read_baseline(dir: &Path) -> Result<Baseline, StageError> {
    let path = dir.join(BASELINE_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a neuron baseline: {e}", path.display()))?)
}
