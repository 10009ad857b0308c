//! The fused CPU trainer: forward, backward and Adam over raw f32 buffers.
//!
//! Over 2000 lines: the split by concern (step driver, layout, encode,
//! feature pass, Adam, dormancy) and by architecture is issue 21, still open.
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

use crate::arch::{Activation, AuxInput, Penalty};
use crate::config::SaeConfig;
use crate::dormant::{self, Certificate};
use crate::duo::Exec;
use crate::kernels::{self, axpy, multiversion, AdamStep, MatRef, Selection, Simd};
use crate::model::{self, transpose, Sae};
use crate::trainer::{
    AuxScale, FeatureReset, FiringTracker, Gradients, RunningThreshold, StepStats, Trainer,
    TrainerState,
};
use crate::SaeError;

struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Moments {
    fn zeros(len: usize) -> Self {
        Moments {
            m: vec![0.0; len],
            v: vec![0.0; len],
        }
    }

    /// One dense Adam step of `params` (which these moments belong to) with gradient `g`.
    fn adam(&mut self, params: &mut [f32], g: &[f32], step: AdamStep) {
        kernels::adam(params, &mut self.m, &mut self.v, g, step);
    }

    fn reset(&mut self, range: std::ops::Range<usize>) {
        self.m[range.clone()].fill(0.0);
        self.v[range].fill(0.0);
    }
}

/// Sparse rows: for row r, entries `start[r]..start[r + 1]` of `idx` (global feature) / `val`.
#[derive(Default)]
struct Csr {
    start: Vec<usize>,
    idx: Vec<u32>,
    val: Vec<f32>,
}

impl Csr {
    fn clear(&mut self) {
        self.start.clear();
        self.idx.clear();
        self.val.clear();
        self.start.push(0);
    }

    fn end_row(&mut self) {
        self.start.push(self.idx.len());
    }

    fn row(&self, r: usize) -> std::ops::Range<usize> {
        self.start[r]..self.start[r + 1]
    }

    fn rows(&self) -> usize {
        self.start.len() - 1
    }
}

/// The same entries by feature: for local feature j, `start[j]..start[j + 1]` of `row`/`val`.
#[derive(Default)]
struct Csc {
    start: Vec<usize>,
    row: Vec<u32>,
    val: Vec<f32>,
}

impl Csc {
    /// Counting sort of `csr` (features in `lo..lo + n`) by feature.
    fn build(&mut self, csr: &Csr, lo: usize, n: usize) {
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

    fn col(&self, j: usize) -> std::ops::Range<usize> {
        self.start[j]..self.start[j + 1]
    }
}

/// Per-half scratch: everything a core touches for its own features.
#[derive(Default)]
struct Half {
    lo: usize,
    hi: usize,
    /// `[rows, hi - lo]`
    pre: Vec<f32>,
    select: Vec<(f32, u32)>,
    main: Csr,
    aux: Csr,
    /// JumpReLU: entries within bandwidth / 2 of their threshold (whose
    /// pseudo-derivative reaches the threshold), and the same by feature.
    near: Csr,
    near_cols: Csc,
    g_log_threshold: Vec<f32>,
    g_r_mag: Vec<f32>,
    g_b_mag: Vec<f32>,
    main_cols: Csc,
    aux_cols: Csc,
    /// `[rows, d_out]`: sum over this half's active features of act * W_dec row.
    partial: Vec<f32>,
    /// Matryoshka: `partial` as it stood at each prefix boundary inside this
    /// half (`(lo, hi]`), one `[rows, d_out]` block per boundary, in order.
    prefix_partials: Vec<f32>,
    aux_partial: Vec<f32>,
    /// This half's share of b_dec's gradient (through x_cent; an SAE's only).
    g_b_dec: Vec<f32>,
    g_b_enc: Vec<f32>,
    /// `[d_in]`
    g_enc_row: Vec<f32>,
    /// `[d_out]`
    g_dec_row: Vec<f32>,
    /// `[max(d_in, d_out)]` zeros: the gradient of an untouched feature.
    zero_row: Vec<f32>,
    /// Rest and dormancy (see `dormant`), per feature of this half: whether
    /// it rests (its Adam steps are skipped until it next has a gradient)
    /// and since which `adam_t`, whether it is dormant (it rests and is also
    /// left out of the encoder), the last `adam_t` it had a gradient, and its
    /// certificate once it rests (cleared when its encoder column may change).
    resting: Vec<bool>,
    resting_since: Vec<usize>,
    dormant: Vec<bool>,
    last_touched: Vec<usize>,
    certificate: Vec<Option<Certificate>>,
    certificates_made: Vec<u32>,
    /// The features that are not dormant (local indices), and the encoder's
    /// weights, biases and outputs packed to them while some are.
    awake: Vec<u32>,
    packed_w: Vec<f32>,
    packed_pre: Vec<f32>,
}

impl Half {
    fn n(&self) -> usize {
        self.hi - self.lo
    }

    fn refresh_awake(&mut self) {
        self.awake.clear();
        self.awake
            .extend((0..self.n() as u32).filter(|&j| !self.dormant[j as usize]));
    }
}

/// Parameters and Adam state in the fast layout.
struct Params {
    /// `[d_sae, d_in]`
    w_enc_t: Vec<f32>,
    /// `[d_sae, d_out]`
    w_dec: Vec<f32>,
    b_enc: Vec<f32>,
    b_dec: Vec<f32>,
    adam_w_enc_t: Moments,
    adam_w_dec: Moments,
    adam_b_enc: Moments,
    adam_b_dec: Moments,
    /// JumpReLU (empty otherwise): log-thresholds and their Adam state.
    log_threshold: Vec<f32>,
    adam_log_threshold: Moments,
    /// A skip transcoder's `W_skip` `[d_out, d_in]` (empty otherwise) and its Adam state.
    w_skip: Vec<f32>,
    adam_w_skip: Moments,
}

/// Gated's magnitude path (empty vectors for other architectures), kept apart from
/// `Params` because the per-feature pass reads it while the halves hold those.
struct MagnitudePath {
    r_mag: Vec<f32>,
    b_mag: Vec<f32>,
    /// exp(r_mag), as this step reads it.
    scale: Vec<f32>,
    adam_r_mag: Moments,
    adam_b_mag: Moments,
}

/// One half's parameters and moments, as disjoint mutable slices.
struct HalfParams<'a> {
    w_enc_t: &'a mut [f32],
    w_dec: &'a mut [f32],
    b_enc: &'a mut [f32],
    w_enc_t_m: &'a mut [f32],
    w_enc_t_v: &'a mut [f32],
    w_dec_m: &'a mut [f32],
    w_dec_v: &'a mut [f32],
    b_enc_m: &'a mut [f32],
    b_enc_v: &'a mut [f32],
}

impl Params {
    /// Mutable views of features `..split` and `split..`.
    fn halves(&mut self, split: usize, d_in: usize, d_out: usize) -> [HalfParams<'_>; 2] {
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

/// Read-only inputs of the per-feature pass.
#[derive(Clone, Copy)]
struct PassInputs<'a> {
    d_in: usize,
    d_out: usize,
    /// Whether the encoder read `x - b_dec` (an SAE), so b_dec's gradient has an encoder share.
    centred: bool,
    x_cent: &'a [f32],
    err: &'a [f32],
    /// Matryoshka: feature `f < prefix_widths[g]` (the first such g) takes its
    /// reconstruction gradient from `group_errs[g]` (its own error plus those
    /// of every prefix it is in) instead of `err`. Empty otherwise.
    group_errs: &'a [Vec<f32>],
    prefix_widths: &'a [usize],
    /// Empty when AuxK is off this step.
    aux_residual: &'a [f32],
    /// dL/dx_hat = grad_scale * err
    grad_scale: f32,
    l1_grad: f32,
    /// Decoder-norm-weighted L1: each feature's penalty is scaled by its decoder row's norm.
    norm_weighted: bool,
    /// dAux/de_hat = aux_grad_scale * (e - e_hat)
    aux_grad_scale: f32,
    project: bool,
    /// JumpReLU: every feature's threshold, and the straight-through terms.
    jump: Option<JumpGrad<'a>>,
    /// The Adam step this pass belongs to (recorded as a touched feature's last).
    adam_t: usize,
    /// Gated: `main` holds magnitudes, `aux` the open gates, trained on
    /// `gate_err` through the frozen decoder; `l1_grad` applies to the gates.
    gated: Option<GatedGrad<'a>>,
}

#[derive(Clone, Copy)]
struct GatedGrad<'a> {
    /// exp(r_mag) and b_mag of every feature.
    scale: &'a [f32],
    b_mag: &'a [f32],
    /// (b_dec + sum of open gates * W_dec rows) - x
    gate_err: &'a [f32],
}

#[derive(Clone, Copy)]
struct JumpGrad<'a> {
    threshold: &'a [f32],
    bandwidth: f32,
    /// d(L0 term)/d(count) = l0_coeff / rows.
    l0_grad: f32,
}

/// What the per-feature pass does with each feature's gradient.
enum PassMode<'a> {
    Adam {
        step: AdamStep,
        renormalise: bool,
    },
    /// Write the raw gradients of this half's rows (W_enc transposed) instead.
    Export {
        g_w_enc_t: &'a mut [f32],
        g_w_dec: &'a mut [f32],
    },
}

/// Per-step state shared by the halves (read-only while they run).
#[derive(Default)]
struct StepState {
    rows: usize,
    /// The encoder's input: `x - b_dec` for an SAE, `x` for a transcoder.
    x_cent: Vec<f32>,
    /// A skip transcoder's output before any feature, `b_dec + x @ W_skip^T`
    /// `[rows, d_out]`; empty otherwise (see `OutputBase`).
    base: Vec<f32>,
    /// x_hat - x
    err: Vec<f32>,
    /// Gated: (b_dec + open gates through the decoder) - x.
    gate_err: Vec<f32>,
    /// Matryoshka: per feature group, the summed errors it is trained on (see `PassInputs`).
    group_errs: Vec<Vec<f32>>,
    batch: Vec<(f32, u32, u32)>,
    /// AuxK's e - e_hat with e = x - x_hat; empty when AuxK is off this step.
    aux_residual: Vec<f32>,
    /// dAux/de_hat = aux_grad_scale * (e - e_hat), from this step's residual spread.
    aux_grad_scale: f32,
    fired: Vec<bool>,
    merge: Vec<(f32, u32)>,
    spare: [Csr; 2],
}

/// The output before any feature, per row: `b_dec`, or a skip transcoder's
/// `b_dec + x @ W_skip^T` (`with_skip`, `[rows, d_out]`, empty otherwise), so
/// an SAE's step copies nothing for it.
struct OutputBase<'a> {
    b_dec: &'a [f32],
    with_skip: &'a [f32],
    d_out: usize,
}

impl OutputBase<'_> {
    fn row(&self, r: usize) -> &[f32] {
        if self.with_skip.is_empty() {
            self.b_dec
        } else {
            &self.with_skip[r * self.d_out..(r + 1) * self.d_out]
        }
    }

    /// At flat index `e` of a `[rows, d_out]` buffer.
    fn at(&self, e: usize) -> f32 {
        self.row(e / self.d_out)[e % self.d_out]
    }
}

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
}

/// The trainer-wide side of dormant features (see `dormant`; per feature in [`Half`]).
struct Dormancy {
    enabled: bool,
    /// The largest Adam step size that resting features were checked against
    /// since the last larger step: a larger one ends every rest.
    checked_step_size: f32,
    /// The step `apply` took last (its betas replay the skipped decays).
    last_step: Option<AdamStep>,
    /// The largest training-row norm, once `settle` has seen the data.
    input_norm: Option<f64>,
    scratch: Vec<f32>,
    scratch2: [Vec<f32>; 2],
    /// How many times a feature came to rest, fell asleep and woke (for tests).
    rested: usize,
    slept: usize,
    woken: usize,
}

/// How often (in steps) `settle` looks for features to put to sleep, and how
/// long a feature must have had no gradient before it is checked (its first
/// moments take about a thousand steps to reach a fixed point).
const SETTLE_EVERY_STEPS: usize = 64;
const QUIET_STEPS: usize = 512;
/// Certificates are made for this many resting features at once (or every
/// eight settles, whatever is waiting).
const REACH_BATCH: usize = 32;
/// A feature whose certificates keep failing (it fires again, or AuxK picks
/// it) waits twice as long for each next one, up to this many doublings.
const MAX_CERTIFICATE_BACKOFF: u32 = 4;

multiversion! {
    /// Phase 1 of a half: encoder matmul, selection, and (if `decode`) the decoder partial sum.
    fn encode_half(
        half: &mut Half,
        x_cent: &[f32],
        rows: usize,
        d_in: usize,
        w_enc_t: &[f32],
        b_enc: &[f32],
        w_dec: &[f32],
        d_out: usize,
        select: HalfSelect<'_>,
        decode: bool,
    ) => encode_half_inline
}

/// How a half picks its active features.
#[derive(Clone, Copy)]
enum HalfSelect<'a> {
    /// ReLU or per-row top k ([`Selection`]).
    Rows(Selection),
    Jump(JumpSelect<'a>),
    Gated(GatedSelect<'a>),
}

/// Gated's selection for one half (its `b_enc` is the gate's bias): the
/// magnitude path's scale `exp(r_mag)` and bias.
#[derive(Clone, Copy)]
struct GatedSelect<'a> {
    scale: &'a [f32],
    b_mag: &'a [f32],
}

/// JumpReLU's selection for one half: its thresholds and the pseudo-derivative's half-width.
#[derive(Clone, Copy)]
struct JumpSelect<'a> {
    threshold: &'a [f32],
    half_width: f32,
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn encode_half_inline<S: Simd>(
    half: &mut Half,
    x_cent: &[f32],
    rows: usize,
    d_in: usize,
    w_enc_t: &[f32],
    b_enc: &[f32],
    w_dec: &[f32],
    d_out: usize,
    select: HalfSelect<'_>,
    decode: bool,
) {
    let n = half.n();
    if half.awake.len() == n {
        half.pre.clear();
        for _ in 0..rows {
            half.pre.extend_from_slice(b_enc);
        }
        kernels::matmul(
            &mut half.pre,
            rows,
            n,
            d_in,
            true,
            MatRef::row_major(x_cent, d_in),
            MatRef::transposed(w_enc_t, d_in),
        );
    } else {
        // Only the awake features' columns; a dormant one's pre-activation
        // is below its firing level on every row (`dormant`), so -inf.
        let awake = half.awake.len();
        half.packed_w.clear();
        half.packed_pre.clear();
        for &j in &half.awake {
            let j = j as usize;
            half.packed_w
                .extend_from_slice(&w_enc_t[j * d_in..(j + 1) * d_in]);
        }
        for _ in 0..rows {
            half.packed_pre
                .extend(half.awake.iter().map(|&j| b_enc[j as usize]));
        }
        kernels::matmul(
            &mut half.packed_pre,
            rows,
            awake,
            d_in,
            true,
            MatRef::row_major(x_cent, d_in),
            MatRef::transposed(&half.packed_w, d_in),
        );
        half.pre.clear();
        half.pre.resize(rows * n, f32::NEG_INFINITY);
        if awake > 0 {
            for (pre, packed) in half
                .pre
                .chunks_exact_mut(n)
                .zip(half.packed_pre.chunks_exact(awake))
            {
                for (&j, &v) in half.awake.iter().zip(packed) {
                    pre[j as usize] = v;
                }
            }
        }
    }
    half.main.clear();
    match select {
        HalfSelect::Rows(selection) => {
            for r in 0..rows {
                kernels::select_active::<S>(
                    &half.pre[r * n..(r + 1) * n],
                    half.lo as u32,
                    selection,
                    None,
                    &mut half.select,
                    &mut half.main.idx,
                    &mut half.main.val,
                );
                half.main.end_row();
            }
        }
        HalfSelect::Jump(jump) => {
            half.near.clear();
            for r in 0..rows {
                let pre = &half.pre[r * n..(r + 1) * n];
                for (j, (&p, &t)) in pre.iter().zip(jump.threshold).enumerate() {
                    let f = (half.lo + j) as u32;
                    if p > t {
                        half.main.idx.push(f);
                        half.main.val.push(p);
                    }
                    if (p - t).abs() < jump.half_width {
                        half.near.idx.push(f);
                        half.near.val.push(p);
                    }
                }
                half.main.end_row();
                half.near.end_row();
            }
            half.near_cols.build(&half.near, half.lo, n);
        }
        HalfSelect::Gated(gated) => {
            // Open gates go to `aux` (their reconstruction through the frozen
            // decoder), active features (open gate, positive magnitude) to `main`.
            half.aux.clear();
            for r in 0..rows {
                let pre = &half.pre[r * n..(r + 1) * n];
                for (j, &gate) in pre.iter().enumerate() {
                    if gate > 0.0 {
                        let f = (half.lo + j) as u32;
                        half.aux.idx.push(f);
                        half.aux.val.push(gate);
                        let magnitude = gated.scale[j] * (gate - b_enc[j]) + gated.b_mag[j];
                        if magnitude > 0.0 {
                            half.main.idx.push(f);
                            half.main.val.push(magnitude);
                        }
                    }
                }
                half.main.end_row();
                half.aux.end_row();
            }
        }
    }
    if decode {
        half.main_cols.build(&half.main, half.lo, n);
        decode_inline(
            &half.main_cols,
            rows,
            half.lo,
            w_dec,
            d_out,
            &mut half.partial,
            &[],
            &mut half.prefix_partials,
        );
    }
}

/// `out[r] = sum over row r's entries of val * w_dec[f]`, walking the entries
/// by feature (`csc`, features from `lo`): each decoder row is read once, in
/// memory order, while `out` stays in L1. Per row the terms still add in
/// ascending feature order. `snapshots` gets a copy of `out` as it stands
/// before each feature in `cuts` (ascending; a cut at the end copies the sum).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn decode_inline(
    csc: &Csc,
    rows: usize,
    lo: usize,
    w_dec: &[f32],
    d_out: usize,
    out: &mut Vec<f32>,
    cuts: &[usize],
    snapshots: &mut Vec<f32>,
) {
    out.clear();
    out.resize(rows * d_out, 0.0);
    snapshots.clear();
    let mut cuts = cuts.iter().peekable();
    for j in 0..csc.start.len() - 1 {
        let f = lo + j;
        while cuts.next_if(|&&c| c == f).is_some() {
            snapshots.extend_from_slice(out);
        }
        let w = &w_dec[f * d_out..(f + 1) * d_out];
        for e in csc.col(j) {
            let r = csc.row[e] as usize;
            axpy(&mut out[r * d_out..(r + 1) * d_out], csc.val[e], w);
        }
    }
    for _ in cuts {
        snapshots.extend_from_slice(out);
    }
}

multiversion! {
    /// Phase 1b of a half (TopK family): decoder partial sum (with Matryoshka's
    /// prefix snapshots at `cuts`), and AuxK's local candidates among `dead`.
    fn decode_half(half: &mut Half, w_dec: &[f32], d_out: usize, dead: &[bool], aux: Option<Selection>, cuts: &[usize]) => decode_half_inline
}

#[inline(always)]
fn decode_half_inline<S: Simd>(
    half: &mut Half,
    w_dec: &[f32],
    d_out: usize,
    dead: &[bool],
    aux: Option<Selection>,
    cuts: &[usize],
) {
    let (n, rows) = (half.n(), half.main.rows());
    half.main_cols.build(&half.main, half.lo, n);
    // This half's cuts, in (lo, hi]: `cuts` is ascending.
    let own_cuts =
        &cuts[cuts.partition_point(|&c| c <= half.lo)..cuts.partition_point(|&c| c <= half.hi)];
    decode_inline(
        &half.main_cols,
        rows,
        half.lo,
        w_dec,
        d_out,
        &mut half.partial,
        own_cuts,
        &mut half.prefix_partials,
    );
    half.aux.clear();
    let Some(aux) = aux else {
        return;
    };
    let dead = &dead[half.lo..half.hi];
    for r in 0..rows {
        kernels::select_active::<S>(
            &half.pre[r * n..(r + 1) * n],
            half.lo as u32,
            aux,
            Some(dead),
            &mut half.select,
            &mut half.aux.idx,
            &mut half.aux.val,
        );
        half.aux.end_row();
    }
}

multiversion! {
    fn decode_aux_half(half: &mut Half, w_dec: &[f32], d_out: usize) => decode_aux_half_inline
}

#[inline(always)]
fn decode_aux_half_inline<S: Simd>(half: &mut Half, w_dec: &[f32], d_out: usize) {
    let (n, rows) = (half.n(), half.aux.rows());
    half.aux_cols.build(&half.aux, half.lo, n);
    decode_inline(
        &half.aux_cols,
        rows,
        half.lo,
        w_dec,
        d_out,
        &mut half.aux_partial,
        &[],
        &mut Vec::new(),
    );
}

/// Keeps, per row, the `k` best entries (value descending, then index
/// ascending) of the two halves' `pick` lists, and gives each half its own.
fn merge_top_k(
    halves: &mut [Half; 2],
    spare: &mut [Csr; 2],
    scratch: &mut Vec<(f32, u32)>,
    k: usize,
    aux: bool,
) {
    let split = halves[1].lo as u32;
    let [h0, h1] = halves;
    let (old0, old1) = if aux {
        (&mut h0.aux, &mut h1.aux)
    } else {
        (&mut h0.main, &mut h1.main)
    };
    let [new0, new1] = spare;
    new0.clear();
    new1.clear();
    for r in 0..old0.rows() {
        scratch.clear();
        for (old, range) in [(&*old0, old0.row(r)), (&*old1, old1.row(r))] {
            scratch.extend(range.map(|e| (old.val[e], old.idx[e])));
        }
        if scratch.len() > k {
            let by_rank = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
            scratch.select_nth_unstable_by(k - 1, by_rank);
            scratch.truncate(k);
            scratch.sort_unstable_by_key(|e| e.1);
        }
        for &(v, f) in scratch.iter() {
            let new = if f < split { &mut *new0 } else { &mut *new1 };
            new.idx.push(f);
            new.val.push(v);
        }
        new0.end_row();
        new1.end_row();
    }
    std::mem::swap(old0, new0);
    std::mem::swap(old1, new1);
}

/// Keeps the `budget` largest entries of the whole batch in the halves' main
/// lists (value descending, then row, then feature, as a total order), and
/// returns the smallest kept value (infinite when none is kept).
fn keep_batch_top_k(
    halves: &mut [Half; 2],
    scratch: &mut Vec<(f32, u32, u32)>,
    budget: usize,
) -> f64 {
    scratch.clear();
    for half in halves.iter() {
        for r in 0..half.main.rows() {
            for e in half.main.row(r) {
                scratch.push((half.main.val[e], r as u32, half.main.idx[e]));
            }
        }
    }
    let by_rank = |a: &(f32, u32, u32), b: &(f32, u32, u32)| {
        b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
    };
    if scratch.len() > budget {
        scratch.select_nth_unstable_by(budget - 1, by_rank);
        let pivot = scratch[budget - 1];
        for half in halves.iter_mut() {
            let main = &mut half.main;
            let (mut write, mut start) = (0, 0);
            for r in 0..main.rows() {
                let end = main.start[r + 1];
                for e in start..end {
                    let entry = (main.val[e], r as u32, main.idx[e]);
                    if by_rank(&entry, &pivot) != std::cmp::Ordering::Greater {
                        main.val[write] = main.val[e];
                        main.idx[write] = main.idx[e];
                        write += 1;
                    }
                }
                start = end;
                main.start[r + 1] = write;
            }
            main.val.truncate(write);
            main.idx.truncate(write);
        }
        scratch.truncate(budget);
    }
    scratch
        .iter()
        .map(|e| e.0 as f64)
        .fold(f64::INFINITY, f64::min)
}

multiversion! {
    fn feature_pass_half(half: &mut Half, p: HalfParams<'_>, inputs: PassInputs<'_>, mode: PassMode<'_>)
        => feature_pass_half_inline
}

/// Phase 3 of a half: per feature, its gradient (only from rows where it is
/// active), then either exact Adam on its rows or an export of the gradient.
#[inline(always)]
fn feature_pass_half_inline<S: Simd>(
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
        if half.dormant[j] {
            // Selected nowhere, and resting (below).
            debug_assert!(!touched, "a dormant feature is selected nowhere");
            half.g_b_enc[j] = 0.0;
            if let PassMode::Export { g_w_enc_t, g_w_dec } = &mut mode {
                g_w_enc_t[enc_j].fill(0.0);
                g_w_dec[rows_j].fill(0.0);
            }
            continue;
        }
        if touched {
            if let (true, PassMode::Adam { step, .. }) = (half.resting[j], &mode) {
                // The second-moment decays of the steps it rested through.
                let skipped = inputs.adam_t - 1 - half.resting_since[j];
                dormant::replay_decay(&mut p.w_enc_t_v[enc_j.clone()], skipped, *step);
                dormant::replay_decay(&mut p.w_dec_v[rows_j.clone()], skipped, *step);
                half.resting[j] = false;
            }
            half.last_touched[j] = inputs.adam_t;
            half.certificate[j] = None;
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
            PassMode::Adam { .. } if half.resting[j] => {}
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
        }
    }
    if let PassMode::Adam { step, .. } = mode {
        kernels::adam_inline::<S>(p.b_enc, p.b_enc_m, p.b_enc_v, &half.g_b_enc, step);
    }
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
            resting: vec![false; hi - lo],
            resting_since: vec![0; hi - lo],
            dormant: vec![false; hi - lo],
            last_touched: vec![0; hi - lo],
            certificate: vec![None; hi - lo],
            certificates_made: vec![0; hi - lo],
            awake: (0..(hi - lo) as u32).collect(),
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

    /// Feature `f`'s firing level (its pre-activation must stay at or below it
    /// to be selected nowhere) and the magnitude of the terms it is made of.
    fn firing_level(&self, f: usize) -> (f64, f64) {
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
    fn certified(&self, f: usize, certificate: &Certificate, b_dec_norm: f64) -> bool {
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
    fn centring_norm(&self) -> f64 {
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
    fn wake(&mut self, h: usize, j: usize) {
        self.halves[h].dormant[j] = false;
        self.dormancy.woken += 1;
    }

    /// Ends feature `j` of half `h`'s rest: replays the second-moment decays
    /// of the steps it rested through (before the next step's Adam).
    fn end_rest(&mut self, h: usize, j: usize) {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let half = &mut self.halves[h];
        let f = half.lo + j;
        let skipped = self.adam_t - half.resting_since[j];
        half.resting[j] = false;
        half.dormant[j] = false;
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
    fn wake_uncertified(&mut self) {
        if self.halves.iter().all(|h| h.awake.len() == h.n()) {
            return;
        }
        let b_dec_norm = self.centring_norm();
        for h in 0..2 {
            let mut woke = false;
            for j in 0..self.halves[h].n() {
                let half = &self.halves[h];
                if !half.dormant[j] {
                    continue;
                }
                let certificate = half.certificate[j].expect("a dormant feature is certified");
                if !self.certified(half.lo + j, &certificate, b_dec_norm) {
                    self.wake(h, j);
                    woke = true;
                }
            }
            if woke {
                self.halves[h].refresh_awake();
            }
        }
    }

    /// Ends every rest and drops every certificate (a larger Adam step than
    /// the checks allowed for is coming).
    fn wake_all(&mut self) {
        for h in 0..2 {
            for j in 0..self.halves[h].n() {
                if self.halves[h].resting[j] {
                    self.end_rest(h, j);
                }
            }
            let half = &mut self.halves[h];
            half.certificate.fill(None);
            half.refresh_awake();
        }
        self.dormancy.checked_step_size = 0.0;
    }

    fn split(&self) -> usize {
        self.halves[1].lo
    }

    /// Runs the per-feature pass on both halves (modes per half).
    fn feature_pass(&mut self, exec: Exec, modes: [PassMode<'_>; 2], project: bool) {
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
            l1_grad: self.cfg.l1_scale(rows) as f32,
            norm_weighted: matches!(architecture.penalty(), Penalty::NormWeightedL1 { .. }),
            aux_grad_scale: self.step.aux_grad_scale,
            project,
            adam_t: self.adam_t,
            jump: match architecture.activation() {
                Activation::JumpRelu { bandwidth, .. } => Some(JumpGrad {
                    threshold: &self.threshold,
                    bandwidth: bandwidth as f32,
                    l0_grad: match architecture.penalty() {
                        Penalty::L0 { coeff } => (coeff / rows as f64) as f32,
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
    fn gathered(&self, part: fn(&Half) -> &[f32]) -> Vec<f32> {
        self.halves
            .iter()
            .flat_map(|h| part(h).iter().copied())
            .collect()
    }

    /// Gated's r_mag and b_mag gradients (empty for other architectures).
    fn magnitude_gradients(&self) -> (Vec<f32>, Vec<f32>) {
        if self.magnitude.r_mag.is_empty() {
            return (Vec::new(), Vec::new());
        }
        (self.gathered(|h| &h.g_r_mag), self.gathered(|h| &h.g_b_mag))
    }

    /// JumpReLU's log-threshold gradient (empty for other architectures).
    fn log_threshold_gradient(&self) -> Vec<f32> {
        if self.params.log_threshold.is_empty() {
            return Vec::new();
        }
        self.gathered(|h| &h.g_log_threshold)
    }

    /// dL/d(output) summed over every reconstruction the output's base
    /// (b_dec, W_skip @ x) enters: every prefix's error for Matryoshka (the
    /// first group's sum holds them all), else the error.
    fn base_error(&self) -> &[f32] {
        self.step.group_errs.first().unwrap_or(&self.step.err)
    }

    /// b_dec's full gradient: through x_hat (sum of dL/dx_hat) and the
    /// halves' shares through x - b_dec (zero for a transcoder, which does
    /// not centre its input).
    fn b_dec_gradient(&self) -> Vec<f32> {
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
    fn w_skip_gradient(&self) -> Vec<f32> {
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
        let aux_k = self.cfg.aux_k();
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
        let l1 = match self.cfg.architecture.penalty() {
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

    fn apply(&mut self, lr: f64, exec: Exec) -> Result<(), SaeError> {
        let o = &self.cfg.optimizer;
        let step = AdamStep::new(lr, o.beta1, o.beta2, o.eps, self.adam_t + 1);
        // Rests (and the certificates, which only resting features hold)
        // were checked against smaller steps.
        if step.step_size > self.dormancy.checked_step_size
            && self.halves.iter().any(|h| h.resting.contains(&true))
        {
            self.wake_all();
        }
        self.adam_t += 1;
        self.dormancy.last_step = Some(step);
        let unit_norm = self.cfg.architecture.unit_norm_decoder();
        let mode = || PassMode::Adam {
            step,
            renormalise: unit_norm,
        };
        self.feature_pass(exec, [mode(), mode()], unit_norm);
        let g_b_dec = self.b_dec_gradient();
        let g_w_skip = self.w_skip_gradient();
        let g_log_threshold = self.log_threshold_gradient();
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
            let (g_r_mag, g_b_mag) = self.magnitude_gradients();
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
            half.resting[j] = false;
            half.dormant[j] = false;
            half.certificate[j] = None;
            half.last_touched[j] = self.adam_t;
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
        self.halves.iter_mut().for_each(Half::refresh_awake);
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
}

impl FastTrainer {
    fn settle_inner(&mut self, input: &[f32], exec: Exec) {
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
                if half.resting[j] || half.last_touched[j] + QUIET_STEPS > adam_t {
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
                    half.resting[j] = true;
                    half.resting_since[j] = adam_t;
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
                let quiet = QUIET_STEPS << half.certificates_made[j].min(MAX_CERTIFICATE_BACKOFF);
                if !half.resting[j]
                    || half.certificate[j].is_some()
                    || half.last_touched[j] + quiet > adam_t
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
                half.certificates_made[f - half.lo] += 1;
                half.certificate[f - half.lo] = Some(Certificate {
                    reach,
                    w_norm,
                    input_norm,
                });
            }
        }
        // Certified features go to sleep.
        let b_dec_norm = self.centring_norm();
        for h in 0..2 {
            let mut slept = false;
            for j in 0..self.halves[h].n() {
                let half = &self.halves[h];
                let Some(certificate) =
                    half.certificate[j].filter(|_| half.resting[j] && !half.dormant[j])
                else {
                    continue;
                };
                if self.certified(half.lo + j, &certificate, b_dec_norm) {
                    let half = &mut self.halves[h];
                    half.dormant[j] = true;
                    slept = true;
                    self.dormancy.slept += 1;
                }
            }
            if slept {
                self.halves[h].refresh_awake();
            }
        }
    }
}

fn w_norm(w: &[f32]) -> f64 {
    w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duo::Duo;
    use crate::{synthetic, Architecture};

    /// Steps `steps` batches of `data` predicting `target` with `exec`; returns the parameters.
    fn run(cfg: &SaeConfig, data: &[f32], target: &[f32], steps: usize, exec: Exec) -> Sae {
        let sae = Sae::init(cfg, target).unwrap();
        let trainer = FastTrainer::new(&sae, AuxScale::of(target, cfg.d_out()));
        run_trainer(trainer, cfg, data, target, steps, exec).0
    }

    /// [`run`] with `trainer`, which also settles after each step; returns
    /// the parameters and the trainer.
    fn run_trainer(
        mut trainer: FastTrainer,
        cfg: &SaeConfig,
        data: &[f32],
        target: &[f32],
        steps: usize,
        exec: Exec,
    ) -> (Sae, FastTrainer) {
        let mut tracker = FiringTracker::new(cfg.d_sae, cfg.dead_window_steps);
        for (i, (batch, batch_target)) in data
            .chunks(cfg.batch_size * cfg.d_in)
            .zip(target.chunks(cfg.batch_size * cfg.d_out()))
            .cycle()
            .take(steps)
            .enumerate()
        {
            let rows = batch.len() / cfg.d_in;
            let stats = trainer
                .compute(batch, batch_target, rows, &mut tracker, exec)
                .unwrap();
            assert!(stats.loss.is_finite(), "step {i}");
            // The rate rises once, at three quarters, which ends every rest.
            let lr = match i.cmp(&(steps * 3 / 4)) {
                std::cmp::Ordering::Less => 1e-3,
                std::cmp::Ordering::Equal => 2e-3,
                std::cmp::Ordering::Greater => 1.5e-3,
            };
            trainer.apply(lr, exec).unwrap();
            trainer.settle(data, exec);
        }
        (trainer.export().unwrap(), trainer)
    }

    /// Every architecture, with an L1 coefficient, a k and a JumpReLU L0 coefficient.
    fn every_architecture(l1_coeff: f64, k: usize, l0_coeff: f64) -> Vec<Architecture> {
        let axes = crate::ArchitectureAxes {
            l1_coeff: vec![l1_coeff],
            k: vec![k],
            l0_coeff: vec![l0_coeff],
            k_aux: Some(256),
            ..crate::ArchitectureAxes::default()
        };
        crate::ArchitectureKind::ALL
            .iter()
            .flat_map(|kind| kind.architectures(&axes))
            .collect()
    }

    #[test]
    fn dormancy_changes_no_bit() {
        let mut woken = 0;
        let data = synthetic::sparse_directions(256, 16, 12, 2, 0.05, 5);
        let target = synthetic::sparse_directions(256, 12, 12, 2, 0.05, 6);
        for architecture in every_architecture(3e-2, 3, 0.3) {
            for transcoder in [
                None,
                Some(crate::Transcoder {
                    d_out: 12,
                    skip: true,
                }),
            ] {
                let cfg = SaeConfig {
                    d_in: 16,
                    d_sae: 96,
                    architecture: architecture.clone(),
                    batch_size: 32,
                    dead_window_steps: 50,
                    transcoder,
                    ..SaeConfig::default()
                };
                let target = if transcoder.is_some() { &target } else { &data };
                let sae = Sae::init(&cfg, target).unwrap();
                let aux = AuxScale::of(target, cfg.d_out());
                let steps = 6000;
                let (dense, _) = run_trainer(
                    FastTrainer::new(&sae, aux).without_dormancy(),
                    &cfg,
                    &data,
                    target,
                    steps,
                    Exec::Serial,
                );
                let (sparse, trainer) = run_trainer(
                    FastTrainer::new(&sae, aux),
                    &cfg,
                    &data,
                    target,
                    steps,
                    Exec::Serial,
                );
                assert!(
                    dense == sparse,
                    "{architecture:?}, transcoder {transcoder:?}"
                );
                let d = &trainer.dormancy;
                if let Architecture::L1(_) | Architecture::JumpRelu(_) | Architecture::Gated(_) =
                    architecture
                {
                    // The comparison above covered rests, sleep and wakes
                    // (these three put features to sleep on this data).
                    assert!(
                        d.rested > 0 && d.slept > 0,
                        "{architecture:?}: {} {}",
                        d.rested,
                        d.slept
                    );
                }
                woken += d.woken;
            }
        }
        assert!(woken > 0);
    }

    #[test]
    fn a_larger_step_ends_every_rest_even_before_its_certificate() {
        let data = synthetic::sparse_directions(256, 16, 12, 2, 0.05, 5);
        let cfg = SaeConfig {
            d_in: 16,
            d_sae: 96,
            architecture: Architecture::l1(3e-2),
            batch_size: 32,
            ..SaeConfig::default()
        };
        let sae = Sae::init(&cfg, &data).unwrap();
        let trainer = FastTrainer::new(&sae, AuxScale::of(&data, cfg.d_in));
        // 4000 steps; the helper's rate rises at 3000, then settles at 1.5e-3.
        let (_, mut trainer) = run_trainer(trainer, &cfg, &data, &data, 4000, Exec::Serial);
        let resting = |t: &FastTrainer| {
            t.halves
                .iter()
                .flat_map(|h| &h.resting)
                .filter(|&&r| r)
                .count()
        };
        assert!(resting(&trainer) > 0);
        // Rests whose reach is still waiting for its batch have no certificate.
        trainer.halves.iter_mut().for_each(|h| {
            h.certificate.fill(None);
            h.dormant.fill(false);
            h.refresh_awake();
        });
        trainer.apply(2e-3, Exec::Serial).unwrap();
        assert_eq!(resting(&trainer), 0);
    }

    #[test]
    fn two_threads_and_one_give_the_same_bits() {
        let data = synthetic::sparse_directions(200, 24, 60, 4, 0.05, 3);
        let target = synthetic::sparse_directions(200, 20, 60, 4, 0.05, 4);
        for architecture in every_architecture(3e-3, 5, 0.01) {
            let cfg = SaeConfig {
                d_in: 24,
                d_sae: 77,
                architecture,
                dead_window_steps: 3,
                ..SaeConfig::default()
            };
            let serial = run(&cfg, &data, &data, 20, Exec::Serial);
            let parallel = Duo::scope(|duo| run(&cfg, &data, &data, 20, Exec::Duo(duo)));
            assert_eq!(serial, parallel);
            // The same as a skip transcoder predicting another layer.
            let cfg = SaeConfig {
                transcoder: Some(crate::Transcoder {
                    d_out: 20,
                    skip: true,
                }),
                ..cfg
            };
            let serial = run(&cfg, &data, &target, 20, Exec::Serial);
            let parallel = Duo::scope(|duo| run(&cfg, &data, &target, 20, Exec::Duo(duo)));
            assert_eq!(serial, parallel);
        }
    }
}
