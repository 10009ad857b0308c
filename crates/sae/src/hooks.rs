//! Test hooks: training observed step by step, for this crate's tests and
//! the real-data checks in xtask. Not an API (`#[doc(hidden)]` in lib.rs).
//! Kept apart from the training loop (`train.rs`, `run.rs`), which they only drive.

use crate::duo::Exec;
use crate::model::Sae;
use crate::train::{drive, make_trainer, Limits, Run, SweepPoint, TrainData, TrainPath};
use crate::trainer::{AuxScale, FiringTracker, Gradients, TrainerState};
use crate::{ResampleEvent, SaeConfig, SaeError};

/// Loss at every step of a (possibly truncated) run, the SAE after it, and its resamplings.
#[derive(Clone, Debug)]
pub struct Trajectory {
    pub losses: Vec<f64>,
    pub sae: Sae,
    pub resamples: Vec<ResampleEvent>,
}

/// One training step as the trainer took it, recorded for tests that check
/// it against an independent computation: the trainer's state before and
/// after, and the raw gradient (before any decoder projection) that the step
/// applied at `lr`. Not an API.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct CheckedStep {
    /// 1 for the first step (Adam's t).
    pub step: usize,
    pub lr: f64,
    pub before: TrainerState,
    pub gradients: Gradients,
    pub after: TrainerState,
}

/// The loss at each of the first `max_steps` steps of training `cfg` on
/// `data` (for comparing paths), and the SAE after them.
pub fn loss_trajectory(
    cfg: &SaeConfig,
    data: &[f32],
    path: &TrainPath,
    max_steps: usize,
) -> Result<Trajectory, SaeError> {
    loss_trajectory_on(
        cfg,
        TrainData::autoencoding(data, cfg.d_in),
        path,
        max_steps,
    )
}

/// [`loss_trajectory`] for an SAE or transcoder on `data`.
pub fn loss_trajectory_on(
    cfg: &SaeConfig,
    data: TrainData,
    path: &TrainPath,
    max_steps: usize,
) -> Result<Trajectory, SaeError> {
    let limits = Limits {
        max_steps: Some(max_steps),
        record_losses: true,
        check_every: None,
    };
    drive_one(cfg, data, path, limits, |mut run| {
        Ok(Trajectory {
            losses: run.losses.take().unwrap_or_default(),
            sae: run.trainer.export()?,
            resamples: std::mem::take(&mut run.resamples),
        })
    })
}

/// The first `max_steps` steps of training `cfg` on `data`, with every
/// `every`-th step recorded as a [`CheckedStep`] (the fast path with dormancy
/// off: the same bits, every feature stepped densely), and the SAE after them.
pub fn checked_steps_on(
    cfg: &SaeConfig,
    data: TrainData,
    path: &TrainPath,
    max_steps: usize,
    every: usize,
) -> Result<(Vec<CheckedStep>, Sae), SaeError> {
    let limits = Limits {
        max_steps: Some(max_steps),
        record_losses: false,
        check_every: Some(every.max(1)),
    };
    drive_one(cfg, data, path, limits, |run| {
        Ok((run.checked, run.trainer.export()?))
    })
}

/// Trains `cfg` alone within `limits` and hands the run to `take`, for the
/// test hooks above.
fn drive_one<T>(
    cfg: &SaeConfig,
    data: TrainData,
    path: &TrainPath,
    limits: Limits,
    take: impl FnOnce(Run) -> Result<T, SaeError>,
) -> Result<T, SaeError> {
    let point = [SweepPoint {
        name: "hook".to_string(),
        cfg: cfg.clone(),
    }];
    let run = drive(&point, data, path, &|_| {}, None, None, limits)
        .pop()
        .expect("one result per point")?;
    take(run)
}

/// Loss and raw gradients of `sae` on one batch (row-major `[rows, d_in]`),
/// with `dead_features` treated as dead for TopK's AuxK (unless they fire in
/// this batch). AuxK's data variance is the batch's own.
pub fn gradients(
    sae: &Sae,
    batch: &[f32],
    dead_features: &[usize],
    path: &TrainPath,
) -> Result<(f64, Gradients), SaeError> {
    gradients_on(
        sae,
        TrainData::autoencoding(batch, sae.d_in()),
        dead_features,
        path,
    )
}

/// [`gradients`] for an SAE or transcoder on one batch of `data`.
pub fn gradients_on(
    sae: &Sae,
    batch: TrainData,
    dead_features: &[usize],
    path: &TrainPath,
) -> Result<(f64, Gradients), SaeError> {
    sae.cfg.validate()?;
    let rows = batch.check()?;
    let mut trainer = make_trainer(sae, path, AuxScale::of(batch.target, batch.d_out), false)?;
    let window = usize::MAX / 2;
    let mut tracker = FiringTracker::new(sae.d_sae(), window);
    for &f in dead_features {
        tracker.since_fired[f] = window as u64;
    }
    let stats = trainer.compute(batch.input, batch.target, rows, &mut tracker, Exec::Serial)?;
    Ok((stats.loss, trainer.gradients()?))
}
