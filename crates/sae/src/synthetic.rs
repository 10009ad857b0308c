//! Seeded synthetic data with known structure, for tests and benchmarks.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::kernels::{matmul, MatRef};

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    // Box-Muller; 1 - u keeps the log argument in (0, 1].
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random::<f64>();
    ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
}

fn unit_vectors(rng: &mut ChaCha8Rng, count: usize, dim: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(count * dim);
    for _ in 0..count {
        let v: Vec<f32> = (0..dim).map(|_| gaussian(rng)).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(v.iter().map(|x| x / norm));
    }
    out
}

/// Rows that are sparse non-negative combinations of a hidden dictionary:
/// each row adds `active_per_row` distinct random unit directions (out of
/// `directions`) with coefficients in [0.5, 2.5), plus Gaussian noise of
/// standard deviation `noise` per dimension and a fixed offset. Row-major `[rows, d_in]`.
pub fn sparse_directions(
    rows: usize,
    d_in: usize,
    directions: usize,
    active_per_row: usize,
    noise: f32,
    seed: u64,
) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dict = unit_vectors(&mut rng, directions, d_in);
    let offset: Vec<f32> = (0..d_in).map(|_| 0.3 * gaussian(&mut rng)).collect();
    let mut data = Vec::with_capacity(rows * d_in);
    let mut chosen = Vec::with_capacity(active_per_row);
    for _ in 0..rows {
        let start = data.len();
        data.extend(offset.iter().map(|&o| o + noise * gaussian(&mut rng)));
        let row = &mut data[start..];
        chosen.clear();
        while chosen.len() < active_per_row.min(directions) {
            let d = rng.random_range(0..directions);
            if !chosen.contains(&d) {
                chosen.push(d);
            }
        }
        for &d in &chosen {
            let coeff = 0.5 + 2.0 * rng.random::<f32>();
            for (x, w) in row.iter_mut().zip(&dict[d * d_in..(d + 1) * d_in]) {
                *x += coeff * w;
            }
        }
    }
    data
}

/// Stand-in for an MLP layer's pre-activations on MNIST: ten class
/// prototypes in a 32-dim latent space, pushed through a random 256-wide ReLU
/// layer and a random linear map to `d_in`, scaled like the notebook's
/// `fc2` pre-activations (mean squared row norm about 14). Row-major `[rows, d_in]`.
pub fn activation_like(rows: usize, d_in: usize, seed: u64) -> Vec<f32> {
    const LATENT: usize = 32;
    const HIDDEN: usize = 256;
    const CLASSES: usize = 10;
    const CHUNK: usize = 4096;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let prototypes: Vec<f32> = (0..CLASSES * LATENT).map(|_| gaussian(&mut rng)).collect();
    // [LATENT, HIDDEN] and [HIDDEN, d_in], row-major, so both maps are plain matmuls.
    let a: Vec<f32> = (0..LATENT * HIDDEN)
        .map(|_| gaussian(&mut rng) / (LATENT as f32).sqrt())
        .collect();
    let a_bias: Vec<f32> = (0..HIDDEN).map(|_| 0.1 * gaussian(&mut rng)).collect();
    let b: Vec<f32> = (0..HIDDEN * d_in)
        .map(|_| 0.35 * gaussian(&mut rng) / (HIDDEN as f32).sqrt())
        .collect();
    let b_bias: Vec<f32> = (0..d_in).map(|_| 0.1 * gaussian(&mut rng)).collect();
    let mut data = Vec::with_capacity(rows * d_in);
    let (mut z, mut h, mut x) = (Vec::new(), Vec::new(), Vec::new());
    for start in (0..rows).step_by(CHUNK) {
        let n = CHUNK.min(rows - start);
        z.clear();
        for _ in 0..n {
            let class = rng.random_range(0..CLASSES);
            let proto = &prototypes[class * LATENT..(class + 1) * LATENT];
            z.extend(proto.iter().map(|p| p + 0.6 * gaussian(&mut rng)));
        }
        h.clear();
        for _ in 0..n {
            h.extend_from_slice(&a_bias);
        }
        matmul(
            &mut h,
            n,
            HIDDEN,
            LATENT,
            true,
            MatRef::row_major(&z, LATENT),
            MatRef::row_major(&a, HIDDEN),
        );
        h.iter_mut().for_each(|v| *v = v.max(0.0));
        x.clear();
        for _ in 0..n {
            x.extend_from_slice(&b_bias);
        }
        matmul(
            &mut x,
            n,
            d_in,
            HIDDEN,
            true,
            MatRef::row_major(&h, HIDDEN),
            MatRef::row_major(&b, d_in),
        );
        data.extend_from_slice(&x);
    }
    data
}
