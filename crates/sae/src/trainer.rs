//! The contract between the training loop (`run.rs`) and its two
//! implementations (`reference.rs`, `fast/`): the `Trainer` trait and the
//! state they share. Its own module so that neither implementation imports
//! the loop that builds them.

use crate::duo::Exec;
use crate::model::{self, Sae};
use crate::Activation;
use crate::SaeError;

/// Loss and raw gradients (before the decoder projection) at one batch, in the public layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    pub w_enc: Vec<f32>,
    pub w_dec: Vec<f32>,
    pub b_enc: Vec<f32>,
    pub b_dec: Vec<f32>,
    /// A skip transcoder's `W_skip` gradient; empty for others.
    pub w_skip: Vec<f32>,
    /// JumpReLU's gradient with respect to its log-thresholds; empty for other architectures.
    pub threshold: Vec<f32>,
    /// Gated's `r_mag` and `b_mag` gradients (its `b_enc` is `b_gate`); empty for others.
    pub r_mag: Vec<f32>,
    pub b_mag: Vec<f32>,
}

/// A trainer's parameters and Adam moments, each in the public layout of
/// [`Gradients`] (whose `threshold` is JumpReLU's log-thresholds here), for
/// tests that check a step against an independent computation.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerState {
    pub params: Gradients,
    /// Adam's first and second moments of each parameter.
    pub m: Gradients,
    pub v: Gradients,
}

/// What a trainer reports about one batch.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StepStats {
    pub loss: f64,
    /// Mean over the batch of the per-row squared error.
    pub l2: f64,
    pub sq_err_sum: f64,
    /// The sparsity term as it enters the loss.
    pub l1: f64,
    pub aux: f64,
    pub active: u64,
}

/// A dead feature's new parameters.
pub(crate) struct FeatureReset {
    pub feature: usize,
    pub decoder_row: Vec<f32>,
    pub encoder_column: Vec<f32>,
}

/// One training implementation. A step is `compute` (forward, loss, raw
/// gradients; records which features fired) then `apply` (decoder gradient
/// projection, Adam, renormalisation).
pub(crate) trait Trainer: Send {
    /// `x`: the encoder's input `[rows, d_in]`; `target`: what the decoder
    /// predicts `[rows, d_out]` (`x` itself for an SAE).
    fn compute(
        &mut self,
        x: &[f32],
        target: &[f32],
        rows: usize,
        tracker: &mut FiringTracker,
        exec: Exec,
    ) -> Result<StepStats, SaeError>;
    fn apply(&mut self, lr: f64, exec: Exec) -> Result<(), SaeError>;
    /// The share of the sparsity coefficient the next `compute` uses (the
    /// warm-up's; 1 once warm).
    fn set_penalty_factor(&mut self, factor: f64);
    /// The raw gradients at the last `compute`.
    fn gradients(&mut self) -> Result<Gradients, SaeError>;
    fn export(&self) -> Result<Sae, SaeError>;
    /// Every parameter with its moments, as the next `compute` reads them.
    fn state(&self) -> Result<TrainerState, SaeError>;
    /// Sets the features' parameters, zeroes their `b_enc` and their Adam moments.
    fn reset_features(&mut self, resets: &[FeatureReset]) -> Result<(), SaeError>;
    /// After a step: `input` is every training row the encoder may read
    /// (`[rows, d_in]`), for trainers that skip what provably cannot fire.
    fn settle(&mut self, _input: &[f32], _exec: Exec) {}
    /// Whether `Exec::Duo` speeds this trainer up (candle has its own threads).
    fn uses_helper_thread(&self) -> bool {
        false
    }
    /// Everything the next step reads, to resume from bit for bit; `None`
    /// where the trainer cannot resume (the reference path).
    fn snapshot(&mut self) -> Option<TrainerSnapshot> {
        None
    }
    /// Continues from `snapshot` (taken by the same trainer kind on the same
    /// config); on an error nothing has changed.
    fn restore(&mut self, _snapshot: &TrainerSnapshot) -> Result<(), String> {
        Err("this training path does not resume".into())
    }
}

/// A trainer's state between two steps, as named f32 buffers (parameters
/// and Adam moments) plus Adam's step count and BatchTopK's running threshold.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TrainerSnapshot {
    pub(crate) adam_t: usize,
    pub(crate) batch_threshold: Option<f64>,
    pub(crate) buffers: std::collections::BTreeMap<String, Vec<f32>>,
}

/// Steps since each feature last fired.
pub(crate) struct FiringTracker {
    pub(crate) since_fired: Vec<u64>,
    window: u64,
    dead: Vec<bool>,
}

impl FiringTracker {
    pub fn new(d_sae: usize, window: usize) -> Self {
        FiringTracker {
            since_fired: vec![0; d_sae],
            window: window as u64,
            dead: vec![false; d_sae],
        }
    }

    pub fn record(&mut self, fired: &[bool]) {
        for ((since, dead), &fired) in self.since_fired.iter_mut().zip(&mut self.dead).zip(fired) {
            *since = if fired { 0 } else { *since + 1 };
            *dead = *since >= self.window;
        }
    }

    pub fn dead_mask(&self) -> &[bool] {
        &self.dead
    }

    pub fn dead_count(&self) -> usize {
        self.dead.iter().filter(|&&d| d).count()
    }

    /// Steps since each feature fired and whether it counts as dead.
    pub(crate) fn parts(&self) -> (&[u64], &[bool]) {
        (&self.since_fired, &self.dead)
    }

    /// Continues from [`FiringTracker::parts`] of a tracker of the same width.
    pub(crate) fn restore(&mut self, since_fired: &[u64], dead: &[bool]) -> Result<(), String> {
        if since_fired.len() != self.dead.len() || dead.len() != self.dead.len() {
            return Err(format!(
                "firing counters for {} and {} features, not {}",
                since_fired.len(),
                dead.len(),
                self.dead.len()
            ));
        }
        self.since_fired.copy_from_slice(since_fired);
        self.dead.copy_from_slice(dead);
        Ok(())
    }

    pub(crate) fn revive(&mut self, f: usize) {
        self.since_fired[f] = 0;
        self.dead[f] = false;
    }
}

/// AuxK's loss, as OpenAI's `auxk_coef * normalized_mse(e_hat, e)`, put into
/// the units of this crate's L2 term (which is not normalised):
/// `aux_coeff * data_variance * sum ||e - e_hat||^2 / sum ||e - mean(e)||^2`,
/// summed over the batch's rows, with `e = x - x_hat` (detached) and
/// `data_variance` the mean of `||x - mean(x)||^2` over the training rows.
/// So `aux_coeff` weighs against the reconstruction loss as OpenAI's does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuxScale {
    pub data_variance: f64,
}

impl AuxScale {
    /// The factor on `sum ||e - e_hat||^2`, given `sum ||e - mean(e)||^2`;
    /// 0 where the residual has no spread (as OpenAI's `nan_to_num(0)`).
    pub fn factor(&self, aux_coeff: f64, residual_spread: f64) -> f64 {
        if residual_spread > 0.0 && residual_spread.is_finite() {
            aux_coeff * self.data_variance / residual_spread
        } else {
            0.0
        }
    }

    pub fn of(data: &[f32], d_in: usize) -> Self {
        Self::from_total_variance(model::total_variance(data, d_in), data.len() / d_in)
    }

    /// From [`model::total_variance`] of `rows` rows, where it is already known.
    pub fn from_total_variance(total_variance: f64, rows: usize) -> Self {
        AuxScale {
            data_variance: total_variance / rows.max(1) as f64,
        }
    }
}

/// The BatchTopK family's inference threshold: the smallest selected
/// activation of the first batch, then a running mean of each batch's
/// smallest with weight `threshold_lr` (SAELens' rule; dictionary_learning's
/// starts the same way). Absent for other activations.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunningThreshold {
    value: Option<f64>,
    lr: f64,
}

impl RunningThreshold {
    /// For `sae`'s architecture, continuing from its saved threshold if positive.
    pub fn of(sae: &Sae) -> Option<Self> {
        let lr = match sae.cfg.architecture.activation() {
            Activation::BatchTopK { threshold_lr, .. } => threshold_lr,
            Activation::Relu
            | Activation::TopK { .. }
            | Activation::JumpRelu { .. }
            | Activation::Gated => return None,
        };
        let value = sae
            .threshold
            .first()
            .map(|&t| t as f64)
            .filter(|&t| t > 0.0);
        Some(RunningThreshold { value, lr })
    }

    /// Folds in a batch's smallest selected activation (none selected: no change).
    pub fn observe(&mut self, smallest: f64) {
        if smallest.is_finite() {
            self.value = Some(match self.value {
                None => smallest,
                Some(t) => (1.0 - self.lr) * t + self.lr * smallest,
            });
        }
    }

    /// The running value (`None` before the first batch).
    pub(crate) fn value(&self) -> Option<f64> {
        self.value
    }

    pub(crate) fn set_value(&mut self, value: Option<f64>) {
        self.value = value;
    }

    /// The threshold on every feature, as `Sae::threshold` holds it.
    pub fn per_feature(&self, d_sae: usize) -> Vec<f32> {
        vec![self.value.unwrap_or(0.0) as f32; d_sae]
    }
}
