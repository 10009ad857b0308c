//! `mlp`: trains the classifier, evaluates it on the test split, saves it.

use std::path::Path;
use std::time::Instant;

use artifacts::{Stage, StageError, StageInputs};
use mlp::{Examples, Mlp, TrainConfig, TrainPath, Weights};
use serde_json::Value;

use crate::progress::Progress;

pub struct MlpStage {
    pub cfg: TrainConfig,
}

pub const MODEL_FILE: &str = "model.safetensors";
pub const MLP_METRICS_FILE: &str = "metrics.json";

/// The MLP artifact's manifest metrics, read back (by the run's summary) through this type.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpSummary {
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub train_seconds: f64,
    pub final_train_loss: Option<f32>,
    pub headline: String,
}

/// `metrics.json` of an MLP artifact, written here and read by the analysis stage.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpMetricsFile {
    /// The training loss at every step.
    pub step_losses: Vec<f32>,
    pub test: mlp::Evaluation,
    pub train_seconds: f64,
}

/// Loads the verified MNIST files of a `mnist` artifact.
pub fn load_mnist(dir: &Path) -> Result<mnist::Mnist, StageError> {
    Ok(mnist::load_verified(dir, &mnist::Pins::canonical())?)
}

pub fn examples(split: &mnist::Split) -> Examples<'_> {
    Examples {
        pixels: &split.images.pixels,
        labels: &split.labels.labels,
    }
}

impl Stage for MlpStage {
    fn name(&self) -> &str {
        "mlp"
    }
    fn kind(&self) -> &str {
        "mlp"
    }
    fn fingerprint(&self) -> String {
        env!("SAELAB_FP_MLP").into()
    }
    fn params(&self) -> Value {
        // Keyed by config section, so `status` and `explain` name `mlp.lr`.
        serde_json::json!({ "mlp": self.cfg })
    }
    fn inputs(&self) -> Vec<(String, String)> {
        vec![("mnist".into(), "mnist".into())]
    }
    fn run(&self, inputs: &StageInputs, out: &Path) -> Result<Value, StageError> {
        let data = load_mnist(inputs.dir("mnist"))?;
        let steps = self.cfg.epochs * data.train.len().div_ceil(self.cfg.batch_size);
        let progress = Progress::new("mlp", steps as u64, "steps");
        let started = Instant::now();
        let (weights, log) = mlp::train(
            &self.cfg,
            examples(&data.train),
            &TrainPath::Fast,
            &mut |step, loss| progress.set(step as u64, || format!("loss {loss:.4}")),
        )?;
        let train_seconds = started.elapsed().as_secs_f64();
        progress.finish();
        weights.save(&out.join(MODEL_FILE))?;
        let test = Mlp::new(&weights, &candle_core::Device::Cpu)?.evaluate(examples(&data.test))?;
        let metrics = MlpSummary {
            test_accuracy: test.accuracy,
            test_loss: test.loss,
            train_seconds,
            final_train_loss: log.step_losses.last().copied(),
            headline: format!("test accuracy {:.2}%", 100.0 * test.accuracy),
        };
        super::write_json(
            out,
            MLP_METRICS_FILE,
            &MlpMetricsFile {
                step_losses: log.step_losses,
                test,
                train_seconds,
            },
        )?;
        Ok(serde_json::to_value(&metrics)?)
    }
}

pub fn load_weights(dir: &Path) -> Result<Weights, StageError> {
    Ok(Weights::load(&dir.join(MODEL_FILE))?)
}
