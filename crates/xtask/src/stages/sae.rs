//! `sae/<point>`: one SAE per sweep point, all reading the same cached
//! activations. Points that need training are trained together, one pass over
//! the data stepping every point on each batch, then each is committed as its
//! own artifact with its final metrics on train and test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use activations::VerifyMode;
use anyhow::{bail, Result};
use artifacts::{Stage, StageError, StageInputs};
use candle_core::Device;
use mlp::Mlp;
use sae::{SaeConfig, SweepPoint, Trained, Variant};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::extract::open_store;
use super::mlp::load_weights;
use crate::progress::Progress;

/// The `[sae]` table: lists are sweep axes (every combination is one SAE),
/// scalars are shared by every point. Defaults are the notebook's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaeSweep {
    pub layer: Vec<String>,
    pub variant: Vec<sae::Architecture>,
    /// For the l1 and norm_weighted_l1 variants.
    pub l1_coeff: Vec<f64>,
    /// For the topk variant.
    pub k: Vec<usize>,
    pub d_sae: Vec<usize>,
    pub seed: Vec<u64>,
    pub lr: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub shuffle: bool,
    pub l1_reduction: sae::Reduction,
    pub init: sae::Init,
    /// StepLR: every `lr_step_epochs` epochs multiply the lr by `lr_gamma` (gamma 1 = constant).
    pub lr_step_epochs: usize,
    pub lr_gamma: f64,
    /// Steps without firing after which a feature counts as dead.
    pub dead_window_steps: usize,
    pub k_aux: usize,
    pub aux_coeff: f64,
    /// Resample dead features every this many steps (0 = never), up to
    /// `resample_until` steps; a sweep axis, so `[0, 20000]` compares both.
    pub resample_every_steps: Vec<usize>,
    pub resample_until: usize,
    pub resample_sample_rows: usize,
    pub path: TrainerPath,
    pub device: TrainerDevice,
}

/// `sae.path`: which trainer runs the points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainerPath {
    /// The fused CPU trainer.
    Fast,
    /// candle autograd (also on a GPU).
    Reference,
}

/// `sae.device`: where the reference path runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainerDevice {
    Cpu,
    /// The first CUDA GPU; needs a build with `--features cuda`.
    Cuda,
}

impl Default for SaeSweep {
    fn default() -> Self {
        let notebook = SaeConfig::default();
        let (lr_step_epochs, lr_gamma) = match notebook.lr_schedule {
            sae::LrSchedule::StepLr { step_epochs, gamma } => (step_epochs, gamma),
            sae::LrSchedule::Constant => (1, 1.0),
        };
        let Variant::TopK {
            k,
            k_aux,
            aux_coeff,
        } = Variant::top_k(32)
        else {
            unreachable!("top_k makes a TopK variant")
        };
        let Variant::L1 { l1_coeff } = Variant::default() else {
            unreachable!("the default variant is the notebook's L1")
        };
        SaeSweep {
            layer: vec!["fc2.pre".into()],
            variant: vec![Variant::default().architecture()],
            l1_coeff: vec![l1_coeff],
            k: vec![k],
            d_sae: vec![notebook.d_sae],
            seed: vec![notebook.seed],
            lr: notebook.optimizer.lr,
            epochs: notebook.epochs,
            batch_size: notebook.batch_size,
            shuffle: notebook.shuffle,
            l1_reduction: notebook.l1_reduction,
            init: notebook.init,
            lr_step_epochs,
            lr_gamma,
            dead_window_steps: notebook.dead_window_steps,
            k_aux,
            aux_coeff,
            resample_every_steps: vec![0],
            resample_until: 0,
            resample_sample_rows: 8192,
            path: TrainerPath::Fast,
            device: TrainerDevice::Cpu,
        }
    }
}

/// One SAE of the sweep.
#[derive(Clone, Debug)]
pub struct Point {
    pub name: String,
    pub layer: String,
    pub cfg: SaeConfig,
    pub reference_path: bool,
}

impl SaeSweep {
    pub fn validate(&self) -> Result<()> {
        for (key, empty) in [
            ("layer", self.layer.is_empty()),
            ("variant", self.variant.is_empty()),
            ("d_sae", self.d_sae.is_empty()),
            ("seed", self.seed.is_empty()),
            ("resample_every_steps", self.resample_every_steps.is_empty()),
        ] {
            if empty {
                bail!("sae.{key} is an empty list: a sweep axis needs at least one value");
            }
        }
        for layer in &self.layer {
            if mlp::layer_width(layer).is_none() {
                bail!(
                    "sae.layer names {layer:?}, which is not a layer; layers are {}",
                    mlp::LAYER_NAMES.join(", ")
                );
            }
        }
        if self.device == TrainerDevice::Cuda && self.path != TrainerPath::Reference {
            bail!(
                "sae.device = \"cuda\" needs sae.path = \"reference\": the fast path is CPU-only"
            );
        }
        if let Some(&every) = self
            .resample_every_steps
            .iter()
            .find(|&&every| every > 0 && self.resample_until < every)
        {
            bail!("sae.resample_until = {} is below sae.resample_every_steps = {every}: no resampling would happen", self.resample_until);
        }
        let points = self.points();
        if points.len() > 256 {
            bail!(
                "the sae sweep has {} points; at most 256 are allowed in one config",
                points.len()
            );
        }
        for point in points {
            point
                .cfg
                .validate()
                .map_err(|e| anyhow::anyhow!("sae point {}: {e}", point.name))?;
        }
        Ok(())
    }

    /// Every combination of the list-valued keys.
    pub fn points(&self) -> Vec<Point> {
        let mut out = Vec::new();
        for layer in &self.layer {
            for architecture in &self.variant {
                let axes = sae::VariantAxes {
                    l1_coeff: &self.l1_coeff,
                    k: &self.k,
                    k_aux: self.k_aux,
                    aux_coeff: self.aux_coeff,
                };
                let variants = architecture.variants(&axes);
                for variant in variants {
                    let variant_label = variant.label();
                    for &d_sae in &self.d_sae {
                        for &seed in &self.seed {
                            for &every in &self.resample_every_steps {
                                let resampled = if every > 0 {
                                    format!("/rs{every}")
                                } else {
                                    String::new()
                                };
                                out.push(Point {
                                    name: format!(
                                        "sae/{layer}/{variant_label}/d{d_sae}/s{seed}{resampled}"
                                    ),
                                    layer: layer.clone(),
                                    cfg: self.config(layer, variant.clone(), d_sae, seed, every),
                                    reference_path: self.path == TrainerPath::Reference,
                                });
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn config(
        &self,
        layer: &str,
        variant: Variant,
        d_sae: usize,
        seed: u64,
        resample_every_steps: usize,
    ) -> SaeConfig {
        let resample = (resample_every_steps > 0).then(|| sae::ResampleConfig {
            schedule: sae::ResampleSchedule::Every {
                every_steps: resample_every_steps,
                until: self.resample_until,
            },
            sample_rows: self.resample_sample_rows,
        });
        SaeConfig {
            d_in: mlp::layer_width(layer).unwrap_or(0),
            d_sae,
            variant,
            l1_reduction: self.l1_reduction,
            init: self.init,
            optimizer: sae::AdamConfig {
                lr: self.lr,
                ..sae::AdamConfig::default()
            },
            lr_schedule: sae::LrSchedule::StepLr {
                step_epochs: self.lr_step_epochs,
                gamma: self.lr_gamma,
            },
            batch_size: self.batch_size,
            epochs: self.epochs,
            shuffle: self.shuffle,
            dead_window_steps: self.dead_window_steps,
            resample,
            seed,
        }
    }
}

/// Trains, on first demand, every pending point of a layer together and hands
/// each point its result.
pub struct SweepTrainer {
    points: Vec<Point>,
    /// Points the runner will build this time (not fresh, or forced).
    pending: Mutex<BTreeSet<String>>,
    results: Mutex<BTreeMap<String, Result<Trained, String>>>,
    /// Reference-path points run on the first CUDA device.
    pub cuda: bool,
}

impl SweepTrainer {
    pub fn new(sweep: &SaeSweep) -> Arc<SweepTrainer> {
        Arc::new(SweepTrainer {
            points: sweep.points(),
            cuda: sweep.device == TrainerDevice::Cuda,
            pending: Mutex::new(BTreeSet::new()),
            results: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn set_pending(&self, names: BTreeSet<String>) {
        *self.pending.lock().expect("no panics while locked") = names;
    }

    fn trained(&self, point: &Point, train: &[f32]) -> Result<Trained, StageError> {
        if let Some(done) = self
            .results
            .lock()
            .expect("no panics while locked")
            .remove(&point.name)
        {
            return done.map_err(Into::into);
        }
        let mut pending = self.pending.lock().expect("no panics while locked");
        let group: Vec<&Point> = self
            .points
            .iter()
            .filter(|p| {
                p.layer == point.layer
                    && p.reference_path == point.reference_path
                    && (p.name == point.name || pending.contains(&p.name))
            })
            .collect();
        for p in &group {
            pending.remove(&p.name);
        }
        drop(pending);
        let sweep: Vec<SweepPoint> = group
            .iter()
            .map(|p| SweepPoint {
                name: p.name.clone(),
                cfg: p.cfg.clone(),
            })
            .collect();
        let bars: BTreeMap<&str, Progress> = group
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    Progress::new(
                        &p.name,
                        (p.cfg.epochs * p.cfg.steps_per_epoch(train.len() / p.cfg.d_in)) as u64,
                        "steps",
                    ),
                )
            })
            .collect();
        let path = if point.reference_path {
            let device = if self.cuda {
                Device::new_cuda(0)?
            } else {
                Device::Cpu
            };
            sae::Path::Reference { device }
        } else {
            sae::Path::Fast
        };
        let results = sae::train_sweep_on(&sweep, train, point.cfg.d_in, &path, &|event| {
            if let Some(bar) = bars.get(event.point) {
                bar.set(event.step as u64, || {
                    format!(
                        "epoch {}/{} loss {:.3} L0 {:.1}",
                        event.epoch, event.epochs, event.loss, event.l0
                    )
                });
            }
        });
        bars.values().for_each(Progress::finish);
        let mut mine = None;
        let mut store = self.results.lock().expect("no panics while locked");
        for (p, result) in group.iter().zip(results) {
            let result = result.map_err(|e| e.to_string());
            if p.name == point.name {
                mine = Some(result);
            } else {
                store.insert(p.name.clone(), result);
            }
        }
        mine.expect("the requested point is in its group")
            .map_err(Into::into)
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
    pub train: SplitMetrics,
    pub test: SplitMetrics,
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

/// [`sae::EvalMetrics`] on one split, without the per-feature firing counts
/// (the analysis tables hold those).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitMetrics {
    pub mse: f64,
    pub l2_sum: f64,
    pub l1: f64,
    pub l0: f64,
    pub explained_variance: f64,
    pub dead: usize,
}

impl From<&sae::EvalMetrics> for SplitMetrics {
    fn from(m: &sae::EvalMetrics) -> Self {
        SplitMetrics {
            mse: m.mse,
            l2_sum: m.l2_sum,
            l1: m.l1,
            l0: m.l0,
            explained_variance: m.explained_variance,
            dead: m.dead,
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
        json!({
            "layer": self.point.layer,
            "cfg": self.point.cfg,
            "path": if self.point.reference_path { "reference" } else { "fast" },
            "device": if self.trainer.cuda { "cuda" } else { "cpu" },
        })
    }
    fn inputs(&self) -> Vec<(String, String)> {
        vec![
            ("activations".into(), "extract".into()),
            ("mlp".into(), "mlp".into()),
        ]
    }
    fn run(&self, inputs: &StageInputs, out: &Path) -> Result<Value, StageError> {
        let store = open_store(inputs.dir("activations"), VerifyMode::Sizes)?;
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
            train: SplitMetrics::from(&on_train),
            test: SplitMetrics::from(&on_test),
            downstream,
            train_seconds: trained.seconds,
            final_epoch: trained.curve.last().cloned(),
            resampled: trained.resamples.iter().map(|r| r.features.len()).sum(),
        };
        super::write_json(out, METRICS_FILE, &metrics)?;
        Ok(serde_json::to_value(&metrics)?)
    }
}
