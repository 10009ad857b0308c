//! The one way to train (`train_sweep`) and its public types: the data, the
//! points, the path, progress and results. A run's steps and epochs are
//! `run.rs`; the threads a sweep trains on, `crew.rs`.

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::config::{NormalizeActivations, SaeConfig};
use crate::crew::drive_all;
use crate::error::check_paired;
use crate::fast::FastTrainer;
use crate::model::{self, Sae};
use crate::reference::ReferenceTrainer;
use crate::resume::Checkpoints;
pub(crate) use crate::run::Run;
use crate::run::{new_or_resumed_run, norm_scale, scaled, Shared, View};
use crate::trainer::{AuxScale, Trainer};
use crate::SaeError;

/// Which implementation trains the SAE. Both follow the same config.
#[derive(Clone, Debug)]
pub enum TrainPath {
    /// candle autograd with a hand-written Adam on candle tensors; runs on any device.
    Reference { device: Device },
    /// Fused CPU trainer over raw f32 buffers; covers every architecture.
    Fast,
}

/// What a run trains on: the rows the encoder reads (`input`, `[rows, d_in]`
/// row-major) and the rows the decoder must predict (`target`, `[rows,
/// d_out]`), row r of one with row r of the other. An SAE's target is its input.
#[derive(Clone, Copy, Debug)]
pub struct TrainData<'a> {
    pub input: &'a [f32],
    pub d_in: usize,
    pub target: &'a [f32],
    pub d_out: usize,
}

impl<'a> TrainData<'a> {
    /// An SAE's data: it reconstructs its input.
    pub fn autoencoding(data: &'a [f32], d_in: usize) -> Self {
        TrainData {
            input: data,
            d_in,
            target: data,
            d_out: d_in,
        }
    }

    /// A transcoder's data: `input` predicts `target`.
    pub fn transcoding(input: &'a [f32], d_in: usize, target: &'a [f32], d_out: usize) -> Self {
        TrainData {
            input,
            d_in,
            target,
            d_out,
        }
    }

    /// The number of rows, once both sides are whole rows of the same count.
    pub(crate) fn check(&self) -> Result<usize, SaeError> {
        check_paired(
            ("training data", self.input, self.d_in),
            ("training target", self.target, self.d_out),
        )
    }

    pub(crate) fn rows(&self) -> usize {
        self.input.len() / self.d_in
    }
}

/// One named configuration of a sweep.
#[derive(Clone, Debug)]
pub struct SweepPoint {
    pub name: String,
    pub cfg: SaeConfig,
}

impl SweepPoint {
    /// A sweep of one SAE, reported as point `sae`.
    pub fn single(cfg: SaeConfig) -> Self {
        SweepPoint {
            name: "sae".to_string(),
            cfg,
        }
    }
}

/// Training metrics of one epoch, accumulated over its training batches (each
/// batch measured before its own update, as the notebook does).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// 1-based.
    pub epoch: usize,
    /// Mean over rows and dims of `(x - x_hat)^2`.
    pub mse: f64,
    /// The notebook's "Reconstruction Loss": per batch the mean over rows of
    /// `||x - x_hat||^2`, summed over the epoch's batches.
    pub l2_sum: f64,
    /// The notebook's "L1 Loss": the sparsity term of the loss, summed over the epoch's batches.
    pub l1: f64,
    /// TopK's AuxK term summed over the epoch's batches (0 for other architectures).
    pub aux: f64,
    /// Mean number of active features per row.
    pub l0: f64,
    /// Features that have not fired within `dead_window_steps` at the end of the epoch.
    pub dead: usize,
    /// `1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2` over the epoch's rows.
    pub explained_variance: f64,
    pub lr: f64,
    /// The loss summed over the epoch's batches (`l2_sum + l1 + aux`).
    pub loss: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressKind {
    /// Every [`PROGRESS_EVERY_STEPS`] steps; `loss` and `l0` are the means over
    /// the epoch so far (a single step's jump with the short last batch).
    Step,
    /// After an epoch; `loss` and `l0` are the epoch's means per step and per row.
    EpochEnd,
}

pub const PROGRESS_EVERY_STEPS: usize = 100;

#[derive(Clone, Debug)]
pub struct ProgressEvent<'a> {
    pub point: &'a str,
    pub kind: ProgressKind,
    /// 1-based.
    pub epoch: usize,
    pub epochs: usize,
    /// Steps done so far by this point.
    pub step: usize,
    pub steps_total: usize,
    pub loss: f64,
    pub l0: f64,
}

/// One resampling: the step after which it ran and the dead features it reset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResampleEvent {
    pub step: usize,
    pub features: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct Trained {
    pub sae: Sae,
    pub curve: Vec<CurvePoint>,
    /// When each latent last fired and how its encoder drifted.
    pub latents: crate::LatentHistory,
    pub resamples: Vec<ResampleEvent>,
    pub steps: usize,
    pub seconds: f64,
    /// The epoch it resumed after, when it continued an interrupted run.
    pub resumed_after_epoch: Option<usize>,
}

/// `dense`: the fast path with dormancy off (the same bits; every feature's
/// moments up to date after every step, as recorded steps need).
pub(crate) fn make_trainer(
    sae: &Sae,
    path: &TrainPath,
    aux: AuxScale,
    dense: bool,
) -> Result<Box<dyn Trainer>, SaeError> {
    Ok(match path {
        TrainPath::Fast if dense => Box::new(FastTrainer::new(sae, aux).without_dormancy()),
        TrainPath::Fast => Box::new(FastTrainer::new(sae, aux)),
        TrainPath::Reference { device } => Box::new(ReferenceTrainer::new(sae, device, aux)?),
    })
}

/// How far [`drive`] goes and what it records.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_steps: Option<usize>,
    pub(crate) record_losses: bool,
    /// Record every this many steps a [`CheckedStep`] (dormancy off).
    pub(crate) check_every: Option<usize>,
}

impl Limits {
    pub(crate) fn is_full(&self) -> bool {
        self.max_steps.is_none() && !self.record_losses && self.check_every.is_none()
    }
}

pub(crate) fn drive<'a>(
    points: &'a [SweepPoint],
    data: TrainData,
    path: &TrainPath,
    progress: &'a (dyn Fn(&ProgressEvent) + Sync),
    on_trained: Option<&'a (dyn Fn(&str, &Trained) + Sync)>,
    checkpoints: Option<&'a Checkpoints<'a>>,
    limits: Limits,
) -> Vec<Result<Run<'a>, SaeError>> {
    if let Err(e) = data.check() {
        return points.iter().map(|_| Err(clone_shape_error(&e))).collect();
    }
    // One scaled copy of the rows, shared by every run that normalises (an
    // SAE's target is its input, so the copy serves both).
    let normalising = points
        .iter()
        .any(|p| p.cfg.normalize_activations == NormalizeActivations::ExpectedAverageOnlyIn);
    let autoencoding = std::ptr::eq(data.input, data.target);
    let scales = normalising.then(|| {
        let s_in = norm_scale(data.input, data.d_in) as f32;
        let s_out = if autoencoding {
            s_in
        } else {
            norm_scale(data.target, data.d_out) as f32
        };
        (s_in, s_out)
    });
    let (scaled_input, scaled_target) = match scales {
        Some((s_in, s_out)) => (
            scaled(data.input, s_in),
            (!autoencoding).then(|| scaled(data.target, s_out)),
        ),
        None => (Vec::new(), None),
    };
    fn view(data: TrainData<'_>) -> View<'_> {
        View {
            data,
            total_variance: model::total_variance(data.target, data.d_out),
        }
    }
    let shared = Shared {
        raw: view(data),
        normalised: normalising.then(|| {
            view(TrainData {
                input: &scaled_input,
                d_in: data.d_in,
                target: scaled_target.as_deref().unwrap_or(&scaled_input),
                d_out: data.d_out,
            })
        }),
        scales,
        progress,
        on_trained,
        // Only a full run resumes or is kept: test hooks stop short or record steps.
        checkpoints: checkpoints.filter(|_| limits.is_full()),
        limits,
    };
    let mut slots: Vec<Result<Run, SaeError>> = points
        .iter()
        .map(|p| new_or_resumed_run(p, &shared, path, limits))
        .collect();
    drive_all(
        slots.iter_mut().filter_map(|s| s.as_mut().ok()).collect(),
        &shared,
    );
    slots
        .into_iter()
        .map(|slot| {
            let mut run = slot?;
            match run.failed.take() {
                Some(e) => Err(e),
                None => Ok(run),
            }
        })
        .collect()
}

fn clone_shape_error(e: &SaeError) -> SaeError {
    match e {
        SaeError::DataShape { what, len, width } => SaeError::DataShape {
            what: what.clone(),
            len: *len,
            width: *width,
        },
        other => SaeError::InvalidConfig(other.to_string()),
    }
}

fn finish(mut run: Run) -> Result<Trained, SaeError> {
    match run.trained.take() {
        Some(trained) => Ok(trained),
        None => finished(&mut run),
    }
}

/// A trained run's result: its exported weights (scales folded in), curve and
/// latent history. Taken once: the latent snapshots move out of the run.
pub(crate) fn finished(run: &mut Run) -> Result<Trained, SaeError> {
    let steps_per_epoch = run.schedule_steps / run.cfg.epochs.max(1);
    let latents = run.take_latents(steps_per_epoch);
    let mut sae = run.trainer.export()?;
    if let Some((s_in, s_out)) = run.scales {
        sae.fold_scales(s_in, s_out);
    }
    Ok(Trained {
        sae,
        curve: run.curve.clone(),
        latents,
        resamples: run.resamples.clone(),
        steps: run.steps,
        seconds: run.seconds,
        resumed_after_epoch: (run.start_epoch > 0).then_some(run.start_epoch),
    })
}

const FULL: Limits = Limits {
    max_steps: None,
    record_losses: false,
    check_every: None,
};

/// Trains every point on `data` with `path`: the one way in (a single SAE
/// is a sweep of one, [`SweepPoint::single`]). Points sharing batch size
/// and row order step together on each batch; a point that fails (bad
/// config, divergence) stops alone.
pub fn train_sweep(
    points: &[SweepPoint],
    data: TrainData,
    path: &TrainPath,
    progress: &(dyn Fn(&ProgressEvent) + Sync),
) -> Vec<Result<Trained, SaeError>> {
    drive(points, data, path, progress, None, None, FULL)
        .into_iter()
        .map(|r| r.and_then(finish))
        .collect()
}

/// [`train_sweep`], telling `on_trained` of each point the moment it has
/// trained (from the thread that trained it; the others go on), so a caller
/// can keep it before the rest of the sweep is done. The same bits.
pub fn train_sweep_telling(
    points: &[SweepPoint],
    data: TrainData,
    path: &TrainPath,
    progress: &(dyn Fn(&ProgressEvent) + Sync),
    on_trained: &(dyn Fn(&str, &Trained) + Sync),
) -> Vec<Result<Trained, SaeError>> {
    train_sweep_resuming(points, data, path, progress, on_trained, None)
}

/// [`train_sweep_telling`], keeping each point's state every
/// `checkpoints.every` as it trains and resuming each point that
/// `checkpoints.resume` has a fitting state for (fast path; a reference-path
/// point starts afresh). A resumed point ends with the same bits as an
/// uninterrupted one.
pub fn train_sweep_resuming(
    points: &[SweepPoint],
    data: TrainData,
    path: &TrainPath,
    progress: &(dyn Fn(&ProgressEvent) + Sync),
    on_trained: &(dyn Fn(&str, &Trained) + Sync),
    checkpoints: Option<&Checkpoints>,
) -> Vec<Result<Trained, SaeError>> {
    drive(
        points,
        data,
        path,
        progress,
        Some(on_trained),
        checkpoints,
        FULL,
    )
    .into_iter()
    .map(|r| r.and_then(finish))
    .collect()
}
