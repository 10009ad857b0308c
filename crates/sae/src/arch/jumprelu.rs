//! JumpReLU (Rajamanoharan et al. 2024): a learned threshold per feature, an
//! L0 penalty, straight-through pseudo-derivatives of width `bandwidth`.

use serde::{Deserialize, Serialize};

use super::{
    non_negative_finite, positive_finite, Activation, ArchitectureAxes, ArchitectureSpec, AuxInput,
    Coordinates, Penalty, SaeLensArchitecture,
};
use crate::config::{DecoderBiasInit, EncoderInit};
use crate::SaeError;

/// The L0 weight on fc2.pre (see saelab.toml).
pub(super) const DEFAULT_L0_COEFF: f64 = 0.1;
/// SAELens' bandwidth and initial threshold.
pub(super) const DEFAULT_BANDWIDTH: f64 = 0.05;
pub(super) const DEFAULT_INIT_THRESHOLD: f64 = 0.01;

fn default_bandwidth() -> f64 {
    DEFAULT_BANDWIDTH
}

fn default_init_threshold() -> f64 {
    DEFAULT_INIT_THRESHOLD
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JumpRelu {
    pub l0_coeff: f64,
    #[serde(default = "default_bandwidth")]
    pub bandwidth: f64,
    #[serde(default = "default_init_threshold")]
    pub init_threshold: f64,
}

impl JumpRelu {
    /// With SAELens' bandwidth and initial threshold.
    pub fn new(l0_coeff: f64) -> Self {
        JumpRelu {
            l0_coeff,
            bandwidth: DEFAULT_BANDWIDTH,
            init_threshold: DEFAULT_INIT_THRESHOLD,
        }
    }
}

impl ArchitectureSpec for JumpRelu {
    fn name() -> &'static str {
        "jumprelu"
    }

    fn from_axes(axes: &ArchitectureAxes) -> Vec<Self> {
        axes.l0_coeff
            .iter()
            .map(|&l0_coeff| JumpRelu {
                l0_coeff,
                bandwidth: axes.bandwidth,
                init_threshold: axes.init_threshold,
            })
            .collect()
    }

    fn label(&self) -> String {
        format!("jumprelu-{}", self.l0_coeff)
    }

    fn coordinates(&self) -> Coordinates {
        Coordinates {
            l0_coeff: Some(self.l0_coeff),
            ..Coordinates::default()
        }
    }

    fn validate(&self, _d_sae: usize) -> Result<(), SaeError> {
        non_negative_finite("architecture.l0_coeff", self.l0_coeff)?;
        positive_finite("architecture.bandwidth", self.bandwidth)?;
        positive_finite("architecture.init_threshold", self.init_threshold)
    }

    fn activation(&self) -> Activation {
        Activation::JumpRelu {
            bandwidth: self.bandwidth,
            init_threshold: self.init_threshold,
        }
    }

    fn penalty(&self) -> Penalty {
        Penalty::L0 {
            coeff: self.l0_coeff,
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
        SaeLensArchitecture::JumpRelu
    }

    /// Tied, b_dec at zero (SAELens, dictionary_learning).
    fn paper_init(&self) -> (EncoderInit, DecoderBiasInit) {
        (EncoderInit::Tied, DecoderBiasInit::Zero)
    }

    fn relative_step_cost(&self) -> f64 {
        1.2
    }
}
