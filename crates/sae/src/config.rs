//! Every training parameter of one SAE, with the notebook's values as defaults.

use serde::{Deserialize, Serialize};

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
    pub variant: Variant,
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
    pub seed: u64,
}

impl Default for SaeConfig {
    fn default() -> Self {
        SaeConfig {
            d_in: 128,
            transcoder: None,
            d_sae: 1024,
            variant: Variant::default(),
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
            seed: 0,
        }
    }
}

/// A transcoder (Dunefsky et al. 2024): the encoder reads one layer and the
/// decoder predicts another, `y_hat = act(x @ W_enc + b_enc) @ W_dec + b_dec`
/// (b_dec lives in the output's space, so it is not subtracted from the
/// input: SAELens' `apply_b_dec_to_input = false`). Any variant's sparsity
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

/// The SAE's sparsity mechanism.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum Variant {
    /// ReLU code, L1 penalty, unit-norm decoder rows.
    L1 { l1_coeff: f64 },
    /// Keep the k largest pre-activations (ReLU'd), no L1; AuxK loss on dead latents.
    TopK {
        k: usize,
        /// AuxK reconstructs the residual from the `k_aux` largest dead latents.
        #[serde(default = "default_k_aux")]
        k_aux: usize,
        /// Weight of AuxK's normalised MSE, against the reconstruction loss as
        /// in OpenAI's code (see `AuxScale`).
        #[serde(default = "default_aux_coeff")]
        aux_coeff: f64,
        #[serde(default)]
        aux_input: AuxInput,
    },
    /// L1 weighted by each decoder row's norm; no decoder constraint.
    NormWeightedL1 { l1_coeff: f64 },
    /// BatchTopK (Bussmann et al. 2024): the `k * rows` largest ReLU'd
    /// pre-activations of the whole batch; AuxK as TopK. Inference uses a
    /// threshold estimated during training (a running mean of the smallest
    /// selected activation per batch).
    BatchTopK {
        k: usize,
        #[serde(default = "default_k_aux")]
        k_aux: usize,
        #[serde(default = "default_aux_coeff")]
        aux_coeff: f64,
        #[serde(default)]
        aux_input: AuxInput,
        /// Weight of each batch's smallest selected activation in the running threshold.
        #[serde(default = "default_threshold_lr")]
        threshold_lr: f64,
    },
    /// Matryoshka BatchTopK (Bussmann et al. 2025): BatchTopK whose loss also
    /// sums the reconstruction error of each nested prefix of the dictionary.
    MatryoshkaBatchTopK {
        k: usize,
        #[serde(default = "default_k_aux")]
        k_aux: usize,
        #[serde(default = "default_aux_coeff")]
        aux_coeff: f64,
        #[serde(default)]
        aux_input: AuxInput,
        #[serde(default = "default_threshold_lr")]
        threshold_lr: f64,
        /// The prefixes, as fractions of `d_sae` (strictly increasing, below 1);
        /// the whole dictionary is always the last one.
        #[serde(default = "default_prefix_fractions")]
        prefix_fractions: Vec<f64>,
    },
    /// Gated (Rajamanoharan et al. 2024): a gate (`pre > 0`, L1 on its ReLU)
    /// and a magnitude path sharing the gate's directions, rescaled per
    /// feature (`exp(r_mag)`, own bias `b_mag`); an auxiliary loss makes the
    /// gate's ReLU reconstruct through the frozen decoder.
    Gated { l1_coeff: f64 },
    /// JumpReLU (Rajamanoharan et al. 2024): a learned threshold per feature,
    /// an L0 penalty, straight-through pseudo-derivatives of width `bandwidth`.
    JumpRelu {
        l0_coeff: f64,
        #[serde(default = "default_bandwidth")]
        bandwidth: f64,
        #[serde(default = "default_init_threshold")]
        init_threshold: f64,
    },
}

/// Which of a dead latent's pre-activations AuxK reconstructs from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuxInput {
    /// The k_aux largest positive ones, ReLU'd (OpenAI, dictionary_learning).
    /// A latent negative on every row gets no gradient from it.
    #[default]
    Relu,
    /// The k_aux largest whatever their sign (SAELens), so a latent negative
    /// everywhere is still pulled towards the residual.
    Raw,
}

fn default_k_aux() -> usize {
    256
}

fn default_threshold_lr() -> f64 {
    0.01
}

fn default_prefix_fractions() -> Vec<f64> {
    vec![0.0625, 0.125, 0.25, 0.5]
}

fn default_bandwidth() -> f64 {
    0.05
}

fn default_init_threshold() -> f64 {
    0.01
}

fn default_aux_coeff() -> f64 {
    1.0 / 32.0
}

/// An SAE architecture, as `sae.variant` names it. Each one is declared here
/// once: its config name, its label in point names, the sweep axes it reads
/// and the columns it adds to the sweep table all derive from this enum and
/// [`Variant`]. Adding one: a value here, its `Variant`, its training (the
/// reference path first), and its line in `saelab.toml`'s comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Architecture {
    /// The notebook's SAE, corrected: ReLU, L1 penalty, unit-norm decoder rows.
    #[serde(rename = "l1")]
    L1,
    /// TopK with AuxK on dead latents.
    #[serde(rename = "topk")]
    TopK,
    /// L1 weighted by each decoder row's norm; no decoder constraint.
    #[serde(rename = "norm_weighted_l1")]
    NormWeightedL1,
    /// TopK over the whole batch, a threshold at inference.
    #[serde(rename = "batchtopk")]
    BatchTopK,
    /// BatchTopK with nested prefixes that reconstruct on their own.
    #[serde(rename = "matryoshka_batchtopk")]
    MatryoshkaBatchTopK,
    /// A learned threshold per feature and an L0 penalty.
    #[serde(rename = "jumprelu")]
    JumpRelu,
    /// Gate and magnitude paths sharing directions.
    #[serde(rename = "gated")]
    Gated,
}

/// The sweep axes an architecture's variants are drawn from.
#[derive(Clone, Copy, Debug)]
pub struct VariantAxes<'a> {
    pub l1_coeff: &'a [f64],
    pub k: &'a [usize],
    pub l0_coeff: &'a [f64],
    pub k_aux: usize,
    pub aux_coeff: f64,
    pub aux_input: AuxInput,
    pub threshold_lr: f64,
    pub prefix_fractions: &'a [f64],
    pub bandwidth: f64,
    pub init_threshold: f64,
}

impl Architecture {
    pub const ALL: [Architecture; 7] = [
        Architecture::L1,
        Architecture::TopK,
        Architecture::NormWeightedL1,
        Architecture::BatchTopK,
        Architecture::MatryoshkaBatchTopK,
        Architecture::JumpRelu,
        Architecture::Gated,
    ];

    /// The value `sae.variant` takes for it.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::L1 => "l1",
            Architecture::TopK => "topk",
            Architecture::NormWeightedL1 => "norm_weighted_l1",
            Architecture::BatchTopK => "batchtopk",
            Architecture::MatryoshkaBatchTopK => "matryoshka_batchtopk",
            Architecture::JumpRelu => "jumprelu",
            Architecture::Gated => "gated",
        }
    }

    /// One variant per value of the sweep axis it reads.
    pub fn variants(self, axes: &VariantAxes) -> Vec<Variant> {
        let each_k = |make: &dyn Fn(usize) -> Variant| axes.k.iter().map(|&k| make(k)).collect();
        match self {
            Architecture::L1 => axes
                .l1_coeff
                .iter()
                .map(|&l1_coeff| Variant::L1 { l1_coeff })
                .collect(),
            Architecture::NormWeightedL1 => axes
                .l1_coeff
                .iter()
                .map(|&l1_coeff| Variant::NormWeightedL1 { l1_coeff })
                .collect(),
            Architecture::Gated => axes
                .l1_coeff
                .iter()
                .map(|&l1_coeff| Variant::Gated { l1_coeff })
                .collect(),
            Architecture::TopK => each_k(&|k| Variant::TopK {
                k,
                k_aux: axes.k_aux,
                aux_coeff: axes.aux_coeff,
                aux_input: axes.aux_input,
            }),
            Architecture::BatchTopK => each_k(&|k| Variant::BatchTopK {
                k,
                k_aux: axes.k_aux,
                aux_coeff: axes.aux_coeff,
                aux_input: axes.aux_input,
                threshold_lr: axes.threshold_lr,
            }),
            Architecture::MatryoshkaBatchTopK => each_k(&|k| Variant::MatryoshkaBatchTopK {
                k,
                k_aux: axes.k_aux,
                aux_coeff: axes.aux_coeff,
                aux_input: axes.aux_input,
                threshold_lr: axes.threshold_lr,
                prefix_fractions: axes.prefix_fractions.to_vec(),
            }),
            Architecture::JumpRelu => axes
                .l0_coeff
                .iter()
                .map(|&l0_coeff| Variant::JumpRelu {
                    l0_coeff,
                    bandwidth: axes.bandwidth,
                    init_threshold: axes.init_threshold,
                })
                .collect(),
        }
    }

    /// Whether its sparsity is a top-k selection (TopK's init and AuxK apply).
    pub fn is_top_k_family(self) -> bool {
        matches!(
            self,
            Architecture::TopK | Architecture::BatchTopK | Architecture::MatryoshkaBatchTopK
        )
    }
}

impl Variant {
    pub fn architecture(&self) -> Architecture {
        match self {
            Variant::L1 { .. } => Architecture::L1,
            Variant::TopK { .. } => Architecture::TopK,
            Variant::NormWeightedL1 { .. } => Architecture::NormWeightedL1,
            Variant::BatchTopK { .. } => Architecture::BatchTopK,
            Variant::MatryoshkaBatchTopK { .. } => Architecture::MatryoshkaBatchTopK,
            Variant::JumpRelu { .. } => Architecture::JumpRelu,
            Variant::Gated { .. } => Architecture::Gated,
        }
    }

    /// Its part of a sweep point's name: `l1-0.003`, `topk-k32`, `nwl1-0.003`,
    /// `btopk-k32`, `mbtopk-k32`, `jumprelu-0.1`, `gated-0.003`.
    pub fn label(&self) -> String {
        match self {
            Variant::L1 { l1_coeff } => format!("l1-{l1_coeff}"),
            Variant::TopK { k, .. } => format!("topk-k{k}"),
            Variant::NormWeightedL1 { l1_coeff } => format!("nwl1-{l1_coeff}"),
            Variant::BatchTopK { k, .. } => format!("btopk-k{k}"),
            Variant::MatryoshkaBatchTopK { k, .. } => format!("mbtopk-k{k}"),
            Variant::JumpRelu { l0_coeff, .. } => format!("jumprelu-{l0_coeff}"),
            Variant::Gated { l1_coeff } => format!("gated-{l1_coeff}"),
        }
    }

    /// The sweep coordinates it adds to the sweep table, by config key; the
    /// keys of every architecture appear, null where they do not apply.
    pub fn sweep_coordinates(&self) -> [(&'static str, serde_json::Value); 3] {
        use serde_json::Value;
        let (l1_coeff, k, l0_coeff) = match self {
            Variant::L1 { l1_coeff }
            | Variant::NormWeightedL1 { l1_coeff }
            | Variant::Gated { l1_coeff } => (Value::from(*l1_coeff), Value::Null, Value::Null),
            Variant::TopK { k, .. }
            | Variant::BatchTopK { k, .. }
            | Variant::MatryoshkaBatchTopK { k, .. } => (Value::Null, Value::from(*k), Value::Null),
            Variant::JumpRelu { l0_coeff, .. } => {
                (Value::Null, Value::Null, Value::from(*l0_coeff))
            }
        };
        [("l1_coeff", l1_coeff), ("k", k), ("l0_coeff", l0_coeff)]
    }

    /// The AuxK settings `(k_aux, aux_coeff, aux_input)` of the top-k family.
    pub fn aux_k(&self) -> Option<(usize, f64, AuxInput)> {
        let mut variant = self.clone();
        variant
            .aux_k_mut()
            .map(|(k_aux, aux_coeff, aux_input)| (*k_aux, *aux_coeff, *aux_input))
    }

    /// The AuxK settings of the top-k family, to change.
    pub fn aux_k_mut(&mut self) -> Option<(&mut usize, &mut f64, &mut AuxInput)> {
        match self {
            Variant::TopK {
                k_aux,
                aux_coeff,
                aux_input,
                ..
            }
            | Variant::BatchTopK {
                k_aux,
                aux_coeff,
                aux_input,
                ..
            }
            | Variant::MatryoshkaBatchTopK {
                k_aux,
                aux_coeff,
                aux_input,
                ..
            } => Some((k_aux, aux_coeff, aux_input)),
            _ => None,
        }
    }

    /// The same variant with AuxK on `k_aux` latents (no change outside the TopK family).
    pub fn with_k_aux(mut self, latents: usize) -> Self {
        if let Some((k_aux, _, _)) = self.aux_k_mut() {
            *k_aux = latents;
        }
        self
    }

    /// Whether the SAE carries a per-feature inference threshold
    /// (`Sae::threshold`, SAELens' `jumprelu` layout).
    pub fn has_threshold(&self) -> bool {
        matches!(
            self,
            Variant::BatchTopK { .. }
                | Variant::MatryoshkaBatchTopK { .. }
                | Variant::JumpRelu { .. }
        )
    }

    /// The Matryoshka prefix widths below `d_sae`, ascending (empty for other variants).
    pub fn prefix_widths(&self, d_sae: usize) -> Vec<usize> {
        match self {
            Variant::MatryoshkaBatchTopK {
                prefix_fractions, ..
            } => prefix_fractions
                .iter()
                .map(|f| (f * d_sae as f64).round() as usize)
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl Default for Variant {
    fn default() -> Self {
        Variant::L1 { l1_coeff: 3e-3 }
    }
}

impl Variant {
    /// TopK with the default AuxK settings.
    pub fn top_k(k: usize) -> Self {
        Variant::TopK {
            k,
            k_aux: default_k_aux(),
            aux_coeff: default_aux_coeff(),
            aux_input: AuxInput::Relu,
        }
    }

    /// BatchTopK with the default AuxK and threshold settings.
    pub fn batch_top_k(k: usize) -> Self {
        Variant::BatchTopK {
            k,
            k_aux: default_k_aux(),
            aux_coeff: default_aux_coeff(),
            aux_input: AuxInput::Relu,
            threshold_lr: default_threshold_lr(),
        }
    }

    /// Matryoshka BatchTopK with the default prefixes.
    pub fn matryoshka_batch_top_k(k: usize) -> Self {
        Variant::MatryoshkaBatchTopK {
            k,
            k_aux: default_k_aux(),
            aux_coeff: default_aux_coeff(),
            aux_input: AuxInput::Relu,
            threshold_lr: default_threshold_lr(),
            prefix_fractions: default_prefix_fractions(),
        }
    }

    /// JumpReLU with SAELens' bandwidth and initial threshold.
    pub fn jump_relu(l0_coeff: f64) -> Self {
        Variant::JumpRelu {
            l0_coeff,
            bandwidth: default_bandwidth(),
            init_threshold: default_init_threshold(),
        }
    }

    /// Whether decoder rows are kept at unit norm (gradient projection + renormalisation).
    pub fn unit_norm_decoder(&self) -> bool {
        !matches!(self, Variant::NormWeightedL1 { .. })
    }
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

fn invalid(key: &str, rule: &str, value: impl std::fmt::Display) -> SaeError {
    SaeError::InvalidKey {
        key: key.to_string(),
        rule: rule.to_string(),
        value: value.to_string(),
    }
}

fn positive_finite(key: &str, value: f64) -> Result<(), SaeError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(invalid(key, "a finite number > 0", value))
    }
}

fn non_negative_finite(key: &str, value: f64) -> Result<(), SaeError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(invalid(key, "a finite number >= 0", value))
    }
}

fn at_least_one(key: &str, value: usize) -> Result<(), SaeError> {
    if value >= 1 {
        Ok(())
    } else {
        Err(invalid(key, "at least 1", value))
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
        match &self.variant {
            Variant::L1 { l1_coeff }
            | Variant::NormWeightedL1 { l1_coeff }
            | Variant::Gated { l1_coeff } => non_negative_finite("variant.l1_coeff", *l1_coeff)?,
            Variant::TopK { k, .. }
            | Variant::BatchTopK { k, .. }
            | Variant::MatryoshkaBatchTopK { k, .. } => {
                if *k == 0 || *k > self.d_sae {
                    return Err(invalid(
                        "variant.k",
                        &format!("between 1 and d_sae = {}", self.d_sae),
                        k,
                    ));
                }
            }
            Variant::JumpRelu {
                l0_coeff,
                bandwidth,
                init_threshold,
            } => {
                non_negative_finite("variant.l0_coeff", *l0_coeff)?;
                positive_finite("variant.bandwidth", *bandwidth)?;
                positive_finite("variant.init_threshold", *init_threshold)?;
            }
        }
        if let Some((k_aux, aux_coeff, _)) = self.variant.aux_k() {
            at_least_one("variant.k_aux", k_aux)?;
            non_negative_finite("variant.aux_coeff", aux_coeff)?;
        }
        if let Variant::BatchTopK { threshold_lr, .. }
        | Variant::MatryoshkaBatchTopK { threshold_lr, .. } = &self.variant
        {
            if !(*threshold_lr > 0.0 && *threshold_lr <= 1.0) {
                return Err(invalid("variant.threshold_lr", "in (0, 1]", threshold_lr));
            }
        }
        if let Variant::MatryoshkaBatchTopK {
            prefix_fractions, ..
        } = &self.variant
        {
            let widths = self.variant.prefix_widths(self.d_sae);
            let increasing = widths.windows(2).all(|w| w[0] < w[1]);
            let inside = prefix_fractions
                .iter()
                .all(|f| f.is_finite() && *f > 0.0 && *f < 1.0);
            if !increasing || !inside || widths.first() == Some(&0) {
                return Err(invalid(
                    "variant.prefix_fractions",
                    &format!(
                        "strictly increasing fractions in (0, 1) whose prefixes of d_sae = {} are distinct and non-empty",
                        self.d_sae
                    ),
                    format!("{prefix_fractions:?}"),
                ));
            }
        }
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
        if let LrSchedule::StepLr { step_epochs, gamma } = &self.lr_schedule {
            at_least_one("lr_schedule.step_epochs", *step_epochs)?;
            positive_finite("lr_schedule.gamma", *gamma)?;
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

    /// The architecture's name: the variant's for an SAE; for a transcoder
    /// SAELens' names (`transcoder`, `skip_transcoder` for the L1 variant) or
    /// the variant's before them (`topk_skip_transcoder`).
    pub fn architecture_name(&self) -> String {
        let variant = self.variant.architecture().name();
        match self.transcoder {
            None => variant.to_string(),
            Some(t) => {
                let kind = if t.skip {
                    "skip_transcoder"
                } else {
                    "transcoder"
                };
                match self.variant {
                    Variant::L1 { .. } => kind.to_string(),
                    _ => format!("{variant}_{kind}"),
                }
            }
        }
    }

    /// Learning rate during `epoch` (0-based).
    pub fn lr_at_epoch(&self, epoch: usize) -> f64 {
        match &self.lr_schedule {
            LrSchedule::Constant => self.optimizer.lr,
            LrSchedule::StepLr { step_epochs, gamma } => {
                self.optimizer.lr * gamma.powi((epoch / step_epochs) as i32)
            }
        }
    }

    /// Optimisation steps in one epoch over `rows` rows (the last partial batch counts).
    pub fn steps_per_epoch(&self, rows: usize) -> usize {
        rows.div_ceil(self.batch_size)
    }

    /// Multiplier on `sum |acts|` (before any decoder-norm weighting) for a batch of `rows`.
    pub(crate) fn l1_scale(&self, rows: usize) -> f64 {
        let coeff = match self.variant {
            Variant::L1 { l1_coeff }
            | Variant::NormWeightedL1 { l1_coeff }
            | Variant::Gated { l1_coeff } => l1_coeff,
            _ => 0.0,
        };
        match self.l1_reduction {
            Reduction::Sum => coeff,
            Reduction::Mean => coeff / rows as f64,
        }
    }
}
