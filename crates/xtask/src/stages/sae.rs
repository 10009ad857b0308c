//! `sae/<point>`: one SAE per sweep point, all reading the same cached
//! activations. Points that need training are trained together, one pass over
//! the data stepping every point on each batch, then each is committed as its
//! own artifact with its final metrics on train and test.

use std::path::Path;
use std::sync::Arc;

use activations::{ActivationStore, VerifyMode};
use artifacts::{Stage, StageError, StageInputs};
use candle_core::Device;
use mlp::Mlp;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::mlp::load_weights;
use crate::sweep::Point;
use crate::sweep::SweepTrainer;

pub struct SaeStage {
    pub point: Point,
    pub trainer: Arc<SweepTrainer>,
}

/// `metrics.json` of an SAE artifact (also its manifest's metrics): written
/// here and read back by the analysis stage through this one type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeMetricsFile {
    pub train: sae::EvalMetrics,
    pub test: sae::EvalMetrics,
    /// On the test split, the layer replaced by the SAE's reconstruction.
    pub downstream: mlp::SpliceMetrics,
    /// The sweep group's training time (points of a sweep train together).
    pub train_seconds: f64,
    pub final_epoch: Option<sae::CurvePoint>,
    /// Features reset by resampling, over the whole run.
    pub resampled: usize,
    pub headline: String,
}

pub const METRICS_FILE: &str = "metrics.json";

impl SaeMetricsFile {
    /// What the analysis reports: test-split quality, train-split dead count.
    pub fn analysed(&self) -> analysis::SaeMetrics {
        analysis::SaeMetrics {
            l0: self.test.l0,
            mse: self.test.mse,
            explained_variance: self.test.explained_variance,
            dead: self.train.dead,
            ce_recovered: self.downstream.ce_recovered_zero,
            spliced_accuracy: self.downstream.spliced.accuracy,
        }
    }
}

impl Stage for SaeStage {
    fn name(&self) -> &str {
        &self.point.name
    }
    fn kind(&self) -> &str {
        "sae"
    }
    fn fingerprint(&self) -> String {
        env!("SAELAB_FP_SAE").into()
    }
    fn params(&self) -> Value {
        json!({ "sae": self.point.params })
    }
    fn inputs(&self) -> Vec<(String, String)> {
        vec![
            ("activations".into(), "extract".into()),
            ("mlp".into(), "mlp".into()),
        ]
    }
    fn run(&self, inputs: &StageInputs, out: &Path) -> Result<Value, StageError> {
        let store = ActivationStore::open_dir(inputs.dir("activations"), VerifyMode::Sizes)?;
        let layer = &self.point.layer;
        let train_view = store.layer("train", layer)?;
        let test_view = store.layer("test", layer)?;
        let (train, test) = (train_view.to_vec(), test_view.to_vec());
        let trained = self.trainer.trained(&self.point, &train)?;
        let origin = sae::Origin {
            model_name: format!("saelab-mlp-{}", inputs.manifest("mlp").key),
            hook_name: layer.clone(),
        };
        sae::save(&trained.sae, out, &origin)?;
        sae::TrainingRecord::of(&trained).save(out)?;

        let on_train = sae::evaluate(&trained.sae, &train)?;
        let on_test = sae::evaluate(&trained.sae, &test)?;
        let model = Mlp::new(&load_weights(inputs.dir("mlp"))?, &Device::Cpu)?;
        let d_in = self.point.cfg.d_in;
        let mean_row: Vec<f32> = sae::column_mean(&train, train.len() / d_in, d_in)
            .into_iter()
            .map(|m| m as f32)
            .collect();
        let downstream = model.splice_metrics(
            layer,
            &test,
            &sae::reconstruct(&trained.sae, &test)?,
            &mean_row,
            &test_view.labels(),
        )?;
        let metrics = SaeMetricsFile {
            // Points of a sweep train together, so the stage's own wall time
            // is the group's for the first point and ~0 for the rest.
            headline: format!(
                "L0 {:.1}, EV {:.3}, dead {}/{}, CE recovered {:.3}, trained in {:.1} s",
                on_test.l0,
                on_test.explained_variance,
                on_train.dead,
                trained.sae.d_sae(),
                downstream.ce_recovered_zero,
                trained.seconds
            ),
            train: on_train,
            test: on_test,
            downstream,
            train_seconds: trained.seconds,
            final_epoch: trained.curve.last().cloned(),
            resampled: trained.resamples.iter().map(|r| r.features.len()).sum(),
        };
        super::write_json(out, METRICS_FILE, &metrics)?;
        Ok(serde_json::to_value(&metrics)?)
    }
}
