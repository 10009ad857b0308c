//! The notebook's SAE, corrected: ReLU, an L1 penalty, unit-norm decoder rows.

use serde::{Deserialize, Serialize};

use super::{
    non_negative_finite, Activation, ArchitectureAxes, ArchitectureSpec, AuxInput, Coordinates,
    Penalty, SaeLensArchitecture,
};
use crate::config::{DecoderBiasInit, EncoderInit};
use crate::SaeError;

/// The notebook's coefficient.
pub(super) const DEFAULT_L1_COEFF: f64 = 3e-3;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L1 {
    pub l1_coeff: f64,
}

impl L1 {
    pub fn new(l1_coeff: f64) -> Self {
        L1 { l1_coeff }
    }
}

impl ArchitectureSpec for L1 {
    fn name() -> &'static str {
        "l1"
    }

    fn from_axes(axes: &ArchitectureAxes) -> Vec<Self> {
        axes.l1_coeff.iter().map(|&c| L1::new(c)).collect()
    }

    fn label(&self) -> String {
        format!("l1-{}", self.l1_coeff)
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
        Penalty::L1 {
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
        true
    }

    fn saelens_architecture(&self) -> SaeLensArchitecture {
        SaeLensArchitecture::Standard
    }

    /// The notebook's.
    fn paper_init(&self) -> (EncoderInit, DecoderBiasInit) {
        (EncoderInit::Uniform, DecoderBiasInit::Zero)
    }

    fn relative_step_cost(&self) -> f64 {
        1.0
    }
}
