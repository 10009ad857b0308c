//! One step's forward, loss and the caller's share of the backward pass:
//! the halves' phases joined, the reconstruction error, AuxK's, Matryoshka's
//! prefixes' and Gated's gate terms; then the feature pass and b_dec's,
//! W_skip's, thresholds' and magnitudes' gradients.

use crate::arch::{Activation, AuxInput, Penalty};
use crate::duo::Exec;
use crate::kernels::{self, axpy, MatRef, Selection};
use crate::model::{self};
use crate::trainer::{FiringTracker, StepStats};
use crate::SaeError;

use super::encode::*;
use super::feature_pass::*;
use super::layout::*;
use super::*;

impl FastTrainer {
    pub(super) fn split(&self) -> usize {
        self.halves[1].lo
    }

    /// Runs the per-feature pass on both halves (modes per half).
    pub(super) fn feature_pass(&mut self, exec: Exec, modes: [PassMode<'_>; 2], project: bool) {
        let rows = self.step.rows;
        let architecture = &self.cfg.architecture;
        let inputs = PassInputs {
            d_in: self.d_in,
            d_out: self.d_out,
            centred: self.cfg.centres_input(),
            x_cent: &self.step.x_cent,
            err: &self.step.err,
            group_errs: &self.step.group_errs,
            prefix_widths: &self.prefix_widths,
            aux_residual: &self.step.aux_residual,
            grad_scale: 2.0 / rows as f32,
            l1_grad: (self.cfg.l1_scale(rows) * self.penalty_factor) as f32,
            // The penalty's share of each active entry's gradient is l1_grad
            // (times the decoder row's norm where weighted); L0's reaches the
            // thresholds only (`jump`).
            norm_weighted: match architecture.penalty() {
                Penalty::NormWeightedL1 { .. } => true,
                Penalty::None | Penalty::L1 { .. } | Penalty::L0 { .. } => false,
            },
            aux_grad_scale: self.step.aux_grad_scale,
            project,
            adam_t: self.adam_t,
            jump: match architecture.activation() {
                Activation::JumpRelu { bandwidth, .. } => Some(JumpGrad {
                    threshold: &self.threshold,
                    bandwidth: bandwidth as f32,
                    l0_grad: match architecture.penalty() {
                        Penalty::L0 { coeff } => (coeff / rows as f64 * self.penalty_factor) as f32,
                        Penalty::None | Penalty::L1 { .. } | Penalty::NormWeightedL1 { .. } => 0.0,
                    },
                }),
                Activation::Relu
                | Activation::TopK { .. }
                | Activation::BatchTopK { .. }
                | Activation::Gated => None,
            },
            gated: architecture.is_gated().then_some(GatedGrad {
                scale: &self.magnitude.scale,
                b_mag: &self.magnitude.b_mag,
                gate_err: &self.step.gate_err,
            }),
        };
        let split = self.halves[1].lo;
        let [p0, p1] = self.params.halves(split, self.d_in, self.d_out);
        let [h0, h1] = &mut self.halves;
        let [m0, m1] = modes;
        exec.join(
            || feature_pass_half(h0, p0, inputs, m0),
            || feature_pass_half(h1, p1, inputs, m1),
        );
    }

    /// One per-feature gradient of the last feature pass, both halves in feature order.
    pub(super) fn gathered(&self, part: fn(&Half) -> &[f32]) -> Vec<f32> {
        self.halves
            .iter()
            .flat_map(|h| part(h).iter().copied())
            .collect()
    }

    /// Gated's r_mag and b_mag gradients (empty for other architectures).
    pub(super) fn magnitude_gradients(&self) -> (Vec<f32>, Vec<f32>) {
        if self.magnitude.r_mag.is_empty() {
            return (Vec::new(), Vec::new());
        }
        (self.gathered(|h| &h.g_r_mag), self.gathered(|h| &h.g_b_mag))
    }

    /// JumpReLU's log-threshold gradient (empty for other architectures).
    pub(super) fn log_threshold_gradient(&self) -> Vec<f32> {
        if self.params.log_threshold.is_empty() {
            return Vec::new();
        }
        self.gathered(|h| &h.g_log_threshold)
    }

    /// dL/d(output) summed over every reconstruction the output's base
    /// (b_dec, W_skip @ x) enters: every prefix's error for Matryoshka (the
    /// first group's sum holds them all), else the error.
    pub(super) fn base_error(&self) -> &[f32] {
        self.step.group_errs.first().unwrap_or(&self.step.err)
    }

    /// b_dec's full gradient: through x_hat (sum of dL/dx_hat) and the
    /// halves' shares through x - b_dec (zero for a transcoder, which does
    /// not centre its input).
    pub(super) fn b_dec_gradient(&self) -> Vec<f32> {
        let d = self.d_out;
        let grad_scale = 2.0 / self.step.rows as f32;
        let mut g = vec![0.0f32; d];
        for err_r in self.base_error().chunks_exact(d) {
            axpy(&mut g, grad_scale, err_r);
        }
        for half in &self.halves {
            for (a, b) in g.iter_mut().zip(&half.g_b_dec) {
                *a += b;
            }
        }
        g
    }

    /// A skip transcoder's W_skip gradient `[d_out, d_in]` (empty for
    /// others): `grad_scale * sum over rows of err_r x_r^T`.
    pub(super) fn w_skip_gradient(&self) -> Vec<f32> {
        if self.params.w_skip.is_empty() {
            return Vec::new();
        }
        let (d_in, d_out, rows) = (self.d_in, self.d_out, self.step.rows);
        let mut g = vec![0.0f32; d_out * d_in];
        // err^T @ x (a transcoder's x_cent is its input x), then the scale.
        kernels::matmul(
            &mut g,
            d_out,
            d_in,
            rows,
            false,
            MatRef::transposed(self.base_error(), d_out),
            MatRef::row_major(&self.step.x_cent, d_in),
        );
        let grad_scale = 2.0 / rows as f32;
        g.iter_mut().for_each(|v| *v *= grad_scale);
        g
    }

    pub(super) fn compute_step(
        &mut self,
        x: &[f32],
        target: &[f32],
        rows: usize,
        tracker: &mut FiringTracker,
        exec: Exec,
    ) -> Result<StepStats, SaeError> {
        let (d_in, d_out) = (self.d_in, self.d_out);
        self.wake_uncertified();
        let x = &x[..rows * d_in];
        // What the decoder predicts: x itself for an SAE.
        let y = if self.cfg.transcoder.is_some() {
            &target[..rows * d_out]
        } else {
            x
        };
        let split = self.split();
        let st = &mut self.step;
        st.rows = rows;
        st.x_cent.clear();
        if self.cfg.centres_input() {
            for row in x.chunks_exact(d_in) {
                st.x_cent
                    .extend(row.iter().zip(&self.params.b_dec).map(|(a, b)| a - b));
            }
        } else {
            st.x_cent.extend_from_slice(x);
        }
        st.base.clear();
        if !self.params.w_skip.is_empty() {
            // base = b_dec + x @ W_skip^T; an SAE's is b_dec alone (see `OutputBase`).
            for _ in 0..rows {
                st.base.extend_from_slice(&self.params.b_dec);
            }
            kernels::matmul(
                &mut st.base,
                rows,
                d_out,
                d_in,
                true,
                MatRef::row_major(x, d_in),
                MatRef::transposed(&self.params.w_skip, d_in),
            );
        }

        let p = &self.params;
        let (w_enc_t0, w_enc_t1) = p.w_enc_t.split_at(split * d_in);
        let (b_enc0, b_enc1) = p.b_enc.split_at(split);
        let activation = self.cfg.architecture.activation();
        // Per row: each half's top k, merged below; per batch: every
        // positive entry, the batch's top k * rows kept below.
        let (top_k, batch_budget) = match activation {
            Activation::TopK { k } => (Some(k), None),
            Activation::BatchTopK { k, .. } => (None, Some(k * rows)),
            Activation::Relu | Activation::JumpRelu { .. } | Activation::Gated => (None, None),
        };
        let aux_k = self.aux_k;
        let decode_now = aux_k.is_none();
        let [h0, h1] = &mut self.halves;
        let (x_cent, w_dec) = (&st.x_cent, &p.w_dec);
        let select = |range: std::ops::Range<usize>| match activation {
            Activation::Relu | Activation::BatchTopK { .. } => HalfSelect::Rows(Selection::Relu),
            Activation::TopK { k } => HalfSelect::Rows(Selection::TopK(k)),
            Activation::JumpRelu { bandwidth, .. } => HalfSelect::Jump(JumpSelect {
                threshold: &self.threshold[range],
                half_width: (bandwidth / 2.0) as f32,
            }),
            Activation::Gated => HalfSelect::Gated(GatedSelect {
                scale: &self.magnitude.scale[range.clone()],
                b_mag: &self.magnitude.b_mag[range],
            }),
        };
        let (select0, select1) = (select(0..split), select(split..self.d_sae));
        exec.join(
            || {
                encode_half(
                    h0, x_cent, rows, d_in, w_enc_t0, b_enc0, w_dec, d_out, select0, decode_now,
                )
            },
            || {
                encode_half(
                    h1, x_cent, rows, d_in, w_enc_t1, b_enc1, w_dec, d_out, select1, decode_now,
                )
            },
        );
        if let Some(k) = top_k {
            merge_top_k(&mut self.halves, &mut st.spare, &mut st.merge, k, false);
        }
        if let Some(budget) = batch_budget {
            let smallest = keep_batch_top_k(&mut self.halves, &mut st.batch, budget);
            if let Some(threshold) = &mut self.batch_threshold {
                threshold.observe(smallest);
            }
        }

        st.fired.fill(false);
        let mut abs_sum = 0.0f64;
        let mut active = 0u64;
        for half in &self.halves {
            for (&f, &v) in half.main.idx.iter().zip(&half.main.val) {
                st.fired[f as usize] = true;
                abs_sum += v as f64;
            }
            active += half.main.idx.len() as u64;
        }
        tracker.record(&st.fired);

        let mut k_aux = 0;
        if let Some((k, _, aux_input)) = aux_k {
            let dead = tracker.dead_mask();
            if dead.iter().any(|&d| d) {
                k_aux = k;
            }
            // Each half's own top k_aux among its dead latents; merged below.
            let aux = (k_aux > 0).then_some(match aux_input {
                AuxInput::Relu => Selection::TopK(k_aux),
                AuxInput::Raw => Selection::TopKAny(k_aux),
            });
            let [h0, h1] = &mut self.halves;
            let cuts = &self.prefix_widths;
            exec.join(
                || decode_half(h0, w_dec, d_out, dead, aux, cuts),
                || decode_half(h1, w_dec, d_out, dead, aux, cuts),
            );
        }

        // err = x_hat - y with x_hat = (base + partial_0) + partial_1.
        let base = OutputBase {
            b_dec: &p.b_dec,
            with_skip: &st.base,
            d_out,
        };
        st.err.clear();
        let mut sq_err_sum = 0.0f64;
        let [h0, h1] = &self.halves;
        for r in 0..rows {
            let span = r * d_out..(r + 1) * d_out;
            let start = st.err.len();
            st.err.extend(
                base.row(r)
                    .iter()
                    .zip(&h0.partial[span.clone()])
                    .zip(&h1.partial[span.clone()])
                    .zip(&y[span])
                    .map(|(((b, p0), p1), y)| ((b + p0) + p1) - y),
            );
            sq_err_sum += st.err[start..].iter().map(|&e| (e * e) as f64).sum::<f64>();
        }

        // Gated: the open gates' reconstruction through the (frozen) decoder.
        let mut gate_sq = 0.0f64;
        let mut gate_sum = 0.0f64;
        st.gate_err.clear();
        if activation == Activation::Gated {
            let [h0, h1] = &mut self.halves;
            exec.join(
                || decode_aux_half(h0, w_dec, d_out),
                || decode_aux_half(h1, w_dec, d_out),
            );
            let [h0, h1] = &self.halves;
            for (e, &y) in y.iter().enumerate() {
                let gate_err = ((base.at(e) + h0.aux_partial[e]) + h1.aux_partial[e]) - y;
                gate_sq += (gate_err * gate_err) as f64;
                st.gate_err.push(gate_err);
            }
            gate_sum = h0
                .aux
                .val
                .iter()
                .chain(&h1.aux.val)
                .map(|&g| g as f64)
                .sum();
        }

        // Matryoshka: each prefix's error e_w = (base + its partial sums) - y;
        // group g is trained on err + e_w for every prefix w it lies in.
        let mut prefix_sq = 0.0f64;
        st.group_errs
            .resize_with(self.prefix_widths.len(), Vec::new);
        let block = rows * d_out;
        let in_first_half = self.prefix_widths.iter().filter(|&&w| w <= split).count();
        for (g, &width) in self.prefix_widths.iter().enumerate().rev() {
            let [h0, h1] = &self.halves;
            // The first `width` features' decoder sum, from the halves' snapshots.
            let (upto0, upto1) = if width <= split {
                (&h0.prefix_partials[g * block..(g + 1) * block], None)
            } else {
                let i = g - in_first_half;
                (
                    &h0.partial[..],
                    Some(&h1.prefix_partials[i * block..(i + 1) * block]),
                )
            };
            // This group's sum is the next (larger) group's plus its own prefix's error.
            let (head, tail) = st.group_errs.split_at_mut(g + 1);
            let later = tail.first().unwrap_or(&st.err);
            let summed = &mut head[g];
            summed.clear();
            for (e, &later) in later.iter().enumerate() {
                let mut prefix_hat = base.at(e) + upto0[e];
                if let Some(upto1) = upto1 {
                    prefix_hat += upto1[e];
                }
                let prefix_err = prefix_hat - y[e];
                prefix_sq += (prefix_err * prefix_err) as f64;
                summed.push(later + prefix_err);
            }
        }

        let mut aux = (prefix_sq + gate_sq) / rows as f64;
        st.aux_residual.clear();
        st.aux_grad_scale = 0.0;
        if k_aux > 0 {
            merge_top_k(&mut self.halves, &mut st.spare, &mut st.merge, k_aux, true);
            let [h0, h1] = &mut self.halves;
            exec.join(
                || decode_aux_half(h0, w_dec, d_out),
                || decode_aux_half(h1, w_dec, d_out),
            );
            let [h0, h1] = &self.halves;
            st.aux_residual.extend(
                st.err
                    .iter()
                    .zip(&h0.aux_partial)
                    .zip(&h1.aux_partial)
                    .map(|((e, a0), a1)| (-e - a0) - a1),
            );
            let aux_sq: f64 = st.aux_residual.iter().map(|&r| (r * r) as f64).sum();
            if let Some((_, aux_coeff, _)) = aux_k {
                let factor = self
                    .aux_scale
                    .factor(aux_coeff, model::total_variance(&st.err, d_out));
                aux += factor * aux_sq;
                st.aux_grad_scale = (-2.0 * factor) as f32;
            }
        }

        let l2 = sq_err_sum / rows as f64;
        let l1 = self.penalty_factor
            * match self.cfg.architecture.penalty() {
                Penalty::None => 0.0,
                Penalty::L0 { coeff } => coeff * active as f64 / rows as f64,
                // Gated's is on its gates.
                Penalty::L1 { .. } if activation == Activation::Gated => {
                    self.cfg.l1_scale(rows) * gate_sum
                }
                Penalty::L1 { .. } => self.cfg.l1_scale(rows) * abs_sum,
                Penalty::NormWeightedL1 { .. } => {
                    let mut weighted = 0.0f64;
                    for half in &self.halves {
                        for (&f, &v) in half.main.idx.iter().zip(&half.main.val) {
                            let row = &p.w_dec[f as usize * d_out..(f as usize + 1) * d_out];
                            let norm = row.iter().map(|&w| (w * w) as f64).sum::<f64>().sqrt();
                            weighted += v as f64 * norm;
                        }
                    }
                    self.cfg.l1_scale(rows) * weighted
                }
            };
        Ok(StepStats {
            loss: l2 + l1 + aux,
            l2,
            sq_err_sum,
            l1,
            aux,
            active,
        })
    }
}
