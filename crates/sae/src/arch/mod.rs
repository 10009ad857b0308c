//! The SAE architectures, one file each.
//!
//! An architecture file owns its settings (the struct `saelab.toml`'s
//! `sae.architecture` builds and `saelab_config.json` stores), their defaults
//! and validation, its name and point label, the sweep axes it reads, and
//! how it combines the trainers' mechanisms ([`Activation`], [`Penalty`],
//! AuxK, nested prefixes, the decoder constraint), which fixes its forward
//! pass, loss and gradients on both training paths, its initialisation,
//! its tensors and its SAELens layout. The trainers implement each mechanism
//! once, with exhaustive matches: a new architecture made of existing
//! mechanisms is one file here and one line in the list below; one that
//! needs a new mechanism adds a value to its enum, and the compiler names
//! every kernel that must learn it.
//!
//! A transcoder is not an architecture: it is the input/output axis
//! ([`crate::Transcoder`]) any architecture trains on.

use serde::{Deserialize, Serialize};

use crate::config::{DecoderBiasInit, EncoderInit};
use crate::SaeError;

/// What an architecture file implements.
pub trait ArchitectureSpec {
    /// Its value in `sae.architecture`.
    fn name() -> &'static str
    where
        Self: Sized;
    /// One architecture per value of the sweep axis it reads.
    fn from_axes(axes: &ArchitectureAxes) -> Vec<Self>
    where
        Self: Sized;
    /// Its part of a sweep point's name (`l1-0.003`, `topk-k32`).
    fn label(&self) -> String;
    /// Its value on the sweep table's architecture columns.
    fn coordinates(&self) -> Coordinates;
    /// Refuses settings out of range, naming the key (`architecture.k`).
    fn validate(&self, d_sae: usize) -> Result<(), SaeError>;
    /// How features are selected and what they output.
    fn activation(&self) -> Activation;
    /// The sparsity term of the loss.
    fn penalty(&self) -> Penalty;
    /// AuxK's settings `(k_aux, aux_coeff, aux_input)`, to read or change;
    /// `None` where the architecture has no AuxK loss.
    fn aux_k_mut(&mut self) -> Option<(&mut Option<usize>, &mut f64, &mut AuxInput)>;
    /// Matryoshka's nested prefixes as fractions of `d_sae` (empty: none).
    fn prefix_fractions(&self) -> &[f64];
    /// Whether decoder rows are kept at unit norm (gradient projection + renormalisation).
    fn unit_norm_decoder(&self) -> bool;
    /// SAELens' `architecture` for an SAE of this kind.
    fn saelens_architecture(&self) -> SaeLensArchitecture;
    /// How its paper (and reference code) starts it: `sae.encoder_init` and
    /// `sae.b_dec_init`'s default "architecture".
    fn paper_init(&self) -> (EncoderInit, DecoderBiasInit);
    /// A step's cost relative to L1's at the same widths, for the
    /// longest-first schedule (from `cargo xtask bench sae`'s s/epoch).
    fn relative_step_cost(&self) -> f64;
}

/// Feature selection and output: the trainers implement each once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `relu(pre)`.
    Relu,
    /// The `k` largest pre-activations of each row, ReLU'd.
    TopK { k: usize },
    /// The `k * rows` largest ReLU'd pre-activations of the batch; inference
    /// uses a threshold, a running mean (weight `threshold_lr`) of each
    /// batch's smallest selected activation.
    BatchTopK { k: usize, threshold_lr: f64 },
    /// `pre` where it exceeds a learned per-feature threshold (starting at
    /// `init_threshold`), straight-through pseudo-derivatives of width
    /// `bandwidth` for the threshold.
    JumpRelu { bandwidth: f64, init_threshold: f64 },
    /// A gate (`pre > 0`) and a magnitude path sharing its directions
    /// (`exp(r_mag) * (pre - b_gate) + b_mag`); the gate's ReLU also
    /// reconstructs through the frozen decoder, and the penalty is on it.
    Gated,
}

/// The sparsity term of the loss (reduced over the batch by `l1_reduction`, except L0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Penalty {
    None,
    /// `coeff * sum |acts|` (Gated: of its gate's ReLU).
    L1 {
        coeff: f64,
    },
    /// `coeff * sum |acts_f| * ||W_dec[f]||`.
    NormWeightedL1 {
        coeff: f64,
    },
    /// `coeff * mean over rows of the active count`; its gradient reaches a
    /// learned threshold only (JumpReLU's pseudo-derivative).
    L0 {
        coeff: f64,
    },
}

impl Penalty {
    /// The L1 coefficient (0 for the others).
    pub fn l1_coeff(self) -> f64 {
        match self {
            Penalty::L1 { coeff } | Penalty::NormWeightedL1 { coeff } => coeff,
            Penalty::None | Penalty::L0 { .. } => 0.0,
        }
    }
}

/// SAELens' name for an architecture's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaeLensArchitecture {
    Standard,
    TopK {
        k: usize,
    },
    /// Also what saelab saves the BatchTopK family as: `jumprelu` with its
    /// inference threshold on every feature, as SAELens saves it.
    JumpRelu,
    Gated,
}

/// An architecture's coordinates on the sweep table (null where they do not apply).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Coordinates {
    pub l1_coeff: Option<f64>,
    pub k: Option<usize>,
    pub l0_coeff: Option<f64>,
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

/// The settings every architecture is drawn from in a sweep: the list axes
/// (one architecture per value) and the shared scalars. `Default` holds
/// every default, which `saelab.toml` reads from here.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchitectureAxes {
    pub l1_coeff: Vec<f64>,
    pub k: Vec<usize>,
    pub l0_coeff: Vec<f64>,
    /// AuxK's latents; `None`: half the input width (see [`default_k_aux`]).
    pub k_aux: Option<usize>,
    pub aux_coeff: f64,
    pub aux_input: AuxInput,
    pub threshold_lr: f64,
    pub prefix_fractions: Vec<f64>,
    pub bandwidth: f64,
    pub init_threshold: f64,
}

impl Default for ArchitectureAxes {
    fn default() -> Self {
        ArchitectureAxes {
            l1_coeff: vec![l1::DEFAULT_L1_COEFF],
            k: vec![topk::DEFAULT_K],
            l0_coeff: vec![jumprelu::DEFAULT_L0_COEFF],
            k_aux: None,
            aux_coeff: topk::DEFAULT_AUX_COEFF,
            aux_input: AuxInput::Relu,
            threshold_lr: batchtopk::DEFAULT_THRESHOLD_LR,
            prefix_fractions: matryoshka::DEFAULT_PREFIX_FRACTIONS.to_vec(),
            bandwidth: jumprelu::DEFAULT_BANDWIDTH,
            init_threshold: jumprelu::DEFAULT_INIT_THRESHOLD,
        }
    }
}

/// AuxK's latents when `k_aux` is not set: half the input width, as the
/// TopK paper's `d_model / 2`.
pub fn default_k_aux(d_in: usize) -> usize {
    (d_in / 2).max(1)
}

/// Declares the architectures: each line, `file::Type`, is the file's
/// module, its type re-exported, and a variant of [`Architecture`] and
/// [`ArchitectureKind`] named after the type; the dispatch below is
/// generated, so no other code lists them.
macro_rules! architectures {
    ($($module:ident::$variant:ident),* $(,)?) => {
        $(mod $module;
        pub use $module::$variant;)*

        /// An SAE architecture with its settings (serialised with `kind`, the
        /// variant's name, beside its settings).
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind")]
        pub enum Architecture {
            $($variant($variant)),*
        }

        /// An architecture without its settings: what `sae.architecture` lists.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum ArchitectureKind {
            $($variant),*
        }

        impl ArchitectureKind {
            pub const ALL: &'static [ArchitectureKind] = &[$(ArchitectureKind::$variant),*];

            /// The value `sae.architecture` takes for it.
            pub fn name(self) -> &'static str {
                match self {
                    $(ArchitectureKind::$variant => <$variant as ArchitectureSpec>::name()),*
                }
            }

            /// One architecture per value of the sweep axis it reads.
            pub fn architectures(self, axes: &ArchitectureAxes) -> Vec<Architecture> {
                match self {
                    $(ArchitectureKind::$variant => <$variant as ArchitectureSpec>::from_axes(axes)
                        .into_iter()
                        .map(Architecture::$variant)
                        .collect()),*
                }
            }
        }

        impl Architecture {
            pub fn kind(&self) -> ArchitectureKind {
                match self {
                    $(Architecture::$variant(_) => ArchitectureKind::$variant),*
                }
            }

            fn spec(&self) -> &dyn ArchitectureSpec {
                match self {
                    $(Architecture::$variant(a) => a),*
                }
            }

            fn spec_mut(&mut self) -> &mut dyn ArchitectureSpec {
                match self {
                    $(Architecture::$variant(a) => a),*
                }
            }
        }

        $(impl From<$variant> for Architecture {
            fn from(a: $variant) -> Self {
                Architecture::$variant(a)
            }
        })*
    };
}

architectures! {
    l1::L1,
    topk::TopK,
    norm_weighted_l1::NormWeightedL1,
    batchtopk::BatchTopK,
    matryoshka::MatryoshkaBatchTopK,
    jumprelu::JumpRelu,
    gated::Gated,
}

impl Serialize for ArchitectureKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ArchitectureKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        ArchitectureKind::named(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown architecture `{name}`, expected one of {}",
                ArchitectureKind::listed()
            ))
        })
    }
}

impl ArchitectureKind {
    pub fn named(name: &str) -> Option<ArchitectureKind> {
        ArchitectureKind::ALL
            .iter()
            .copied()
            .find(|a| a.name() == name)
    }

    /// Every name, as `` `l1`, `topk`, ... `` for messages.
    pub fn listed() -> String {
        let names: Vec<String> = ArchitectureKind::ALL
            .iter()
            .map(|a| format!("`{}`", a.name()))
            .collect();
        names.join(", ")
    }
}

impl Default for Architecture {
    /// The notebook's SAE.
    fn default() -> Self {
        L1::new(l1::DEFAULT_L1_COEFF).into()
    }
}

impl Architecture {
    /// TopK with the default AuxK settings.
    pub fn top_k(k: usize) -> Self {
        TopK::new(k).into()
    }

    /// BatchTopK with the default AuxK and threshold settings.
    pub fn batch_top_k(k: usize) -> Self {
        BatchTopK::new(k).into()
    }

    /// Matryoshka BatchTopK with the default prefixes.
    pub fn matryoshka_batch_top_k(k: usize) -> Self {
        MatryoshkaBatchTopK::new(k).into()
    }

    /// JumpReLU with SAELens' bandwidth and initial threshold.
    pub fn jump_relu(l0_coeff: f64) -> Self {
        JumpRelu::new(l0_coeff).into()
    }

    pub fn l1(l1_coeff: f64) -> Self {
        L1::new(l1_coeff).into()
    }

    pub fn norm_weighted_l1(l1_coeff: f64) -> Self {
        NormWeightedL1::new(l1_coeff).into()
    }

    pub fn gated(l1_coeff: f64) -> Self {
        Gated::new(l1_coeff).into()
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    pub fn label(&self) -> String {
        self.spec().label()
    }

    /// The sweep coordinates it adds to the sweep table, by config key; the
    /// keys of every architecture appear, null where they do not apply.
    pub fn sweep_coordinates(&self) -> [(&'static str, serde_json::Value); 3] {
        let c = self.spec().coordinates();
        [
            ("l1_coeff", c.l1_coeff.into()),
            ("k", c.k.into()),
            ("l0_coeff", c.l0_coeff.into()),
        ]
    }

    pub fn validate(&self, d_sae: usize) -> Result<(), SaeError> {
        self.spec().validate(d_sae)
    }

    pub fn activation(&self) -> Activation {
        self.spec().activation()
    }

    pub fn penalty(&self) -> Penalty {
        self.spec().penalty()
    }

    /// AuxK's settings `(k_aux, aux_coeff, aux_input)` for an input `d_in`
    /// wide (an unset `k_aux` is [`default_k_aux`]); `None` without AuxK.
    pub fn aux_k(&self, d_in: usize) -> Option<(usize, f64, AuxInput)> {
        let mut architecture = self.clone();
        architecture
            .aux_k_mut()
            .map(|(k_aux, aux_coeff, aux_input)| {
                (
                    k_aux.unwrap_or_else(|| default_k_aux(d_in)),
                    *aux_coeff,
                    *aux_input,
                )
            })
    }

    /// AuxK's settings, to change.
    pub fn aux_k_mut(&mut self) -> Option<(&mut Option<usize>, &mut f64, &mut AuxInput)> {
        self.spec_mut().aux_k_mut()
    }

    /// The same architecture with AuxK on `latents` latents (no change without AuxK).
    pub fn with_k_aux(mut self, latents: usize) -> Self {
        if let Some((k_aux, _, _)) = self.aux_k_mut() {
            *k_aux = Some(latents);
        }
        self
    }

    /// Whether the SAE carries a per-feature inference threshold
    /// (`Sae::threshold`, SAELens' `jumprelu` layout).
    pub fn has_threshold(&self) -> bool {
        match self.activation() {
            Activation::BatchTopK { .. } | Activation::JumpRelu { .. } => true,
            Activation::Relu | Activation::TopK { .. } | Activation::Gated => false,
        }
    }

    /// The start of a learned per-feature threshold (JumpReLU's, trained
    /// as its log); `None` where there is none to learn.
    pub fn learned_threshold(&self) -> Option<f64> {
        match self.activation() {
            Activation::JumpRelu { init_threshold, .. } => Some(init_threshold),
            Activation::Relu
            | Activation::TopK { .. }
            | Activation::BatchTopK { .. }
            | Activation::Gated => None,
        }
    }

    /// Whether the SAE has Gated's magnitude path (`Sae::r_mag`, `b_mag`).
    pub fn is_gated(&self) -> bool {
        self.activation() == Activation::Gated
    }

    /// The nested prefix widths below `d_sae`, ascending (empty: none).
    pub fn prefix_widths(&self, d_sae: usize) -> Vec<usize> {
        self.spec()
            .prefix_fractions()
            .iter()
            .map(|f| (f * d_sae as f64).round() as usize)
            .collect()
    }

    pub fn unit_norm_decoder(&self) -> bool {
        self.spec().unit_norm_decoder()
    }

    pub fn saelens_architecture(&self) -> SaeLensArchitecture {
        self.spec().saelens_architecture()
    }

    pub fn relative_step_cost(&self) -> f64 {
        self.spec().relative_step_cost()
    }

    pub fn paper_init(&self) -> (EncoderInit, DecoderBiasInit) {
        self.spec().paper_init()
    }
}

pub(crate) fn invalid(key: &str, rule: &str, value: impl std::fmt::Display) -> SaeError {
    SaeError::InvalidKey {
        key: key.to_string(),
        rule: rule.to_string(),
        value: value.to_string(),
    }
}

pub(crate) fn positive_finite(key: &str, value: f64) -> Result<(), SaeError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(invalid(key, "a finite number > 0", value))
    }
}

pub(crate) fn non_negative_finite(key: &str, value: f64) -> Result<(), SaeError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(invalid(key, "a finite number >= 0", value))
    }
}

pub(crate) fn at_least_one(key: &str, value: usize) -> Result<(), SaeError> {
    if value >= 1 {
        Ok(())
    } else {
        Err(invalid(key, "at least 1", value))
    }
}

/// The top-k family's `k`: between 1 and `d_sae`.
fn validate_k(k: usize, d_sae: usize) -> Result<(), SaeError> {
    if k == 0 || k > d_sae {
        return Err(invalid(
            "architecture.k",
            &format!("between 1 and d_sae = {d_sae}"),
            k,
        ));
    }
    Ok(())
}

/// AuxK's settings, shared by the top-k family.
fn validate_aux_k(k_aux: Option<usize>, aux_coeff: f64) -> Result<(), SaeError> {
    if let Some(k_aux) = k_aux {
        at_least_one("architecture.k_aux", k_aux)?;
    }
    non_negative_finite("architecture.aux_coeff", aux_coeff)
}

fn validate_threshold_lr(threshold_lr: f64) -> Result<(), SaeError> {
    if !(threshold_lr > 0.0 && threshold_lr <= 1.0) {
        return Err(invalid(
            "architecture.threshold_lr",
            "in (0, 1]",
            threshold_lr,
        ));
    }
    Ok(())
}
