//! `sae/<point>`: one SAE per sweep point, all reading the same cached
//! activations. Points that need training are trained together, one pass over
//! the data stepping every point on each batch, then each is committed as its
//! own artifact with its final metrics on train and test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use activations::{ActivationStore, VerifyMode};
use artifacts::{Stage, StageError, StageInputs};
use candle_core::Device;
use mlp::Mlp;
use sae::{SweepPoint, Trained};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::mlp::load_weights;
use crate::config::{Point, SaeSweep, TrainerDevice};
use crate::progress::Progress;

/// The sweep's points, trained on first demand by [`sae::SweepScheduler`]
/// (points of one layer and path train together), with a progress bar each.
pub struct SweepTrainer {
    scheduler: sae::SweepScheduler,
    /// Reference-path points run on the first CUDA device.
    pub cuda: bool,
}

impl SweepTrainer {
    pub fn new(sweep: &SaeSweep) -> Arc<SweepTrainer> {
        let points = sweep
            .points()
            .into_iter()
            .map(|p| sae::ScheduledPoint {
                group: format!("{}/{}", p.layer, p.reference_path),
                point: SweepPoint {
                    name: p.name,
                    cfg: p.cfg,
                },
            })
            .collect();
        Arc::new(SweepTrainer {
            scheduler: sae::SweepScheduler::new(points),
            cuda: sweep.device == TrainerDevice::Cuda,
        })
    }

    pub fn set_pending(&self, names: BTreeSet<String>) {
        self.scheduler.set_pending(names);
    }

    fn trained(&self, point: &Point, train: &[f32]) -> Result<Trained, StageError> {
        let path = if point.reference_path {
            let device = if self.cuda {
                Device::new_cuda(0)?
            } else {
                Device::Cpu
            };
            sae::TrainPath::Reference { device }
        } else {
            sae::TrainPath::Fast
        };
        let bars: Mutex<BTreeMap<String, Progress>> = Mutex::new(BTreeMap::new());
        let trained = self.scheduler.trained(&point.name, train, &path, &|event| {
            let mut bars = bars.lock().expect("no panics while locked");
            let bar = bars
                .entry(event.point.to_string())
                .or_insert_with(|| Progress::new(event.point, event.steps_total as u64, "steps"));
            bar.set(event.step as u64, || {
                format!(
                    "epoch {}/{} loss {:.3} L0 {:.1}",
                    event.epoch, event.epochs, event.loss, event.l0
                )
            });
        });
        bars.into_inner()
            .expect("no panics while locked")
            .values()
            .for_each(Progress::finish);
        Ok(trained?)
    }
}

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
        sae::save(&trained.sae, out)?;
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
