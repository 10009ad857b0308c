//! The SAE's parameters, its initialisation, and the dense CPU forward pass
//! (encode, reconstruct, evaluate) in the public layout.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::arch::Activation;
use crate::config::{DecoderBiasInit, EncoderInit, SaeConfig};
use crate::error::{check_paired, check_rows};
use crate::kernels::{self, MatRef, Selection};
use crate::SaeError;

/// Seed streams, so adding draws to one use never shifts another.
pub(crate) const STREAM_INIT: u64 = 0;
pub(crate) const STREAM_SHUFFLE: u64 = 1;
pub(crate) const STREAM_RESAMPLE: u64 = 2;

pub(crate) fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// A sparse autoencoder in SAELens layout:
/// `acts = act(( x - b_dec) @ W_enc + b_enc)`, `x_hat = acts @ W_dec + b_dec`;
/// or a transcoder (`cfg.transcoder`): `acts = act(x @ W_enc + b_enc)`,
/// `y_hat = acts @ W_dec + b_dec (+ x @ W_skip^T)`, of width `d_out`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sae {
    pub cfg: SaeConfig,
    /// `[d_in, d_sae]` row-major.
    pub w_enc: Vec<f32>,
    /// `[d_sae, d_out]` row-major; row f is feature f's decoder direction.
    pub w_dec: Vec<f32>,
    /// `[d_sae]`
    pub b_enc: Vec<f32>,
    /// `[d_out]`
    pub b_dec: Vec<f32>,
    /// A skip transcoder's `[d_out, d_in]` linear map; empty otherwise.
    pub w_skip: Vec<f32>,
    /// `[d_sae]` for architectures with an inference threshold (JumpReLU, the
    /// BatchTopK family: a feature is active where its pre-activation exceeds
    /// both 0 and its threshold); empty for the others.
    pub threshold: Vec<f32>,
    /// Gated only (empty otherwise): the magnitude path's per-feature log
    /// scale `[d_sae]` and bias `[d_sae]`. A Gated SAE's `b_enc` is its gate's
    /// bias (SAELens' `b_gate`).
    pub r_mag: Vec<f32>,
    pub b_mag: Vec<f32>,
}

fn uniform(rng: &mut ChaCha8Rng, len: usize, bound: f32) -> Vec<f32> {
    (0..len)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * bound)
        .collect()
}

impl Sae {
    /// Initial parameters for `cfg` (validated first). `target` (row-major
    /// `[rows, d_out]`: an SAE's own input, a transcoder's output layer) is
    /// only read by `DecoderBiasInit::DataMean`.
    pub fn init(cfg: &SaeConfig, target: &[f32]) -> Result<Sae, SaeError> {
        cfg.validate()?;
        let (d_in, d_sae, d_out) = (cfg.d_in, cfg.d_sae, cfg.d_out());
        let mut rng = rng(cfg.seed, STREAM_INIT);
        // nn.Linear's kaiming-uniform(a = sqrt 5) bound is 1/sqrt(fan_in).
        let enc_bound = 1.0 / (d_in as f32).sqrt();
        let dec_bound = 1.0 / (d_sae as f32).sqrt();
        // Draw order (encoder, then decoder) is part of the seed's meaning.
        let (w_enc, mut w_dec) = match cfg.encoder_init {
            EncoderInit::Uniform => {
                let w_enc = uniform(&mut rng, d_in * d_sae, enc_bound);
                (w_enc, uniform(&mut rng, d_sae * d_out, dec_bound))
            }
            EncoderInit::Tied => (Vec::new(), uniform(&mut rng, d_sae * d_out, dec_bound)),
        };
        kernels::normalise_rows(&mut w_dec, d_out);
        let w_enc = match cfg.encoder_init {
            // validate() refuses a tied transcoder whose widths differ.
            EncoderInit::Tied => transpose(&w_dec, d_sae, d_out),
            EncoderInit::Uniform => w_enc,
        };
        let b_dec = if cfg.b_dec_init == DecoderBiasInit::DataMean {
            let rows = check_rows("training data", target, d_out)?;
            column_mean(target, rows, d_out)
                .into_iter()
                .map(|m| m as f32)
                .collect()
        } else {
            vec![0.0; d_out]
        };
        let w_skip = match cfg.transcoder {
            Some(t) if t.skip => vec![0.0; d_out * d_in],
            _ => Vec::new(),
        };
        let threshold = match cfg.architecture.activation() {
            Activation::JumpRelu { init_threshold, .. } => vec![init_threshold as f32; d_sae],
            // The running estimate starts at 0, as SAELens' (plain ReLU until it moves).
            Activation::BatchTopK { .. } => vec![0.0; d_sae],
            Activation::Relu | Activation::TopK { .. } | Activation::Gated => Vec::new(),
        };
        let gated = |len| {
            if cfg.architecture.is_gated() {
                vec![0.0; len]
            } else {
                Vec::new()
            }
        };
        Ok(Sae {
            cfg: cfg.clone(),
            w_enc,
            w_dec,
            b_enc: vec![0.0; d_sae],
            b_dec,
            w_skip,
            threshold,
            r_mag: gated(d_sae),
            b_mag: gated(d_sae),
        })
    }

    pub fn d_in(&self) -> usize {
        self.cfg.d_in
    }

    pub fn d_sae(&self) -> usize {
        self.cfg.d_sae
    }

    /// Width of the decoder's output: `d_in` for an SAE.
    pub fn d_out(&self) -> usize {
        self.cfg.d_out()
    }

    /// The decoder's output before any feature: `b_dec`, plus a skip
    /// transcoder's `W_skip @ x` for input row `x`, appended to `out`.
    pub(crate) fn extend_base(&self, x: &[f32], out: &mut Vec<f32>) {
        if self.w_skip.is_empty() {
            out.extend_from_slice(&self.b_dec);
        } else {
            out.extend(
                self.w_skip
                    .chunks_exact(x.len())
                    .zip(&self.b_dec)
                    .map(|(w, b)| b + <kernels::Portable as kernels::Simd>::dot(w, x)),
            );
        }
    }

    /// Sparse forward over `x` (`rows` rows), in chunks of `CHUNK_ROWS`.
    fn forward_chunk(&self, x: &[f32], out: &mut ChunkForward) {
        self.encode_chunk(x, out);
        let (d_in, d_out) = (self.d_in(), self.d_out());
        out.x_hat.clear();
        for (r, x_r) in x.chunks_exact(d_in).enumerate() {
            let start = out.x_hat.len();
            self.extend_base(x_r, &mut out.x_hat);
            let x_hat = &mut out.x_hat[start..];
            for e in out.row_start[r]..out.row_start[r + 1] {
                let f = out.idx[e] as usize;
                kernels::axpy(x_hat, out.val[e], &self.w_dec[f * d_out..(f + 1) * d_out]);
            }
        }
    }

    /// The sparse codes of a chunk (no reconstruction): `out.row_start`, `idx`, `val`.
    fn encode_chunk(&self, x: &[f32], out: &mut ChunkForward) {
        let (d_in, d_sae) = (self.d_in(), self.d_sae());
        let rows = x.len() / d_in;
        out.x_cent.clear();
        if self.cfg.centres_input() {
            for row in x.chunks_exact(d_in) {
                out.x_cent
                    .extend(row.iter().zip(&self.b_dec).map(|(a, b)| a - b));
            }
        } else {
            out.x_cent.extend_from_slice(x);
        }
        out.pre.clear();
        for _ in 0..rows {
            out.pre.extend_from_slice(&self.b_enc);
        }
        kernels::matmul(
            &mut out.pre,
            rows,
            d_sae,
            d_in,
            true,
            MatRef::row_major(&out.x_cent, d_in),
            MatRef::row_major(&self.w_enc, d_sae),
        );
        out.row_start.clear();
        out.idx.clear();
        out.val.clear();
        out.row_start.push(0);
        let rows_rule = match self.cfg.architecture.activation() {
            Activation::Relu => Selection::Relu,
            Activation::TopK { k } => Selection::TopK(k),
            Activation::Gated => {
                self.select_gated(out);
                return;
            }
            Activation::BatchTopK { .. } | Activation::JumpRelu { .. } => {
                self.select_by_threshold(out);
                return;
            }
        };
        for row in out.pre.chunks_exact(d_sae) {
            kernels::select_active::<kernels::Portable>(
                row,
                0,
                rows_rule,
                None,
                &mut out.scratch,
                &mut out.idx,
                &mut out.val,
            );
            out.row_start.push(out.idx.len());
        }
    }

    /// Gated: active where the gate is open and the magnitude positive; the
    /// magnitude path is the gate's pre-activation without b_gate, rescaled
    /// by exp(r_mag), plus b_mag.
    fn select_gated(&self, out: &mut ChunkForward) {
        let d_sae = self.d_sae();
        for row in out.pre.chunks_exact(d_sae) {
            for f in 0..d_sae {
                let gate = row[f];
                let magnitude = self.r_mag[f].exp() * (gate - self.b_enc[f]) + self.b_mag[f];
                if gate > 0.0 && magnitude > 0.0 {
                    out.idx.push(f as u32);
                    out.val.push(magnitude);
                }
            }
            out.row_start.push(out.idx.len());
        }
    }

    /// Where the pre-activation exceeds both 0 and the feature's threshold.
    fn select_by_threshold(&self, out: &mut ChunkForward) {
        for row in out.pre.chunks_exact(self.d_sae()) {
            for (f, (&p, &t)) in row.iter().zip(&self.threshold).enumerate() {
                if p > t && p > 0.0 {
                    out.idx.push(f as u32);
                    out.val.push(p);
                }
            }
            out.row_start.push(out.idx.len());
        }
    }

    /// Folds the scales it was trained at (inputs times `s_in`, targets times
    /// `s_out`) into its weights, so it reads and writes raw rows: its
    /// pre-activations stay the same, its outputs are divided by `s_out`.
    pub(crate) fn fold_scales(&mut self, s_in: f32, s_out: f32) {
        self.w_enc.iter_mut().for_each(|w| *w *= s_in);
        self.w_dec.iter_mut().for_each(|w| *w /= s_out);
        self.b_dec.iter_mut().for_each(|b| *b /= s_out);
        self.w_skip.iter_mut().for_each(|w| *w = *w * s_in / s_out);
    }

    fn check_input(&self, x: &[f32]) -> Result<usize, SaeError> {
        check_rows("SAE input", x, self.d_in())
    }
}

const CHUNK_ROWS: usize = 256;

#[derive(Default)]
struct ChunkForward {
    x_cent: Vec<f32>,
    pre: Vec<f32>,
    scratch: Vec<(f32, u32)>,
    row_start: Vec<usize>,
    idx: Vec<u32>,
    val: Vec<f32>,
    x_hat: Vec<f32>,
}

/// Runs `visit` on the forward pass of every chunk (with the chunk's first
/// row), in parallel, results in chunk order.
fn map_chunks<T: Send>(
    sae: &Sae,
    x: &[f32],
    visit: impl Fn(usize, &[f32], &ChunkForward) -> T + Sync,
) -> Vec<T> {
    x.par_chunks(CHUNK_ROWS * sae.d_in())
        .enumerate()
        .map_init(ChunkForward::default, |out, (i, chunk)| {
            subnormals::flushed(|| {
                sae.forward_chunk(chunk, out);
                visit(i * CHUNK_ROWS, chunk, out)
            })
        })
        .collect()
}

pub(crate) fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

/// The mean of each column of row-major `data` (`rows` x `cols`), summed in f64.
pub fn column_mean(data: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    let mut mean = vec![0.0f64; cols];
    for row in data.chunks_exact(cols) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= rows as f64);
    mean
}

/// `sum over rows of ||x - mean(x)||^2`, with the global (over rows) mean vector.
pub(crate) fn total_variance(data: &[f32], cols: usize) -> f64 {
    let rows = data.len() / cols;
    let mean = column_mean(data, rows, cols);
    data.chunks_exact(cols)
        .map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(&x, m)| (x as f64 - m).powi(2))
                .sum::<f64>()
        })
        .sum()
}

/// `1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2` over row-major `[rows, width]` buffers.
pub fn explained_variance(x: &[f32], x_hat: &[f32], width: usize) -> Result<f64, SaeError> {
    let rows = check_rows("x", x, width)?;
    if x_hat.len() != x.len() {
        return Err(SaeError::DataShape {
            what: format!("x_hat (expected {rows} rows like x)"),
            len: x_hat.len(),
            width,
        });
    }
    let residual: f64 = x
        .iter()
        .zip(x_hat)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    Ok(1.0 - residual / total_variance(x, width))
}

/// Dense feature activations `[rows, d_sae]` of row-major input `x` `[rows, d_in]`.
pub fn encode(sae: &Sae, x: &[f32]) -> Result<Vec<f32>, SaeError> {
    sae.check_input(x)?;
    let d_sae = sae.d_sae();
    let chunks = map_chunks(sae, x, |_, chunk, out| {
        let rows = chunk.len() / sae.d_in();
        let mut acts = vec![0.0f32; rows * d_sae];
        for r in 0..rows {
            for e in out.row_start[r]..out.row_start[r + 1] {
                acts[r * d_sae + out.idx[e] as usize] = out.val[e];
            }
        }
        acts
    });
    Ok(chunks.concat())
}

/// The non-zero activations of every row of `x` `[rows, d_in]`, row by row
/// (compressed sparse rows): what [`encode`] returns without the dense
/// `[rows, d_sae]` matrix, for wide SAEs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SparseCodes {
    /// Row r's entries are `row_start[r]..row_start[r + 1]`.
    pub row_start: Vec<usize>,
    pub feature: Vec<u32>,
    pub value: Vec<f32>,
}

pub fn encode_sparse(sae: &Sae, x: &[f32]) -> Result<SparseCodes, SaeError> {
    sae.check_input(x)?;
    let chunks: Vec<(Vec<usize>, Vec<u32>, Vec<f32>)> = x
        .par_chunks(CHUNK_ROWS * sae.d_in())
        .map_init(ChunkForward::default, |out, chunk| {
            subnormals::flushed(|| sae.encode_chunk(chunk, out));
            (out.row_start.clone(), out.idx.clone(), out.val.clone())
        })
        .collect();
    let total: usize = chunks.iter().map(|c| c.1.len()).sum();
    let mut codes = SparseCodes {
        row_start: Vec::with_capacity(x.len() / sae.d_in() + 1),
        feature: Vec::with_capacity(total),
        value: Vec::with_capacity(total),
    };
    codes.row_start.push(0);
    for (starts, idx, val) in chunks {
        let base = codes.feature.len();
        codes.row_start.extend(starts[1..].iter().map(|s| s + base));
        codes.feature.extend(idx);
        codes.value.extend(val);
    }
    Ok(codes)
}

/// One row's output from its sparse code: `b_dec (+ W_skip @ x) + sum value * W_dec[feature]`,
/// summed in the order given (as the forward pass does, in feature order).
/// `x` is the input row, read only by a skip transcoder.
pub fn decode_row(sae: &Sae, x: &[f32], features: &[u32], values: &[f32]) -> Vec<f32> {
    let d_out = sae.d_out();
    let mut x_hat = Vec::with_capacity(d_out);
    sae.extend_base(x, &mut x_hat);
    for (&f, &v) in features.iter().zip(values) {
        let f = f as usize;
        kernels::axpy(&mut x_hat, v, &sae.w_dec[f * d_out..(f + 1) * d_out]);
    }
    x_hat
}

/// The decoder's output `[rows, d_out]` for row-major input `x` `[rows, d_in]`:
/// an SAE's reconstruction, a transcoder's prediction of its output layer.
pub fn reconstruct(sae: &Sae, x: &[f32]) -> Result<Vec<f32>, SaeError> {
    sae.check_input(x)?;
    Ok(map_chunks(sae, x, |_, _, out| out.x_hat.clone()).concat())
}

/// Metrics of an SAE over a whole data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalMetrics {
    /// Mean over rows and dims of `(x - x_hat)^2`.
    pub mse: f64,
    /// Sum over rows of `||x - x_hat||^2`.
    pub l2_sum: f64,
    /// Sum over rows and features of `|acts|` (no coefficient).
    pub l1: f64,
    /// Mean number of active features per row.
    pub l0: f64,
    pub explained_variance: f64,
    /// Features never active on these rows.
    pub dead: usize,
    /// Per feature, the number of rows on which it is active. Not written to
    /// metrics files (the analysis tables hold them); empty when read back.
    #[serde(skip)]
    pub firing_counts: Vec<u64>,
}

/// Evaluates an SAE on row-major `data` `[rows, d_in]` (a transcoder: [`evaluate_on`]).
pub fn evaluate(sae: &Sae, data: &[f32]) -> Result<EvalMetrics, SaeError> {
    if sae.cfg.transcoder.is_some() {
        return Err(SaeError::InvalidConfig(
            "a transcoder is measured against its output layer: call evaluate_on(sae, input, target)".into(),
        ));
    }
    evaluate_on(sae, data, data)
}

/// Evaluates `sae` on row-major `input` `[rows, d_in]` against `target`
/// `[rows, d_out]` (an SAE's target is its input): errors, explained
/// variance of the target, L0 and firing counts.
pub fn evaluate_on(sae: &Sae, input: &[f32], target: &[f32]) -> Result<EvalMetrics, SaeError> {
    let d_out = sae.d_out();
    let rows = check_paired(("SAE input", input, sae.d_in()), ("target", target, d_out))?;
    let d_sae = sae.d_sae();
    struct Partial {
        sq_err: f64,
        abs: f64,
        active: u64,
        firing: Vec<u64>,
    }
    let partials = map_chunks(sae, input, |first, chunk, out| {
        let rows = chunk.len() / sae.d_in();
        let sq_err = target[first * d_out..(first + rows) * d_out]
            .iter()
            .zip(&out.x_hat)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        let mut firing = vec![0u64; d_sae];
        out.idx.iter().for_each(|&f| firing[f as usize] += 1);
        Partial {
            sq_err,
            abs: out.val.iter().map(|&v| v.abs() as f64).sum(),
            active: out.idx.len() as u64,
            firing,
        }
    });
    let mut firing_counts = vec![0u64; d_sae];
    let (mut sq_err, mut abs, mut active) = (0.0, 0.0, 0u64);
    for p in &partials {
        sq_err += p.sq_err;
        abs += p.abs;
        active += p.active;
        firing_counts
            .iter_mut()
            .zip(&p.firing)
            .for_each(|(a, b)| *a += b);
    }
    Ok(EvalMetrics {
        mse: sq_err / (rows * d_out) as f64,
        l2_sum: sq_err,
        l1: abs,
        l0: active as f64 / rows as f64,
        explained_variance: 1.0 - sq_err / total_variance(target, d_out),
        dead: firing_counts.iter().filter(|&&c| c == 0).count(),
        firing_counts,
    })
}

/// Per-row `||x - x_hat||^2` (used to pick resampling inputs).
pub(crate) fn row_squared_errors(sae: &Sae, x: &[f32]) -> Vec<f32> {
    let d_in = sae.d_in();
    map_chunks(sae, x, |_, chunk, out| {
        chunk
            .chunks_exact(d_in)
            .zip(out.x_hat.chunks_exact(d_in))
            .map(|(a, b)| a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum::<f32>())
            .collect::<Vec<f32>>()
    })
    .concat()
}
