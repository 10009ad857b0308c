//! Every training parameter of one SAE, with the notebook's values as defaults.

use serde::{Deserialize, Serialize};

use crate::arch::{at_least_one, invalid, positive_finite, Architecture};
use crate::SaeError;

/// The full description of one SAE run; `cfg.json` is this struct serialised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SaeConfig {
    /// Width of the input activations.
    pub d_in: usize,
    /// A transcoder (the decoder predicts another layer); `None`: an SAE,
    /// whose decoder reconstructs its own input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcoder: Option<Transcoder>,
    /// Number of dictionary features.
    pub d_sae: usize,
    /// The architecture and its settings (`variant` in folders saved before it was renamed).
    #[serde(alias = "variant")]
    pub architecture: Architecture,
    /// How the sparsity penalty reduces over the batch (the L2 term is always a batch mean).
    pub l1_reduction: Reduction,
    /// How the encoder starts; independent of [`SaeConfig::b_dec_init`].
    pub encoder_init: EncoderInit,
    /// Where the decoder bias starts.
    pub b_dec_init: DecoderBiasInit,
    pub optimizer: AdamConfig,
    pub lr_schedule: LrSchedule,
    pub batch_size: usize,
    pub epochs: usize,
    /// `false`: rows in dataset order; `true`: a fresh seeded permutation every epoch.
    pub shuffle: bool,
    /// A feature that has not fired for this many steps counts as dead (dead
    /// metric, TopK's AuxK loss and resampling all use it).
    pub dead_window_steps: usize,
    /// Dead-feature resampling; off when `None`.
    pub resample: Option<ResampleConfig>,
    /// The sparsity penalty's coefficient rises linearly over the first
    /// this-many steps, `(step + 1) / sparsity_warmup_steps` of its value at
    /// 0-based step `step` (SAELens' `L1Scheduler`); 0: off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sparsity_warmup_steps: usize,
    /// Train on rows scaled to a mean norm of `sqrt(width)` (input and
    /// target each by its own factor), the factors folded into the saved
    /// weights, so the SAE reads and writes raw activations (SAELens'
    /// `expected_average_only_in`, then `fold_activation_norm_scaling_factor`).
    #[serde(default, skip_serializing_if = "NormalizeActivations::is_none")]
    pub normalize_activations: NormalizeActivations,
    /// Clip the gradient of every parameter together to this global L2 norm
    /// before the optimizer sees it (`torch.nn.utils.clip_grad_norm_`, which
    /// SAELens' trainer applies at 1.0); 0: off. A unit-norm decoder's
    /// gradient is clipped after its projection, as the optimizer sees it.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub clip_grad_norm: f64,
    pub seed: u64,
}

impl Default for SaeConfig {
    fn default() -> Self {
        SaeConfig {
            d_in: 128,
            transcoder: None,
            d_sae: 1024,
            architecture: Architecture::default(),
            l1_reduction: Reduction::Sum,
            encoder_init: EncoderInit::Uniform,
            b_dec_init: DecoderBiasInit::Zero,
            optimizer: AdamConfig::default(),
            lr_schedule: LrSchedule::default(),
            batch_size: 64,
            epochs: 200,
            shuffle: false,
            dead_window_steps: 1000,
            resample: None,
            sparsity_warmup_steps: 0,
            normalize_activations: NormalizeActivations::None,
            clip_grad_norm: 0.0,
            seed: 0,
        }
    }
}

/// A transcoder (Dunefsky et al. 2024): the encoder reads one layer and the
/// decoder predicts another, `y_hat = act(x @ W_enc + b_enc) @ W_dec + b_dec`
/// (b_dec lives in the output's space, so it is not subtracted from the
/// input: SAELens' `apply_b_dec_to_input = false`). Any architecture's sparsity
/// applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transcoder {
    /// Width of the layer the decoder predicts.
    pub d_out: usize,
    /// A skip transcoder (Paulo et al. 2025) also adds `x @ W_skip^T`, a
    /// learned linear map (`W_skip` `[d_out, d_in]`, starting at zero).
    pub skip: bool,
}

/// Whether training sees raw activations or activations scaled to a mean norm
/// of `sqrt(width)`; the curve's MSE and L2 are then in scaled units (its
/// explained variance is the same either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormalizeActivations {
    #[default]
    None,
    ExpectedAverageOnlyIn,
}

impl NormalizeActivations {
    fn is_none(&self) -> bool {
        *self == NormalizeActivations::None
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_zero_f64(x: &f64) -> bool {
    *x == 0.0
}

/// Reduction of the sparsity penalty over the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// The notebook's: summed over batch and features.
    Sum,
    /// Summed over features, averaged over the batch.
    Mean,
}

/// The encoder's start. The decoder always starts as PyTorch's `nn.Linear`
/// default (uniform, bound 1/sqrt(fan_in)) with rows then set to unit norm,
/// and `b_enc` at zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderInit {
    /// `nn.Linear`'s default, drawn independently of the decoder (the notebook).
    Uniform,
    /// The decoder transposed (the TopK paper, SAELens, dictionary_learning).
    Tied,
}

/// The decoder bias's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderBiasInit {
    /// Zero (the notebook).
    Zero,
    /// The mean of the training rows (the TopK paper uses their geometric median).
    DataMean,
}

/// Adam without weight decay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum LrSchedule {
    Constant,
    /// SAELens' constant schedule with warm-up and decay
    /// (`sae_lens/training/optim.py`): at 0-based step `s` of `T`, the lr
    /// times `(s + 1) / warmup_steps` during the first `warmup_steps`, and
    /// times `(T - s) / decay_steps` during the last `decay_steps` (to 0).
    WarmupDecay {
        warmup_steps: usize,
        decay_steps: usize,
    },
    /// PyTorch `StepLR`: every `step_epochs` epochs multiply the lr by `gamma`.
    StepLr {
        step_epochs: usize,
        gamma: f64,
    },
}

impl Default for LrSchedule {
    fn default() -> Self {
        LrSchedule::StepLr {
            step_epochs: 10,
            gamma: 0.99,
        }
    }
}

/// Anthropic-style resampling of dead features ("Towards Monosemanticity").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResampleConfig {
    pub schedule: ResampleSchedule,
    /// How many uniformly drawn training rows are scored; replacement inputs are
    /// drawn among them with probability proportional to the square of their
    /// reconstruction loss `||x - x_hat||^2`.
    pub sample_rows: usize,
}

/// Global optimisation steps (1-based, counted after the step) at which to resample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum ResampleSchedule {
    AtSteps {
        steps: Vec<usize>,
    },
    /// At `every_steps`, `2 * every_steps`, ... up to and including `until`.
    Every {
        every_steps: usize,
        until: usize,
    },
}

impl ResampleSchedule {
    pub fn fires_at(&self, step: usize) -> bool {
        match self {
            ResampleSchedule::AtSteps { steps } => steps.contains(&step),
            ResampleSchedule::Every { every_steps, until } => {
                step > 0 && step <= *until && step.is_multiple_of(*every_steps)
            }
        }
    }
}

impl SaeConfig {
    /// Refuses out-of-range values with one sentence naming the key.
    pub fn validate(&self) -> Result<(), SaeError> {
        at_least_one("d_in", self.d_in)?;
        at_least_one("d_sae", self.d_sae)?;
        if let Some(transcoder) = &self.transcoder {
            at_least_one("transcoder.d_out", transcoder.d_out)?;
            if self.encoder_init == EncoderInit::Tied && transcoder.d_out != self.d_in {
                return Err(invalid(
                    "encoder_init",
                    &format!(
                        "\"uniform\" for a transcoder whose widths differ (d_in {}, d_out {}): a tied encoder is the decoder transposed",
                        self.d_in, transcoder.d_out
                    ),
                    "\"tied\"",
                ));
            }
            if self.resample.is_some() {
                return Err(invalid(
                    "resample",
                    "off for a transcoder (resampling draws decoder rows from the input layer)",
                    "a resampling schedule",
                ));
            }
        }
        self.architecture.validate(self.d_sae)?;
        positive_finite("optimizer.lr", self.optimizer.lr)?;
        for (key, beta) in [
            ("optimizer.beta1", self.optimizer.beta1),
            ("optimizer.beta2", self.optimizer.beta2),
        ] {
            if !(0.0..1.0).contains(&beta) {
                return Err(invalid(key, "in [0, 1)", beta));
            }
        }
        positive_finite("optimizer.eps", self.optimizer.eps)?;
        if !(self.clip_grad_norm.is_finite() && self.clip_grad_norm >= 0.0) {
            return Err(invalid(
                "clip_grad_norm",
                "a finite number >= 0 (0: off)",
                self.clip_grad_norm,
            ));
        }
        match &self.lr_schedule {
            LrSchedule::Constant | LrSchedule::WarmupDecay { .. } => {}
            LrSchedule::StepLr { step_epochs, gamma } => {
                at_least_one("lr_schedule.step_epochs", *step_epochs)?;
                positive_finite("lr_schedule.gamma", *gamma)?;
            }
        }
        at_least_one("batch_size", self.batch_size)?;
        at_least_one("epochs", self.epochs)?;
        at_least_one("dead_window_steps", self.dead_window_steps)?;
        if let Some(resample) = &self.resample {
            at_least_one("resample.sample_rows", resample.sample_rows)?;
            match &resample.schedule {
                ResampleSchedule::AtSteps { steps } => {
                    if steps.contains(&0) {
                        return Err(invalid(
                            "resample.schedule.steps",
                            "a list of steps >= 1",
                            "a step 0",
                        ));
                    }
                }
                ResampleSchedule::Every { every_steps, .. } => {
                    at_least_one("resample.schedule.every_steps", *every_steps)?
                }
            }
        }
        Ok(())
    }

    /// Width of what the decoder predicts: `d_in` for an SAE.
    pub fn d_out(&self) -> usize {
        self.transcoder.map_or(self.d_in, |t| t.d_out)
    }

    /// Whether the encoder reads `x - b_dec` (an SAE) or `x` (a transcoder).
    pub fn centres_input(&self) -> bool {
        self.transcoder.is_none()
    }

    /// The architecture's name for an SAE; for a transcoder SAELens' names
    /// (`transcoder`, `skip_transcoder` for L1) or the architecture's before
    /// them (`topk_skip_transcoder`).
    pub fn architecture_name(&self) -> String {
        let name = self.architecture.name();
        match self.transcoder {
            None => name.to_string(),
            Some(t) => {
                let kind = if t.skip {
                    "skip_transcoder"
                } else {
                    "transcoder"
                };
                // SAELens' plain transcoder is the L1 one.
                if matches!(self.architecture, Architecture::L1(_)) {
                    kind.to_string()
                } else {
                    format!("{name}_{kind}")
                }
            }
        }
    }

    /// The factor every gradient is multiplied by when their global norm is
    /// `norm`: `min(1, clip / (norm + 1e-6))` as torch's `clip_grad_norm_`,
    /// exactly 1 when clipping is off or does not bind.
    pub fn clip_factor(&self, norm: f64) -> f64 {
        if self.clip_grad_norm == 0.0 {
            return 1.0;
        }
        (self.clip_grad_norm / (norm + 1e-6)).min(1.0)
    }

    /// AuxK's `(k_aux, aux_coeff, aux_input)` with `k_aux` resolved; `None` without AuxK.
    pub fn aux_k(&self) -> Option<(usize, f64, crate::AuxInput)> {
        self.architecture.aux_k(self.d_in)
    }

    /// Learning rate of 0-based step `step`, in `epoch` (0-based), of a run
    /// of `total_steps`.
    pub fn lr_at(&self, epoch: usize, step: usize, total_steps: usize) -> f64 {
        let lr = self.optimizer.lr;
        match &self.lr_schedule {
            LrSchedule::Constant => lr,
            LrSchedule::StepLr { step_epochs, gamma } => {
                lr * gamma.powi((epoch / step_epochs) as i32)
            }
            LrSchedule::WarmupDecay {
                warmup_steps,
                decay_steps,
            } => {
                let mut factor = 1.0f64;
                if step < *warmup_steps {
                    factor = factor.min((step + 1) as f64 / *warmup_steps as f64);
                }
                if total_steps - step.min(total_steps) < *decay_steps {
                    factor = factor.min((total_steps - step) as f64 / *decay_steps as f64);
                }
                lr * factor
            }
        }
    }

    /// The share of the sparsity coefficient at 0-based step `step`
    /// (`sparsity_warmup_steps`): 1 once warm.
    pub fn penalty_factor_at(&self, step: usize) -> f64 {
        if step < self.sparsity_warmup_steps {
            (step + 1) as f64 / self.sparsity_warmup_steps as f64
        } else {
            1.0
        }
    }

    /// Optimisation steps in one epoch over `rows` rows (the last partial batch counts).
    pub fn steps_per_epoch(&self, rows: usize) -> usize {
        rows.div_ceil(self.batch_size)
    }

    /// Multiplier on `sum |acts|` (before any decoder-norm weighting) for a batch of `rows`.
    pub(crate) fn l1_scale(&self, rows: usize) -> f64 {
        let coeff = self.architecture.penalty().l1_coeff();
        match self.l1_reduction {
            Reduction::Sum => coeff,
            Reduction::Mean => coeff / rows as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ArchitectureKind, TopK};

    #[test]
    fn folders_saved_before_the_rename_still_load_and_unknown_settings_are_refused() {
        // As `saelab_config.json` held it before `variant` became `architecture`.
        let old = r#"{"d_in": 128, "d_sae": 1024,
            "variant": {"kind": "TopK", "k": 32, "k_aux": 64, "aux_coeff": 0.03125, "aux_input": "relu"}}"#;
        let cfg: SaeConfig = serde_json::from_str(old).unwrap();
        assert_eq!(cfg.architecture.kind(), ArchitectureKind::TopK);
        assert_eq!(cfg.aux_k(), Some((64, 1.0 / 32.0, crate::AuxInput::Relu)));
        // Saved again, under its one name; an unset k_aux is half of d_in.
        let json = serde_json::to_value(SaeConfig {
            architecture: TopK::new(32).into(),
            ..cfg
        })
        .unwrap();
        assert_eq!(json["architecture"]["kind"], "TopK");
        assert!(json.get("variant").is_none() && json["architecture"].get("k_aux").is_none());
        let back: SaeConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back.aux_k().unwrap().0, 64);

        let typo = r#"{"architecture": {"kind": "TopK", "k": 32, "kaux": 8}}"#;
        let err = serde_json::from_str::<SaeConfig>(typo)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `kaux`"), "{err}");
        let unknown = r#"{"architecture": {"kind": "Relu2", "l1_coeff": 0.1}}"#;
        let err = serde_json::from_str::<SaeConfig>(unknown)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `Relu2`"), "{err}");
    }
}
