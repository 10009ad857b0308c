//! Matryoshka BatchTopK (Bussmann et al. 2025): BatchTopK whose loss also
//! sums the reconstruction error of each nested prefix of the dictionary.

use serde::{Deserialize, Serialize};

use super::batchtopk::{default_threshold_lr, DEFAULT_THRESHOLD_LR};
use super::topk::{default_aux_coeff, DEFAULT_AUX_COEFF};
use super::{
    invalid, validate_aux_k, validate_k, validate_threshold_lr, Activation, ArchitectureAxes,
    ArchitectureSpec, AuxInput, Coordinates, Penalty, SaeLensArchitecture,
};
use crate::config::{DecoderBiasInit, EncoderInit};
use crate::SaeError;

pub(super) const DEFAULT_PREFIX_FRACTIONS: [f64; 4] = [0.0625, 0.125, 0.25, 0.5];

fn default_prefix_fractions() -> Vec<f64> {
    DEFAULT_PREFIX_FRACTIONS.to_vec()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatryoshkaBatchTopK {
    pub k: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k_aux: Option<usize>,
    #[serde(default = "default_aux_coeff")]
    pub aux_coeff: f64,
    #[serde(default)]
    pub aux_input: AuxInput,
    #[serde(default = "default_threshold_lr")]
    pub threshold_lr: f64,
    /// The prefixes, as fractions of `d_sae` (strictly increasing, below 1);
    /// the whole dictionary is always the last one.
    #[serde(default = "default_prefix_fractions")]
    pub prefix_fractions: Vec<f64>,
}

impl MatryoshkaBatchTopK {
    /// With the default AuxK, threshold and prefix settings.
    pub fn new(k: usize) -> Self {
        MatryoshkaBatchTopK {
            k,
            k_aux: None,
            aux_coeff: DEFAULT_AUX_COEFF,
            aux_input: AuxInput::Relu,
            threshold_lr: DEFAULT_THRESHOLD_LR,
            prefix_fractions: default_prefix_fractions(),
        }
    }
}

impl ArchitectureSpec for MatryoshkaBatchTopK {
    fn name() -> &'static str {
        "matryoshka_batchtopk"
    }

    fn from_axes(axes: &ArchitectureAxes) -> Vec<Self> {
        axes.k
            .iter()
            .map(|&k| MatryoshkaBatchTopK {
                k,
                k_aux: axes.k_aux,
                aux_coeff: axes.aux_coeff,
                aux_input: axes.aux_input,
                threshold_lr: axes.threshold_lr,
                prefix_fractions: axes.prefix_fractions.clone(),
            })
            .collect()
    }

    fn label(&self) -> String {
        format!("mbtopk-k{}", self.k)
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
        validate_threshold_lr(self.threshold_lr)?;
        let widths: Vec<usize> = self
            .prefix_fractions
            .iter()
            .map(|f| (f * d_sae as f64).round() as usize)
            .collect();
        let increasing = widths.windows(2).all(|w| w[0] < w[1]);
        let inside = self
            .prefix_fractions
            .iter()
            .all(|f| f.is_finite() && *f > 0.0 && *f < 1.0);
        if !increasing || !inside || widths.first() == Some(&0) {
            return Err(invalid(
                "architecture.prefix_fractions",
                &format!(
                    "strictly increasing fractions in (0, 1) whose prefixes of d_sae = {d_sae} are distinct and non-empty"
                ),
                format!("{:?}", self.prefix_fractions),
            ));
        }
        Ok(())
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
        &self.prefix_fractions
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
        1.1
    }
}
