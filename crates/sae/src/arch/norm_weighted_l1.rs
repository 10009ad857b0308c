//! Decoder-norm-weighted L1 (Anthropic, April 2024): the penalty on each
//! feature is scaled by its decoder row's norm, and the decoder is free.

use serde::{Deserialize, Serialize};

use super::{
    non_negative_finite, Activation, ArchitectureAxes, ArchitectureSpec, AuxInput, Coordinates,
    Penalty, SaeLensArchitecture,
};
use crate::config::{DecoderBiasInit, EncoderInit};
use crate::SaeError;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormWeightedL1 {
    pub l1_coeff: f64,
}

impl NormWeightedL1 {
    pub fn new(l1_coeff: f64) -> Self {
        NormWeightedL1 { l1_coeff }
    }
}

impl ArchitectureSpec for NormWeightedL1 {
    fn name() -> &'static str {
        "norm_weighted_l1"
    }

    fn from_axes(axes: &ArchitectureAxes) -> Vec<Self> {
        axes.l1_coeff
            .iter()
            .map(|&c| NormWeightedL1::new(c))
            .collect()
    }

    fn label(&self) -> String {
        format!("nwl1-{}", self.l1_coeff)
    }

    fn coordinates(&self) -> Coordinates {
        Coordinates {
            l1_coeff: Some(self.l1_coeff),
            ..Coordinates::default()
        }
    }

    fn validate(&self, _d_sae: usize) -> Result<(), SaeError> {
        non_negative_finite("architecture.l1_coeff", self.l1_coeff)
    }

    fn activation(&self) -> Activation {
        Activation::Relu
    }

    fn penalty(&self) -> Penalty {
        Penalty::NormWeightedL1 {
            coeff: self.l1_coeff,
        }
    }

    fn aux_k_mut(&mut self) -> Option<(&mut Option<usize>, &mut f64, &mut AuxInput)> {
        None
    }

    fn prefix_fractions(&self) -> &[f64] {
        &[]
    }

    fn unit_norm_decoder(&self) -> bool {
        false
    }

    fn saelens_architecture(&self) -> SaeLensArchitecture {
        SaeLensArchitecture::Standard
    }

    /// As L1.
    fn paper_init(&self) -> (EncoderInit, DecoderBiasInit) {
        (EncoderInit::Uniform, DecoderBiasInit::Zero)
    }

    fn relative_step_cost(&self) -> f64 {
        1.0
    }
}
