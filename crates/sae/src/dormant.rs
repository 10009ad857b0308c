//! Resting and dormant features: the fast trainer's exact shortcuts for
//! latents that have stopped learning.
//!
//! Most of a long run's latents die (674-1007 of 1024 in the zoo), yet the
//! dense path still spends on each of them, every step, a column of the
//! encoder gemm, an Adam step and a renormalisation that change nothing but
//! its second moments. A feature *rests* once it has had no gradient for a
//! while and another zero-gradient step would leave its encoder column and
//! decoder row bit for bit as they are, whatever its second moments: its
//! first moments have decayed to a fixed point, the largest update they
//! allow is absorbed by rounding, and the decoder row is a fixed point of the
//! renormalisation ([`zero_step_is_identity`], [`renormalise_is_identity`]).
//! A resting feature skips its Adam steps; when it next has a gradient, the
//! second-moment decays it skipped are replayed first ([`replay_decay`]).
//!
//! A resting feature is also *dormant* while a certificate shows its
//! pre-activation is below its firing level on every training row:
//! `reach + b_enc - b_dec . w + tolerance < level`, where `reach` is
//! `max_r x_r . w` over all the training rows, computed once it rests
//! ([`reach`]), and the tolerance covers every rounding of the dense path's
//! f32 arithmetic ([`Certificate`]). A dormant feature gets no gradient and is
//! selected nowhere, so the encoder skips its column (its pre-activations
//! read -inf) until b_dec's or b_enc's drift breaks the certificate and it
//! wakes (still resting). Training gives the same bits with and without
//! (tested in `fast.rs`). Raw AuxK, which may pick a latent with a negative
//! pre-activation, turns both off.

use crate::kernels::{self, AdamStep, MatRef};

/// Whether one more Adam step with a zero gradient, a step size of at most
/// `step.step_size` and any second moment leaves `p` and `m` as they are (the
/// dense kernel's arithmetic, exactly). The largest update is the one with a
/// zero second moment; rounding is monotone, so if that one is absorbed every
/// smaller one is too.
pub(crate) fn zero_step_is_identity(p: &[f32], m: &[f32], step: AdamStep) -> bool {
    let g = 0.0f32;
    let denom = 0.0f32.sqrt() * step.inv_bias_correction2_sqrt + step.eps;
    p.iter().zip(m).all(|(&p, &m)| {
        let m_next = step.beta1 * m + step.one_minus_beta1 * g;
        let p_next = p - step.step_size * (m_next / denom);
        m_next.to_bits() == m.to_bits() && p_next.to_bits() == p.to_bits()
    })
}

/// Whether renormalising `row` leaves it as it is.
pub(crate) fn renormalise_is_identity(row: &[f32], scratch: &mut Vec<f32>) -> bool {
    scratch.clear();
    scratch.extend_from_slice(row);
    kernels::normalise_rows(scratch, row.len());
    scratch
        .iter()
        .zip(row)
        .all(|(a, b)| a.to_bits() == b.to_bits())
}

/// The dense path's second-moment update with a zero gradient, `steps` times.
/// Stops early once a block of steps changes nothing: the decay is monotone,
/// so a row that comes back to itself is at a fixed point.
pub(crate) fn replay_decay(v: &mut [f32], steps: usize, step: AdamStep) {
    const BLOCK: usize = 64;
    let g = 0.0f32;
    let mut before = v.to_vec();
    let mut left = steps;
    while left > 0 {
        let block = left.min(BLOCK);
        for _ in 0..block {
            for x in v.iter_mut() {
                *x = step.beta2 * *x + step.one_minus_beta2 * (g * g);
            }
        }
        left -= block;
        if v.iter()
            .zip(&before)
            .all(|(a, b)| a.to_bits() == b.to_bits())
        {
            return;
        }
        before.copy_from_slice(v);
    }
}

/// `max_r data_r . w_f` over every row of `data` (`[rows, d_in]`) for each row
/// `w_f` of `w` (`[n, d_in]`), in f32 through the gemm ([`Certificate`]
/// allows for its rounding).
pub(crate) fn reach(data: &[f32], d_in: usize, w: &[f32], scratch: &mut Vec<f32>) -> Vec<f32> {
    const CHUNK_ROWS: usize = 1024;
    let n = w.len() / d_in;
    let mut best = vec![f32::NEG_INFINITY; n];
    if n == 0 {
        return best;
    }
    for chunk in data.chunks(CHUNK_ROWS * d_in) {
        let rows = chunk.len() / d_in;
        scratch.clear();
        scratch.resize(rows * n, 0.0);
        kernels::matmul(
            scratch,
            rows,
            n,
            d_in,
            false,
            MatRef::row_major(chunk, d_in),
            MatRef::transposed(w, d_in),
        );
        for row in scratch.chunks_exact(n) {
            for (b, &v) in best.iter_mut().zip(row) {
                *b = b.max(v);
            }
        }
    }
    best
}

/// The largest L2 norm of a row of `data` (`[rows, d_in]`).
pub(crate) fn max_row_norm(data: &[f32], d_in: usize) -> f64 {
    data.chunks_exact(d_in)
        .map(|row| row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt())
        .fold(0.0, f64::max)
}

/// Relative tolerance of the certificate: the dense path's f32 rounding of
/// a 128-term pre-activation is at most about 1.6e-5 of the magnitudes below
/// (the gemm's dot, `x - b_dec`, the f32 reach and `b_dec . w`), and the bound
/// must hold for any `d_in` the crate trains at.
const CERTIFICATE_TOLERANCE: f64 = 1e-4;

/// What proves a feature's pre-activation stays below `level` on every training row.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Certificate {
    /// `max_r x_r . w`, f32.
    pub reach: f32,
    /// `||w||`
    pub w_norm: f64,
    /// The largest training-row norm.
    pub input_norm: f64,
}

impl Certificate {
    /// Whether `x . w - b_dec_dot + b_enc` (the dense path's arithmetic, in f32)
    /// stays below `level` for every training row: `b_dec_dot` is `b_dec . w`
    /// in f32 (0 for a transcoder, whose encoder does not centre its input) and
    /// `b_dec_norm` is `||b_dec||` (0 likewise); `level_scale` is the magnitude
    /// of the terms the level itself is made of.
    pub fn holds(
        &self,
        b_dec_dot: f32,
        b_dec_norm: f64,
        b_enc: f32,
        level: f64,
        level_scale: f64,
    ) -> bool {
        let magnitude =
            (self.input_norm + b_dec_norm) * self.w_norm + (b_enc as f64).abs() + level_scale;
        let bound =
            self.reach as f64 - b_dec_dot as f64 + b_enc as f64 + CERTIFICATE_TOLERANCE * magnitude;
        bound < level
    }
}

/// The rest and dormancy state of a run of features (one half of the fast
/// path's), behind the transitions the trainer may make: a feature *rests*
/// from `rest` until `end_rest`, is *dormant* from `sleep` (resting and
/// certified) until `wake` or `end_rest`, and is *touched* whenever it has a
/// gradient, which drops its certificate.
#[derive(Default)]
pub(crate) struct RestStates {
    resting: Vec<bool>,
    /// The Adam step each resting feature rests since.
    resting_since: Vec<usize>,
    dormant: Vec<bool>,
    /// The last Adam step each feature had a gradient.
    last_touched: Vec<usize>,
    /// Held while it rests, dropped when its encoder column may change.
    certificate: Vec<Option<Certificate>>,
    certificates_made: Vec<u32>,
    /// The features that are not dormant, ascending.
    awake: Vec<u32>,
}

impl RestStates {
    /// `n` features, every one awake and working.
    pub fn new(n: usize) -> Self {
        RestStates {
            resting: vec![false; n],
            resting_since: vec![0; n],
            dormant: vec![false; n],
            last_touched: vec![0; n],
            certificate: vec![None; n],
            certificates_made: vec![0; n],
            awake: (0..n as u32).collect(),
        }
    }

    pub fn is_resting(&self, j: usize) -> bool {
        self.resting[j]
    }

    pub fn is_dormant(&self, j: usize) -> bool {
        self.dormant[j]
    }

    pub fn resting_count(&self) -> usize {
        self.resting.iter().filter(|&&r| r).count()
    }

    /// The features in the encoder (not dormant), ascending.
    pub fn awake(&self) -> &[u32] {
        &self.awake
    }

    pub fn all_awake(&self) -> bool {
        self.awake.len() == self.resting.len()
    }

    pub fn last_touched(&self, j: usize) -> usize {
        self.last_touched[j]
    }

    pub fn certificate(&self, j: usize) -> Option<Certificate> {
        self.certificate[j]
    }

    pub fn certificates_made(&self, j: usize) -> u32 {
        self.certificates_made[j]
    }

    /// Feature `j` has a gradient at Adam step `adam_t`.
    pub fn touch(&mut self, j: usize, adam_t: usize) {
        self.last_touched[j] = adam_t;
        self.certificate[j] = None;
    }

    /// Feature `j` rests from Adam step `adam_t` on.
    pub fn rest(&mut self, j: usize, adam_t: usize) {
        self.resting[j] = true;
        self.resting_since[j] = adam_t;
    }

    /// Ends feature `j`'s rest (and any sleep: call `refresh_awake` after a
    /// batch of these) after Adam step `adam_t`; returns how many steps it
    /// rested through, whose second-moment decays the caller replays.
    pub fn end_rest(&mut self, j: usize, adam_t: usize) -> usize {
        self.resting[j] = false;
        self.dormant[j] = false;
        adam_t - self.resting_since[j]
    }

    pub fn certify(&mut self, j: usize, certificate: Certificate) {
        self.certificates_made[j] += 1;
        self.certificate[j] = Some(certificate);
    }

    /// Feature `j`, resting and certified, leaves the encoder (call
    /// `refresh_awake` after a batch of these).
    pub fn sleep(&mut self, j: usize) {
        debug_assert!(self.resting[j] && self.certificate[j].is_some());
        self.dormant[j] = true;
    }

    /// Feature `j` returns to the encoder, still resting (call
    /// `refresh_awake` after a batch of these).
    pub fn wake(&mut self, j: usize) {
        self.dormant[j] = false;
    }

    /// Drops every certificate (the bounds they were made for no longer apply).
    pub fn drop_certificates(&mut self) {
        self.certificate.fill(None);
    }

    /// Feature `j` was resampled at Adam step `adam_t`: it works again.
    pub fn reset(&mut self, j: usize, adam_t: usize) {
        self.resting[j] = false;
        self.dormant[j] = false;
        self.certificate[j] = None;
        self.last_touched[j] = adam_t;
    }

    pub fn refresh_awake(&mut self) {
        self.awake.clear();
        self.awake
            .extend((0..self.dormant.len() as u32).filter(|&j| !self.dormant[j as usize]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(lr: f64, t: usize) -> AdamStep {
        AdamStep::new(lr, 0.9, 0.999, 1e-8, t)
    }

    #[test]
    fn a_decayed_first_moment_is_a_fixed_point_and_a_live_one_is_not() {
        let s = step(1e-3, 5000);
        // Two ulps of the smallest subnormal: 0.9 * 2 rounds back to 2.
        let stuck = f32::from_bits(2);
        assert!(zero_step_is_identity(&[0.25, -0.5], &[stuck, -stuck], s));
        assert!(zero_step_is_identity(&[0.25], &[0.0], s));
        // A first moment that still decays moves m (and here p as well).
        assert!(!zero_step_is_identity(&[0.25], &[1e-6], s));
        // A stuck m that the step does not absorb: p is tiny.
        assert!(!zero_step_is_identity(&[1e-38], &[stuck], step(1.0, 5000)));
    }

    #[test]
    fn replay_is_the_dense_decay_step_by_step() {
        let s = step(1e-3, 10);
        let start = [1.0f32, 3e-7, 1e-40, 0.0];
        let mut dense = start;
        for _ in 0..20_000 {
            for x in dense.iter_mut() {
                *x = s.beta2 * *x + s.one_minus_beta2 * (0.0f32 * 0.0);
            }
        }
        let mut replayed = start;
        replay_decay(&mut replayed, 20_000, s);
        assert_eq!(
            dense.map(f32::to_bits),
            replayed.map(f32::to_bits),
            "{dense:?} vs {replayed:?}"
        );
    }

    #[test]
    fn reach_is_the_largest_dot_over_every_row() {
        let (rows, d_in) = (2500, 5);
        let data: Vec<f32> = (0..rows * d_in)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let w = [0.5f32, -1.0, 0.25, 2.0, 0.0, -0.3, 0.1, 0.0, 1.0, -2.0];
        let got = reach(&data, d_in, &w, &mut Vec::new());
        for (f, got) in got.iter().enumerate() {
            let want = data
                .chunks_exact(d_in)
                .map(|x| {
                    x.iter()
                        .zip(&w[f * d_in..(f + 1) * d_in])
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                })
                .fold(f64::NEG_INFINITY, f64::max);
            assert!((*got as f64 - want).abs() < 1e-4, "{got} vs {want}");
        }
    }

    #[test]
    fn certificate_bounds_the_pre_activation_with_its_tolerance() {
        let c = Certificate {
            reach: 2.0,
            w_norm: 1.0,
            input_norm: 10.0,
        };
        // reach - b_dec . w + b_enc = 2 - 1.5 - 1 = -0.5 < 0.
        assert!(c.holds(1.5, 1.0, -1.0, 0.0, 0.0));
        // -0.0005 is within the tolerance (1e-4 of about 12): not certified.
        assert!(!c.holds(1.5, 1.0, -0.5005, 0.0, 0.0));
        // A JumpReLU level: below threshold - half width.
        assert!(c.holds(1.5, 1.0, -1.0, -0.4, 0.5));
        assert!(!c.holds(1.5, 1.0, -1.0, -0.5, 0.5));
    }
}
