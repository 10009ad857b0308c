//! Gated (Rajamanoharan et al. 2024): a gate (`pre > 0`, L1 on its ReLU)
//! and a magnitude path sharing the gate's directions, rescaled per feature
//! (`exp(r_mag)`, own bias `b_mag`); an auxiliary loss makes the gate's ReLU
//! reconstruct through the frozen decoder. Its `b_enc` is the gate's bias
//! (SAELens' `b_gate`).

use serde::{Deserialize, Serialize};

use super::{
    non_negative_finite, Activation, ArchitectureAxes, ArchitectureSpec, AuxInput, Coordinates,
    Penalty, SaeLensArchitecture,
};
use crate::config::{DecoderBiasInit, EncoderInit};
use crate::SaeError;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gated {
    pub l1_coeff: f64,
}

impl Gated {
    pub fn new(l1_coeff: f64) -> Self {
        Gated { l1_coeff }
    }
}

impl ArchitectureSpec for Gated {
    fn name() -> &'static str {
        "gated"
    }

    fn from_axes(axes: &ArchitectureAxes) -> Vec<Self> {
        axes.l1_coeff.iter().map(|&c| Gated::new(c)).collect()
    }

    fn label(&self) -> String {
        format!("gated-{}", self.l1_coeff)
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
        Activation::Gated
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
        SaeLensArchitecture::Gated
    }

    /// Tied, b_dec at zero (SAELens, dictionary_learning).
    fn paper_init(&self) -> (EncoderInit, DecoderBiasInit) {
        (EncoderInit::Tied, DecoderBiasInit::Zero)
    }

    fn relative_step_cost(&self) -> f64 {
        1.8
    }
}
