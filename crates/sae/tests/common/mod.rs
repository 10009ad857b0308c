//! Test helpers: configs, data, and an independent f64 implementation of the
//! SAE loss and its gradients (plain loops, no shared code with the crate).
#![allow(dead_code, clippy::needless_range_loop)]

use sae::{
    Architecture, AuxInput, EncoderInit, LrSchedule, ProgressEvent, Reduction, Sae, SaeConfig,
    SaeError, SweepPoint, TrainData, TrainPath, Trained,
};

pub fn config(architecture: Architecture, d_in: usize, d_sae: usize) -> SaeConfig {
    SaeConfig {
        d_in,
        d_sae,
        architecture,
        epochs: 1,
        ..SaeConfig::default()
    }
}

/// Sparse combinations of random directions plus noise: data with real structure.
pub fn structured_data(rows: usize, d_in: usize, seed: u64) -> Vec<f32> {
    sae::synthetic::sparse_directions(rows, d_in, 3 * d_in, 5, 0.05, seed)
}

/// A fresh SAE with every parameter perturbed (non-zero biases), so all
/// gradient paths carry signal.
pub fn perturbed_sae(cfg: &SaeConfig, seed: u64) -> Sae {
    let mut sae = Sae::init(cfg, &[]).unwrap();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    sae.b_enc.iter_mut().for_each(|b| *b = 0.1 * next());
    sae.b_dec.iter_mut().for_each(|b| *b = 0.2 * next());
    sae.threshold
        .iter_mut()
        .for_each(|t| *t = 0.1 + 0.3 * next().abs());
    sae.r_mag.iter_mut().for_each(|r| *r = 0.3 * next());
    sae.b_mag.iter_mut().for_each(|b| *b = 0.1 * next());
    sae.w_skip.iter_mut().for_each(|w| *w = 0.2 * next());
    if !cfg.architecture.unit_norm_decoder() {
        // Rows of unequal norm, so the norm weighting matters.
        for (f, row) in sae.w_dec.chunks_exact_mut(cfg.d_out()).enumerate() {
            let scale = 0.5 + (f % 5) as f32 * 0.3;
            row.iter_mut().for_each(|w| *w *= scale);
        }
    }
    sae
}

pub struct HostGradients {
    pub loss: f64,
    pub w_enc: Vec<f64>,
    pub w_dec: Vec<f64>,
    pub b_enc: Vec<f64>,
    pub b_dec: Vec<f64>,
    /// Skip transcoders: d loss / d W_skip `[d_out, d_in]`; empty otherwise.
    pub w_skip: Vec<f64>,
    /// JumpReLU: d loss / d log-threshold; empty otherwise.
    pub threshold: Vec<f64>,
    /// Gated: d loss / d r_mag and d b_mag; empty otherwise.
    pub r_mag: Vec<f64>,
    pub b_mag: Vec<f64>,
}

impl HostGradients {
    fn zeros(sae: &Sae) -> Self {
        let (d_in, f_n, d_out) = (sae.d_in(), sae.d_sae(), sae.d_out());
        HostGradients {
            loss: 0.0,
            w_enc: vec![0.0; d_in * f_n],
            w_dec: vec![0.0; f_n * d_out],
            b_enc: vec![0.0; f_n],
            b_dec: vec![0.0; d_out],
            w_skip: vec![0.0; sae.w_skip.len()],
            threshold: Vec::new(),
            r_mag: Vec::new(),
            b_mag: Vec::new(),
        }
    }
}

/// Active features of one row: ReLU, or the top k (value desc, index asc)
/// that are positive (or of any sign with `any_sign`, AuxK's `raw` input).
fn active_set(pre: &[f64], k: Option<usize>, allowed: &[bool], any_sign: bool) -> Vec<usize> {
    let mut cand: Vec<usize> = (0..pre.len())
        .filter(|&f| allowed[f] && (any_sign || pre[f] > 0.0))
        .collect();
    if let Some(k) = k {
        cand.sort_by(|&a, &b| pre[b].partial_cmp(&pre[a]).unwrap().then(a.cmp(&b)));
        cand.truncate(k);
    }
    cand
}

/// Loss and gradients of `sae` on `x` in f64. `dead` marks AuxK's dead
/// latents before this batch; features that fire in the batch are revived.
pub fn host_gradients(sae: &Sae, x: &[f32], dead: &[bool]) -> HostGradients {
    host_gradients_on(sae, x, x, dead)
}

/// An SAE's input centred on b_dec, a transcoder's as it is, `[rows][d_in]`.
fn encoder_input(sae: &Sae, x: &[f32]) -> Vec<Vec<f64>> {
    let d_in = sae.d_in();
    x.chunks_exact(d_in)
        .map(|row| {
            (0..d_in)
                .map(|i| match sae.cfg.transcoder {
                    None => row[i] as f64 - sae.b_dec[i] as f64,
                    Some(_) => row[i] as f64,
                })
                .collect()
        })
        .collect()
}

/// The output before any feature, `[rows][d_out]`: b_dec plus a skip transcoder's W_skip @ x.
fn output_base(sae: &Sae, x: &[f32]) -> Vec<Vec<f64>> {
    let (d_in, d_out) = (sae.d_in(), sae.d_out());
    x.chunks_exact(d_in)
        .map(|row| {
            (0..d_out)
                .map(|o| {
                    let skip: f64 = if sae.w_skip.is_empty() {
                        0.0
                    } else {
                        (0..d_in)
                            .map(|i| sae.w_skip[o * d_in + i] as f64 * row[i] as f64)
                            .sum()
                    };
                    sae.b_dec[o] as f64 + skip
                })
                .collect()
        })
        .collect()
}

/// `g` gets the gradient through the output's base (b_dec, W_skip) of `g_out` at row `r`.
fn base_gradient(sae: &Sae, g: &mut HostGradients, x: &[f32], r: usize, g_out: &[f64]) {
    let d_in = sae.d_in();
    for (o, &go) in g_out.iter().enumerate() {
        g.b_dec[o] += go;
        if !g.w_skip.is_empty() {
            for i in 0..d_in {
                g.w_skip[o * d_in + i] += go * x[r * d_in + i] as f64;
            }
        }
    }
}

/// [`host_gradients`] of an SAE or transcoder: `x` `[rows, d_in]` predicts `y` `[rows, d_out]`.
pub fn host_gradients_on(sae: &Sae, x: &[f32], y: &[f32], dead: &[bool]) -> HostGradients {
    let (d_in, f_n, d) = (sae.d_in(), sae.d_sae(), sae.d_out());
    let rows = x.len() / d_in;
    let w_enc = |i: usize, f: usize| sae.w_enc[i * f_n + f] as f64;
    let w_dec = |f: usize, o: usize| sae.w_dec[f * d + o] as f64;
    let centred = sae.cfg.transcoder.is_none();
    let architecture = &sae.cfg.architecture;
    // (per-row k, per-batch k, L1 coefficient, decoder-norm weighted, JumpReLU's (L0, bandwidth))
    let (k, batch_k, l1_coeff, weighted, jump) = match architecture {
        Architecture::L1(a) => (None, None, a.l1_coeff, false, None),
        Architecture::NormWeightedL1(a) => (None, None, a.l1_coeff, true, None),
        Architecture::TopK(a) => (Some(a.k), None, 0.0, false, None),
        Architecture::BatchTopK(a) => (None, Some(a.k * rows), 0.0, false, None),
        Architecture::MatryoshkaBatchTopK(a) => (None, Some(a.k * rows), 0.0, false, None),
        Architecture::JumpRelu(a) => (None, None, 0.0, false, Some((a.l0_coeff, a.bandwidth))),
        Architecture::Gated(_) => panic!("Gated has its own oracle, host_gradients_gated"),
    };
    let aux = sae.cfg.aux_k();
    let prefixes = architecture.prefix_widths(f_n);
    let l1_scale = match sae.cfg.l1_reduction {
        Reduction::Sum => l1_coeff,
        Reduction::Mean => l1_coeff / rows as f64,
    };
    let dec_norm: Vec<f64> = (0..f_n)
        .map(|f| (0..d).map(|i| w_dec(f, i).powi(2)).sum::<f64>().sqrt())
        .collect();
    let everything = vec![true; f_n];

    let xc = encoder_input(sae, x);
    let base = output_base(sae, x);
    let mut pre = vec![vec![0.0; f_n]; rows];
    let mut active = Vec::new();
    let mut fired = vec![false; f_n];
    for r in 0..rows {
        for f in 0..f_n {
            pre[r][f] =
                sae.b_enc[f] as f64 + (0..d_in).map(|i| xc[r][i] * w_enc(i, f)).sum::<f64>();
        }
        let set = match jump {
            Some(_) => (0..f_n)
                .filter(|&f| pre[r][f] > sae.threshold[f] as f64)
                .collect(),
            None => active_set(&pre[r], k, &everything, false),
        };
        active.push(set);
    }
    if let Some(batch_k) = batch_k {
        // The batch_k largest positive pre-activations of the whole batch.
        let mut all: Vec<(usize, usize)> = (0..rows)
            .flat_map(|r| (0..f_n).map(move |f| (r, f)))
            .filter(|&(r, f)| pre[r][f] > 0.0)
            .collect();
        all.sort_by(|a, b| pre[b.0][b.1].partial_cmp(&pre[a.0][a.1]).unwrap());
        all.truncate(batch_k);
        active = vec![Vec::new(); rows];
        for (r, f) in all {
            active[r].push(f);
        }
        active.iter_mut().for_each(|set| set.sort());
    }
    active.iter().flatten().for_each(|&f| fired[f] = true);
    let dead: Vec<bool> = (0..f_n).map(|f| dead[f] && !fired[f]).collect();
    let any_dead = dead.iter().any(|&x| x);

    // err = y_hat - y per row.
    let err: Vec<Vec<f64>> = (0..rows)
        .map(|r| {
            (0..d)
                .map(|i| {
                    let dec: f64 = active[r].iter().map(|&f| pre[r][f] * w_dec(f, i)).sum();
                    base[r][i] + dec - y[r * d + i] as f64
                })
                .collect()
        })
        .collect();
    // AuxK as OpenAI's normalised MSE of the residual, times the batch's
    // variance (the unit `sae::gradients` uses): its factor on sum ||e - e_hat||^2.
    let spread = |v: &dyn Fn(usize, usize) -> f64| -> f64 {
        (0..d)
            .map(|i| {
                let mean = (0..rows).map(|r| v(r, i)).sum::<f64>() / rows as f64;
                (0..rows).map(|r| (v(r, i) - mean).powi(2)).sum::<f64>()
            })
            .sum()
    };
    let data_variance = spread(&|r, i| y[r * d + i] as f64) / rows as f64;
    let residual_spread = spread(&|r, i| err[r][i]);

    let mut g = HostGradients {
        threshold: vec![0.0; if jump.is_some() { f_n } else { 0 }],
        ..HostGradients::zeros(sae)
    };
    for r in 0..rows {
        let err = &err[r];
        g.loss += err.iter().map(|e| e * e).sum::<f64>() / rows as f64;
        let g_xhat: Vec<f64> = err.iter().map(|e| 2.0 * e / rows as f64).collect();
        let mut g_pre = vec![0.0; f_n];
        for &f in &active[r] {
            let a = pre[r][f];
            let weight = if weighted { dec_norm[f] } else { 1.0 };
            g.loss += l1_scale * a * weight;
            g_pre[f] += (0..d).map(|i| g_xhat[i] * w_dec(f, i)).sum::<f64>() + l1_scale * weight;
            for i in 0..d {
                g.w_dec[f * d + i] += a * g_xhat[i];
                if weighted {
                    g.w_dec[f * d + i] += l1_scale * a * w_dec(f, i) / dec_norm[f];
                }
            }
        }
        base_gradient(sae, &mut g, x, r, &g_xhat);
        // Matryoshka: each prefix's own reconstruction error.
        for &width in &prefixes {
            let mut prefix_err: Vec<f64> =
                (0..d).map(|i| base[r][i] - y[r * d + i] as f64).collect();
            for &f in active[r].iter().filter(|&&f| f < width) {
                for i in 0..d {
                    prefix_err[i] += pre[r][f] * w_dec(f, i);
                }
            }
            g.loss += prefix_err.iter().map(|e| e * e).sum::<f64>() / rows as f64;
            let g_prefix: Vec<f64> = prefix_err.iter().map(|e| 2.0 * e / rows as f64).collect();
            for &f in active[r].iter().filter(|&&f| f < width) {
                g_pre[f] += (0..d).map(|i| g_prefix[i] * w_dec(f, i)).sum::<f64>();
                for i in 0..d {
                    g.w_dec[f * d + i] += pre[r][f] * g_prefix[i];
                }
            }
            base_gradient(sae, &mut g, x, r, &g_prefix);
        }
        // JumpReLU: L0 as a mean over rows; the threshold's pseudo-derivative
        // (rectangle kernel of width `bandwidth`) from the output and the L0.
        if let Some((l0_coeff, bandwidth)) = jump {
            g.loss += l0_coeff * active[r].len() as f64 / rows as f64;
            for f in 0..f_n {
                let theta = sae.threshold[f] as f64;
                if (pre[r][f] - theta).abs() < bandwidth / 2.0 {
                    let g_act: f64 = (0..d).map(|i| g_xhat[i] * w_dec(f, i)).sum();
                    let d_theta = -(theta / bandwidth) * g_act - l0_coeff / rows as f64 / bandwidth;
                    g.threshold[f] += theta * d_theta;
                }
            }
        }
        if let (Some((k_aux, aux_coeff, aux_input)), true) = (aux, any_dead) {
            let set = active_set(&pre[r], Some(k_aux), &dead, aux_input == AuxInput::Raw);
            let mut residual: Vec<f64> = err.iter().map(|e| -e).collect();
            for &f in &set {
                for i in 0..d {
                    residual[i] -= pre[r][f] * w_dec(f, i);
                }
            }
            // A residual without spread (one row) has no normalised MSE: 0, as OpenAI's nan_to_num.
            let factor = if residual_spread > 0.0 {
                aux_coeff * data_variance / residual_spread
            } else {
                0.0
            };
            g.loss += factor * residual.iter().map(|e| e * e).sum::<f64>();
            let g_ehat: Vec<f64> = residual.iter().map(|e| -2.0 * factor * e).collect();
            for &f in &set {
                g_pre[f] += (0..d).map(|i| g_ehat[i] * w_dec(f, i)).sum::<f64>();
                for i in 0..d {
                    g.w_dec[f * d + i] += pre[r][f] * g_ehat[i];
                }
            }
        }
        for f in 0..f_n {
            if g_pre[f] == 0.0 {
                continue;
            }
            g.b_enc[f] += g_pre[f];
            for i in 0..d_in {
                g.w_enc[i * f_n + f] += g_pre[f] * xc[r][i];
                if centred {
                    g.b_dec[i] -= g_pre[f] * w_enc(i, f);
                }
            }
        }
    }
    g
}

/// Largest |a - b| relative to the largest |b| (at least 1e-3).
pub fn relative_error(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
        / scale
}

pub fn constant_lr(cfg: SaeConfig) -> SaeConfig {
    SaeConfig {
        lr_schedule: LrSchedule::Constant,
        ..cfg
    }
}

pub fn row_norms(w: &[f32], cols: usize) -> Vec<f64> {
    w.chunks_exact(cols)
        .map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt())
        .collect()
}

pub fn tied(cfg: SaeConfig) -> SaeConfig {
    SaeConfig {
        encoder_init: EncoderInit::Tied,
        ..cfg
    }
}

/// Gated's loss and gradients in f64 (`b_enc` is the gate's bias):
/// `||x - x_hat||^2` + `l1 * sum relu(pi_gate)` + `||relu(pi_gate) @ W_dec + b_dec - x||^2`
/// with the decoder frozen in the last term, each a mean over rows.
pub fn host_gradients_gated(sae: &Sae, x: &[f32]) -> HostGradients {
    host_gradients_gated_on(sae, x, x)
}

/// [`host_gradients_gated`] of a Gated SAE or transcoder (the frozen decoder
/// includes the output's base).
pub fn host_gradients_gated_on(sae: &Sae, x: &[f32], y: &[f32]) -> HostGradients {
    let Architecture::Gated(sae::Gated { l1_coeff }) = sae.cfg.architecture else {
        panic!("not a Gated SAE")
    };
    let (d_in, f_n, d) = (sae.d_in(), sae.d_sae(), sae.d_out());
    let rows = x.len() / d_in;
    let centred = sae.cfg.transcoder.is_none();
    let xcs = encoder_input(sae, x);
    let bases = output_base(sae, x);
    let l1_scale = match sae.cfg.l1_reduction {
        Reduction::Sum => l1_coeff,
        Reduction::Mean => l1_coeff / rows as f64,
    };
    let w_enc = |i: usize, f: usize| sae.w_enc[i * f_n + f] as f64;
    let w_dec = |f: usize, i: usize| sae.w_dec[f * d + i] as f64;
    let mut g = HostGradients {
        r_mag: vec![0.0; f_n],
        b_mag: vec![0.0; f_n],
        ..HostGradients::zeros(sae)
    };
    for r in 0..rows {
        let yr: Vec<f64> = (0..d).map(|i| y[r * d + i] as f64).collect();
        let (xc, base) = (&xcs[r], &bases[r]);
        let enc: Vec<f64> = (0..f_n)
            .map(|f| (0..d_in).map(|i| xc[i] * w_enc(i, f)).sum())
            .collect();
        let gate: Vec<f64> = (0..f_n).map(|f| enc[f] + sae.b_enc[f] as f64).collect();
        let scale: Vec<f64> = (0..f_n).map(|f| (sae.r_mag[f] as f64).exp()).collect();
        let magnitude: Vec<f64> = (0..f_n)
            .map(|f| scale[f] * enc[f] + sae.b_mag[f] as f64)
            .collect();
        let active: Vec<usize> = (0..f_n)
            .filter(|&f| gate[f] > 0.0 && magnitude[f] > 0.0)
            .collect();
        let open: Vec<usize> = (0..f_n).filter(|&f| gate[f] > 0.0).collect();
        let err: Vec<f64> = (0..d)
            .map(|i| {
                base[i] - yr[i]
                    + active
                        .iter()
                        .map(|&f| magnitude[f] * w_dec(f, i))
                        .sum::<f64>()
            })
            .collect();
        let gate_err: Vec<f64> = (0..d)
            .map(|i| base[i] - yr[i] + open.iter().map(|&f| gate[f] * w_dec(f, i)).sum::<f64>())
            .collect();
        g.loss += err.iter().chain(&gate_err).map(|e| e * e).sum::<f64>() / rows as f64;
        g.loss += l1_scale * open.iter().map(|&f| gate[f]).sum::<f64>();
        let g_xhat: Vec<f64> = err.iter().map(|e| 2.0 * e / rows as f64).collect();
        let g_gate_hat: Vec<f64> = gate_err.iter().map(|e| 2.0 * e / rows as f64).collect();
        let mut g_enc = vec![0.0; f_n];
        for &f in &active {
            let g_mag: f64 = (0..d).map(|i| g_xhat[i] * w_dec(f, i)).sum();
            g_enc[f] += g_mag * scale[f];
            g.r_mag[f] += g_mag * scale[f] * enc[f];
            g.b_mag[f] += g_mag;
            for i in 0..d {
                g.w_dec[f * d + i] += magnitude[f] * g_xhat[i];
            }
        }
        for &f in &open {
            // The frozen decoder: no W_dec or b_dec gradient from this term.
            let g_gate: f64 = l1_scale + (0..d).map(|i| g_gate_hat[i] * w_dec(f, i)).sum::<f64>();
            g_enc[f] += g_gate;
            g.b_enc[f] += g_gate;
        }
        base_gradient(sae, &mut g, x, r, &g_xhat);
        for f in 0..f_n {
            for i in 0..d_in {
                g.w_enc[i * f_n + f] += g_enc[f] * xc[i];
                if centred {
                    g.b_dec[i] -= g_enc[f] * w_enc(i, f);
                }
            }
        }
    }
    g
}

/// `architecture` (of the TopK family) with these AuxK settings.
pub fn with_aux(
    mut architecture: Architecture,
    latents: usize,
    coeff: f64,
    input: AuxInput,
) -> Architecture {
    let Some((k_aux, aux_coeff, aux_input)) = architecture.aux_k_mut() else {
        panic!("{architecture:?} has no AuxK")
    };
    *k_aux = Some(latents);
    *aux_coeff = coeff;
    *aux_input = input;
    architecture
}

/// Each Adam-trained parameter of a state or gradient by name, in one order.
fn named(g: &sae::Gradients) -> [(&'static str, &[f32]); 8] {
    [
        ("W_enc", &g.w_enc),
        ("W_dec", &g.w_dec),
        ("b_enc", &g.b_enc),
        ("b_dec", &g.b_dec),
        ("W_skip", &g.w_skip),
        ("log-threshold", &g.threshold),
        ("r_mag", &g.r_mag),
        ("b_mag", &g.b_mag),
    ]
}

/// Asserts one recorded training step against f64 from the same parameters,
/// moments and raw gradient: the decoder projection (unit-norm architectures),
/// Adam's moments and update, and the rows' renormalisation. Elementwise,
/// each value within a few f32 roundings of the terms it is made of, so the
/// check holds whatever the summation order or vector width: it does not
/// compare trajectories, whose rounding compounds over steps.
///
/// With `clip_grad_norm`, the projected gradients are scaled by torch's
/// `min(1, clip / (norm + 1e-6))` of their global norm in f64 first; returns
/// that factor (1 without clipping).
pub fn assert_step_matches_f64(cfg: &SaeConfig, s: &sae::CheckedStep, label: &str) -> f64 {
    let label = format!("{label} step {}", s.step);
    let after = &s.after;
    let o = &cfg.optimizer;
    let (b1, b2, eps) = (o.beta1, o.beta2, o.eps);
    let t = s.step as i32;
    let step_size = s.lr / (1.0 - b1.powi(t));
    let inv_bc2_sqrt = 1.0 / (1.0 - b2.powi(t)).sqrt();
    let ulp = f32::EPSILON as f64;
    // A value below f32's normal range may be flushed to zero on the fast path.
    let flush = 1e-37;
    let d_out = cfg.d_out();
    let unit_norm = cfg.architecture.unit_norm_decoder();
    let (params, m0s, v0s, grads) = (
        named(&s.before.params),
        named(&s.before.m),
        named(&s.before.v),
        named(&s.gradients),
    );
    let (p1s, m1s, v1s) = (named(&after.params), named(&after.m), named(&after.v));
    // Each parameter's gradient in f64 as the optimizer sees it (projected),
    // with the rounding slack the projection allows.
    let mut seen: Vec<(Vec<f64>, Vec<f64>)> = Vec::with_capacity(8);
    for i in 0..8 {
        let (name, p0) = params[i];
        let (g, m0, v0) = (grads[i].1, m0s[i].1, v0s[i].1);
        let n = p0.len();
        for (what, len) in [("gradient", g.len()), ("m", m0.len()), ("v", v0.len())] {
            assert_eq!(
                len, n,
                "{label}: {name}'s {what} has {len} entries for {n} parameters"
            );
        }
        let mut g64: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        let mut g_slack = vec![0.0f64; n];
        let rows_renormalised = name == "W_dec" && unit_norm;
        if rows_renormalised {
            // Remove each row's gradient component along the row.
            for (f, (gr, sl)) in g64
                .chunks_exact_mut(d_out)
                .zip(g_slack.chunks_exact_mut(d_out))
                .enumerate()
            {
                let w: Vec<f64> = p0[f * d_out..(f + 1) * d_out]
                    .iter()
                    .map(|&x| x as f64)
                    .collect();
                let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
                let along = gr.iter().zip(&w).map(|(g, w)| g * w).sum::<f64>() / norm;
                let along_terms = gr.iter().zip(&w).map(|(g, w)| (g * w).abs()).sum::<f64>() / norm;
                let sums = (d_out + 4) as f64 * ulp;
                for ((g, s), w) in gr.iter_mut().zip(sl.iter_mut()).zip(&w) {
                    *s = sums * (g.abs() + along_terms * w.abs() / norm);
                    *g -= along * w / norm;
                }
            }
        }
        seen.push((g64, g_slack));
    }
    let norm = seen
        .iter()
        .flat_map(|(g, _)| g)
        .map(|g| g * g)
        .sum::<f64>()
        .sqrt();
    let factor = cfg.clip_factor(norm);
    for i in 0..8 {
        let (name, p0) = params[i];
        let (g, m0, v0, p1, m1, v1) =
            (grads[i].1, m0s[i].1, v0s[i].1, p1s[i].1, m1s[i].1, v1s[i].1);
        let n = p0.len();
        if n == 0 {
            continue;
        }
        let rows_renormalised = name == "W_dec" && unit_norm;
        let (mut g64, mut g_slack) = std::mem::take(&mut seen[i]);
        if factor != 1.0 {
            // The trainers' norm differs from this one by the projection's
            // roundings (covered by the slack) and their own f32 sums.
            for (g, gs) in g64.iter_mut().zip(g_slack.iter_mut()) {
                *gs = factor * *gs + 1e-5 * factor * g.abs();
                *g *= factor;
            }
        }
        let mut q = vec![0.0f64; n];
        let mut q_slack = vec![0.0f64; n];
        for e in 0..n {
            let (g, gs) = (g64[e], g_slack[e]);
            let (m0, v0) = (m0[e] as f64, v0[e] as f64);
            let m = b1 * m0 + (1.0 - b1) * g;
            let m_allowed =
                4.0 * ulp * (b1 * m0.abs() + (1.0 - b1) * g.abs()) + (1.0 - b1) * gs + flush;
            let v = b2 * v0 + (1.0 - b2) * g * g;
            let v_allowed = 6.0 * ulp * v + (1.0 - b2) * (2.0 * g.abs() + gs) * gs + flush;
            assert!(
                (m1[e] as f64 - m).abs() <= m_allowed && (v1[e] as f64 - v).abs() <= v_allowed,
                "{label}: {name}[{e}] moments ({:e}, {:e}), f64 ({m:e}, {v:e})",
                m1[e],
                v1[e]
            );
            // The update from the trainer's own new moments (checked just
            // above): only its last few roundings remain.
            let (m1, v1) = (m1[e] as f64, v1[e] as f64);
            let update = step_size * m1 / (v1.sqrt() * inv_bc2_sqrt + eps);
            q[e] = p0[e] as f64 - update;
            q_slack[e] = ulp * q[e].abs() + 8.0 * ulp * update.abs() + flush;
        }
        if rows_renormalised {
            for f in 0..n / d_out {
                let rows = f * d_out..(f + 1) * d_out;
                let norm = q[rows.clone()].iter().map(|x| x * x).sum::<f64>().sqrt();
                let carried = q_slack[rows.clone()]
                    .iter()
                    .map(|x| x * x)
                    .sum::<f64>()
                    .sqrt();
                for e in rows {
                    let want = q[e] / norm;
                    let allowed = (d_out + 6) as f64 * ulp * want.abs()
                        + (q_slack[e] + want.abs() * carried) / norm
                        + flush;
                    assert!(
                        (p1[e] as f64 - want).abs() <= allowed,
                        "{label}: W_dec[{e}] became {:e} after renormalising, f64 says {want:e}",
                        p1[e]
                    );
                }
            }
        } else {
            for e in 0..n {
                assert!(
                    (p1[e] as f64 - q[e]).abs() <= q_slack[e],
                    "{label}: {name}[{e}] became {:e}, f64 says {:e} (from {:e}, gradient {:e})",
                    p1[e],
                    q[e],
                    p0[e],
                    g[e]
                );
            }
        }
    }
    factor
}

/// One SAE trained on `data` `[rows, cfg.d_in]` (the crate trains sweeps; this is a sweep of one).
pub fn train(
    cfg: &SaeConfig,
    data: &[f32],
    path: &TrainPath,
    progress: &(dyn Fn(&ProgressEvent) + Sync),
) -> Result<Trained, SaeError> {
    train_on(cfg, TrainData::autoencoding(data, cfg.d_in), path, progress)
}

/// One SAE or transcoder trained on `data`.
pub fn train_on(
    cfg: &SaeConfig,
    data: TrainData,
    path: &TrainPath,
    progress: &(dyn Fn(&ProgressEvent) + Sync),
) -> Result<Trained, SaeError> {
    sae::train_sweep(&[SweepPoint::single(cfg.clone())], data, path, progress)
        .pop()
        .expect("one result per point")
}

/// SAE points on `data` `[rows, d_in]`, on the fast path.
pub fn train_sweep(
    points: &[SweepPoint],
    data: &[f32],
    d_in: usize,
    progress: &(dyn Fn(&ProgressEvent) + Sync),
) -> Vec<Result<Trained, SaeError>> {
    sae::train_sweep(
        points,
        TrainData::autoencoding(data, d_in),
        &TrainPath::Fast,
        progress,
    )
}
