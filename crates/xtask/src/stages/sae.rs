//! `sae/<point>`: one SAE per sweep point, all reading the same cached
//! activations. Points that need training are trained together, one pass over
//! the data stepping every point on each batch, then each is committed as its
//! own artifact with its final metrics on train and test.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use activations::{ActivationStore, VerifyMode};
use artifacts::{Key, KeySpec, Stage, StageError, StageInputs};
use candle_core::Device;
use mlp::Mlp;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::kept;
use super::mlp::load_weights;
use crate::sweep::Point;
use crate::sweep::SweepTrainer;

pub struct SaeStage {
    pub point: Point,
    pub trainer: Arc<SweepTrainer>,
    /// Where finished points and training states are kept until committed (`kept`).
    pub store_root: PathBuf,
    /// How often a training point's state is kept (`--checkpoint-every`).
    pub checkpoint_every: std::time::Duration,
}

/// The key the graph gives the point with `params` reading these inputs.
fn point_key(params: &Value, inputs: &StageInputs) -> Key {
    KeySpec {
        stage: "sae".into(),
        fingerprint: env!("SAELAB_FP_SAE").into(),
        params: json!({ "sae": params }),
        inputs: ["activations", "mlp"]
            .into_iter()
            .map(|role| (role.to_string(), inputs.manifest(role).key.clone()))
            .collect(),
    }
    .key()
}

/// `metrics.json` of an SAE artifact (also its manifest's metrics): written
/// here and read back by the analysis stage through this one type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeMetricsFile {
    pub train: sae::EvalMetrics,
    pub test: sae::EvalMetrics,
    /// On the test split, the layer replaced by the SAE's reconstruction (a
    /// transcoder's output layer by its prediction).
    pub downstream: mlp::SpliceMetrics,
    /// The point's own training time (a sweep trains its points side by side, one per core).
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
        let (layer, output) = (&self.point.layer, &self.point.output);
        let test_view = store.layer("test", layer)?;
        let (train, test) = (store.layer("train", layer)?.to_vec(), test_view.to_vec());
        // A transcoder predicts its output layer; an SAE, its own input.
        let targets = if output == layer {
            None
        } else {
            let (train, test) = (store.layer("train", output)?, store.layer("test", output)?);
            Some((train.to_vec(), test.to_vec()))
        };
        let (train_target, test_target) = match &targets {
            Some((train, test)) => (train.as_slice(), test.as_slice()),
            None => (train.as_slice(), test.as_slice()),
        };
        let (d_in, d_out) = (self.point.cfg.d_in, self.point.cfg.d_out());
        let data = sae::TrainData::transcoding(&train, d_in, train_target, d_out);
        let origin = sae::Origin {
            model_name: format!("saelab-mlp-{}", inputs.manifest("mlp").key),
            hook_name: layer.clone(),
            hook_name_out: targets.is_some().then(|| output.clone()),
        };
        let key = point_key(&self.point.params, inputs);
        // Trained in this run with an earlier point: held in memory. Else
        // perhaps kept by a run that was interrupted.
        let kept = (!self.trainer.holds(&self.point.name))
            .then(|| kept::load_finished(&self.store_root, &key))
            .flatten();
        let from_before = kept.is_some();
        let key_of = |name: &str| self.trainer.params_of(name).map(|p| point_key(p, inputs));
        let root = &self.store_root;
        let trained = match kept {
            Some(trained) => trained,
            None => self.trainer.trained(
                &self.point,
                data,
                // Its group shares its layers, so its origin.
                &|name, trained| {
                    if let Some(key) = key_of(name) {
                        kept::keep_finished(root, &key, trained, &origin);
                    }
                },
                &sae::Checkpoints {
                    resume: &|name| key_of(name).and_then(|key| kept::load_checkpoint(root, &key)),
                    save: &|state| {
                        if let Some(key) = key_of(state.point()) {
                            kept::keep_checkpoint(root, &key, state);
                        }
                    },
                    every: self.checkpoint_every,
                },
            )?,
        };
        sae::save(&trained.sae, out, &origin)?;
        sae::TrainingRecord::of(&trained).save(out)?;

        let on_train = sae::evaluate_on(&trained.sae, &train, train_target)?;
        let on_test = sae::evaluate_on(&trained.sae, &test, test_target)?;
        let model = Mlp::new(&load_weights(inputs.dir("mlp"))?, &Device::Cpu)?;
        let mean_row: Vec<f32> = sae::column_mean(train_target, train_target.len() / d_out, d_out)
            .into_iter()
            .map(|m| m as f32)
            .collect();
        // The output layer replaced by the prediction: for a transcoder, the
        // whole sublayer it stands in for.
        let downstream = model.splice_metrics(
            output,
            test_target,
            &sae::reconstruct(&trained.sae, &test)?,
            &mean_row,
            &test_view.labels(),
        )?;
        let metrics = SaeMetricsFile {
            // Points of a sweep train together, so the stage's own wall time
            // is the group's for the first point and ~0 for the rest.
            headline: format!(
                "L0 {:.1}, EV {:.3}, dead {}/{}, CE recovered {:.3}, trained in {:.1} s{}",
                on_test.l0,
                on_test.explained_variance,
                on_train.dead,
                trained.sae.d_sae(),
                downstream.ce_recovered_zero,
                trained.seconds,
                match (from_before, trained.resumed_after_epoch) {
                    (true, _) => " (kept from an interrupted run)".to_string(),
                    (false, Some(epoch)) => format!(
                        " (resumed after epoch {epoch}/{} of an interrupted run)",
                        self.point.cfg.epochs
                    ),
                    (false, None) => String::new(),
                }
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
