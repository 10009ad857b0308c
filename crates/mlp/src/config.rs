//! Training configuration; the defaults are the notebook's.

use serde::{Deserialize, Serialize};

use crate::MlpError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Plain SGD, no momentum, as the notebook.
    Sgd,
    /// Adam with PyTorch's defaults (betas 0.9/0.999, eps 1e-8).
    Adam,
}

/// A partial `[mlp]` table takes the other keys' defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub optimizer: Optimizer,
    pub lr: f64,
    pub batch_size: usize,
    pub epochs: usize,
    pub shuffle: bool,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            optimizer: Optimizer::Sgd,
            lr: 1e-3,
            batch_size: 64,
            epochs: 5,
            shuffle: true,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// Refuses values no run could use, naming the key.
    pub fn validate(&self) -> Result<(), MlpError> {
        let bad = |key: &str, why: String| Err(MlpError::Config(format!("mlp.{key} {why}")));
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 10.0) {
            return bad(
                "lr",
                format!("= {} is out of range: it must be in (0, 10]", self.lr),
            );
        }
        if self.batch_size == 0 || self.batch_size > 60_000 {
            return bad(
                "batch_size",
                format!(
                    "= {} is out of range: it must be in 1..=60000",
                    self.batch_size
                ),
            );
        }
        if self.epochs == 0 || self.epochs > 10_000 {
            return bad(
                "epochs",
                format!("= {} is out of range: it must be in 1..=10000", self.epochs),
            );
        }
        Ok(())
    }
}
