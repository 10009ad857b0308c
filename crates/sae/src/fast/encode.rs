//! Phases 1 and 2 of a step, per half: the encoder matmul (packed to the
//! awake features), the activation's selection, the sparse decoder partial
//! sums; and the merges across halves (TopK per row, BatchTopK per batch).

use crate::kernels::{self, axpy, multiversion, MatRef, Selection, Simd};

use super::layout::*;

multiversion! {
    /// Phase 1 of a half: encoder matmul, selection, and (if `decode`) the decoder partial sum.
    pub(super) fn encode_half(
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
pub(super) enum HalfSelect<'a> {
    /// ReLU or per-row top k ([`Selection`]).
    Rows(Selection),
    Jump(JumpSelect<'a>),
    Gated(GatedSelect<'a>),
}

/// Gated's selection for one half (its `b_enc` is the gate's bias): the
/// magnitude path's scale `exp(r_mag)` and bias.
#[derive(Clone, Copy)]
pub(super) struct GatedSelect<'a> {
    pub(super) scale: &'a [f32],
    pub(super) b_mag: &'a [f32],
}

/// JumpReLU's selection for one half: its thresholds and the pseudo-derivative's half-width.
#[derive(Clone, Copy)]
pub(super) struct JumpSelect<'a> {
    pub(super) threshold: &'a [f32],
    pub(super) half_width: f32,
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn encode_half_inline<S: Simd>(
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
    if half.rest.all_awake() {
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
        let awake = half.rest.awake().len();
        half.packed_w.clear();
        half.packed_pre.clear();
        for &j in half.rest.awake() {
            let j = j as usize;
            half.packed_w
                .extend_from_slice(&w_enc_t[j * d_in..(j + 1) * d_in]);
        }
        for _ in 0..rows {
            half.packed_pre
                .extend(half.rest.awake().iter().map(|&j| b_enc[j as usize]));
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
                for (&j, &v) in half.rest.awake().iter().zip(packed) {
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
pub(super) fn decode_inline(
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
    pub(super) fn decode_half(half: &mut Half, w_dec: &[f32], d_out: usize, dead: &[bool], aux: Option<Selection>, cuts: &[usize]) => decode_half_inline
}

#[inline(always)]
pub(super) fn decode_half_inline<S: Simd>(
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
    pub(super) fn decode_aux_half(half: &mut Half, w_dec: &[f32], d_out: usize) => decode_aux_half_inline
}

#[inline(always)]
pub(super) fn decode_aux_half_inline<S: Simd>(half: &mut Half, w_dec: &[f32], d_out: usize) {
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
pub(super) fn merge_top_k(
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
pub(super) fn keep_batch_top_k(
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
