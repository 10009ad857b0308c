//! The fused CPU trainer: forward, backward and Adam over raw f32 buffers.
//!
//! By concern: `layout` (buffers), `encode` (phases 1-2), `step` (the
//! step's driver, loss and the caller's gradients), `feature_pass` (phase
//! 3 and Adam), `rest` (dormancy). Architectures enter as mechanisms
//! (`crate::arch`'s `Activation` and `Penalty`), matched exhaustively.
//!
//! Features are split into two halves, one per core, each owning its rows of
//! W_enc (kept transposed, `[d_sae, d_in]`, so a feature's encoder column is
//! contiguous), W_dec, b_enc and their Adam moments. A step is
//! 1. per half: the dense encoder matmul (gemm), selection of active features
//!    and the sparse decoder partial sum (only active features);
//! 2. on the caller: the reconstruction error (and TopK's merges and AuxK residual);
//! 3. per half, one fused pass over its features: the feature's gradients
//!    (only from the rows where it is active), the decoder-gradient projection,
//!    exact dense Adam on its encoder column and decoder row (moments decay
//!    even where the gradient is zero) and the decoder row renormalisation;
//! 4. on the caller: b_dec's gradient and Adam.
//!
//! Features that have settled skip work without changing a bit (`dormant`):
//! a *resting* feature (no gradient for a while, and weights a zero-gradient
//! Adam step no longer moves) skips its Adam step and renormalisation until
//! it next has a gradient, when its second moments' decays are replayed; a
//! *dormant* one (resting, and certified below its firing level on every
//! training row) also leaves the encoder gemm. `settle`, every 64 steps,
//! puts features to rest and to sleep; each step first wakes the dormant
//! features whose certificate b_dec's or b_enc's drift has broken.
//!
//! The halves are fixed by `d_sae`, so the result is the same bits whether they
//! run on two threads or one after the other.

mod encode;
mod feature_pass;
mod layout;
mod rest;
mod snapshot;
mod step;
#[cfg(test)]
mod tests;

use crate::arch::AuxInput;
use crate::config::SaeConfig;
use crate::dormant::RestStates;
use crate::duo::Exec;
use crate::kernels::AdamStep;
use crate::model::{transpose, Sae};
use crate::trainer::{
    AuxScale, FeatureReset, FiringTracker, Gradients, RunningThreshold, StepStats, Trainer,
    TrainerSnapshot, TrainerState,
};
use crate::SaeError;

use feature_pass::*;
use layout::*;
use rest::*;

pub(crate) struct FastTrainer {
    cfg: SaeConfig,
    d_in: usize,
    d_out: usize,
    d_sae: usize,
    params: Params,
    adam_t: usize,
    halves: [Half; 2],
    step: StepState,
    aux_scale: AuxScale,
    batch_threshold: Option<RunningThreshold>,
    /// Matryoshka's prefix widths (empty otherwise).
    prefix_widths: Vec<usize>,
    /// JumpReLU's thresholds, `exp` of `params.log_threshold` (empty otherwise).
    threshold: Vec<f32>,
    magnitude: MagnitudePath,
    dormancy: Dormancy,
    /// The sparsity warm-up's share of the penalty this step (1 once warm).
    penalty_factor: f64,
    /// AuxK's settings, resolved once (`SaeConfig::aux_k`).
    aux_k: Option<(usize, f64, AuxInput)>,
}

impl FastTrainer {
    pub fn new(sae: &Sae, aux_scale: AuxScale) -> Self {
        let (d_in, d_sae, d_out) = (sae.d_in(), sae.d_sae(), sae.d_out());
        let split = d_sae / 2;
        let learned_threshold = sae.cfg.architecture.learned_threshold().is_some();
        let half = |lo: usize, hi: usize| Half {
            lo,
            hi,
            g_b_dec: vec![0.0; d_in],
            g_b_enc: vec![0.0; hi - lo],
            g_log_threshold: vec![0.0; hi - lo],
            g_r_mag: vec![0.0; hi - lo],
            g_b_mag: vec![0.0; hi - lo],
            g_enc_row: vec![0.0; d_in],
            g_dec_row: vec![0.0; d_out],
            zero_row: vec![0.0; d_in.max(d_out)],
            rest: RestStates::new(hi - lo),
            ..Half::default()
        };
        FastTrainer {
            cfg: sae.cfg.clone(),
            d_in,
            d_out,
            d_sae,
            params: Params {
                w_enc_t: transpose(&sae.w_enc, d_in, d_sae),
                w_dec: sae.w_dec.clone(),
                b_enc: sae.b_enc.clone(),
                b_dec: sae.b_dec.clone(),
                adam_w_enc_t: Moments::zeros(d_in * d_sae),
                adam_w_dec: Moments::zeros(d_sae * d_out),
                adam_b_enc: Moments::zeros(d_sae),
                adam_b_dec: Moments::zeros(d_out),
                w_skip: sae.w_skip.clone(),
                adam_w_skip: Moments::zeros(sae.w_skip.len()),
                log_threshold: if learned_threshold {
                    sae.threshold.iter().map(|t| t.ln()).collect()
                } else {
                    Vec::new()
                },
                adam_log_threshold: Moments::zeros(if learned_threshold { d_sae } else { 0 }),
            },
            threshold: if learned_threshold {
                sae.threshold.clone()
            } else {
                Vec::new()
            },
            magnitude: MagnitudePath {
                r_mag: sae.r_mag.clone(),
                b_mag: sae.b_mag.clone(),
                scale: sae.r_mag.iter().map(|r| r.exp()).collect(),
                adam_r_mag: Moments::zeros(sae.r_mag.len()),
                adam_b_mag: Moments::zeros(sae.b_mag.len()),
            },
            adam_t: 0,
            penalty_factor: 1.0,
            aux_k: sae.cfg.aux_k(),
            halves: [half(0, split), half(split, d_sae)],
            step: StepState {
                fired: vec![false; d_sae],
                ..StepState::default()
            },
            aux_scale,
            batch_threshold: RunningThreshold::of(sae),
            prefix_widths: sae.cfg.architecture.prefix_widths(d_sae),
            dormancy: Dormancy {
                // Raw AuxK may pick a latent whose pre-activation is negative.
                enabled: !matches!(sae.cfg.aux_k(), Some((_, _, AuxInput::Raw))),
                checked_step_size: 0.0,
                last_step: None,
                input_norm: None,
                scratch: Vec::new(),
                scratch2: [Vec::new(), Vec::new()],
                rested: 0,
                slept: 0,
                woken: 0,
            },
        }
    }

    /// The same trainer with dormancy off: every feature dense, every step
    /// (the same bits, `dormancy_changes_no_bit`; what step checks use, since
    /// a resting feature's moments lag until it next has a gradient).
    pub(crate) fn without_dormancy(mut self) -> Self {
        self.dormancy.enabled = false;
        self
    }
}

impl Trainer for FastTrainer {
    fn compute(
        &mut self,
        x: &[f32],
        target: &[f32],
        rows: usize,
        tracker: &mut FiringTracker,
        exec: Exec,
    ) -> Result<StepStats, SaeError> {
        self.compute_step(x, target, rows, tracker, exec)
    }

    fn set_penalty_factor(&mut self, factor: f64) {
        self.penalty_factor = factor;
    }

    fn apply(&mut self, lr: f64, exec: Exec) -> Result<(), SaeError> {
        let o = &self.cfg.optimizer;
        let step = AdamStep::new(lr, o.beta1, o.beta2, o.eps, self.adam_t + 1);
        // Rests (and the certificates, which only resting features hold)
        // were checked against smaller steps.
        if step.step_size > self.dormancy.checked_step_size
            && self.halves.iter().any(|h| h.rest.resting_count() > 0)
        {
            self.wake_all();
        }
        self.adam_t += 1;
        self.dormancy.last_step = Some(step);
        let unit_norm = self.cfg.architecture.unit_norm_decoder();
        let clip = self.cfg.clip_grad_norm > 0.0;
        if clip {
            // The global norm needs every gradient before any step.
            self.feature_pass(
                exec,
                [PassMode::Hold { step }, PassMode::Hold { step }],
                unit_norm,
            );
        } else {
            let mode = || PassMode::Adam {
                step,
                renormalise: unit_norm,
            };
            self.feature_pass(exec, [mode(), mode()], unit_norm);
        }
        let mut g_b_dec = self.b_dec_gradient();
        let mut g_w_skip = self.w_skip_gradient();
        let mut g_log_threshold = self.log_threshold_gradient();
        let (mut g_r_mag, mut g_b_mag) = self.magnitude_gradients();
        if clip {
            let rest = [&g_b_dec, &g_w_skip, &g_log_threshold, &g_r_mag, &g_b_mag];
            let norm_sq = self.halves.iter().map(|h| h.held_sq).sum::<f64>()
                + rest.iter().map(|g| squared_norm(g)).sum::<f64>();
            let factor = self.cfg.clip_factor(norm_sq.sqrt()) as f32;
            let (d_in, d_out, split) = (self.d_in, self.d_out, self.split());
            let [p0, p1] = self.params.halves(split, d_in, d_out);
            let [h0, h1] = &mut self.halves;
            exec.join(
                || adam_held_half(h0, p0, d_in, d_out, step, unit_norm, factor),
                || adam_held_half(h1, p1, d_in, d_out, step, unit_norm, factor),
            );
            if factor != 1.0 {
                for g in [
                    &mut g_b_dec,
                    &mut g_w_skip,
                    &mut g_log_threshold,
                    &mut g_r_mag,
                    &mut g_b_mag,
                ] {
                    g.iter_mut().for_each(|x| *x *= factor);
                }
            }
        }
        let p = &mut self.params;
        p.adam_b_dec.adam(&mut p.b_dec, &g_b_dec, step);
        if !p.w_skip.is_empty() {
            p.adam_w_skip.adam(&mut p.w_skip, &g_w_skip, step);
        }
        if !p.log_threshold.is_empty() {
            p.adam_log_threshold
                .adam(&mut p.log_threshold, &g_log_threshold, step);
            for (t, l) in self.threshold.iter_mut().zip(&p.log_threshold) {
                *t = l.exp();
            }
        }
        if !self.magnitude.r_mag.is_empty() {
            let m = &mut self.magnitude;
            m.adam_r_mag.adam(&mut m.r_mag, &g_r_mag, step);
            m.adam_b_mag.adam(&mut m.b_mag, &g_b_mag, step);
            for (s, r) in m.scale.iter_mut().zip(&m.r_mag) {
                *s = r.exp();
            }
        }
        Ok(())
    }

    fn gradients(&mut self) -> Result<Gradients, SaeError> {
        let (d_in, d_sae, d_out) = (self.d_in, self.d_sae, self.d_out);
        let mut g_w_enc_t = vec![0.0f32; d_in * d_sae];
        let mut g_w_dec = vec![0.0f32; d_sae * d_out];
        let (e0, e1) = g_w_enc_t.split_at_mut(self.split() * d_in);
        let (d0, d1) = g_w_dec.split_at_mut(self.split() * d_out);
        let modes = [
            PassMode::Export {
                g_w_enc_t: e0,
                g_w_dec: d0,
            },
            PassMode::Export {
                g_w_enc_t: e1,
                g_w_dec: d1,
            },
        ];
        self.feature_pass(Exec::Serial, modes, false);
        let b_enc = self.gathered(|h| &h.g_b_enc);
        let (r_mag, b_mag) = self.magnitude_gradients();
        Ok(Gradients {
            w_enc: transpose(&g_w_enc_t, d_sae, d_in),
            w_dec: g_w_dec,
            b_enc,
            b_dec: self.b_dec_gradient(),
            w_skip: self.w_skip_gradient(),
            threshold: self.log_threshold_gradient(),
            r_mag,
            b_mag,
        })
    }

    fn export(&self) -> Result<Sae, SaeError> {
        let p = &self.params;
        Ok(Sae {
            cfg: self.cfg.clone(),
            w_enc: transpose(&p.w_enc_t, self.d_sae, self.d_in),
            w_dec: p.w_dec.clone(),
            b_enc: p.b_enc.clone(),
            b_dec: p.b_dec.clone(),
            w_skip: p.w_skip.clone(),
            threshold: match &self.batch_threshold {
                Some(threshold) => threshold.per_feature(self.d_sae),
                None => self.threshold.clone(),
            },
            r_mag: self.magnitude.r_mag.clone(),
            b_mag: self.magnitude.b_mag.clone(),
        })
    }

    fn state(&self) -> Result<TrainerState, SaeError> {
        let (p, mag) = (&self.params, &self.magnitude);
        let (d_in, d_sae) = (self.d_in, self.d_sae);
        let layout = |w_enc_t: &[f32],
                      w_dec: &[f32],
                      b_enc: &[f32],
                      b_dec: &[f32],
                      w_skip: &[f32],
                      log_threshold: &[f32],
                      r_mag: &[f32],
                      b_mag: &[f32]| Gradients {
            w_enc: transpose(w_enc_t, d_sae, d_in),
            w_dec: w_dec.to_vec(),
            b_enc: b_enc.to_vec(),
            b_dec: b_dec.to_vec(),
            w_skip: w_skip.to_vec(),
            threshold: log_threshold.to_vec(),
            r_mag: r_mag.to_vec(),
            b_mag: b_mag.to_vec(),
        };
        let moment = |of: fn(&Moments) -> &[f32]| {
            layout(
                of(&p.adam_w_enc_t),
                of(&p.adam_w_dec),
                of(&p.adam_b_enc),
                of(&p.adam_b_dec),
                of(&p.adam_w_skip),
                of(&p.adam_log_threshold),
                of(&mag.adam_r_mag),
                of(&mag.adam_b_mag),
            )
        };
        Ok(TrainerState {
            params: layout(
                &p.w_enc_t,
                &p.w_dec,
                &p.b_enc,
                &p.b_dec,
                &p.w_skip,
                &p.log_threshold,
                &mag.r_mag,
                &mag.b_mag,
            ),
            m: moment(|m| &m.m),
            v: moment(|m| &m.v),
        })
    }

    fn reset_features(&mut self, resets: &[FeatureReset]) -> Result<(), SaeError> {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let p = &mut self.params;
        for reset in resets {
            let f = reset.feature;
            let (enc_f, dec_f) = (f * d_in..(f + 1) * d_in, f * d_out..(f + 1) * d_out);
            p.w_dec[dec_f.clone()].copy_from_slice(&reset.decoder_row);
            p.w_enc_t[enc_f.clone()].copy_from_slice(&reset.encoder_column);
            p.b_enc[f] = 0.0;
            p.adam_w_dec.reset(dec_f);
            p.adam_w_enc_t.reset(enc_f);
            p.adam_b_enc.reset(f..f + 1);
            let h = usize::from(f >= self.halves[1].lo);
            let half = &mut self.halves[h];
            let j = f - half.lo;
            half.rest.reset(j, self.adam_t);
            if let Some(init_threshold) = self.cfg.architecture.learned_threshold() {
                self.threshold[f] = init_threshold as f32;
                p.log_threshold[f] = self.threshold[f].ln();
                p.adam_log_threshold.reset(f..f + 1);
            }
            if !self.magnitude.r_mag.is_empty() {
                let m = &mut self.magnitude;
                m.r_mag[f] = 0.0;
                m.b_mag[f] = 0.0;
                m.scale[f] = 1.0;
                m.adam_r_mag.reset(f..f + 1);
                m.adam_b_mag.reset(f..f + 1);
            }
        }
        self.halves.iter_mut().for_each(|h| h.rest.refresh_awake());
        Ok(())
    }

    fn settle(&mut self, input: &[f32], exec: Exec) {
        if !self.dormancy.enabled || !self.adam_t.is_multiple_of(SETTLE_EVERY_STEPS) {
            return;
        }
        self.settle_inner(input, exec);
    }

    fn uses_helper_thread(&self) -> bool {
        true
    }

    fn snapshot(&mut self) -> Option<TrainerSnapshot> {
        Some(self.take_snapshot())
    }

    fn restore(&mut self, snapshot: &TrainerSnapshot) -> Result<(), String> {
        self.restore_snapshot(snapshot)
    }
}
