//! The MLP in f64, and the replacement of its two sublayers by transcoders:
//! per image, the real activations, each transcoder's active features and
//! each layer's error.

use mlp::{CLASSES, HIDDEN, INPUT};
use rayon::prelude::*;
use sae::{MatRef, Sae};

use crate::CircuitError;

/// The 784-128-128-10 MLP's weights in f64, read from the `input` layer.
pub struct Network {
    /// `[out, in]` row-major, as PyTorch's `fcN.weight`.
    pub w1: Vec<f64>,
    pub w2: Vec<f64>,
    pub w3: Vec<f64>,
    /// fc1's bias seen from the `input` layer (`x = input + x0`):
    /// `b1 + x0 * sum_p W1[i, p]`.
    pub b1_from_input: Vec<f64>,
    pub b2: Vec<f64>,
    pub b3: Vec<f64>,
}

/// The real MLP's layers for one image.
#[derive(Clone, Debug)]
pub struct Forward {
    pub h1: Vec<f64>,
    pub h2: Vec<f64>,
    pub logits: Vec<f64>,
}

fn widen(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| v as f64).collect()
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Network {
    pub fn new(weights: &mlp::Weights) -> Network {
        let x0 = black_pixel() as f64;
        let w1 = widen(&weights.fc1_weight);
        let b1_from_input = w1
            .chunks_exact(INPUT)
            .zip(&weights.fc1_bias)
            .map(|(row, &b)| b as f64 + x0 * row.iter().sum::<f64>())
            .collect();
        Network {
            w1,
            w2: widen(&weights.fc2_weight),
            w3: widen(&weights.fc3_weight),
            b1_from_input,
            b2: widen(&weights.fc2_bias),
            b3: widen(&weights.fc3_bias),
        }
    }

    /// The `input` layer of raw pixels (`[rows, 784]` bytes), in f32 as the
    /// activation store holds it: normalised, less a black pixel's value.
    pub fn input_rows(pixels: &[u8]) -> Vec<f32> {
        let x0 = black_pixel();
        mnist::normalise(pixels)
            .into_iter()
            .map(|x| x - x0)
            .collect()
    }

    /// One input row through the MLP, skipping the zero (black) pixels.
    pub fn forward(&self, input: &[f64]) -> Forward {
        let mut pre1 = self.b1_from_input.clone();
        for (p, &x) in input.iter().enumerate() {
            if x != 0.0 {
                for (i, pre) in pre1.iter_mut().enumerate() {
                    *pre += x * self.w1[i * INPUT + p];
                }
            }
        }
        let h1: Vec<f64> = pre1.into_iter().map(|v| v.max(0.0)).collect();
        let h2 = self.fc2_post(&h1);
        let logits = self.logits_from_h2(&h2);
        Forward { h1, h2, logits }
    }

    /// fc2.post of an fc1.post row: the real fc2 and its ReLU.
    pub fn fc2_post(&self, h1: &[f64]) -> Vec<f64> {
        self.w2
            .chunks_exact(HIDDEN)
            .zip(&self.b2)
            .map(|(row, b)| (b + dot(row, h1)).max(0.0))
            .collect()
    }

    pub fn logits_from_h2(&self, h2: &[f64]) -> Vec<f64> {
        self.w3
            .chunks_exact(HIDDEN)
            .zip(&self.b3)
            .map(|(row, b)| b + dot(row, h2))
            .collect()
    }

    /// `W3 v` for a vector `v` of fc2.post's width: its effect on each logit.
    pub fn w3_times(&self, v: &[f64]) -> Vec<f64> {
        self.w3
            .chunks_exact(HIDDEN)
            .map(|row| dot(row, v))
            .collect()
    }
}

/// A black pixel's normalised value (the `input` layer's zero), as the `mlp`
/// crate computes it.
pub fn black_pixel() -> f32 {
    mnist::normalise(&[0])[0]
}

/// One transcoder's active features on one row, with their activations
/// recomputed in f64 (the active set is `sae::encode_sparse`'s).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Codes {
    pub features: Vec<u32>,
    pub values: Vec<f64>,
}

/// One image through the MLP and the replacement.
#[derive(Clone, Debug)]
pub struct Trace {
    /// The `input` layer (784).
    pub input: Vec<f64>,
    /// The real MLP's fc1.post, fc2.post and logits.
    pub real: Forward,
    pub t1: Codes,
    pub t2: Codes,
    /// `h1 - T1(input)`: what T1 misses of fc1.post.
    pub e1: Vec<f64>,
    /// `h2 - T2(h1)`: what T2 misses of fc2.post, T2 reading the real h1.
    pub e2: Vec<f64>,
}

/// A transcoder's value path per feature: an active feature's activation is
/// `scale * (x . W_enc[:, f]) + bias` (Gated: its magnitude path).
pub(crate) struct ValuePath {
    pub scale: Vec<f64>,
    pub bias: Vec<f64>,
}

impl ValuePath {
    fn of(sae: &Sae) -> ValuePath {
        if sae.r_mag.is_empty() {
            ValuePath {
                scale: vec![1.0; sae.d_sae()],
                bias: widen(&sae.b_enc),
            }
        } else {
            ValuePath {
                scale: sae.r_mag.iter().map(|&r| (r as f64).exp()).collect(),
                bias: widen(&sae.b_mag),
            }
        }
    }
}

/// The MLP with fc1's sublayer replaced by T1 (`input` -> `fc1.post`) and
/// fc2's by T2 (`fc1.post` -> `fc2.post`), and the products of their weights
/// that the graphs read (each `[rows, cols]` row-major, none `d_sae` squared).
pub struct Replacement {
    pub network: Network,
    pub t1: Sae,
    pub t2: Sae,
    pub(crate) value1: ValuePath,
    pub(crate) value2: ValuePath,
    /// `W_enc` of each, f64, `[d_in, d_sae]`.
    pub(crate) enc1: Vec<f64>,
    pub(crate) enc2: Vec<f64>,
    /// `W_dec` of each, f64, `[d_sae, d_out]`, and `b_dec`.
    pub(crate) dec1: Vec<f64>,
    pub(crate) dec2: Vec<f64>,
    pub(crate) b_dec1: Vec<f64>,
    pub(crate) b_dec2: Vec<f64>,
    /// `W_skip` of each (`[d_out, d_in]`), empty for a plain transcoder.
    pub(crate) skip1: Vec<f64>,
    pub(crate) skip2: Vec<f64>,
    /// `W3 D2^T`: `[10, d_sae2]`, each T2 feature's unit effect on the logits.
    pub(crate) w3_d2: Vec<f64>,
    /// T2 skip only: `W3 S2` `[10, 128]` and `W3 S2 D1^T` `[10, d_sae1]`.
    pub(crate) w3_s2: Vec<f64>,
    pub(crate) w3_s2_d1: Vec<f64>,
    /// T1 skip only: `E2^T S1` `[d_sae2, 784]`; both skip: `W3 S2 S1` `[10, 784]`.
    pub(crate) e2_s1: Vec<f64>,
    pub(crate) w3_s2_s1: Vec<f64>,
}

/// `lhs [m, k] @ rhs [k, n]`, in f64.
fn product(lhs: MatRef<'_, f64>, rhs: MatRef<'_, f64>, m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    sae::matmul(&mut out, m, n, k, false, lhs, rhs);
    out
}

fn check_transcoder(sae: &Sae, name: &str, d_in: usize, d_out: usize) -> Result<(), CircuitError> {
    if sae.cfg.transcoder.is_none() {
        return Err(CircuitError::Replacement(format!(
            "{name} is an SAE, not a transcoder: a circuit replaces each sublayer by a transcoder"
        )));
    }
    if sae.d_in() != d_in || sae.d_out() != d_out {
        return Err(CircuitError::Replacement(format!(
            "{name} maps {} values to {}; it must map {d_in} to {d_out}",
            sae.d_in(),
            sae.d_out()
        )));
    }
    Ok(())
}

impl Replacement {
    /// Refuses transcoders of the wrong shape, naming which.
    pub fn new(weights: &mlp::Weights, t1: Sae, t2: Sae) -> Result<Replacement, CircuitError> {
        check_transcoder(&t1, "T1 (input -> fc1.post)", INPUT, HIDDEN)?;
        check_transcoder(&t2, "T2 (fc1.post -> fc2.post)", HIDDEN, HIDDEN)?;
        let network = Network::new(weights);
        let (d1, d2) = (t1.d_sae(), t2.d_sae());
        let dec1 = widen(&t1.w_dec);
        let dec2 = widen(&t2.w_dec);
        let enc2 = widen(&t2.w_enc);
        let skip1 = widen(&t1.w_skip);
        let skip2 = widen(&t2.w_skip);
        // `MatRef::transposed` reads a row-major [rows, cols] buffer as its transpose.
        let w3_d2 = product(
            MatRef::row_major(&network.w3, HIDDEN),
            MatRef::transposed(&dec2, HIDDEN),
            CLASSES,
            HIDDEN,
            d2,
        );
        let (w3_s2, w3_s2_d1) = if skip2.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let w3_s2 = product(
                MatRef::row_major(&network.w3, HIDDEN),
                MatRef::row_major(&skip2, HIDDEN),
                CLASSES,
                HIDDEN,
                HIDDEN,
            );
            let w3_s2_d1 = product(
                MatRef::row_major(&w3_s2, HIDDEN),
                MatRef::transposed(&dec1, HIDDEN),
                CLASSES,
                HIDDEN,
                d1,
            );
            (w3_s2, w3_s2_d1)
        };
        let e2_s1 = if skip1.is_empty() {
            Vec::new()
        } else {
            product(
                MatRef::transposed(&enc2, d2),
                MatRef::row_major(&skip1, INPUT),
                d2,
                HIDDEN,
                INPUT,
            )
        };
        let w3_s2_s1 = if skip1.is_empty() || skip2.is_empty() {
            Vec::new()
        } else {
            product(
                MatRef::row_major(&w3_s2, HIDDEN),
                MatRef::row_major(&skip1, INPUT),
                CLASSES,
                HIDDEN,
                INPUT,
            )
        };
        Ok(Replacement {
            value1: ValuePath::of(&t1),
            value2: ValuePath::of(&t2),
            enc1: widen(&t1.w_enc),
            enc2,
            b_dec1: widen(&t1.b_dec),
            b_dec2: widen(&t2.b_dec),
            dec1,
            dec2,
            skip1,
            skip2,
            w3_d2,
            w3_s2,
            w3_s2_d1,
            e2_s1,
            w3_s2_s1,
            network,
            t1,
            t2,
        })
    }

    /// T1's features' activations on `input`, in f64.
    fn values1(&self, input: &[f64], features: &[u32]) -> Vec<f64> {
        let d1 = self.t1.d_sae();
        features
            .iter()
            .map(|&f| {
                let f = f as usize;
                let mut sum = 0.0;
                for (p, &x) in input.iter().enumerate() {
                    if x != 0.0 {
                        sum += x * self.enc1[p * d1 + f];
                    }
                }
                self.value1.scale[f] * sum + self.value1.bias[f]
            })
            .collect()
    }

    /// T2's features' activations on `h1`, in f64.
    fn values2(&self, h1: &[f64], features: &[u32]) -> Vec<f64> {
        let d2 = self.t2.d_sae();
        features
            .iter()
            .map(|&f| {
                let f = f as usize;
                let sum: f64 = h1
                    .iter()
                    .enumerate()
                    .map(|(i, &h)| h * self.enc2[i * d2 + f])
                    .sum();
                self.value2.scale[f] * sum + self.value2.bias[f]
            })
            .collect()
    }

    /// T1's output for `input` from its active features: `b_dec1 + sum a_j D1[j] (+ S1 input)`.
    pub fn t1_output(&self, input: &[f64], codes: &Codes) -> Vec<f64> {
        decode(&self.b_dec1, &self.dec1, &self.skip1, input, codes)
    }

    /// T2's output for `h1` from its active features.
    pub fn t2_output(&self, h1: &[f64], codes: &Codes) -> Vec<f64> {
        decode(&self.b_dec2, &self.dec2, &self.skip2, h1, codes)
    }

    /// The active features `t` selects on each row of `x` (values not yet set).
    fn codes(&self, t: &Sae, x: &[f32]) -> Result<Vec<Codes>, CircuitError> {
        let sparse = sae::encode_sparse(t, x)?;
        Ok(sparse
            .row_start
            .windows(2)
            .map(|w| Codes {
                features: sparse.feature[w[0]..w[1]].to_vec(),
                values: Vec::new(),
            })
            .collect())
    }

    /// T2's active features, with their f64 activations, on fc1.post rows.
    pub fn codes_on_h1(&self, h1: &[Vec<f64>]) -> Result<Vec<Codes>, CircuitError> {
        let flat: Vec<f32> = h1
            .iter()
            .flat_map(|r| r.iter().map(|&v| v as f32))
            .collect();
        let mut codes = self.codes(&self.t2, &flat)?;
        codes
            .par_iter_mut()
            .zip(h1)
            .for_each(|(c, h)| c.values = self.values2(h, &c.features));
        Ok(codes)
    }

    /// Every row of the `input` layer (`[rows, 784]` f32) through the MLP
    /// and the replacement.
    pub fn trace(&self, input: &[f32]) -> Result<Vec<Trace>, CircuitError> {
        if !input.len().is_multiple_of(INPUT) {
            return Err(CircuitError::Input(format!(
                "the input layer has {INPUT} values per row; {} values are not whole rows",
                input.len()
            )));
        }
        let real: Vec<(Vec<f64>, Forward)> = input
            .par_chunks(INPUT)
            .map(|row| {
                let row = widen(row);
                let forward = self.network.forward(&row);
                (row, forward)
            })
            .collect();
        let h1: Vec<f32> = real
            .iter()
            .flat_map(|(_, f)| f.h1.iter().map(|&v| v as f32))
            .collect();
        let codes1 = self.codes(&self.t1, input)?;
        let codes2 = self.codes(&self.t2, &h1)?;
        Ok(real
            .into_par_iter()
            .zip(codes1.into_par_iter().zip(codes2))
            .map(|((input, real), (mut t1, mut t2))| {
                t1.values = self.values1(&input, &t1.features);
                t2.values = self.values2(&real.h1, &t2.features);
                let e1 = difference(&real.h1, &self.t1_output(&input, &t1));
                let e2 = difference(&real.h2, &self.t2_output(&real.h1, &t2));
                Trace {
                    input,
                    real,
                    t1,
                    t2,
                    e1,
                    e2,
                }
            })
            .collect())
    }
}

fn difference(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

fn decode(b_dec: &[f64], dec: &[f64], skip: &[f64], x: &[f64], codes: &Codes) -> Vec<f64> {
    let d_out = b_dec.len();
    let mut out = b_dec.to_vec();
    if !skip.is_empty() {
        for (o, row) in out.iter_mut().zip(skip.chunks_exact(x.len())) {
            *o += dot(row, x);
        }
    }
    for (&f, &a) in codes.features.iter().zip(&codes.values) {
        let row = &dec[f as usize * d_out..(f as usize + 1) * d_out];
        for (o, d) in out.iter_mut().zip(row) {
            *o += a * d;
        }
    }
    out
}
