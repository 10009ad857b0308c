//! The fused CPU trainer: forward, backward and update over raw f32 buffers.
//!
//! Two facts make it fast. MNIST pixels are mostly background, and after
//! normalisation every background pixel has the same value `base`, so
//! `x = base + delta` with `delta` sparse (about 19% non-zero): fc1's forward
//! and weight gradient touch only the non-zero pixels plus one dense rank-one
//! term. And ReLU zeros about half of each hidden layer, so fc2 and fc3 skip
//! inactive units. Weights are kept transposed (`[in, out]`) so every inner
//! loop is a contiguous axpy or dot that the compiler vectorises.

use crate::{
    epoch_order, Examples, MlpError, Optimizer, TrainConfig, TrainLog, Weights, CLASSES, HIDDEN,
    INPUT,
};

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPS: f32 = 1e-8;

/// Each image as its non-background pixels: (pixel index, normalised value - base).
struct SparseImages {
    offsets: Vec<usize>,
    pixel: Vec<u16>,
    delta: Vec<f32>,
}

impl SparseImages {
    fn new(pixels: &[u8], base: f32) -> SparseImages {
        let mut s = SparseImages {
            offsets: vec![0],
            pixel: Vec::new(),
            delta: Vec::new(),
        };
        for image in pixels.chunks_exact(INPUT) {
            for (j, &p) in image.iter().enumerate() {
                if p != 0 {
                    s.pixel.push(j as u16);
                    s.delta.push(mnist::normalise::normalise_byte(p) - base);
                }
            }
            s.offsets.push(s.pixel.len());
        }
        s
    }

    #[inline(always)]
    fn row(&self, i: usize) -> impl Iterator<Item = (usize, f32)> + Clone + '_ {
        let range = self.offsets[i]..self.offsets[i + 1];
        self.pixel[range.clone()]
            .iter()
            .map(|&j| j as usize)
            .zip(self.delta[range].iter().copied())
    }
}

/// One linear layer, weight transposed to `[in, out]`.
#[derive(Clone)]
struct Linear {
    wt: Vec<f32>,
    b: Vec<f32>,
    out: usize,
}

impl Linear {
    fn from_pytorch(w: &[f32], b: &[f32], out: usize, inp: usize) -> Linear {
        Linear {
            wt: transpose(w, out, inp),
            b: b.to_vec(),
            out,
        }
    }
    fn zeros_like(&self) -> Linear {
        Linear {
            wt: vec![0.0; self.wt.len()],
            b: vec![0.0; self.b.len()],
            out: self.out,
        }
    }
    #[inline(always)]
    fn row(&self, i: usize) -> &[f32] {
        &self.wt[i * self.out..(i + 1) * self.out]
    }
    fn to_pytorch(&self) -> (Vec<f32>, Vec<f32>) {
        (
            transpose(&self.wt, self.wt.len() / self.out, self.out),
            self.b.clone(),
        )
    }
}

fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums let the compiler vectorise without reassociating.
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// Adam's moments for every parameter buffer.
struct Moments {
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

fn buffers(layers: &mut [Linear; 3]) -> [&mut Vec<f32>; 6] {
    let [a, b, c] = layers;
    [
        &mut a.wt, &mut a.b, &mut b.wt, &mut b.b, &mut c.wt, &mut c.b,
    ]
}

/// Everything one optimiser step reads and writes.
struct Trainer {
    net: [Linear; 3],
    grad: [Linear; 3],
    moments: Option<Moments>,
    a1: Vec<f32>,
    a2: Vec<f32>,
    z: Vec<f32>,
    dh1: Vec<f32>,
    dh2: Vec<f32>,
    dz: Vec<f32>,
    colsum: Vec<f32>,
    base: f32,
    lr: f32,
}

pub(crate) fn train(
    cfg: &TrainConfig,
    init: Weights,
    data: Examples<'_>,
    on_step: &mut dyn FnMut(usize, f32),
) -> Result<(Weights, TrainLog), MlpError> {
    let base = mnist::normalise::normalise_byte(0);
    let images = SparseImages::new(data.pixels, base);
    let net = [
        Linear::from_pytorch(&init.fc1_weight, &init.fc1_bias, HIDDEN, INPUT),
        Linear::from_pytorch(&init.fc2_weight, &init.fc2_bias, HIDDEN, HIDDEN),
        Linear::from_pytorch(&init.fc3_weight, &init.fc3_bias, CLASSES, HIDDEN),
    ];
    let mut grad = [
        net[0].zeros_like(),
        net[1].zeros_like(),
        net[2].zeros_like(),
    ];
    let moments = (cfg.optimizer == Optimizer::Adam).then(|| {
        let shapes = buffers(&mut grad).map(|b| b.len());
        Moments {
            m: shapes.iter().map(|&n| vec![0.0; n]).collect(),
            v: shapes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    });
    let bs = cfg.batch_size;
    let mut t = Trainer {
        net,
        grad,
        moments,
        a1: vec![0.0; bs * HIDDEN],
        a2: vec![0.0; bs * HIDDEN],
        z: vec![0.0; bs * CLASSES],
        dh1: vec![0.0; bs * HIDDEN],
        dh2: vec![0.0; bs * HIDDEN],
        dz: vec![0.0; bs * CLASSES],
        colsum: vec![0.0; HIDDEN],
        base,
        lr: cfg.lr as f32,
    };
    let mut log = TrainLog::default();
    for epoch in 0..cfg.epochs {
        let order = epoch_order(cfg, data.len(), epoch);
        for batch in order.chunks(bs) {
            let step = log.step_losses.len() + 1;
            let loss = train_step(&mut t, &images, data.labels, batch, step);
            if !loss.is_finite() {
                return Err(MlpError::Diverged { step, loss });
            }
            log.step_losses.push(loss);
            on_step(step, loss);
        }
    }
    let [(w1, b1), (w2, b2), (w3, b3)] = t.net.each_ref().map(Linear::to_pytorch);
    Ok((
        Weights {
            fc1_weight: w1,
            fc1_bias: b1,
            fc2_weight: w2,
            fc2_bias: b2,
            fc3_weight: w3,
            fc3_bias: b3,
        },
        log,
    ))
}

/// One forward, backward and update on `batch`; returns the batch's mean loss.
/// Compiled for several instruction sets and picked at run time, so the
/// inlined loops below use AVX2 or AVX-512 where the CPU has them.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn train_step(
    t: &mut Trainer,
    images: &SparseImages,
    labels: &[u8],
    batch: &[usize],
    step: usize,
) -> f32 {
    let n = batch.len();
    let base = t.base;
    // Forward. fc1: h = b + base * colsum(W) + sum over non-zero pixels of delta * W[j].
    t.colsum.fill(0.0);
    for j in 0..INPUT {
        axpy(&mut t.colsum, 1.0, t.net[0].row(j));
    }
    let offset: Vec<f32> = t.net[0]
        .b
        .iter()
        .zip(&t.colsum)
        .map(|(b, c)| b + base * c)
        .collect();
    for (r, &row) in batch.iter().enumerate() {
        let h = &mut t.a1[r * HIDDEN..(r + 1) * HIDDEN];
        sparse_row_forward(h, &offset, &t.net[0], images.row(row));
    }
    sparse_forward(
        &t.net[1],
        &t.a1[..n * HIDDEN],
        &mut t.a2[..n * HIDDEN],
        true,
    );
    sparse_forward(
        &t.net[2],
        &t.a2[..n * HIDDEN],
        &mut t.z[..n * CLASSES],
        false,
    );
    let mut loss = 0.0f32;
    for (r, &row) in batch.iter().enumerate() {
        let logits = &t.z[r * CLASSES..(r + 1) * CLASSES];
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let lse = max + logits.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
        let label = labels[row] as usize;
        loss += lse - logits[label];
        for (c, d) in t.dz[r * CLASSES..(r + 1) * CLASSES].iter_mut().enumerate() {
            *d = ((logits[c] - lse).exp() - (c == label) as u8 as f32) / n as f32;
        }
    }

    // Backward through fc3 and fc2: only active units carry gradient.
    sparse_backward(
        &t.net[2],
        &mut t.grad[2],
        &t.a2[..n * HIDDEN],
        &t.dz[..n * CLASSES],
        &mut t.dh2[..n * HIDDEN],
    );
    sparse_backward(
        &t.net[1],
        &mut t.grad[1],
        &t.a1[..n * HIDDEN],
        &t.dh2[..n * HIDDEN],
        &mut t.dh1[..n * HIDDEN],
    );
    // fc1: dW[j] = base * sum_r dh1[r] + sum over non-zero pixels of delta * dh1[r].
    let g1 = &mut t.grad[0];
    g1.b.fill(0.0);
    for r in 0..n {
        axpy(&mut g1.b, 1.0, &t.dh1[r * HIDDEN..(r + 1) * HIDDEN]);
    }
    let dense: Vec<f32> = g1.b.iter().map(|g| base * g).collect();
    for j in 0..INPUT {
        g1.wt[j * HIDDEN..(j + 1) * HIDDEN].copy_from_slice(&dense);
    }
    for (r, &row) in batch.iter().enumerate() {
        let d = &t.dh1[r * HIDDEN..(r + 1) * HIDDEN];
        for (j, v) in images.row(row) {
            axpy(&mut g1.wt[j * HIDDEN..(j + 1) * HIDDEN], v, d);
        }
    }

    let params = buffers(&mut t.net);
    let grads = buffers(&mut t.grad);
    match &mut t.moments {
        None => params
            .into_iter()
            .zip(grads)
            .for_each(|(w, g)| axpy(w, -t.lr, g)),
        Some(mo) => {
            let bc1 = 1.0 - BETA1.powi(step as i32);
            let bc2_sqrt = (1.0 - BETA2.powi(step as i32)).sqrt();
            let step_size = t.lr / bc1;
            for (((w, g), m), v) in params.into_iter().zip(grads).zip(&mut mo.m).zip(&mut mo.v) {
                adam(w, g, m, v, step_size, bc2_sqrt);
            }
        }
    }
    loss / n as f32
}

/// `h = relu(offset + sum of delta * W[j])`, sixteen outputs at a time so the
/// accumulators stay in registers across all the row's pixels.
#[inline(always)]
fn sparse_row_forward(
    h: &mut [f32],
    offset: &[f32],
    layer: &Linear,
    pixels: impl Iterator<Item = (usize, f32)> + Clone,
) {
    const BLOCK: usize = 16;
    for (block, (hb, ob)) in h
        .chunks_exact_mut(BLOCK)
        .zip(offset.chunks_exact(BLOCK))
        .enumerate()
    {
        let mut acc = [0.0f32; BLOCK];
        acc.copy_from_slice(ob);
        for (j, d) in pixels.clone() {
            let w = &layer.wt[j * layer.out + block * BLOCK..j * layer.out + (block + 1) * BLOCK];
            for k in 0..BLOCK {
                acc[k] += d * w[k];
            }
        }
        for k in 0..BLOCK {
            hb[k] = acc[k].max(0.0);
        }
    }
}

/// `out = b + x W` for a batch of rows, skipping zero inputs; ReLU'd if asked.
#[inline(always)]
fn sparse_forward(layer: &Linear, x: &[f32], out: &mut [f32], relu: bool) {
    let inp = layer.wt.len() / layer.out;
    for (xr, yr) in x.chunks_exact(inp).zip(out.chunks_exact_mut(layer.out)) {
        yr.copy_from_slice(&layer.b);
        for (i, &v) in xr.iter().enumerate() {
            if v != 0.0 {
                axpy(yr, v, layer.row(i));
            }
        }
        if relu {
            yr.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
}

/// Gradients of a layer whose inputs `x` are post-ReLU (zero where inactive),
/// given the output gradient `dy`. Writes the pre-activation gradient of the
/// layer below into `dx_pre` (zero where its unit was inactive).
#[inline(always)]
fn sparse_backward(layer: &Linear, grad: &mut Linear, x: &[f32], dy: &[f32], dx_pre: &mut [f32]) {
    let (inp, out) = (layer.wt.len() / layer.out, layer.out);
    grad.wt.fill(0.0);
    grad.b.fill(0.0);
    for (r, (xr, dyr)) in x.chunks_exact(inp).zip(dy.chunks_exact(out)).enumerate() {
        axpy(&mut grad.b, 1.0, dyr);
        for (i, &v) in xr.iter().enumerate() {
            let dx = if v > 0.0 {
                axpy(&mut grad.wt[i * out..(i + 1) * out], v, dyr);
                dot(layer.row(i), dyr)
            } else {
                0.0
            };
            dx_pre[r * inp + i] = dx;
        }
    }
}

/// PyTorch's Adam update, in f32.
#[inline(always)]
fn adam(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step_size: f32, bc2_sqrt: f32) {
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m = BETA1 * *m + (1.0 - BETA1) * g;
        *v = BETA2 * *v + (1.0 - BETA2) * g * g;
        *w -= step_size * *m / (v.sqrt() / bc2_sqrt + EPS);
    }
}
