//! Splicing: the MLP with one layer's activations replaced, scored on labels.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::{Evaluation, Mlp};
use crate::{layer_width, MlpError};

/// Cross-entropy and accuracy with a layer replaced by a reconstruction, by
/// zeros and by a mean row, and the CE recovered against both ablations:
/// `(CE_ablated - CE_spliced) / (CE_ablated - CE_clean)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpliceMetrics {
    pub clean: Evaluation,
    pub spliced: Evaluation,
    pub zero_ablated: Evaluation,
    pub mean_ablated: Evaluation,
    pub ce_recovered_zero: f64,
    pub ce_recovered_mean: f64,
}

impl Mlp {
    /// Scores `layer` as it is (`clean`, row-major `[rows, width]`), replaced by
    /// `replacement`, by zeros and by `mean_row` repeated, against `labels`.
    pub fn splice_metrics(
        &self,
        layer: &str,
        clean: &[f32],
        replacement: &[f32],
        mean_row: &[f32],
        labels: &[u8],
    ) -> Result<SpliceMetrics, MlpError> {
        let width = layer_width(layer)
            .ok_or_else(|| MlpError::Input(format!("{layer:?} is not a layer of the MLP")))?;
        let rows = labels.len();
        if clean.len() != rows * width
            || replacement.len() != clean.len()
            || mean_row.len() != width
        {
            return Err(MlpError::Input(format!(
                "splicing {layer} needs {rows} rows of {width} values (and a mean row of {width}); got {}, {} and {}",
                clean.len(),
                replacement.len(),
                mean_row.len()
            )));
        }
        let score = |values: &[f32]| -> Result<Evaluation, MlpError> {
            let tensor = Tensor::from_slice(values, (rows, width), &Device::Cpu)?;
            Mlp::score(&self.logits_from(layer, &tensor)?, labels)
        };
        let clean = score(clean)?;
        let spliced = score(replacement)?;
        let zero_ablated = score(&vec![0.0; rows * width])?;
        let mean_ablated = score(&mean_row.repeat(rows))?;
        let recovered = |ablated: f64| (ablated - spliced.loss) / (ablated - clean.loss);
        Ok(SpliceMetrics {
            clean,
            spliced,
            zero_ablated,
            mean_ablated,
            ce_recovered_zero: recovered(zero_ablated.loss),
            ce_recovered_mean: recovered(mean_ablated.loss),
        })
    }
}
