//! Random transcoders of every kind the graphs read, and random images.
#![allow(dead_code)]

use circuits::{Network, Replacement, Trace};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sae::{Architecture, Sae, SaeConfig, Transcoder};

pub const D1: usize = 48;
pub const D2: usize = 40;

pub fn random(rng: &mut ChaCha8Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

pub fn transcoder(
    d_in: usize,
    d_sae: usize,
    architecture: Architecture,
    skip: bool,
    seed: u64,
) -> Sae {
    let cfg = SaeConfig {
        d_in,
        d_sae,
        transcoder: Some(Transcoder { d_out: 128, skip }),
        architecture,
        seed,
        ..SaeConfig::default()
    };
    let mut sae = Sae::init(&cfg, &[]).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
    sae.b_enc = random(&mut rng, d_sae, 0.3);
    sae.b_dec = random(&mut rng, 128, 0.2);
    if skip {
        sae.w_skip = random(&mut rng, 128 * d_in, 0.05);
    }
    if !sae.r_mag.is_empty() {
        sae.r_mag = random(&mut rng, d_sae, 0.5);
        sae.b_mag = random(&mut rng, d_sae, 0.3);
    }
    sae
}

pub fn images(count: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count * 784)
        .map(|_| {
            if rng.random::<f32>() < 0.7 {
                0
            } else {
                rng.random()
            }
        })
        .collect()
}

pub fn kinds() -> Vec<(&'static str, Replacement)> {
    let weights = mlp::Weights::init(3);
    let build = |t1: Sae, t2: Sae| Replacement::new(&weights, t1, t2).unwrap();
    vec![
        (
            "plain L1",
            build(
                transcoder(784, D1, Architecture::l1(1e-3), false, 1),
                transcoder(128, D2, Architecture::l1(1e-3), false, 2),
            ),
        ),
        (
            "skip both",
            build(
                transcoder(784, D1, Architecture::l1(1e-3), true, 3),
                transcoder(128, D2, Architecture::l1(1e-3), true, 4),
            ),
        ),
        (
            "skip T2 only",
            build(
                transcoder(784, D1, Architecture::top_k(8), false, 5),
                transcoder(128, D2, Architecture::l1(1e-3), true, 6),
            ),
        ),
        (
            "gated",
            build(
                transcoder(784, D1, Architecture::gated(1e-3), false, 7),
                transcoder(128, D2, Architecture::gated(1e-3), true, 8),
            ),
        ),
    ]
}

pub fn traces(r: &Replacement) -> Vec<Trace> {
    r.trace(&Network::input_rows(&images(6, 9))).unwrap()
}

pub fn softmax(l: &[f64]) -> Vec<f64> {
    let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}
