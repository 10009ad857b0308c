//! The notebook's MNIST classifier: a 784-128-128-10 ReLU MLP.
//!
//! This crate owns the model (in candle-nn, with PyTorch's parameter names and
//! shapes so `model.safetensors` loads into the notebook's `MLP`), its training
//! (a fused CPU trainer over raw f32 buffers, and the candle-autograd reference
//! it is tested against), evaluation, and a forward pass that returns every
//! intermediate layer. Invariant: the same config and seed give the same
//! weights. It must not know about SAEs: later stages see only named layers.

mod config;
mod fast;
mod model;
mod reference;
mod splice;
mod weights;

pub use config::{Optimizer, TrainConfig};
// A test hook (the fast trainer one step at a time), not part of the API.
#[doc(hidden)]
pub use fast::Stepper;
pub use model::{Evaluation, Layers, Mlp};
pub use splice::SpliceMetrics;
pub use weights::Weights;

use candle_core::Device;

pub const INPUT: usize = 784;
pub const HIDDEN: usize = 128;
pub const CLASSES: usize = 10;

/// The layers a forward pass exposes, in network order.
pub const LAYER_NAMES: [&str; 6] = [
    INPUT_LAYER,
    "fc1.pre",
    "fc1.post",
    "fc2.pre",
    "fc2.post",
    "logits",
];

/// The input as a layer: the normalised pixels relative to a black pixel's
/// (`x - x0`), so that a blank background is zero and carries no
/// attribution. Cached only when asked for (784 wide: 220 MB for MNIST).
pub const INPUT_LAYER: &str = "input";

/// Width of a named layer, or `None` for an unknown name.
pub fn layer_width(name: &str) -> Option<usize> {
    match name {
        INPUT_LAYER => Some(INPUT),
        "fc1.pre" | "fc1.post" | "fc2.pre" | "fc2.post" => Some(HIDDEN),
        "logits" => Some(CLASSES),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MlpError {
    #[error("{0}")]
    Config(String),
    /// Data of the wrong shape handed to a function of this crate.
    #[error("{0}")]
    Input(String),
    #[error("{file}: {problem}")]
    File { file: String, problem: String },
    #[error("training diverged at step {step}: loss {loss}")]
    Diverged { step: usize, loss: f32 },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A labelled set of raw MNIST images, `pixels.len() == labels.len() * 784`.
#[derive(Clone, Copy, Debug)]
pub struct Examples<'a> {
    pub pixels: &'a [u8],
    pub labels: &'a [u8],
}

impl Examples<'_> {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Which implementation trains.
#[derive(Clone, Debug)]
pub enum TrainPath {
    /// Fused forward/backward/update over raw buffers, CPU only.
    Fast,
    /// candle autograd and candle-nn optimisers, on any device.
    Reference(Device),
}

/// What training records.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TrainLog {
    /// Mean cross-entropy of each step's batch.
    pub step_losses: Vec<f32>,
}

/// Trains from `TrainConfig::seed`'s initial weights. `on_step(step, loss)` is
/// called after every optimiser step.
pub fn train(
    cfg: &TrainConfig,
    data: Examples<'_>,
    path: &TrainPath,
    on_step: &mut (dyn FnMut(usize, f32) + Send),
) -> Result<(Weights, TrainLog), MlpError> {
    cfg.validate()?;
    check_examples(data)?;
    let init = Weights::init(cfg.seed);
    let log = match path {
        TrainPath::Fast => fast::train(cfg, init, data, on_step),
        TrainPath::Reference(device) => reference::train(cfg, init, data, device, on_step),
    }?;
    Ok(log)
}

fn check_examples(data: Examples<'_>) -> Result<(), MlpError> {
    if data.pixels.len() != data.labels.len() * INPUT {
        return Err(MlpError::Config(format!(
            "{} pixels do not make {} images of {INPUT} pixels",
            data.pixels.len(),
            data.labels.len()
        )));
    }
    if let Some(bad) = data.labels.iter().find(|&&l| l as usize >= CLASSES) {
        return Err(MlpError::Config(format!("label {bad} is not a digit")));
    }
    Ok(())
}

/// The order rows are visited in one epoch: a seeded shuffle, or dataset order.
/// Both trainers use it, so they see the same batches.
pub fn epoch_order(cfg: &TrainConfig, rows: usize, epoch: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut order: Vec<usize> = (0..rows).collect();
    if cfg.shuffle {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(1 + epoch as u64);
        order.shuffle(&mut rng);
    }
    order
}
