//! The fast trainer one batch at a time, for tests (`mlp::Stepper`). A child
//! of `fast` so that it drives the very kernels `train` runs.

use super::{backward, fc1_update, train_step, transpose, Rule, SparseImages, Trainer};
use crate::{Examples, MlpError, Optimizer, TrainConfig, Weights, HIDDEN, INPUT};

/// The fast trainer stepped one batch at a time, so that tests can check a
/// step's gradient and update against an independent computation from the
/// same weights and moments. Not an API.
#[doc(hidden)]
pub struct Stepper<'a> {
    t: Trainer,
    images: SparseImages,
    labels: &'a [u8],
    steps: usize,
}

impl<'a> Stepper<'a> {
    pub fn new(cfg: &TrainConfig, init: Weights, data: Examples<'a>) -> Result<Self, MlpError> {
        cfg.validate()?;
        crate::check_examples(data)?;
        let base = mnist::normalise::normalise_byte(0);
        Ok(Stepper {
            t: Trainer::new(cfg, init, base),
            images: SparseImages::new(data.pixels, base),
            labels: data.labels,
            steps: 0,
        })
    }

    pub fn weights(&self) -> Weights {
        self.t.export(|p| &p.w)
    }

    /// Adam's first and second moments, in the weights' layout; `None` for SGD.
    pub fn moments(&self) -> Option<(Weights, Weights)> {
        (self.t.optimizer == Optimizer::Adam)
            .then(|| (self.t.export(|p| &p.m), self.t.export(|p| &p.v)))
    }

    /// The batch's mean loss and the gradient the next `step` on `batch`
    /// applies (fc1's, fused into its update there, written out here by the
    /// same kernel), at the current weights. Changes no parameter.
    pub fn gradients(&mut self, batch: &[usize]) -> (f32, Weights) {
        subnormals::flushed(|| self.gradients_flushed(batch))
    }

    fn gradients_flushed(&mut self, batch: &[usize]) -> (f32, Weights) {
        let t = &mut self.t;
        let g = backward(t, &self.images, self.labels, batch);
        t.pixel_major.fill(&self.images, batch);
        let mut g1 = vec![0.0; INPUT * HIDDEN];
        let db1: [f32; HIDDEN] = g.db1.clone().try_into().expect("128 biases");
        // SGD at lr -1 onto zeros writes 0 + 1 * g: the gradient itself.
        let write_gradient = Rule::Sgd { lr: -1.0 };
        let dh1 = &t.dh1[..batch.len() * HIDDEN];
        fc1_update(
            &t.pixel_major,
            0..INPUT,
            dh1,
            &db1,
            t.base,
            write_gradient,
            &mut g1,
            &mut [],
            &mut [],
        );
        let gradient = Weights {
            fc1_weight: transpose(&g1, INPUT, HIDDEN),
            fc1_bias: g.db1,
            fc2_weight: transpose(&g.g2, HIDDEN, HIDDEN),
            fc2_bias: g.db2,
            fc3_weight: g.g3,
            fc3_bias: g.db3,
        };
        (g.loss_sum / batch.len() as f32, gradient)
    }

    /// One optimiser step on `batch` (row indices into the examples), exactly
    /// as `train` takes it; returns the batch's mean loss.
    pub fn step(&mut self, batch: &[usize]) -> f32 {
        self.steps += 1;
        let step = self.steps;
        let t = &mut self.t;
        let (images, labels) = (&self.images, self.labels);
        rayon::scope(|_| subnormals::flushed(|| train_step(t, images, labels, batch, step)))
    }
}
