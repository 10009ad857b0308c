//! BatchTopK (Bussmann et al. 2024): the `k * rows` largest ReLU'd
//! pre-activations of the whole batch; AuxK as TopK. Inference uses a
//! threshold estimated during training (a running mean of the smallest
//! selected activation per batch).

use serde::{Deserialize, Serialize};

use super::topk::{default_aux_coeff, DEFAULT_AUX_COEFF};
use super::{
    validate_aux_k, validate_k, validate_threshold_lr, Activation, ArchitectureAxes,
    ArchitectureSpec, AuxInput, Coordinates, Penalty, SaeLensArchitecture,
};
use crate::config::{DecoderBiasInit, EncoderInit};
use crate::SaeError;

/// SAELens' weight of each batch in the running threshold.
pub(super) const DEFAULT_THRESHOLD_LR: f64 = 0.01;

pub(super) fn default_threshold_lr() -> f64 {
    DEFAULT_THRESHOLD_LR
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchTopK {
    pub k: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k_aux: Option<usize>,
    #[serde(default = "default_aux_coeff")]
    pub aux_coeff: f64,
    #[serde(default)]
    pub aux_input: AuxInput,
    /// Weight of each batch's smallest selected activation in the running threshold.
    #[serde(default = "default_threshold_lr")]
    pub threshold_lr: f64,
}

impl BatchTopK {
    /// With the default AuxK and threshold settings.
    pub fn new(k: usize) -> Self {
        BatchTopK {
            k,
            k_aux: None,
            aux_coeff: DEFAULT_AUX_COEFF,
            aux_input: AuxInput::Relu,
            threshold_lr: DEFAULT_THRESHOLD_LR,
        }
    }
}

impl ArchitectureSpec for BatchTopK {
    fn name() -> &'static str {
        "batchtopk"
    }

    fn from_axes(axes: &ArchitectureAxes) -> Vec<Self> {
        axes.k
            .iter()
            .map(|&k| BatchTopK {
                k,
                k_aux: axes.k_aux,
                aux_coeff: axes.aux_coeff,
                aux_input: axes.aux_input,
                threshold_lr: axes.threshold_lr,
            })
            .collect()
    }

    fn label(&self) -> String {
        format!("btopk-k{}", self.k)
    }

    fn coordinates(&self) -> Coordinates {
        Coordinates {
            k: Some(self.k),
            ..Coordinates::default()
        }
    }

    fn validate(&self, d_sae: usize) -> Result<(), SaeError> {
        validate_k(self.k, d_sae)?;
        validate_aux_k(self.k_aux, self.aux_coeff)?;
        validate_threshold_lr(self.threshold_lr)
    }

    fn activation(&self) -> Activation {
        Activation::BatchTopK {
            k: self.k,
            threshold_lr: self.threshold_lr,
        }
    }

    fn penalty(&self) -> Penalty {
        Penalty::None
    }

    fn aux_k_mut(&mut self) -> Option<(&mut Option<usize>, &mut f64, &mut AuxInput)> {
        Some((&mut self.k_aux, &mut self.aux_coeff, &mut self.aux_input))
    }

    fn prefix_fractions(&self) -> &[f64] {
        &[]
    }

    fn unit_norm_decoder(&self) -> bool {
        true
    }

    fn saelens_architecture(&self) -> SaeLensArchitecture {
        SaeLensArchitecture::JumpRelu
    }

    /// As TopK.
    fn paper_init(&self) -> (EncoderInit, DecoderBiasInit) {
        (EncoderInit::Tied, DecoderBiasInit::DataMean)
    }

    fn relative_step_cost(&self) -> f64 {
        1.0
    }
}
