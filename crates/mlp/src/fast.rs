//! The fused CPU trainer: forward, backward and update over raw f32 buffers.
//!
//! Two facts make it fast. MNIST pixels are mostly background, and after
//! normalisation every background pixel has the same value `base`, so
//! `x = base + delta` with `delta` sparse (about 19% non-zero): fc1's forward
//! and weight gradient touch only the non-zero pixels plus one dense rank-one
//! term. And ReLU zeros about half of each hidden layer, so fc2 and fc3 skip
//! inactive units. fc1's weight gradient is summed pixel by pixel in registers
//! and applied in the same pass, which also yields the column sums the next
//! forward needs. Inner loops run over fixed 128-float rows, compiled for
//! AVX2/AVX-512 and chosen at run time; a batch is split over two threads.
//! The split and every summation order are fixed, so runs are reproducible.
//! Every thread of a step runs with subnormals flushed to zero (`subnormals`).

use crate::{
    epoch_order, Examples, MlpError, Optimizer, TrainConfig, TrainLog, Weights, CLASSES, HIDDEN,
    INPUT,
};

mod stepper;
pub use stepper::Stepper;

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
        let delta: [f32; 256] =
            std::array::from_fn(|p| mnist::normalise::normalise_byte(p as u8) - base);
        for image in pixels.chunks_exact(INPUT) {
            for (j, &p) in image.iter().enumerate() {
                if p != 0 {
                    s.pixel.push(j as u16);
                    s.delta.push(delta[p as usize]);
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

/// How one parameter buffer moves given its gradient.
#[derive(Clone, Copy)]
enum Rule {
    Sgd {
        lr: f32,
    },
    /// PyTorch's Adam with this step's bias corrections folded in.
    Adam {
        step_size: f32,
        bc2_sqrt: f32,
    },
}

impl Rule {
    fn at(optimizer: Optimizer, lr: f32, step: usize) -> Rule {
        match optimizer {
            Optimizer::Sgd => Rule::Sgd { lr },
            Optimizer::Adam => Rule::Adam {
                step_size: lr / (1.0 - BETA1.powi(step as i32)),
                bc2_sqrt: (1.0 - BETA2.powi(step as i32)).sqrt(),
            },
        }
    }

    /// `m` and `v` are Adam's moments for `w` (empty for SGD).
    #[inline(always)]
    fn apply(self, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        match self {
            Rule::Sgd { lr } => axpy(w, -lr, g),
            Rule::Adam {
                step_size,
                bc2_sqrt,
            } => {
                for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    *m = BETA1 * *m + (1.0 - BETA1) * g;
                    *v = BETA2 * *v + (1.0 - BETA2) * g * g;
                    *w -= step_size * *m / (v.sqrt() / bc2_sqrt + EPS);
                }
            }
        }
    }
}

/// A parameter buffer with its Adam moments (empty for SGD).
struct Param {
    w: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Param {
    fn new(w: Vec<f32>, optimizer: Optimizer) -> Param {
        let n = if optimizer == Optimizer::Adam {
            w.len()
        } else {
            0
        };
        Param {
            w,
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }
    #[inline(always)]
    fn step(&mut self, rule: Rule, g: &[f32]) {
        rule.apply(&mut self.w, g, &mut self.m, &mut self.v);
    }
}

/// The batch's non-background pixels grouped by pixel: for fc1's weight
/// gradient, each weight row is then summed in registers and written once.
#[derive(Default)]
struct PixelMajor {
    start: Vec<usize>,
    row: Vec<usize>,
    delta: Vec<f32>,
}

impl PixelMajor {
    fn fill(&mut self, images: &SparseImages, batch: &[usize]) {
        self.start.clear();
        self.start.resize(INPUT + 1, 0);
        for &i in batch {
            for (j, _) in images.row(i) {
                self.start[j + 1] += 1;
            }
        }
        for j in 0..INPUT {
            self.start[j + 1] += self.start[j];
        }
        let total = self.start[INPUT];
        self.row.resize(total, 0);
        self.delta.resize(total, 0.0);
        let mut next = self.start.clone();
        for (r, &i) in batch.iter().enumerate() {
            for (j, d) in images.row(i) {
                self.row[next[j]] = r;
                self.delta[next[j]] = d;
                next[j] += 1;
            }
        }
    }
}

/// Everything one optimiser step reads and writes.
struct Trainer {
    /// fc1's weight transposed to `[784, 128]`, and its column sums.
    w1: Param,
    colsum: Vec<f32>,
    b1: Param,
    /// fc2's weight transposed to `[128 in, 128 out]`.
    w2: Param,
    b2: Param,
    /// fc3's weight as PyTorch holds it, `[10, 128]`: every inner loop is 128 wide.
    w3: Param,
    b3: Param,
    dh1: Vec<f32>,
    pixel_major: PixelMajor,
    base: f32,
    optimizer: Optimizer,
    lr: f32,
}

impl Trainer {
    fn new(cfg: &TrainConfig, init: Weights, base: f32) -> Trainer {
        let opt = cfg.optimizer;
        let w1 = transpose(&init.fc1_weight, HIDDEN, INPUT);
        let mut colsum = vec![0.0; HIDDEN];
        for row in w1.chunks_exact(HIDDEN) {
            axpy(&mut colsum, 1.0, row);
        }
        Trainer {
            w1: Param::new(w1, opt),
            colsum,
            b1: Param::new(init.fc1_bias, opt),
            w2: Param::new(transpose(&init.fc2_weight, HIDDEN, HIDDEN), opt),
            b2: Param::new(init.fc2_bias, opt),
            w3: Param::new(init.fc3_weight, opt),
            b3: Param::new(init.fc3_bias, opt),
            dh1: vec![0.0; cfg.batch_size * HIDDEN],
            pixel_major: PixelMajor::default(),
            base,
            optimizer: opt,
            lr: cfg.lr as f32,
        }
    }

    /// The parameters, or one of their moment buffers, in PyTorch's layout.
    fn export(&self, of: impl Fn(&Param) -> &[f32]) -> Weights {
        Weights {
            fc1_weight: transpose(of(&self.w1), INPUT, HIDDEN),
            fc1_bias: of(&self.b1).to_vec(),
            fc2_weight: transpose(of(&self.w2), HIDDEN, HIDDEN),
            fc2_bias: of(&self.b2).to_vec(),
            fc3_weight: of(&self.w3).to_vec(),
            fc3_bias: of(&self.b3).to_vec(),
        }
    }
}

pub(crate) fn train(
    cfg: &TrainConfig,
    init: Weights,
    data: Examples<'_>,
    on_step: &mut (dyn FnMut(usize, f32) + Send),
) -> Result<(Weights, TrainLog), MlpError> {
    let base = mnist::normalise::normalise_byte(0);
    let images = SparseImages::new(data.pixels, base);
    let mut t = Trainer::new(cfg, init, base);
    let mut log = TrainLog::default();
    // Inside the pool, so each step's joins hand work to the other worker
    // directly instead of injecting it from outside twice a step.
    rayon::scope(|_| -> Result<(), MlpError> {
        subnormals::flushed(|| {
            for epoch in 0..cfg.epochs {
                let order = epoch_order(cfg, data.len(), epoch);
                for batch in order.chunks(cfg.batch_size) {
                    let step = log.step_losses.len() + 1;
                    let loss = train_step(&mut t, &images, data.labels, batch, step);
                    if !loss.is_finite() {
                        return Err(MlpError::Diverged { step, loss });
                    }
                    log.step_losses.push(loss);
                    on_step(step, loss);
                }
            }
            Ok(())
        })
    })?;
    Ok((t.export(|p| &p.w), log))
}

/// The fixed-size piece of `v` at `start`: fixed sizes let every loop over it
/// vectorise without bounds checks or remainders.
#[inline(always)]
fn part<const N: usize>(v: &[f32], start: usize) -> &[f32; N] {
    v[start..start + N].try_into().expect("in bounds")
}

#[inline(always)]
fn part_mut<const N: usize>(v: &mut [f32], start: usize) -> &mut [f32; N] {
    (&mut v[start..start + N]).try_into().expect("in bounds")
}

#[inline(always)]
fn axpy_n<const N: usize>(y: &mut [f32; N], a: f32, x: &[f32; N]) {
    // Fused multiply-add: one instruction per vector on the AVX2/AVX-512 builds.
    for k in 0..N {
        y[k] = a.mul_add(x[k], y[k]);
    }
}

#[inline(always)]
fn dot_n<const N: usize>(a: &[f32; N], b: &[f32; N]) -> f32 {
    // Sixteen lanes of partial sums, then a halving tree. Written with
    // indices and a sequential sum, LLVM turned this into scalar FMAs (seen
    // in perf: about a fifth of a training step went there).
    let mut acc = [0.0f32; 16];
    for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for k in 0..16 {
            acc[k] = ca[k].mul_add(cb[k], acc[k]);
        }
    }
    let mut width = 8;
    while width > 0 {
        for k in 0..width {
            acc[k] += acc[k + width];
        }
        width /= 2;
    }
    acc[0]
}

/// Gradients of fc2, fc3 and the biases from some of a batch's rows.
struct Partial {
    loss: f32,
    g2: Vec<f32>,
    g3: Vec<f32>,
    db1: [f32; HIDDEN],
    db2: [f32; HIDDEN],
    db3: [f32; CLASSES],
}

/// Read-only view of the weights for the forward and backward passes.
struct Net<'a> {
    w1: &'a [f32],
    offset: &'a [f32],
    w2: &'a [f32],
    b2: &'a [f32],
    w3: &'a [f32],
    b3: &'a [f32],
}

/// A batch's loss (summed over its rows) and every gradient but fc1's weight
/// gradient, which `fc1_update` forms from `Trainer::dh1`.
struct BatchGradients {
    loss_sum: f32,
    g2: Vec<f32>,
    g3: Vec<f32>,
    db1: Vec<f32>,
    db2: Vec<f32>,
    db3: Vec<f32>,
}

/// Forward and backward on `batch`, its rows split over two threads; leaves
/// each row's fc1 pre-activation gradient in `t.dh1`.
fn backward(
    t: &mut Trainer,
    images: &SparseImages,
    labels: &[u8],
    batch: &[usize],
) -> BatchGradients {
    const H: usize = HIDDEN;
    let n = batch.len();
    let base = t.base;
    let offset: Vec<f32> =
        t.b1.w
            .iter()
            .zip(&t.colsum)
            .map(|(b, c)| b + base * c)
            .collect();
    let net = Net {
        w1: &t.w1.w,
        offset: &offset,
        w2: &t.w2.w,
        b2: &t.b2.w,
        w3: &t.w3.w,
        b3: &t.b3.w,
    };
    let split = n / 2;
    let (dh1_a, dh1_b) = t.dh1[..n * H].split_at_mut(split * H);
    let (a, b) = rayon::join(
        || {
            subnormals::flushed(|| {
                rows_forward_backward(&net, images, labels, &batch[..split], n, dh1_a)
            })
        },
        || {
            subnormals::flushed(|| {
                rows_forward_backward(&net, images, labels, &batch[split..], n, dh1_b)
            })
        },
    );
    let mut g2 = a.g2;
    axpy(&mut g2, 1.0, &b.g2);
    let mut g3 = a.g3;
    axpy(&mut g3, 1.0, &b.g3);
    let sum = |x: &[f32], y: &[f32]| -> Vec<f32> { x.iter().zip(y).map(|(x, y)| x + y).collect() };
    BatchGradients {
        loss_sum: a.loss + b.loss,
        g2,
        g3,
        db1: sum(&a.db1, &b.db1),
        db2: sum(&a.db2, &b.db2),
        db3: sum(&a.db3, &b.db3),
    }
}

/// One forward, backward and update on `batch`; returns the batch's mean loss.
/// The batch's rows are split over two threads; fc1's fused update is split
/// by pixel. Callers flush subnormals (`subnormals::flushed`); each join's
/// halves flush their own, since either may run on another thread.
fn train_step(
    t: &mut Trainer,
    images: &SparseImages,
    labels: &[u8],
    batch: &[usize],
    step: usize,
) -> f32 {
    const H: usize = HIDDEN;
    let n = batch.len();
    let base = t.base;
    let g = backward(t, images, labels, batch);
    let rule = Rule::at(t.optimizer, t.lr, step);
    t.w3.step(rule, &g.g3);
    t.b3.step(rule, &g.db3);
    t.w2.step(rule, &g.g2);
    t.b2.step(rule, &g.db2);
    t.b1.step(rule, &g.db1);

    t.pixel_major.fill(images, batch);
    let pm = &t.pixel_major;
    let half = INPUT / 2;
    let db1: [f32; H] = g.db1.try_into().expect("128 biases");
    let dh1 = &t.dh1[..n * H];
    let (w_a, w_b) = t.w1.w.split_at_mut(half * H);
    let moments_at = if t.w1.m.is_empty() { 0 } else { half * H };
    let (m_a, m_b) = t.w1.m.split_at_mut(moments_at);
    let (v_a, v_b) = t.w1.v.split_at_mut(moments_at);
    let (c_a, c_b) = rayon::join(
        || subnormals::flushed(|| fc1_update(pm, 0..half, dh1, &db1, base, rule, w_a, m_a, v_a)),
        || {
            subnormals::flushed(|| {
                fc1_update(pm, half..INPUT, dh1, &db1, base, rule, w_b, m_b, v_b)
            })
        },
    );
    for ((c, x), y) in t.colsum.iter_mut().zip(&c_a).zip(&c_b) {
        *c = x + y;
    }
    g.loss_sum / n as f32
}

/// Forward and backward through the whole MLP for `rows`, accumulating the
/// gradients of fc2, fc3 and the biases, and writing each row's fc1
/// pre-activation gradient into `dh1`. Compiled for several instruction sets
/// and picked at run time, so the inlined loops use AVX2 or AVX-512.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn rows_forward_backward<'a>(
    net: &Net<'a>,
    images: &SparseImages,
    labels: &[u8],
    rows: &[usize],
    batch_len: usize,
    dh1: &mut [f32],
) -> Partial {
    const H: usize = HIDDEN;
    let mut p = Partial {
        loss: 0.0,
        g2: vec![0.0; H * H],
        g3: vec![0.0; CLASSES * H],
        db1: [0.0; H],
        db2: [0.0; H],
        db3: [0.0; CLASSES],
    };
    for (r, &row) in rows.iter().enumerate() {
        // fc1: h = b + base * colsum(W) + sum over non-zero pixels of delta * W[j].
        let mut a1 = *part::<H>(net.offset, 0);
        for (j, d) in images.row(row) {
            axpy_n(&mut a1, d, part(net.w1, j * H));
        }
        a1.iter_mut().for_each(|v| *v = v.max(0.0));
        // fc2 over the active inputs only, listed first without branches so
        // that the accumulator stays in registers.
        let (mut active, mut active_value, mut n_active) = ([0usize; H], [0.0f32; H], 0);
        for (i, &v) in a1.iter().enumerate() {
            active[n_active] = i;
            active_value[n_active] = v;
            n_active += (v > 0.0) as usize;
        }
        let (active, active_value) = (&active[..n_active], &active_value[..n_active]);
        let mut a2 = *part::<H>(net.b2, 0);
        for (&i, &v) in active.iter().zip(active_value) {
            axpy_n(&mut a2, v, part(net.w2, i * H));
        }
        a2.iter_mut().for_each(|v| *v = v.max(0.0));
        // fc3 and the softmax cross-entropy, as a mean over the whole batch.
        let mut logits = [0.0f32; CLASSES];
        for (c, z) in logits.iter_mut().enumerate() {
            *z = net.b3[c] + dot_n(part::<H>(net.w3, c * H), &a2);
        }
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let lse = max + logits.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
        let label = labels[row] as usize;
        p.loss += lse - logits[label];
        // Backward: only active units carry gradient.
        let mut da2 = [0.0f32; H];
        for c in 0..CLASSES {
            let d = ((logits[c] - lse).exp() - (c == label) as u8 as f32) / batch_len as f32;
            p.db3[c] += d;
            axpy_n(part_mut(&mut p.g3, c * H), d, &a2);
            axpy_n(&mut da2, d, part(net.w3, c * H));
        }
        let mut dh2 = [0.0f32; H];
        for k in 0..H {
            dh2[k] = if a2[k] > 0.0 { da2[k] } else { 0.0 };
        }
        axpy_n(&mut p.db2, 1.0, &dh2);
        let dh1 = part_mut::<H>(dh1, r * H);
        *dh1 = [0.0; H];
        for (&i, &v) in active.iter().zip(active_value) {
            axpy_n(part_mut(&mut p.g2, i * H), v, &dh2);
            dh1[i] = dot_n(part(net.w2, i * H), &dh2);
        }
        axpy_n(&mut p.db1, 1.0, dh1);
    }
    p
}

/// fc1's fused gradient and update for the pixels in `pixels` (whose weight
/// rows, and moments, are `w`, `m`, `v`): dW[j] = base * db1 + sum over the
/// batch's rows where pixel j is not background of delta * dh1[r]. Each row is
/// summed in registers and written once. Returns the new rows' column sums.
#[allow(clippy::too_many_arguments)]
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn fc1_update(
    pm: &PixelMajor,
    pixels: std::ops::Range<usize>,
    dh1: &[f32],
    db1: &[f32; HIDDEN],
    base: f32,
    rule: Rule,
    w: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
) -> [f32; HIDDEN] {
    const H: usize = HIDDEN;
    let mut colsum = [0.0f32; H];
    for (local, j) in pixels.enumerate() {
        let entries = pm.start[j]..pm.start[j + 1];
        let mut g = [0.0f32; H];
        axpy_n(&mut g, base, db1);
        for (&r, &d) in pm.row[entries.clone()].iter().zip(&pm.delta[entries]) {
            axpy_n(&mut g, d, part(dh1, r * H));
        }
        let at = local * H;
        match rule {
            Rule::Adam { .. } => rule.apply(
                part_mut::<H>(w, at),
                &g,
                part_mut::<H>(m, at),
                part_mut::<H>(v, at),
            ),
            Rule::Sgd { .. } => rule.apply(part_mut::<H>(w, at), &g, &mut [], &mut []),
        }
        axpy_n(&mut colsum, 1.0, part(w, at));
    }
    colsum
}
