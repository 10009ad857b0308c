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
use sae::Trained;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::mlp::load_weights;
use crate::sweep::Point;
use crate::sweep::SweepTrainer;

pub struct SaeStage {
    pub point: Point,
    pub trainer: Arc<SweepTrainer>,
    /// Where finished points are kept until committed ([`FINISHED`]).
    pub store_root: PathBuf,
}

/// `<store>/.finished/<key>/`: each sweep point's SAE folder and training
/// record, written the moment it has trained (its group may train on), so
/// an interrupted sweep loses no finished point: the next run's stage for
/// that key reads it back instead of training. `gc` removes an entry once
/// its artifact exists.
pub const FINISHED: &str = ".finished";

pub fn finished_dir(store_root: &Path, key: &Key) -> PathBuf {
    store_root.join(FINISHED).join(key.as_str())
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

/// Writes a finished point into its [`FINISHED`] folder, whole or not at all
/// (a temporary folder renamed into place). Best effort: a store that cannot
/// take it (read-only) only loses the protection.
fn keep_finished(store_root: &Path, key: &Key, trained: &Trained, origin: &sae::Origin) {
    let dir = finished_dir(store_root, key);
    let Some(parent) = dir.parent() else {
        return;
    };
    let tmp = parent.join(format!(".tmp-{key}-{}", std::process::id()));
    let written = std::fs::create_dir_all(&tmp)
        .map_err(|e| e.to_string())
        .and_then(|()| sae::save(&trained.sae, &tmp, origin).map_err(|e| e.to_string()))
        .and_then(|()| {
            sae::TrainingRecord::of(trained)
                .save(&tmp)
                .map_err(|e| e.to_string())
        })
        .and_then(|()| {
            // Last: what the files must hash to when read back.
            let digests = file_digests(&tmp)?;
            let text = serde_json::to_string(&digests).map_err(|e| e.to_string())?;
            std::fs::write(tmp.join(KEPT_DIGESTS), text).map_err(|e| e.to_string())
        })
        .and_then(|()| std::fs::rename(&tmp, &dir).map_err(|e| e.to_string()));
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

/// In a kept point's folder: the SHA-256 of each of its other files.
const KEPT_DIGESTS: &str = "digests.json";

/// File name -> SHA-256 of every file in `dir` but [`KEPT_DIGESTS`].
fn file_digests(dir: &Path) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut digests = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != KEPT_DIGESTS {
            let digest = artifacts::sha256_file(&entry.path()).map_err(|e| e.to_string())?;
            digests.insert(name, digest);
        }
    }
    Ok(digests)
}

/// A point kept by [`keep_finished`] whose files still hash as they did when
/// kept, or `None` (absent, changed or unreadable: it is trained again).
fn load_finished(store_root: &Path, key: &Key) -> Option<Trained> {
    let dir = finished_dir(store_root, key);
    let recorded: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(dir.join(KEPT_DIGESTS)).ok()?).ok()?;
    if file_digests(&dir).ok()? != recorded {
        return None;
    }
    let sae = sae::load(&dir).ok()?;
    let record = sae::TrainingRecord::load(&dir).ok()?;
    Some(Trained {
        sae,
        curve: record.curve,
        latents: record.latents,
        resamples: record.resamples,
        steps: record.steps,
        seconds: record.seconds,
    })
}

/// `gc`'s share for finished points: an entry goes once its artifact exists
/// (it was committed), or when `keep` does not reach it and it is older than
/// `options` keep; returns what was (or would be) removed.
pub fn collect_finished(
    store_root: &Path,
    keep: &std::collections::BTreeSet<(String, Key)>,
    options: artifacts::GcOptions,
) -> std::io::Result<Vec<PathBuf>> {
    let old = |path: &Path| match options.keep_newer_than_s {
        None => true,
        Some(limit) => std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age.as_secs() >= limit),
    };
    let root = store_root.join(FINISHED);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = match Key::parse(&name) {
            Some(key) => {
                store_root.join("sae").join(key.as_str()).exists()
                    || (!keep.contains(&("sae".to_string(), key)) && old(&path))
            }
            // A temporary folder of a killed writer.
            None => name.starts_with(".tmp-"),
        };
        if stale {
            if !options.dry_run {
                std::fs::remove_dir_all(&path)?;
            }
            removed.push(path);
        }
    }
    Ok(removed)
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
            .then(|| load_finished(&self.store_root, &key))
            .flatten();
        let from_before = kept.is_some();
        let trained = match kept {
            Some(trained) => trained,
            // Its group shares its layers, so its origin.
            None => self.trainer.trained(&self.point, data, &|name, trained| {
                if let Some(params) = self.trainer.params_of(name) {
                    let key = point_key(params, inputs);
                    keep_finished(&self.store_root, &key, trained, &origin);
                }
            })?,
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
                if from_before {
                    " (kept from an interrupted run)"
                } else {
                    ""
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_lets_kept_points_go_once_committed_unreached_and_old_or_half_written() {
        let store = tempfile::tempdir().unwrap();
        let root = store.path();
        let key = |k: &str| Key::parse(k).unwrap();
        let (committed, reached, unreached) = (
            key("00000000000000aa"),
            key("00000000000000bb"),
            key("00000000000000cc"),
        );
        for k in [&committed, &reached, &unreached] {
            std::fs::create_dir_all(finished_dir(root, k)).unwrap();
        }
        std::fs::create_dir_all(root.join("sae").join(committed.as_str())).unwrap();
        let tmp = root.join(FINISHED).join(".tmp-00000000000000dd-42");
        std::fs::create_dir_all(&tmp).unwrap();
        let keep: std::collections::BTreeSet<(String, Key)> =
            [("sae".to_string(), reached.clone())].into();
        let options = |dry_run, keep_newer_than_s| artifacts::GcOptions {
            keep_newer_than_s,
            dry_run,
        };
        // Just written: an unreached entry is kept for its age, as artifacts are.
        let mut removed = collect_finished(root, &keep, options(true, Some(86_400))).unwrap();
        removed.sort();
        let mut expected = vec![finished_dir(root, &committed), tmp.clone()];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(tmp.exists(), "a dry run removes nothing");
        // Whatever its age: the unreached one goes too; the reached one stays.
        let removed = collect_finished(root, &keep, options(false, None)).unwrap();
        assert_eq!(removed.len(), 3);
        assert!(finished_dir(root, &reached).exists());
        for gone in [
            finished_dir(root, &committed),
            finished_dir(root, &unreached),
            tmp,
        ] {
            assert!(!gone.exists(), "{}", gone.display());
        }
    }
}
