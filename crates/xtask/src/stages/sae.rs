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
use candle_core::{Device, Tensor};
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
    /// "l1", "topk" or "norm_weighted_l1".
    pub variant: Vec<String>,
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
    /// "sum" (the notebook: L1 summed over the batch) or "mean".
    pub l1_reduction: String,
    /// "notebook", "tied" (W_enc = W_dec^T) or "data_mean_bdec".
    pub init: String,
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
    /// "fast" (fused CPU trainer) or "reference" (candle autograd).
    pub path: String,
    /// Where the reference path runs: "cpu", or "cuda" (build with `--features cuda`).
    pub device: String,
}

impl Default for SaeSweep {
    fn default() -> Self {
        let notebook = SaeConfig::default();
        SaeSweep {
            layer: vec!["fc2.pre".into()],
            variant: vec!["l1".into()],
            l1_coeff: vec![3e-3],
            k: vec![32],
            d_sae: vec![notebook.d_sae],
            seed: vec![0],
            lr: notebook.optimizer.lr,
            epochs: notebook.epochs,
            batch_size: notebook.batch_size,
            shuffle: notebook.shuffle,
            l1_reduction: "sum".into(),
            init: "notebook".into(),
            lr_step_epochs: 10,
            lr_gamma: 0.99,
            dead_window_steps: notebook.dead_window_steps,
            k_aux: 256,
            aux_coeff: 1.0 / 32.0,
            resample_every_steps: vec![0],
            resample_until: 0,
            resample_sample_rows: 8192,
            path: "fast".into(),
            device: "cpu".into(),
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

fn one_of(key: &str, value: &str, allowed: &[&str]) -> Result<()> {
    if !allowed.contains(&value) {
        bail!("sae.{key} = {value:?} is not one of {}", allowed.join(", "));
    }
    Ok(())
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
        for v in &self.variant {
            one_of("variant", v, &["l1", "topk", "norm_weighted_l1"])?;
        }
        one_of("l1_reduction", &self.l1_reduction, &["sum", "mean"])?;
        one_of("init", &self.init, &["notebook", "tied", "data_mean_bdec"])?;
        one_of("path", &self.path, &["fast", "reference"])?;
        one_of("device", &self.device, &["cpu", "cuda"])?;
        if self.device == "cuda" && self.path != "reference" {
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
            for variant_name in &self.variant {
                let variants: Vec<(String, Variant)> = match variant_name.as_str() {
                    "topk" => self
                        .k
                        .iter()
                        .map(|&k| {
                            (
                                format!("topk-k{k}"),
                                Variant::TopK {
                                    k,
                                    k_aux: self.k_aux,
                                    aux_coeff: self.aux_coeff,
                                },
                            )
                        })
                        .collect(),
                    "norm_weighted_l1" => self
                        .l1_coeff
                        .iter()
                        .map(|&c| (format!("nwl1-{c}"), Variant::NormWeightedL1 { l1_coeff: c }))
                        .collect(),
                    _ => self
                        .l1_coeff
                        .iter()
                        .map(|&c| (format!("l1-{c}"), Variant::L1 { l1_coeff: c }))
                        .collect(),
                };
                for (variant_label, variant) in variants {
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
                                    reference_path: self.path == "reference",
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
            l1_reduction: if self.l1_reduction == "mean" {
                sae::Reduction::Mean
            } else {
                sae::Reduction::Sum
            },
            init: match self.init.as_str() {
                "tied" => sae::Init::Tied,
                "data_mean_bdec" => sae::Init::DataMeanBdec,
                _ => sae::Init::Notebook,
            },
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
            cuda: sweep.device == "cuda",
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

pub const CURVE_FILE: &str = "curve.json";

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
        super::write_json(
            out,
            CURVE_FILE,
            &json!({ "curve": trained.curve, "resamples": trained.resamples, "steps": trained.steps, "seconds": trained.seconds }),
        )?;

        let on_train = sae::evaluate(&trained.sae, &train)?;
        let on_test = sae::evaluate(&trained.sae, &test)?;
        let model = Mlp::new(&load_weights(inputs.dir("mlp"))?, &Device::Cpu)?;
        let downstream = splice_metrics(
            &model,
            layer,
            &test,
            &test_view.labels(),
            &sae::reconstruct(&trained.sae, &test)?,
            &train,
        )?;
        let last = trained.curve.last();
        let metrics = json!({
            "train": eval_json(&on_train),
            "test": eval_json(&on_test),
            "downstream": downstream,
            "train_seconds": trained.seconds,
            "final_epoch": last,
            "resampled": trained.resamples.iter().map(|r| r.features.len()).sum::<usize>(),
            // Points of a sweep train together, so the stage's own wall time
            // is the group's for the first point and ~0 for the rest.
            "headline": format!(
                "L0 {:.1}, EV {:.3}, dead {}/{}, CE recovered {:.3}, trained in {:.1} s",
                on_test.l0, on_test.explained_variance, on_train.dead, trained.sae.d_sae(), downstream["ce_recovered_zero"].as_f64().unwrap_or(f64::NAN), trained.seconds
            ),
        });
        super::write_json(out, "metrics.json", &metrics)?;
        Ok(metrics)
    }
}

fn eval_json(m: &sae::EvalMetrics) -> Value {
    json!({ "mse": m.mse, "l2_sum": m.l2_sum, "l1": m.l1, "l0": m.l0, "explained_variance": m.explained_variance, "dead": m.dead })
}

/// Test cross-entropy and accuracy with the layer replaced by the SAE's
/// reconstruction, by zeros, and by its train mean; CE recovered for both ablations.
fn splice_metrics(
    model: &Mlp,
    layer: &str,
    test: &[f32],
    labels: &[u8],
    x_hat: &[f32],
    train: &[f32],
) -> Result<Value, StageError> {
    let width = mlp::layer_width(layer).expect("validated layer");
    let rows = test.len() / width;
    let as_tensor = |v: &[f32]| Tensor::from_slice(v, (rows, width), &Device::Cpu);
    let score = |v: &[f32]| -> Result<mlp::Evaluation, StageError> {
        Ok(Mlp::score(
            &model.logits_from(layer, &as_tensor(v)?)?,
            labels,
        )?)
    };
    let mut mean = vec![0f64; width];
    for row in train.chunks_exact(width) {
        for (m, x) in mean.iter_mut().zip(row) {
            *m += *x as f64;
        }
    }
    let train_rows = (train.len() / width).max(1) as f64;
    let mean_row: Vec<f32> = mean.iter().map(|m| (m / train_rows) as f32).collect();
    let clean = score(test)?;
    let spliced = score(x_hat)?;
    let zero = score(&vec![0.0; test.len()])?;
    let mean_ablated = score(&mean_row.repeat(rows))?;
    let recovered = |ablated: f64| (ablated - spliced.loss) / (ablated - clean.loss);
    Ok(json!({
        "clean": clean,
        "spliced": spliced,
        "zero_ablated": zero,
        "mean_ablated": mean_ablated,
        "ce_recovered_zero": recovered(zero.loss),
        "ce_recovered_mean": recovered(mean_ablated.loss),
    }))
}
