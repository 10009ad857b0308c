//! One run's training: its state (`Run`), a step, an epoch's curve point,
//! resampling, the pass over the epochs (`drive_run`), and the rows it sees
//! (`Shared`: raw, or normalised).

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::config::{NormalizeActivations, SaeConfig};
use crate::duo::Exec;
use crate::hooks::CheckedStep;
use crate::latents::{self, LatentHistory, LatentSnapshot};
use crate::model::{self, row_squared_errors, Sae, STREAM_RESAMPLE, STREAM_SHUFFLE};
use crate::resume::{word, Checkpoints, ResumePoint, RunState, FORMAT};
use crate::trainer::{AuxScale, FeatureReset, FiringTracker, Trainer};
use crate::SaeError;

use crate::train::{
    make_trainer, CurvePoint, Limits, ProgressEvent, ProgressKind, ResampleEvent, SweepPoint,
    TrainData, TrainPath, PROGRESS_EVERY_STEPS,
};

#[derive(Default)]
pub(crate) struct EpochSums {
    pub(crate) rows: usize,
    pub(crate) steps: usize,
    pub(crate) sq_err: f64,
    pub(crate) l2: f64,
    pub(crate) l1: f64,
    pub(crate) aux: f64,
    pub(crate) loss: f64,
    pub(crate) active: u64,
}

pub(crate) struct Run<'a> {
    pub(crate) name: &'a str,
    pub(crate) cfg: &'a SaeConfig,
    pub(crate) trainer: Box<dyn Trainer>,
    pub(crate) tracker: FiringTracker,
    pub(crate) resample_rng: ChaCha8Rng,
    pub(crate) steps: usize,
    pub(crate) steps_total: usize,
    /// The steps the config trains, which the schedules are laid over
    /// (`steps_total` may stop short of them).
    pub(crate) schedule_steps: usize,
    pub(crate) epoch: usize,
    pub(crate) lr: f64,
    pub(crate) sums: EpochSums,
    pub(crate) curve: Vec<CurvePoint>,
    /// The latents at the snapshot epochs (`latents::snapshot_at`).
    pub(crate) snapshots: Vec<LatentSnapshot>,
    pub(crate) resamples: Vec<ResampleEvent>,
    pub(crate) losses: Option<Vec<f64>>,
    pub(crate) check_every: Option<usize>,
    pub(crate) checked: Vec<CheckedStep>,
    /// The input and target scales it trains at, folded into its weights at
    /// the end (`NormalizeActivations`); `None`: raw rows.
    pub(crate) scales: Option<(f32, f32)>,
    pub(crate) failed: Option<SaeError>,
    /// Wall time of the run, once it has trained.
    pub(crate) seconds: f64,
    /// The result, taken as soon as it trained where the caller asked to hear
    /// of each point at once (`Shared::on_trained`).
    pub(crate) trained: Option<crate::Trained>,
    /// The epoch it starts at: past 0 when resumed (`resume.rs`).
    pub(crate) start_epoch: usize,
    /// The shuffle stream's position at `start_epoch` when resumed.
    pub(crate) shuffle_word: Option<u128>,
    /// Training time before it resumed.
    pub(crate) seconds_before: f64,
}

/// The training rows as a run sees them.
pub(crate) struct View<'a> {
    pub(crate) data: TrainData<'a>,
    /// Of the target.
    pub(crate) total_variance: f64,
}

pub(crate) struct Shared<'a> {
    pub(crate) raw: View<'a>,
    /// Scaled to a mean row norm of `sqrt(width)`, for the runs that
    /// normalise (`NormalizeActivations`); `None` when no run does.
    pub(crate) normalised: Option<View<'a>>,
    /// The input and target scales of `normalised`, computed once.
    pub(crate) scales: Option<(f32, f32)>,
    pub(crate) progress: &'a (dyn Fn(&ProgressEvent) + Sync),
    /// Told of each point the moment it has trained (from its worker thread).
    pub(crate) on_trained: Option<&'a (dyn Fn(&str, &crate::Trained) + Sync)>,
    /// Where runs resume from and how their state is kept (full runs only).
    pub(crate) checkpoints: Option<&'a Checkpoints<'a>>,
    pub(crate) limits: Limits,
}

impl Shared<'_> {
    pub(crate) fn view(&self, normalised: bool) -> &View<'_> {
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

pub(crate) fn scaled(data: &[f32], scale: f32) -> Vec<f32> {
    data.iter().map(|&v| v * scale).collect()
}

impl Run<'_> {
    pub(crate) fn active_in(&self, epoch: usize, limits: Limits) -> bool {
        self.failed.is_none()
            && epoch < self.cfg.epochs
            && limits.max_steps.is_none_or(|max| self.steps < max)
    }

    pub(crate) fn step(&mut self, batch: TrainData, shared: &Shared, exec: Exec) {
        if let Err(e) = self.try_step(batch, shared, exec) {
            self.failed = Some(e);
        }
    }

    pub(crate) fn try_step(
        &mut self,
        batch: TrainData,
        shared: &Shared,
        exec: Exec,
    ) -> Result<(), SaeError> {
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

    pub(crate) fn end_epoch(&mut self, epoch: usize, shared: &Shared) {
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
        if latents::snapshot_at(epoch + 1, self.cfg.epochs) {
            match self.trainer.export() {
                Ok(sae) => {
                    self.snapshots
                        .push(LatentSnapshot::take(&sae, view.data.input, epoch + 1))
                }
                Err(e) => self.failed = Some(e),
            }
        }
    }

    /// The latents' history, with when each last fired.
    pub(crate) fn take_latents(&mut self, steps_per_epoch: usize) -> LatentHistory {
        let steps = self.steps as u64;
        LatentHistory {
            last_fired_step: self
                .tracker
                .since_fired
                .iter()
                .map(|&since| steps - since.min(steps))
                .collect(),
            steps_per_epoch,
            snapshots: std::mem::take(&mut self.snapshots),
        }
    }

    /// Anthropic's resampling: each dead feature gets an input drawn with
    /// probability proportional to the square of its reconstruction loss.
    pub(crate) fn resample(
        &mut self,
        data: &[f32],
        d_in: usize,
        sample_rows: usize,
    ) -> Result<(), SaeError> {
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

/// Trains one run through its epochs, stepping with whatever `exec` gives
/// at each step.
pub(crate) fn drive_run<'d>(run: &mut Run, shared: &Shared, exec: &dyn Fn() -> Exec<'d>) {
    let start = Instant::now();
    let (batch_size, shuffle_seed) = (run.cfg.batch_size, run.cfg.shuffle.then_some(run.cfg.seed));
    let data = shared.view(run.scales.is_some()).data;
    let (d_in, d_out) = (data.d_in, data.d_out);
    let rows = data.rows();
    let autoencoding = std::ptr::eq(data.input, data.target);
    let mut shuffle_rng = shuffle_seed.map(|seed| model::rng(seed, STREAM_SHUFFLE));
    if let (Some(rng), Some(word)) = (&mut shuffle_rng, run.shuffle_word) {
        rng.set_word_pos(word);
    }
    let mut order: Vec<usize> = Vec::new();
    let mut gathered: Vec<f32> = Vec::new();
    let mut gathered_target: Vec<f32> = Vec::new();
    let mut last_saved = Instant::now();
    for epoch in run.start_epoch..run.cfg.epochs {
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
        if let Some(checkpoints) = shared.checkpoints {
            let last = epoch + 1 == run.cfg.epochs;
            if run.failed.is_none() && !last && last_saved.elapsed() >= checkpoints.every {
                let seconds = run.seconds_before + start.elapsed().as_secs_f64();
                let shuffle_word = shuffle_rng.as_ref().map(|rng| rng.get_word_pos());
                if let Some(point) = run.resume_point(epoch + 1, seconds, shuffle_word) {
                    (checkpoints.save)(&point);
                }
                last_saved = Instant::now();
            }
        }
    }
    run.seconds = run.seconds_before + start.elapsed().as_secs_f64();
    if let (Some(on_trained), None) = (shared.on_trained, &run.failed) {
        match crate::train::finished(run) {
            Ok(trained) => {
                on_trained(run.name, &trained);
                run.trained = Some(trained);
            }
            Err(e) => run.failed = Some(e),
        }
    }
}

pub(crate) fn new_run<'a>(
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
    let scales = shared.scales.filter(|_| normalised);
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
        snapshots: Vec::new(),
        resamples: Vec::new(),
        losses: limits.record_losses.then(Vec::new),
        check_every: limits.check_every,
        checked: Vec::new(),
        scales,
        failed: None,
        seconds: 0.0,
        trained: None,
        start_epoch: 0,
        shuffle_word: None,
        seconds_before: 0.0,
    })
}

/// [`new_run`], resumed from the point's state where `shared.checkpoints`
/// has one that fits it (else from the start).
pub(crate) fn new_or_resumed_run<'a>(
    point: &'a SweepPoint,
    shared: &Shared,
    path: &TrainPath,
    limits: Limits,
) -> Result<Run<'a>, SaeError> {
    let mut run = new_run(point, shared, path, limits)?;
    let Some(resume) = shared.checkpoints.and_then(|c| (c.resume)(&point.name)) else {
        return Ok(run);
    };
    match run.resume(&resume) {
        Ok(()) => Ok(run),
        // A state that does not fit is not used: train from the start.
        Err(_) => new_run(point, shared, path, limits),
    }
}

impl Run<'_> {
    /// The run's state after `epochs_done` epochs, if its trainer can resume.
    pub(crate) fn resume_point(
        &mut self,
        epochs_done: usize,
        seconds: f64,
        shuffle_word: Option<u128>,
    ) -> Option<ResumePoint> {
        let trainer = self.trainer.snapshot()?;
        let (since_fired, dead) = self.tracker.parts();
        Some(ResumePoint {
            run: RunState {
                format: FORMAT,
                point: self.name.to_string(),
                cfg: self.cfg.clone(),
                epochs_done,
                steps: self.steps,
                lr: self.lr,
                seconds,
                curve: self.curve.clone(),
                snapshots: self.snapshots.clone(),
                resamples: self.resamples.clone(),
                since_fired: since_fired.to_vec(),
                dead: dead.to_vec(),
                resample_rng_word: self.resample_rng.get_word_pos().to_string(),
                shuffle_rng_word: shuffle_word.map(|w| w.to_string()),
                adam_t: trainer.adam_t,
                batch_threshold: trainer.batch_threshold,
            },
            trainer,
        })
    }

    /// Continues from `point`, a state of this point under the same config.
    fn resume(&mut self, point: &ResumePoint) -> Result<(), String> {
        let r = &point.run;
        if r.point != self.name || r.cfg != *self.cfg {
            return Err("the state is of another point or config".into());
        }
        if r.epochs_done == 0 || r.epochs_done >= self.cfg.epochs {
            return Err(format!("epoch {} is not inside the run", r.epochs_done));
        }
        if r.shuffle_rng_word.is_some() != self.cfg.shuffle || r.curve.len() != r.epochs_done {
            return Err("the state's shuffle stream or curve does not fit".into());
        }
        self.tracker.restore(&r.since_fired, &r.dead)?;
        self.trainer.restore(&point.trainer)?;
        self.resample_rng.set_word_pos(word(&r.resample_rng_word));
        self.shuffle_word = r.shuffle_rng_word.as_deref().map(word);
        self.start_epoch = r.epochs_done;
        self.epoch = r.epochs_done;
        self.steps = r.steps;
        self.lr = r.lr;
        self.seconds_before = r.seconds;
        self.curve = r.curve.clone();
        self.snapshots = r.snapshots.clone();
        self.resamples = r.resamples.clone();
        Ok(())
    }
}
