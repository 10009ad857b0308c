//! Phase 3 of a step: one fused pass over a half's features, each one's
//! gradients (only from the rows where it is active), the decoder-gradient
//! projection, then exact Adam on its rows or an export of its gradient.

use crate::dormant::{self};
use crate::kernels::{self, axpy, multiversion, AdamStep, Simd};

use super::layout::*;

/// Read-only inputs of the per-feature pass.
#[derive(Clone, Copy)]
pub(super) struct PassInputs<'a> {
    pub(super) d_in: usize,
    pub(super) d_out: usize,
    /// Whether the encoder read `x - b_dec` (an SAE), so b_dec's gradient has an encoder share.
    pub(super) centred: bool,
    pub(super) x_cent: &'a [f32],
    pub(super) err: &'a [f32],
    /// Matryoshka: feature `f < prefix_widths[g]` (the first such g) takes its
    /// reconstruction gradient from `group_errs[g]` (its own error plus those
    /// of every prefix it is in) instead of `err`. Empty otherwise.
    pub(super) group_errs: &'a [Vec<f32>],
    pub(super) prefix_widths: &'a [usize],
    /// Empty when AuxK is off this step.
    pub(super) aux_residual: &'a [f32],
    /// dL/dx_hat = grad_scale * err
    pub(super) grad_scale: f32,
    pub(super) l1_grad: f32,
    /// Decoder-norm-weighted L1: each feature's penalty is scaled by its decoder row's norm.
    pub(super) norm_weighted: bool,
    /// dAux/de_hat = aux_grad_scale * (e - e_hat)
    pub(super) aux_grad_scale: f32,
    pub(super) project: bool,
    /// JumpReLU: every feature's threshold, and the straight-through terms.
    pub(super) jump: Option<JumpGrad<'a>>,
    /// The Adam step this pass belongs to (recorded as a touched feature's last).
    pub(super) adam_t: usize,
    /// Gated: `main` holds magnitudes, `aux` the open gates, trained on
    /// `gate_err` through the frozen decoder; `l1_grad` applies to the gates.
    pub(super) gated: Option<GatedGrad<'a>>,
}

#[derive(Clone, Copy)]
pub(super) struct GatedGrad<'a> {
    /// exp(r_mag) and b_mag of every feature.
    pub(super) scale: &'a [f32],
    pub(super) b_mag: &'a [f32],
    /// (b_dec + sum of open gates * W_dec rows) - x
    pub(super) gate_err: &'a [f32],
}

#[derive(Clone, Copy)]
pub(super) struct JumpGrad<'a> {
    pub(super) threshold: &'a [f32],
    pub(super) bandwidth: f32,
    /// d(L0 term)/d(count) = l0_coeff / rows.
    pub(super) l0_grad: f32,
}

/// What the per-feature pass does with each feature's gradient.
pub(super) enum PassMode<'a> {
    Adam {
        step: AdamStep,
        renormalise: bool,
    },
    /// Write the raw gradients of this half's rows (W_enc transposed) instead.
    Export {
        g_w_enc_t: &'a mut [f32],
        g_w_dec: &'a mut [f32],
    },
    /// Gradient clipping's first pass: keep each feature's gradient in the
    /// half (`held_g_*`) and sum its squares, ending rests as `Adam` would;
    /// [`adam_held_half`] applies them once the global norm is known.
    Hold {
        step: AdamStep,
    },
}

impl PassMode<'_> {
    /// The Adam step this pass belongs to, where it steps (now or held).
    fn adam_step(&self) -> Option<AdamStep> {
        match self {
            PassMode::Adam { step, .. } | PassMode::Hold { step } => Some(*step),
            PassMode::Export { .. } => None,
        }
    }
}

multiversion! {
    pub(super) fn feature_pass_half(half: &mut Half, p: HalfParams<'_>, inputs: PassInputs<'_>, mode: PassMode<'_>)
        => feature_pass_half_inline
}

/// Phase 3 of a half: per feature, its gradient (only from rows where it is
/// active), then either exact Adam on its rows or an export of the gradient.
#[inline(always)]
pub(super) fn feature_pass_half_inline<S: Simd>(
    half: &mut Half,
    p: HalfParams<'_>,
    inputs: PassInputs<'_>,
    mut mode: PassMode<'_>,
) {
    // The CSC views were built when the halves decoded.
    let (d_in, d) = (inputs.d_in, inputs.d_out);
    let n = half.n();
    let has_aux = !inputs.aux_residual.is_empty() || inputs.gated.is_some();
    half.g_b_dec.fill(0.0);
    let mut group = inputs.prefix_widths.partition_point(|&w| w <= half.lo);
    if let PassMode::Hold { .. } = mode {
        half.held_g_enc.resize(n * d_in, 0.0);
        half.held_g_dec.resize(n * d, 0.0);
    }
    for j in 0..n {
        let rows_j = j * d..(j + 1) * d;
        let enc_j = j * d_in..(j + 1) * d_in;
        while group < inputs.prefix_widths.len() && half.lo + j >= inputs.prefix_widths[group] {
            group += 1;
        }
        let err = match inputs.group_errs.get(group) {
            Some(summed) => summed.as_slice(),
            None => inputs.err,
        };
        let main = half.main_cols.col(j);
        let aux = if has_aux { half.aux_cols.col(j) } else { 0..0 };
        let near = if inputs.jump.is_some() {
            half.near_cols.col(j)
        } else {
            0..0
        };
        let touched = !main.is_empty() || !aux.is_empty() || !near.is_empty();
        if inputs.jump.is_some() {
            half.g_log_threshold[j] = 0.0;
        }
        let mut g_b_enc = 0.0f32;
        // d loss / d (x_cent . encoder column), which also reaches b_dec.
        let mut g_pre_total = 0.0f32;
        if inputs.gated.is_some() {
            half.g_r_mag[j] = 0.0;
            half.g_b_mag[j] = 0.0;
        }
        if half.rest.is_dormant(j) {
            // Selected nowhere, and resting (below).
            debug_assert!(!touched, "a dormant feature is selected nowhere");
            half.g_b_enc[j] = 0.0;
            match &mut mode {
                PassMode::Export { g_w_enc_t, g_w_dec } => {
                    g_w_enc_t[enc_j].fill(0.0);
                    g_w_dec[rows_j].fill(0.0);
                }
                PassMode::Hold { .. } => {
                    half.held_g_enc[enc_j].fill(0.0);
                    half.held_g_dec[rows_j].fill(0.0);
                }
                PassMode::Adam { .. } => {}
            }
            continue;
        }
        if touched {
            if let (true, Some(step)) = (half.rest.is_resting(j), mode.adam_step()) {
                // The second-moment decays of the steps it rested through.
                let skipped = half.rest.end_rest(j, inputs.adam_t - 1);
                dormant::replay_decay(&mut p.w_enc_t_v[enc_j.clone()], skipped, step);
                dormant::replay_decay(&mut p.w_dec_v[rows_j.clone()], skipped, step);
            }
            half.rest.touch(j, inputs.adam_t);
            half.g_enc_row.fill(0.0);
            half.g_dec_row.fill(0.0);
            let w_dec_j = &p.w_dec[rows_j.clone()];
            let f = half.lo + j;
            // Gated: the magnitude's gradient reaches W_enc scaled, r_mag and
            // b_mag, not the gate's bias; the L1 is on the gates.
            let dec_norm = if inputs.norm_weighted {
                S::dot(w_dec_j, w_dec_j).sqrt()
            } else {
                1.0
            };
            let (enc_scale, main_l1) = match inputs.gated {
                Some(g) => (g.scale[f], 0.0),
                None => (1.0, inputs.l1_grad * dec_norm),
            };
            let mut act_sum = 0.0f32;
            let (mut g_r_mag, mut g_b_mag) = (0.0f32, 0.0f32);
            for e in main {
                let r = half.main_cols.row[e] as usize;
                let err_r = &err[r * d..(r + 1) * d];
                let value = half.main_cols.val[e];
                act_sum += value;
                let g_act = inputs.grad_scale * S::dot(err_r, w_dec_j) + main_l1;
                axpy(&mut half.g_dec_row, inputs.grad_scale * value, err_r);
                let g_enc = g_act * enc_scale;
                axpy(
                    &mut half.g_enc_row,
                    g_enc,
                    &inputs.x_cent[r * d_in..(r + 1) * d_in],
                );
                g_pre_total += g_enc;
                match inputs.gated {
                    Some(g) => {
                        // value = scale * enc + b_mag, so scale * enc = value - b_mag.
                        g_r_mag += g_act * (value - g.b_mag[f]);
                        g_b_mag += g_act;
                    }
                    None => g_b_enc += g_act,
                }
            }
            if inputs.norm_weighted && act_sum != 0.0 {
                // d(l1 * ||w|| * sum a)/dw = l1 * sum a * w / ||w||
                axpy(
                    &mut half.g_dec_row,
                    inputs.l1_grad * act_sum / dec_norm,
                    w_dec_j,
                );
            }
            if let Some(g) = inputs.gated {
                for e in aux.clone() {
                    let r = half.aux_cols.row[e] as usize;
                    let gate_err_r = &g.gate_err[r * d..(r + 1) * d];
                    let g_gate = inputs.grad_scale * S::dot(gate_err_r, w_dec_j) + inputs.l1_grad;
                    axpy(
                        &mut half.g_enc_row,
                        g_gate,
                        &inputs.x_cent[r * d_in..(r + 1) * d_in],
                    );
                    g_b_enc += g_gate;
                    g_pre_total += g_gate;
                }
                half.g_r_mag[j] = g_r_mag;
                half.g_b_mag[j] = g_b_mag;
            }
            for e in aux.filter(|_| inputs.gated.is_none()) {
                let r = half.aux_cols.row[e] as usize;
                let res_r = &inputs.aux_residual[r * d..(r + 1) * d];
                let g_pre = inputs.aux_grad_scale * S::dot(res_r, w_dec_j);
                axpy(
                    &mut half.g_dec_row,
                    inputs.aux_grad_scale * half.aux_cols.val[e],
                    res_r,
                );
                axpy(
                    &mut half.g_enc_row,
                    g_pre,
                    &inputs.x_cent[r * d_in..(r + 1) * d_in],
                );
                g_b_enc += g_pre;
                g_pre_total += g_pre;
            }
            // JumpReLU's pseudo-derivative (rectangle kernel) for the
            // log-threshold, from the output and the L0 term, with the
            // decoder row as it stood in the forward pass.
            if let Some(jump) = inputs.jump {
                let theta = jump.threshold[half.lo + j];
                let mut g_theta = 0.0f32;
                for e in half.near_cols.col(j) {
                    let r = half.near_cols.row[e] as usize;
                    let g_act = inputs.grad_scale * S::dot(&err[r * d..(r + 1) * d], w_dec_j);
                    g_theta += -(theta / jump.bandwidth) * g_act - jump.l0_grad / jump.bandwidth;
                }
                half.g_log_threshold[j] = theta * g_theta;
            }
            // x_cent = x - b_dec: b_dec's gradient gets -g_b_enc * (old) encoder column.
            if inputs.centred {
                axpy(&mut half.g_b_dec, -g_pre_total, &p.w_enc_t[enc_j.clone()]);
            }
            if inputs.project {
                // Remove the component along the (normalised) decoder row.
                let norm = S::dot(w_dec_j, w_dec_j).sqrt();
                let along = S::dot(&half.g_dec_row, w_dec_j) / norm;
                for (g, &w) in half.g_dec_row.iter_mut().zip(w_dec_j) {
                    *g -= along * (w / norm);
                }
            }
        }
        half.g_b_enc[j] = g_b_enc;
        let (g_enc, g_dec) = if touched {
            (&half.g_enc_row[..], &half.g_dec_row[..])
        } else {
            (&half.zero_row[..d_in], &half.zero_row[..d])
        };
        match &mut mode {
            // No gradient, and a zero-gradient step would change none of its
            // weights: only its second moments decay, replayed when it is next touched.
            PassMode::Adam { .. } if half.rest.is_resting(j) => {}
            PassMode::Adam { step, renormalise } => {
                kernels::adam_inline::<S>(
                    &mut p.w_enc_t[enc_j.clone()],
                    &mut p.w_enc_t_m[enc_j.clone()],
                    &mut p.w_enc_t_v[enc_j.clone()],
                    g_enc,
                    *step,
                );
                let w_dec_j = &mut p.w_dec[rows_j.clone()];
                kernels::adam_inline::<S>(
                    w_dec_j,
                    &mut p.w_dec_m[rows_j.clone()],
                    &mut p.w_dec_v[rows_j.clone()],
                    g_dec,
                    *step,
                );
                if *renormalise {
                    kernels::normalise_rows_inline::<S>(w_dec_j, d);
                }
            }
            PassMode::Export { g_w_enc_t, g_w_dec } => {
                g_w_enc_t[enc_j].copy_from_slice(g_enc);
                g_w_dec[rows_j].copy_from_slice(g_dec);
            }
            PassMode::Hold { .. } => {
                half.held_g_enc[enc_j].copy_from_slice(g_enc);
                half.held_g_dec[rows_j].copy_from_slice(g_dec);
            }
        }
    }
    match mode {
        PassMode::Adam { step, .. } => {
            kernels::adam_inline::<S>(p.b_enc, p.b_enc_m, p.b_enc_v, &half.g_b_enc, step);
        }
        PassMode::Hold { .. } => {
            half.held_sq = [&half.held_g_enc, &half.held_g_dec, &half.g_b_enc]
                .iter()
                .map(|g| squared_norm(g))
                .sum();
        }
        PassMode::Export { .. } => {}
    }
}

/// The sum of squares, in f64.
pub(super) fn squared_norm(g: &[f32]) -> f64 {
    g.iter().map(|&x| x as f64 * x as f64).sum()
}

multiversion! {
    pub(super) fn adam_held_half(half: &mut Half, p: HalfParams<'_>, d_in: usize, d_out: usize, step: AdamStep, renormalise: bool, factor: f32)
        => adam_held_half_inline
}

/// Gradient clipping's second pass: the gradients `PassMode::Hold` kept,
/// times `factor`, stepped by Adam exactly as `PassMode::Adam` steps them
/// (resting and dormant features skip it). With `factor` 1 the same bits.
#[inline(always)]
pub(super) fn adam_held_half_inline<S: Simd>(
    half: &mut Half,
    p: HalfParams<'_>,
    d_in: usize,
    d_out: usize,
    step: AdamStep,
    renormalise: bool,
    factor: f32,
) {
    let scale = |g: &mut [f32]| {
        if factor != 1.0 {
            g.iter_mut().for_each(|x| *x *= factor);
        }
    };
    for j in 0..half.n() {
        if half.rest.is_resting(j) || half.rest.is_dormant(j) {
            continue;
        }
        let (enc_j, rows_j) = (j * d_in..(j + 1) * d_in, j * d_out..(j + 1) * d_out);
        let g_enc = &mut half.held_g_enc[enc_j.clone()];
        scale(g_enc);
        kernels::adam_inline::<S>(
            &mut p.w_enc_t[enc_j.clone()],
            &mut p.w_enc_t_m[enc_j.clone()],
            &mut p.w_enc_t_v[enc_j],
            g_enc,
            step,
        );
        let g_dec = &mut half.held_g_dec[rows_j.clone()];
        scale(g_dec);
        let w_dec_j = &mut p.w_dec[rows_j.clone()];
        kernels::adam_inline::<S>(
            w_dec_j,
            &mut p.w_dec_m[rows_j.clone()],
            &mut p.w_dec_v[rows_j],
            g_dec,
            step,
        );
        if renormalise {
            kernels::normalise_rows_inline::<S>(w_dec_j, d_out);
        }
    }
    scale(&mut half.g_b_enc);
    kernels::adam_inline::<S>(p.b_enc, p.b_enc_m, p.b_enc_v, &half.g_b_enc, step);
}
