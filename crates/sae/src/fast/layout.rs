//! The fast path's buffers: parameters and Adam moments in the fast layout
//! (W_enc transposed), each half's scratch, the sparse row and column lists,
//! and the per-step state the halves share.

use crate::dormant::RestStates;
use crate::kernels::{self, AdamStep};

pub(super) struct Moments {
    pub(super) m: Vec<f32>,
    pub(super) v: Vec<f32>,
}

impl Moments {
    pub(super) fn zeros(len: usize) -> Self {
        Moments {
            m: vec![0.0; len],
            v: vec![0.0; len],
        }
    }

    /// One dense Adam step of `params` (which these moments belong to) with gradient `g`.
    pub(super) fn adam(&mut self, params: &mut [f32], g: &[f32], step: AdamStep) {
        kernels::adam(params, &mut self.m, &mut self.v, g, step);
    }

    pub(super) fn reset(&mut self, range: std::ops::Range<usize>) {
        self.m[range.clone()].fill(0.0);
        self.v[range].fill(0.0);
    }
}

/// Sparse rows: for row r, entries `start[r]..start[r + 1]` of `idx` (global feature) / `val`.
#[derive(Default)]
pub(super) struct Csr {
    pub(super) start: Vec<usize>,
    pub(super) idx: Vec<u32>,
    pub(super) val: Vec<f32>,
}

impl Csr {
    pub(super) fn clear(&mut self) {
        self.start.clear();
        self.idx.clear();
        self.val.clear();
        self.start.push(0);
    }

    pub(super) fn end_row(&mut self) {
        self.start.push(self.idx.len());
    }

    pub(super) fn row(&self, r: usize) -> std::ops::Range<usize> {
        self.start[r]..self.start[r + 1]
    }

    pub(super) fn rows(&self) -> usize {
        self.start.len() - 1
    }
}

/// The same entries by feature: for local feature j, `start[j]..start[j + 1]` of `row`/`val`.
#[derive(Default)]
pub(super) struct Csc {
    pub(super) start: Vec<usize>,
    pub(super) row: Vec<u32>,
    pub(super) val: Vec<f32>,
}

impl Csc {
    /// Counting sort of `csr` (features in `lo..lo + n`) by feature.
    pub(super) fn build(&mut self, csr: &Csr, lo: usize, n: usize) {
        self.start.clear();
        self.start.resize(n + 1, 0);
        for &f in &csr.idx {
            self.start[f as usize - lo + 1] += 1;
        }
        for j in 0..n {
            self.start[j + 1] += self.start[j];
        }
        let nnz = csr.idx.len();
        self.row.resize(nnz, 0);
        self.val.resize(nnz, 0.0);
        let mut next = self.start.clone();
        for r in 0..csr.rows() {
            for e in csr.row(r) {
                let j = csr.idx[e] as usize - lo;
                self.row[next[j]] = r as u32;
                self.val[next[j]] = csr.val[e];
                next[j] += 1;
            }
        }
    }

    pub(super) fn col(&self, j: usize) -> std::ops::Range<usize> {
        self.start[j]..self.start[j + 1]
    }
}

/// Per-half scratch: everything a core touches for its own features.
#[derive(Default)]
pub(super) struct Half {
    pub(super) lo: usize,
    pub(super) hi: usize,
    /// `[rows, hi - lo]`
    pub(super) pre: Vec<f32>,
    pub(super) select: Vec<(f32, u32)>,
    pub(super) main: Csr,
    pub(super) aux: Csr,
    /// JumpReLU: entries within bandwidth / 2 of their threshold (whose
    /// pseudo-derivative reaches the threshold), and the same by feature.
    pub(super) near: Csr,
    pub(super) near_cols: Csc,
    pub(super) g_log_threshold: Vec<f32>,
    pub(super) g_r_mag: Vec<f32>,
    pub(super) g_b_mag: Vec<f32>,
    pub(super) main_cols: Csc,
    pub(super) aux_cols: Csc,
    /// `[rows, d_out]`: sum over this half's active features of act * W_dec row.
    pub(super) partial: Vec<f32>,
    /// Matryoshka: `partial` as it stood at each prefix boundary inside this
    /// half (`(lo, hi]`), one `[rows, d_out]` block per boundary, in order.
    pub(super) prefix_partials: Vec<f32>,
    pub(super) aux_partial: Vec<f32>,
    /// This half's share of b_dec's gradient (through x_cent; an SAE's only).
    pub(super) g_b_dec: Vec<f32>,
    pub(super) g_b_enc: Vec<f32>,
    /// `[d_in]`
    pub(super) g_enc_row: Vec<f32>,
    /// `[d_out]`
    pub(super) g_dec_row: Vec<f32>,
    /// `[max(d_in, d_out)]` zeros: the gradient of an untouched feature.
    pub(super) zero_row: Vec<f32>,
    /// Gradient clipping: every feature's encoder `[n, d_in]` and decoder
    /// `[n, d_out]` gradient, held between the pass that computes them and
    /// the Adam pass that applies them scaled (empty while clipping is off),
    /// and their squared norm with b_enc's.
    pub(super) held_g_enc: Vec<f32>,
    pub(super) held_g_dec: Vec<f32>,
    pub(super) held_sq: f64,
    /// Rest and dormancy of this half's features (local indices): a resting
    /// one skips its Adam steps until it next has a gradient, a dormant one
    /// also the encoder.
    pub(super) rest: RestStates,
    /// The encoder's weights, biases and outputs packed to the awake
    /// features while some are dormant.
    pub(super) packed_w: Vec<f32>,
    pub(super) packed_pre: Vec<f32>,
}

impl Half {
    pub(super) fn n(&self) -> usize {
        self.hi - self.lo
    }
}

/// Parameters and Adam state in the fast layout.
pub(super) struct Params {
    /// `[d_sae, d_in]`
    pub(super) w_enc_t: Vec<f32>,
    /// `[d_sae, d_out]`
    pub(super) w_dec: Vec<f32>,
    pub(super) b_enc: Vec<f32>,
    pub(super) b_dec: Vec<f32>,
    pub(super) adam_w_enc_t: Moments,
    pub(super) adam_w_dec: Moments,
    pub(super) adam_b_enc: Moments,
    pub(super) adam_b_dec: Moments,
    /// JumpReLU (empty otherwise): log-thresholds and their Adam state.
    pub(super) log_threshold: Vec<f32>,
    pub(super) adam_log_threshold: Moments,
    /// A skip transcoder's `W_skip` `[d_out, d_in]` (empty otherwise) and its Adam state.
    pub(super) w_skip: Vec<f32>,
    pub(super) adam_w_skip: Moments,
}

/// Gated's magnitude path (empty vectors for other architectures), kept apart from
/// `Params` because the per-feature pass reads it while the halves hold those.
pub(super) struct MagnitudePath {
    pub(super) r_mag: Vec<f32>,
    pub(super) b_mag: Vec<f32>,
    /// exp(r_mag), as this step reads it.
    pub(super) scale: Vec<f32>,
    pub(super) adam_r_mag: Moments,
    pub(super) adam_b_mag: Moments,
}

/// One half's parameters and moments, as disjoint mutable slices.
pub(super) struct HalfParams<'a> {
    pub(super) w_enc_t: &'a mut [f32],
    pub(super) w_dec: &'a mut [f32],
    pub(super) b_enc: &'a mut [f32],
    pub(super) w_enc_t_m: &'a mut [f32],
    pub(super) w_enc_t_v: &'a mut [f32],
    pub(super) w_dec_m: &'a mut [f32],
    pub(super) w_dec_v: &'a mut [f32],
    pub(super) b_enc_m: &'a mut [f32],
    pub(super) b_enc_v: &'a mut [f32],
}

impl Params {
    /// Mutable views of features `..split` and `split..`.
    pub(super) fn halves(
        &mut self,
        split: usize,
        d_in: usize,
        d_out: usize,
    ) -> [HalfParams<'_>; 2] {
        let (enc, dec) = (split * d_in, split * d_out);
        let (w_enc_t0, w_enc_t1) = self.w_enc_t.split_at_mut(enc);
        let (w_dec0, w_dec1) = self.w_dec.split_at_mut(dec);
        let (b_enc0, b_enc1) = self.b_enc.split_at_mut(split);
        let (w_enc_t_m0, w_enc_t_m1) = self.adam_w_enc_t.m.split_at_mut(enc);
        let (w_enc_t_v0, w_enc_t_v1) = self.adam_w_enc_t.v.split_at_mut(enc);
        let (w_dec_m0, w_dec_m1) = self.adam_w_dec.m.split_at_mut(dec);
        let (w_dec_v0, w_dec_v1) = self.adam_w_dec.v.split_at_mut(dec);
        let (b_enc_m0, b_enc_m1) = self.adam_b_enc.m.split_at_mut(split);
        let (b_enc_v0, b_enc_v1) = self.adam_b_enc.v.split_at_mut(split);
        [
            HalfParams {
                w_enc_t: w_enc_t0,
                w_dec: w_dec0,
                b_enc: b_enc0,
                w_enc_t_m: w_enc_t_m0,
                w_enc_t_v: w_enc_t_v0,
                w_dec_m: w_dec_m0,
                w_dec_v: w_dec_v0,
                b_enc_m: b_enc_m0,
                b_enc_v: b_enc_v0,
            },
            HalfParams {
                w_enc_t: w_enc_t1,
                w_dec: w_dec1,
                b_enc: b_enc1,
                w_enc_t_m: w_enc_t_m1,
                w_enc_t_v: w_enc_t_v1,
                w_dec_m: w_dec_m1,
                w_dec_v: w_dec_v1,
                b_enc_m: b_enc_m1,
                b_enc_v: b_enc_v1,
            },
        ]
    }
}

/// Per-step state shared by the halves (read-only while they run).
#[derive(Default)]
pub(super) struct StepState {
    pub(super) rows: usize,
    /// The encoder's input: `x - b_dec` for an SAE, `x` for a transcoder.
    pub(super) x_cent: Vec<f32>,
    /// A skip transcoder's output before any feature, `b_dec + x @ W_skip^T`
    /// `[rows, d_out]`; empty otherwise (see `OutputBase`).
    pub(super) base: Vec<f32>,
    /// x_hat - x
    pub(super) err: Vec<f32>,
    /// Gated: (b_dec + open gates through the decoder) - x.
    pub(super) gate_err: Vec<f32>,
    /// Matryoshka: per feature group, the summed errors it is trained on (see `PassInputs`).
    pub(super) group_errs: Vec<Vec<f32>>,
    pub(super) batch: Vec<(f32, u32, u32)>,
    /// AuxK's e - e_hat with e = x - x_hat; empty when AuxK is off this step.
    pub(super) aux_residual: Vec<f32>,
    /// dAux/de_hat = aux_grad_scale * (e - e_hat), from this step's residual spread.
    pub(super) aux_grad_scale: f32,
    pub(super) fired: Vec<bool>,
    pub(super) merge: Vec<(f32, u32)>,
    pub(super) spare: [Csr; 2],
}

/// The output before any feature, per row: `b_dec`, or a skip transcoder's
/// `b_dec + x @ W_skip^T` (`with_skip`, `[rows, d_out]`, empty otherwise), so
/// an SAE's step copies nothing for it.
pub(super) struct OutputBase<'a> {
    pub(super) b_dec: &'a [f32],
    pub(super) with_skip: &'a [f32],
    pub(super) d_out: usize,
}

impl OutputBase<'_> {
    pub(super) fn row(&self, r: usize) -> &[f32] {
        if self.with_skip.is_empty() {
            self.b_dec
        } else {
            &self.with_skip[r * self.d_out..(r + 1) * self.d_out]
        }
    }

    /// At flat index `e` of a `[rows, d_out]` buffer.
    pub(super) fn at(&self, e: usize) -> f32 {
        self.row(e / self.d_out)[e % self.d_out]
    }
}
