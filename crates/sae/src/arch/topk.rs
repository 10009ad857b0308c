//! TopK (Gao et al. 2024): the k largest pre-activations of each row,
//! ReLU'd, no penalty; AuxK reconstructs the residual from dead latents.

use serde::{Deserialize, Serialize};

use super::{
    validate_aux_k, validate_k, Activation, ArchitectureAxes, ArchitectureSpec, AuxInput,
    Coordinates, Penalty, SaeLensArchitecture,
};
use crate::config::{DecoderBiasInit, EncoderInit};
use crate::SaeError;

pub(super) const DEFAULT_K: usize = 32;
/// AuxK's weight against the reconstruction loss, as OpenAI's code (see `AuxScale`).
pub(super) const DEFAULT_AUX_COEFF: f64 = 1.0 / 32.0;

pub(super) fn default_aux_coeff() -> f64 {
    DEFAULT_AUX_COEFF
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopK {
    pub k: usize,
    /// AuxK reconstructs the residual from the `k_aux` largest dead latents;
    /// unset: half the input width ([`super::default_k_aux`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k_aux: Option<usize>,
    /// Weight of AuxK's normalised MSE, against the reconstruction loss.
    #[serde(default = "default_aux_coeff")]
    pub aux_coeff: f64,
    #[serde(default)]
    pub aux_input: AuxInput,
}

impl TopK {
    /// With the default AuxK settings.
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            k_aux: None,
            aux_coeff: DEFAULT_AUX_COEFF,
            aux_input: AuxInput::Relu,
        }
    }
}

impl ArchitectureSpec for TopK {
    fn name() -> &'static str {
        "topk"
    }

    fn from_axes(axes: &ArchitectureAxes) -> Vec<Self> {
        axes.k
            .iter()
            .map(|&k| TopK {
                k,
                k_aux: axes.k_aux,
                aux_coeff: axes.aux_coeff,
                aux_input: axes.aux_input,
            })
            .collect()
    }

    fn label(&self) -> String {
        format!("topk-k{}", self.k)
    }

    fn coordinates(&self) -> Coordinates {
        Coordinates {
            k: Some(self.k),
            ..Coordinates::default()
        }
    }

    fn validate(&self, d_sae: usize) -> Result<(), SaeError> {
        validate_k(self.k, d_sae)?;
        validate_aux_k(self.k_aux, self.aux_coeff)
    }

    fn activation(&self) -> Activation {
        Activation::TopK { k: self.k }
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
        SaeLensArchitecture::TopK { k: self.k }
    }

    /// The TopK paper's: tied, b_dec at the data's centre (the mean here,
    /// where OpenAI and dictionary_learning use the geometric median).
    fn paper_init(&self) -> (EncoderInit, DecoderBiasInit) {
        (EncoderInit::Tied, DecoderBiasInit::DataMean)
    }

    fn relative_step_cost(&self) -> f64 {
        1.0
    }
}
