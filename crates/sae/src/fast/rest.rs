//! Rest and dormancy on the fast path (the pure rules are `crate::dormant`):
//! which features skip their Adam step or the encoder, when they are put to
//! rest and to sleep (`settle_inner`), and when they wake.

use crate::arch::Activation;
use crate::dormant::{self, Certificate};
use crate::duo::Exec;
use crate::kernels::{self, AdamStep};

use super::*;

/// The trainer-wide side of dormant features (see `dormant`; per feature: `Half::rest`).
pub(super) struct Dormancy {
    pub(super) enabled: bool,
    /// The largest Adam step size that resting features were checked against
    /// since the last larger step: a larger one ends every rest.
    pub(super) checked_step_size: f32,
    /// The step `apply` took last (its betas replay the skipped decays).
    pub(super) last_step: Option<AdamStep>,
    /// The largest training-row norm, once `settle` has seen the data.
    pub(super) input_norm: Option<f64>,
    pub(super) scratch: Vec<f32>,
    pub(super) scratch2: [Vec<f32>; 2],
    /// How many times a feature came to rest, fell asleep and woke (for tests).
    pub(super) rested: usize,
    pub(super) slept: usize,
    pub(super) woken: usize,
}

/// How often (in steps) `settle` looks for features to put to sleep, and how
/// long a feature must have had no gradient before it is checked (its first
/// moments take about a thousand steps to reach a fixed point).
pub(super) const SETTLE_EVERY_STEPS: usize = 64;
pub(super) const QUIET_STEPS: usize = 512;
/// Certificates are made for this many resting features at once (or every
/// eight settles, whatever is waiting).
pub(super) const REACH_BATCH: usize = 32;
/// A feature whose certificates keep failing (it fires again, or AuxK picks
/// it) waits twice as long for each next one, up to this many doublings.
pub(super) const MAX_CERTIFICATE_BACKOFF: u32 = 4;

impl FastTrainer {
    /// Feature `f`'s firing level (its pre-activation must stay at or below it
    /// to be selected nowhere) and the magnitude of the terms it is made of.
    pub(super) fn firing_level(&self, f: usize) -> (f64, f64) {
        match self.cfg.architecture.activation() {
            // Neither active (pre > t) nor within the pseudo-derivative's
            // window (|pre - t| < bandwidth / 2).
            Activation::JumpRelu { bandwidth, .. } => {
                let (t, half_width) = (self.threshold[f] as f64, (bandwidth / 2.0) as f32 as f64);
                (t - half_width, t.abs() + half_width)
            }
            // Gated: its gate, whose pre-activation this is.
            Activation::Relu
            | Activation::TopK { .. }
            | Activation::BatchTopK { .. }
            | Activation::Gated => (0.0, 0.0),
        }
    }

    /// Whether feature `f`'s certificate holds for the current b_dec and b_enc.
    pub(super) fn certified(&self, f: usize, certificate: &Certificate, b_dec_norm: f64) -> bool {
        let d_in = self.d_in;
        let b_dec_dot = if self.cfg.centres_input() {
            kernels::dot(
                &self.params.b_dec,
                &self.params.w_enc_t[f * d_in..(f + 1) * d_in],
            )
        } else {
            0.0
        };
        let (level, level_scale) = self.firing_level(f);
        certificate.holds(
            b_dec_dot,
            b_dec_norm,
            self.params.b_enc[f],
            level,
            level_scale,
        )
    }

    /// `||b_dec||` where the encoder reads `x - b_dec`, else 0.
    pub(super) fn centring_norm(&self) -> f64 {
        if self.cfg.centres_input() {
            self.params
                .b_dec
                .iter()
                .map(|&b| (b as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        } else {
            0.0
        }
    }

    /// Wakes feature `j` of half `h` back into the encoder (it still rests).
    pub(super) fn wake(&mut self, h: usize, j: usize) {
        self.halves[h].rest.wake(j);
        self.dormancy.woken += 1;
    }

    /// Ends feature `j` of half `h`'s rest: replays the second-moment decays
    /// of the steps it rested through (before the next step's Adam).
    pub(super) fn end_rest(&mut self, h: usize, j: usize) {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let half = &mut self.halves[h];
        let f = half.lo + j;
        let skipped = half.rest.end_rest(j, self.adam_t);
        let step = self
            .dormancy
            .last_step
            .expect("a feature rests after a step");
        let p = &mut self.params;
        dormant::replay_decay(
            &mut p.adam_w_enc_t.v[f * d_in..(f + 1) * d_in],
            skipped,
            step,
        );
        dormant::replay_decay(
            &mut p.adam_w_dec.v[f * d_out..(f + 1) * d_out],
            skipped,
            step,
        );
    }

    /// Before a step: wakes every dormant feature whose certificate no longer
    /// holds (b_dec, b_enc or a threshold moved).
    pub(super) fn wake_uncertified(&mut self) {
        if self.halves.iter().all(|h| h.rest.all_awake()) {
            return;
        }
        let b_dec_norm = self.centring_norm();
        for h in 0..2 {
            let mut woke = false;
            for j in 0..self.halves[h].n() {
                let half = &self.halves[h];
                if !half.rest.is_dormant(j) {
                    continue;
                }
                let certificate = half
                    .rest
                    .certificate(j)
                    .expect("a dormant feature is certified");
                if !self.certified(half.lo + j, &certificate, b_dec_norm) {
                    self.wake(h, j);
                    woke = true;
                }
            }
            if woke {
                self.halves[h].rest.refresh_awake();
            }
        }
    }

    /// Ends every rest and drops every certificate (a larger Adam step than
    /// the checks allowed for is coming).
    pub(super) fn wake_all(&mut self) {
        for h in 0..2 {
            for j in 0..self.halves[h].n() {
                if self.halves[h].rest.is_resting(j) {
                    self.end_rest(h, j);
                }
            }
            let rest = &mut self.halves[h].rest;
            rest.drop_certificates();
            rest.refresh_awake();
        }
        self.dormancy.checked_step_size = 0.0;
    }
}

impl FastTrainer {
    pub(super) fn settle_inner(&mut self, input: &[f32], exec: Exec) {
        let Some(step) = self.dormancy.last_step else {
            return;
        };
        let (d_in, d_out) = (self.d_in, self.d_out);
        let input_norm = *self
            .dormancy
            .input_norm
            .get_or_insert_with(|| dormant::max_row_norm(input, d_in));
        // Features quiet long enough whose weights a zero-gradient step no
        // longer moves rest.
        let unit_norm = self.cfg.architecture.unit_norm_decoder();
        let adam_t = self.adam_t;
        for half in &mut self.halves {
            let p = &self.params;
            for j in 0..half.n() {
                if half.rest.is_resting(j) || half.rest.last_touched(j) + QUIET_STEPS > adam_t {
                    continue;
                }
                let f = half.lo + j;
                let (enc, dec) = (f * d_in..(f + 1) * d_in, f * d_out..(f + 1) * d_out);
                if dormant::zero_step_is_identity(
                    &p.w_enc_t[enc.clone()],
                    &p.adam_w_enc_t.m[enc],
                    step,
                ) && dormant::zero_step_is_identity(
                    &p.w_dec[dec.clone()],
                    &p.adam_w_dec.m[dec.clone()],
                    step,
                ) && (!unit_norm
                    || dormant::renormalise_is_identity(&p.w_dec[dec], &mut self.dormancy.scratch))
                {
                    half.rest.rest(j, adam_t);
                    self.dormancy.rested += 1;
                }
            }
        }
        self.dormancy.checked_step_size = self.dormancy.checked_step_size.max(step.step_size);
        // Resting features get a certificate (their reach over every row),
        // unless their last batch already reached their firing level; one
        // whose certificates keep being spent waits longer for the next.
        let p = &self.params;
        let mut settled = Vec::new();
        for half in &self.halves {
            for j in 0..half.n() {
                let backoff = half.rest.certificates_made(j).min(MAX_CERTIFICATE_BACKOFF);
                let quiet = QUIET_STEPS << backoff;
                if !half.rest.is_resting(j)
                    || half.rest.certificate(j).is_some()
                    || half.rest.last_touched(j) + quiet > adam_t
                {
                    continue;
                }
                let f = half.lo + j;
                let level = self.firing_level(f).0;
                if half
                    .pre
                    .iter()
                    .skip(j)
                    .step_by(half.n())
                    .any(|&pre| pre as f64 >= level)
                {
                    continue;
                }
                settled.push(f);
            }
        }
        // The reach gemm over every row is cheaper per feature in batches.
        let batch_due =
            settled.len() >= REACH_BATCH || self.adam_t.is_multiple_of(SETTLE_EVERY_STEPS * 8);
        if !settled.is_empty() && batch_due {
            let w: Vec<f32> = settled
                .iter()
                .flat_map(|&f| &p.w_enc_t[f * d_in..(f + 1) * d_in])
                .copied()
                .collect();
            // Half the features' reach on each core.
            let (w0, w1) = w.split_at(settled.len() / 2 * d_in);
            let [s0, s1] = &mut self.dormancy.scratch2;
            let (mut reach, reach1) = exec.join(
                || dormant::reach(input, d_in, w0, s0),
                || dormant::reach(input, d_in, w1, s1),
            );
            reach.extend(reach1);
            for (&f, reach) in settled.iter().zip(reach) {
                let w_norm = w_norm(&p.w_enc_t[f * d_in..(f + 1) * d_in]);
                let h = usize::from(f >= self.halves[1].lo);
                let half = &mut self.halves[h];
                half.rest.certify(
                    f - half.lo,
                    Certificate {
                        reach,
                        w_norm,
                        input_norm,
                    },
                );
            }
        }
        // Certified features go to sleep.
        let b_dec_norm = self.centring_norm();
        for h in 0..2 {
            let mut slept = false;
            for j in 0..self.halves[h].n() {
                let half = &self.halves[h];
                let rest = &half.rest;
                let Some(certificate) = rest
                    .certificate(j)
                    .filter(|_| rest.is_resting(j) && !rest.is_dormant(j))
                else {
                    continue;
                };
                if self.certified(half.lo + j, &certificate, b_dec_norm) {
                    self.halves[h].rest.sleep(j);
                    slept = true;
                    self.dormancy.slept += 1;
                }
            }
            if slept {
                self.halves[h].rest.refresh_awake();
            }
        }
    }
}

pub(super) fn w_norm(w: &[f32]) -> f64 {
    w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()
}
