//! The training driver shared by both paths: batches, the learning-rate
//! schedule, dead-feature tracking, resampling, metrics, progress, sweeps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::Device;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{NormalizeActivations, SaeConfig};
use crate::duo::{Duo, Exec};
use crate::error::check_paired;
use crate::fast::FastTrainer;
use crate::hooks::CheckedStep;
use crate::model::{self, row_squared_errors, Sae, STREAM_RESAMPLE, STREAM_SHUFFLE};
use crate::reference::ReferenceTrainer;
use crate::trainer::{AuxScale, FeatureReset, FiringTracker, Trainer};
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

    fn rows(&self) -> usize {
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
    pub resamples: Vec<ResampleEvent>,
    pub steps: usize,
    pub seconds: f64,
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

#[derive(Default)]
struct EpochSums {
    rows: usize,
    steps: usize,
    sq_err: f64,
    l2: f64,
    l1: f64,
    aux: f64,
    loss: f64,
    active: u64,
}

pub(crate) struct Run<'a> {
    name: &'a str,
    cfg: &'a SaeConfig,
    pub(crate) trainer: Box<dyn Trainer>,
    tracker: FiringTracker,
    resample_rng: ChaCha8Rng,
    steps: usize,
    steps_total: usize,
    /// The steps the config trains, which the schedules are laid over
    /// (`steps_total` may stop short of them).
    schedule_steps: usize,
    epoch: usize,
    lr: f64,
    sums: EpochSums,
    curve: Vec<CurvePoint>,
    pub(crate) resamples: Vec<ResampleEvent>,
    pub(crate) losses: Option<Vec<f64>>,
    check_every: Option<usize>,
    pub(crate) checked: Vec<CheckedStep>,
    /// The input and target scales it trains at, folded into its weights at
    /// the end (`NormalizeActivations`); `None`: raw rows.
    scales: Option<(f32, f32)>,
    failed: Option<SaeError>,
    /// Wall time of the run, once it has trained.
    seconds: f64,
}

/// How far [`drive`] goes and what it records.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_steps: Option<usize>,
    pub(crate) record_losses: bool,
    /// Record every this many steps a [`CheckedStep`] (dormancy off).
    pub(crate) check_every: Option<usize>,
}

/// The training rows as a run sees them.
struct View<'a> {
    data: TrainData<'a>,
    /// Of the target.
    total_variance: f64,
}

struct Shared<'a> {
    raw: View<'a>,
    /// Scaled to a mean row norm of `sqrt(width)`, for the runs that
    /// normalise (`NormalizeActivations`); `None` when no run does.
    normalised: Option<View<'a>>,
    progress: &'a (dyn Fn(&ProgressEvent) + Sync),
    limits: Limits,
}

impl Shared<'_> {
    fn view(&self, normalised: bool) -> &View<'_> {
        match (&self.normalised, normalised) {
            (Some(view), true) => view,
            _ => &self.raw,
        }
    }
}

/// `sqrt(width) / (mean row norm)`, in f64: the factor SAELens'
/// `expected_average_only_in` scales rows by.
pub(crate) fn norm_scale(data: &[f32], width: usize) -> f64 {
    let rows = data.len() / width;
    let norms: f64 = data
        .chunks_exact(width)
        .map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt())
        .sum();
    let mean = norms / rows.max(1) as f64;
    if mean > 0.0 {
        (width as f64).sqrt() / mean
    } else {
        1.0
    }
}

fn scaled(data: &[f32], scale: f32) -> Vec<f32> {
    data.iter().map(|&v| v * scale).collect()
}

impl Run<'_> {
    fn active_in(&self, epoch: usize, limits: Limits) -> bool {
        self.failed.is_none()
            && epoch < self.cfg.epochs
            && limits.max_steps.is_none_or(|max| self.steps < max)
    }

    fn step(&mut self, batch: TrainData, shared: &Shared, exec: Exec) {
        if let Err(e) = self.try_step(batch, shared, exec) {
            self.failed = Some(e);
        }
    }

    fn try_step(&mut self, batch: TrainData, shared: &Shared, exec: Exec) -> Result<(), SaeError> {
        let rows = batch.rows();
        let check = self
            .check_every
            .is_some_and(|every| self.steps.is_multiple_of(every));
        let before = if check {
            Some(self.trainer.state()?)
        } else {
            None
        };
        self.lr = self.cfg.lr_at(self.epoch, self.steps, self.schedule_steps);
        self.trainer
            .set_penalty_factor(self.cfg.penalty_factor_at(self.steps));
        let stats =
            self.trainer
                .compute(batch.input, batch.target, rows, &mut self.tracker, exec)?;
        self.steps += 1;
        let gradients = if check {
            Some(self.trainer.gradients()?)
        } else {
            None
        };
        if !stats.loss.is_finite() {
            return Err(SaeError::Diverged {
                point: self.name.to_string(),
                step: self.steps,
                loss: stats.loss as f32,
            });
        }
        self.trainer.apply(self.lr, exec)?;
        if let (Some(before), Some(gradients)) = (before, gradients) {
            self.checked.push(CheckedStep {
                step: self.steps,
                lr: self.lr,
                before,
                gradients,
                after: self.trainer.state()?,
            });
        }
        let data = shared.view(self.scales.is_some()).data;
        self.trainer.settle(data.input, exec);
        if let Some(losses) = &mut self.losses {
            losses.push(stats.loss);
        }
        let s = &mut self.sums;
        s.rows += rows;
        s.steps += 1;
        s.sq_err += stats.sq_err_sum;
        s.l2 += stats.l2;
        s.l1 += stats.l1;
        s.aux += stats.aux;
        s.loss += stats.loss;
        s.active += stats.active;
        if let Some(resample) = &self.cfg.resample {
            if resample.schedule.fires_at(self.steps) {
                self.resample(data.input, data.d_in, resample.sample_rows)?;
            }
        }
        if self.steps.is_multiple_of(PROGRESS_EVERY_STEPS) {
            (shared.progress)(&ProgressEvent {
                point: self.name,
                kind: ProgressKind::Step,
                epoch: self.curve.len() + 1,
                epochs: self.cfg.epochs,
                step: self.steps,
                steps_total: self.steps_total,
                loss: self.sums.loss / self.sums.steps as f64,
                l0: self.sums.active as f64 / self.sums.rows as f64,
            });
        }
        Ok(())
    }

    fn end_epoch(&mut self, epoch: usize, shared: &Shared) {
        let s = std::mem::take(&mut self.sums);
        if s.rows == 0 {
            return;
        }
        let view = shared.view(self.scales.is_some());
        let rows_total = view.data.rows();
        let variance = view.total_variance * s.rows as f64 / rows_total as f64;
        let point = CurvePoint {
            epoch: epoch + 1,
            mse: s.sq_err / (s.rows * view.data.d_out) as f64,
            l2_sum: s.l2,
            l1: s.l1,
            aux: s.aux,
            l0: s.active as f64 / s.rows as f64,
            dead: self.tracker.dead_count(),
            explained_variance: 1.0 - s.sq_err / variance,
            lr: self.lr,
            loss: s.loss,
        };
        (shared.progress)(&ProgressEvent {
            point: self.name,
            kind: ProgressKind::EpochEnd,
            epoch: epoch + 1,
            epochs: self.cfg.epochs,
            step: self.steps,
            steps_total: self.steps_total,
            loss: s.loss / s.steps as f64,
            l0: point.l0,
        });
        self.curve.push(point);
    }

    /// Anthropic's resampling: each dead feature gets an input drawn with
    /// probability proportional to the square of its reconstruction loss.
    fn resample(&mut self, data: &[f32], d_in: usize, sample_rows: usize) -> Result<(), SaeError> {
        let dead: Vec<usize> = (0..self.cfg.d_sae)
            .filter(|&f| self.tracker.dead_mask()[f])
            .collect();
        if dead.is_empty() {
            self.resamples.push(ResampleEvent {
                step: self.steps,
                features: Vec::new(),
            });
            return Ok(());
        }
        let sae = self.trainer.export()?;
        let rows = data.len() / d_in;
        let rng = &mut self.resample_rng;
        let picked_rows: Vec<usize> = if sample_rows >= rows {
            (0..rows).collect()
        } else {
            (0..sample_rows)
                .map(|_| rng.random_range(0..rows))
                .collect()
        };
        let xs: Vec<f32> = picked_rows
            .iter()
            .flat_map(|&r| &data[r * d_in..(r + 1) * d_in])
            .copied()
            .collect();
        let mut cumulative = Vec::with_capacity(picked_rows.len());
        let mut total = 0.0f64;
        for e in row_squared_errors(&sae, &xs) {
            total += (e as f64).powi(2);
            cumulative.push(total);
        }
        let d_sae = self.cfg.d_sae;
        let column_norm = |f: usize| -> f64 {
            (0..d_in)
                .map(|d| (sae.w_enc[d * d_sae + f] as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let live: Vec<usize> = (0..d_sae)
            .filter(|&f| !self.tracker.dead_mask()[f])
            .collect();
        let live_mean_norm = if live.is_empty() {
            (0..d_sae).map(column_norm).sum::<f64>() / d_sae as f64
        } else {
            live.iter().map(|&f| column_norm(f)).sum::<f64>() / live.len() as f64
        };
        let mut resets = Vec::with_capacity(dead.len());
        for &feature in &dead {
            let pick = if total > 0.0 && total.is_finite() {
                let u = rng.random::<f64>() * total;
                cumulative
                    .partition_point(|&c| c <= u)
                    .min(cumulative.len() - 1)
            } else {
                rng.random_range(0..cumulative.len())
            };
            let x = &xs[pick * d_in..(pick + 1) * d_in];
            let norm = x.iter().map(|&v| v * v).sum::<f32>().sqrt();
            if norm == 0.0 {
                continue;
            }
            let decoder_row: Vec<f32> = x.iter().map(|&v| v / norm).collect();
            let scale = (0.2 * live_mean_norm) as f32;
            let encoder_column = decoder_row.iter().map(|&v| v * scale).collect();
            resets.push(FeatureReset {
                feature,
                decoder_row,
                encoder_column,
            });
        }
        self.trainer.reset_features(&resets)?;
        for reset in &resets {
            self.tracker.revive(reset.feature);
        }
        self.resamples.push(ResampleEvent {
            step: self.steps,
            features: resets.iter().map(|r| r.feature).collect(),
        });
        Ok(())
    }
}

/// Trains every run: one run at a time on each thread of the rayon pool
/// (`RAYON_NUM_THREADS`, or `xtask --threads`), the costliest first (a
/// longest-first schedule), and a thread with nothing left to train helps a
/// thread still training with each of its steps (`Exec::Duo`), so a single
/// run still uses two cores. A run gives the same bits on any number of
/// threads: its features split into two halves fixed by `d_sae`, whichever
/// thread runs each. (Measured on the 2-core target with the zoo's seven SAEs
/// over 8 epochs: 25.9-28.7 s this way, 32.1-36.2 s stepping all seven in
/// lockstep, each step split over both cores, whose helper then idled
/// through each step's serial parts.)
fn drive_all(mut runs: Vec<&mut Run>, shared: &Shared) {
    let threads = rayon::current_num_threads().min(2 * runs.len());
    if threads < 2 || !runs.iter().any(|r| r.trainer.uses_helper_thread()) {
        for run in runs {
            // The fast path runs with subnormals flushed; the reference (candle,
            // on threads of its own) keeps IEEE arithmetic.
            if run.trainer.uses_helper_thread() {
                subnormals::flushed(|| drive_run(run, shared, &|| Exec::Serial));
            } else {
                drive_run(run, shared, &|| Exec::Serial);
            }
        }
        return;
    }
    let rows = shared.raw.data.rows();
    // Ascending, so that `pop` takes the costliest.
    runs.sort_by(|a, b| cost(a.cfg, rows).total_cmp(&cost(b.cfg, rows)));
    let queue = Mutex::new(runs);
    let crew = Crew::new(threads);
    // Every worker, and the helper each may become, runs with subnormals
    // flushed (`subnormals`: 2.5x on Intel, the same bits).
    let worker = |i: usize| {
        subnormals::flushed(|| {
            let _done = WorkerDone { crew: &crew, i };
            let exec = || {
                if crew.helped[i].load(Ordering::Acquire) {
                    Exec::Duo(&crew.duos[i])
                } else {
                    Exec::Serial
                }
            };
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some(run) = next else {
                    break;
                };
                drive_run(run, shared, &exec);
            }
        })
    };
    std::thread::scope(|scope| {
        for i in 1..threads {
            scope.spawn(move || worker(i));
        }
        worker(0);
    });
}

/// The workers of `drive_all`: each one's `Duo` (it is the caller, a worker
/// with nothing left to train its helper), whether it has a helper, and
/// which workers are still training.
struct Crew {
    duos: Vec<Duo>,
    /// Read by worker i before each step: whether its `Duo` has a helper.
    helped: Vec<AtomicBool>,
    /// Per worker: (still training, has a helper); changed under the lock.
    slots: Mutex<Vec<(bool, bool)>>,
}

impl Crew {
    fn new(workers: usize) -> Crew {
        Crew {
            duos: (0..workers).map(|_| Duo::new()).collect(),
            helped: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            slots: Mutex::new(vec![(true, false); workers]),
        }
    }

    /// A worker still training that has no helper, now claimed as helped.
    fn claim(&self) -> Option<usize> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let j = slots
            .iter()
            .position(|&(training, helped)| training && !helped)?;
        slots[j].1 = true;
        self.helped[j].store(true, Ordering::Release);
        Some(j)
    }
}

/// When worker `i` has no run left (or is unwinding): it releases its helper,
/// if any, then helps each worker still training that has none, one after
/// another, until none is left.
struct WorkerDone<'a> {
    crew: &'a Crew,
    i: usize,
}

impl Drop for WorkerDone<'_> {
    fn drop(&mut self) {
        let crew = self.crew;
        let had_helper = {
            let mut slots = crew.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots[self.i].0 = false;
            slots[self.i].1
        };
        if had_helper {
            // Its helper returns (at once if it has not started) and looks on.
            crew.duos[self.i].release();
        }
        if std::thread::panicking() {
            return;
        }
        while let Some(j) = crew.claim() {
            crew.duos[j].help_until_released();
        }
    }
}

/// A run's training cost relative to others, for the longest-first order:
/// its steps times the weights a step reads, times what its architecture's
/// step costs beyond that (`ArchitectureSpec::relative_step_cost`).
fn cost(cfg: &SaeConfig, rows: usize) -> f64 {
    let steps = cfg.steps_per_epoch(rows) * cfg.epochs;
    steps as f64
        * (cfg.d_sae * (cfg.d_in + cfg.d_out())) as f64
        * cfg.architecture.relative_step_cost()
}

/// Trains one run through its epochs, stepping with whatever `exec` gives
/// at each step.
fn drive_run<'d>(run: &mut Run, shared: &Shared, exec: &dyn Fn() -> Exec<'d>) {
    let start = Instant::now();
    let (batch_size, shuffle_seed) = (run.cfg.batch_size, run.cfg.shuffle.then_some(run.cfg.seed));
    let data = shared.view(run.scales.is_some()).data;
    let (d_in, d_out) = (data.d_in, data.d_out);
    let rows = data.rows();
    let autoencoding = std::ptr::eq(data.input, data.target);
    let mut shuffle_rng = shuffle_seed.map(|seed| model::rng(seed, STREAM_SHUFFLE));
    let mut order: Vec<usize> = Vec::new();
    let mut gathered: Vec<f32> = Vec::new();
    let mut gathered_target: Vec<f32> = Vec::new();
    for epoch in 0..run.cfg.epochs {
        if !run.active_in(epoch, shared.limits) {
            break;
        }
        run.epoch = epoch;
        if let Some(rng) = &mut shuffle_rng {
            order.clear();
            order.extend(0..rows);
            order.shuffle(rng);
        }
        for start in (0..rows).step_by(batch_size) {
            if !run.active_in(epoch, shared.limits) {
                break;
            }
            let end = (start + batch_size).min(rows);
            let batch = if shuffle_rng.is_some() {
                gathered.clear();
                gathered_target.clear();
                for &r in &order[start..end] {
                    gathered.extend_from_slice(&data.input[r * d_in..(r + 1) * d_in]);
                    if !autoencoding {
                        gathered_target.extend_from_slice(&data.target[r * d_out..(r + 1) * d_out]);
                    }
                }
                let target = if autoencoding {
                    &gathered
                } else {
                    &gathered_target
                };
                TrainData::transcoding(&gathered, d_in, target, d_out)
            } else {
                TrainData::transcoding(
                    &data.input[start * d_in..end * d_in],
                    d_in,
                    &data.target[start * d_out..end * d_out],
                    d_out,
                )
            };
            run.step(batch, shared, exec());
        }
        if run.failed.is_none() {
            run.end_epoch(epoch, shared);
        }
    }
    run.seconds = start.elapsed().as_secs_f64();
}

fn new_run<'a>(
    point: &'a SweepPoint,
    shared: &Shared,
    path: &TrainPath,
    limits: Limits,
) -> Result<Run<'a>, SaeError> {
    let cfg = &point.cfg;
    cfg.validate()?;
    let normalised = cfg.normalize_activations == NormalizeActivations::ExpectedAverageOnlyIn;
    let view = shared.view(normalised);
    let (data, aux) = (
        view.data,
        AuxScale::from_total_variance(view.total_variance, view.data.rows()),
    );
    let scales = match (normalised, &shared.normalised) {
        (true, Some(_)) => Some((
            norm_scale(shared.raw.data.input, data.d_in) as f32,
            norm_scale(shared.raw.data.target, data.d_out) as f32,
        )),
        _ => None,
    };
    for (key, configured, width, what) in [
        ("d_in", cfg.d_in, data.d_in, "training data"),
        (
            "transcoder.d_out",
            cfg.d_out(),
            data.d_out,
            "training target",
        ),
    ] {
        if configured != width {
            return Err(SaeError::InvalidConfig(format!(
                "SAE config key `{key}` of sweep point `{}` is {configured}, but the {what} has width {width}.",
                point.name
            )));
        }
    }
    let sae = Sae::init(cfg, data.target)?;
    let rows = data.rows();
    let steps_total = cfg.steps_per_epoch(rows) * cfg.epochs;
    Ok(Run {
        name: &point.name,
        cfg,
        trainer: make_trainer(&sae, path, aux, limits.check_every.is_some())?,
        tracker: FiringTracker::new(cfg.d_sae, cfg.dead_window_steps),
        resample_rng: model::rng(cfg.seed, STREAM_RESAMPLE),
        steps: 0,
        steps_total: limits.max_steps.map_or(steps_total, |m| m.min(steps_total)),
        schedule_steps: steps_total,
        epoch: 0,
        lr: cfg.optimizer.lr,
        sums: EpochSums::default(),
        curve: Vec::new(),
        resamples: Vec::new(),
        losses: limits.record_losses.then(Vec::new),
        check_every: limits.check_every,
        checked: Vec::new(),
        scales,
        failed: None,
        seconds: 0.0,
    })
}

pub(crate) fn drive<'a>(
    points: &'a [SweepPoint],
    data: TrainData,
    path: &TrainPath,
    progress: &(dyn Fn(&ProgressEvent) + Sync),
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
    let (scaled_input, scaled_target) = if normalising {
        let input = scaled(data.input, norm_scale(data.input, data.d_in) as f32);
        let target = (!autoencoding)
            .then(|| scaled(data.target, norm_scale(data.target, data.d_out) as f32));
        (input, target)
    } else {
        (Vec::new(), None)
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
        progress,
        limits,
    };
    let mut slots: Vec<Result<Run, SaeError>> = points
        .iter()
        .map(|p| new_run(p, &shared, path, limits))
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

fn finish(run: Run) -> Result<Trained, SaeError> {
    let mut sae = run.trainer.export()?;
    if let Some((s_in, s_out)) = run.scales {
        sae.fold_scales(s_in, s_out);
    }
    Ok(Trained {
        sae,
        curve: run.curve,
        resamples: run.resamples,
        steps: run.steps,
        seconds: run.seconds,
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
    drive(points, data, path, progress, FULL)
        .into_iter()
        .map(|r| r.and_then(finish))
        .collect()
}
