//! Resuming an interrupted run: a run's whole state at the end of an epoch
//! (`ResumePoint`: the trainer's parameters and Adam moments, the firing
//! counters, both RNG streams' positions, and the curve so far), how a sweep
//! is told to write them and where each point resumes from (`Checkpoints`),
//! and their folder (`state.json` and `state.safetensors`). A run resumed
//! from one ends with the same bits as a run never interrupted (fast path).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::latents::LatentSnapshot;
use crate::trainer::TrainerSnapshot;
use crate::{CurvePoint, ResampleEvent, SaeConfig, SaeError};

/// The run's scalars, counters and curve: `state.json`.
pub const RESUME_STATE_FILE: &str = "state.json";
/// The trainer's buffers: `state.safetensors`.
pub const RESUME_BUFFERS_FILE: &str = "state.safetensors";
pub(crate) const FORMAT: u32 = 1;

/// A sweep's checkpointing: where each point resumes from and how its
/// state is kept as it trains.
pub struct Checkpoints<'a> {
    /// The state point `name` resumes from, if any (checked against its
    /// config; one that does not fit is not used).
    pub resume: &'a (dyn Fn(&str) -> Option<ResumePoint> + Sync),
    /// Told a point's state at the end of an epoch (never its last), at
    /// most once per `every` of its training time.
    pub save: &'a (dyn Fn(&ResumePoint) + Sync),
    pub every: Duration,
}

/// A run's state at the end of epoch `epochs_done`.
#[derive(Clone, Debug, PartialEq)]
pub struct ResumePoint {
    pub(crate) run: RunState,
    pub(crate) trainer: TrainerSnapshot,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunState {
    pub(crate) format: u32,
    pub(crate) point: String,
    pub(crate) cfg: SaeConfig,
    pub(crate) epochs_done: usize,
    pub(crate) steps: usize,
    pub(crate) lr: f64,
    /// Training time before the checkpoint.
    pub(crate) seconds: f64,
    pub(crate) curve: Vec<CurvePoint>,
    pub(crate) snapshots: Vec<LatentSnapshot>,
    pub(crate) resamples: Vec<ResampleEvent>,
    pub(crate) since_fired: Vec<u64>,
    pub(crate) dead: Vec<bool>,
    /// ChaCha word positions, in decimal (JSON numbers stop at 2^64).
    pub(crate) resample_rng_word: String,
    pub(crate) shuffle_rng_word: Option<String>,
    pub(crate) adam_t: usize,
    pub(crate) batch_threshold: Option<f64>,
}

impl ResumePoint {
    /// The sweep point's name.
    pub fn point(&self) -> &str {
        &self.run.point
    }

    /// The epochs trained before it (it resumes with the next).
    pub fn epochs_done(&self) -> usize {
        self.run.epochs_done
    }

    /// Writes [`RESUME_STATE_FILE`] and [`RESUME_BUFFERS_FILE`] into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), SaeError> {
        std::fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
        let path = dir.join(RESUME_BUFFERS_FILE);
        let views = self
            .trainer
            .buffers
            .iter()
            .filter(|(_, values)| !values.is_empty())
            .map(|(name, values)| {
                TensorView::new(Dtype::F32, vec![values.len()], bytemuck::cast_slice(values))
                    .map(|view| (name.as_str(), view))
                    .map_err(|e| bad(&path, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::serialize_to_file(views, None, &path)
            .map_err(|e| bad(&path, e.to_string()))?;
        let path = dir.join(RESUME_STATE_FILE);
        // `run` carries the trainer's scalars (set by `Run::resume_point`).
        let json = serde_json::to_string(&self.run).expect("a run state serialises");
        std::fs::write(&path, json).map_err(|source| io(&path, source))
    }

    /// Reads what [`ResumePoint::save`] wrote; every fault names the file.
    pub fn load(dir: &Path) -> Result<ResumePoint, SaeError> {
        let path = dir.join(RESUME_STATE_FILE);
        let text = std::fs::read(&path).map_err(|source| io(&path, source))?;
        let run: RunState = serde_json::from_slice(&text)
            .map_err(|e| bad(&path, format!("not a run state: {e}")))?;
        if run.format != FORMAT {
            return Err(bad(&path, format!("format {} is not {FORMAT}", run.format)));
        }
        for word in std::iter::once(&run.resample_rng_word).chain(&run.shuffle_rng_word) {
            word.parse::<u128>()
                .map_err(|_| bad(&path, format!("RNG position `{word}` is not a number")))?;
        }
        let path = dir.join(RESUME_BUFFERS_FILE);
        let bytes = std::fs::read(&path).map_err(|source| io(&path, source))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(&path, format!("not a safetensors file: {e}")))?;
        let mut buffers = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 || view.shape().len() != 1 {
                return Err(bad(
                    &path,
                    format!("buffer `{name}` is not a 1-D F32 tensor"),
                ));
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            buffers.insert(name, values);
        }
        Ok(ResumePoint {
            trainer: TrainerSnapshot {
                adam_t: run.adam_t,
                batch_threshold: run.batch_threshold,
                buffers,
            },
            run,
        })
    }
}

pub(crate) fn word(text: &str) -> u128 {
    text.parse().expect("checked when loaded or made here")
}

fn io(path: &Path, source: std::io::Error) -> SaeError {
    SaeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, message: String) -> SaeError {
    SaeError::Checkpoint {
        path: path.to_path_buf(),
        message,
    }
}
