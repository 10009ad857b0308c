//! The per-SAE DataFrames (`features`, `feature_labels`, `feature_acts`,
//! `neurons`), built from the sparse encodings.

use std::path::{Path, PathBuf};

use crate::baseline::Baseline;
use crate::labelinfo;
use crate::stats::{self, UnitCounts, UnitStats};
use crate::tables::{self, SparseActs};
use crate::types::{AnalysisConfig, LayerData};
use crate::AnalysisError;

/// The per-SAE statistics and DataFrames, built from the sparse encodings.
pub struct FeatureTables {
    pub stats: Vec<UnitStats>,
    pub train_counts: UnitCounts,
    pub frames: TableFrames,
    pub nonzeros: usize,
}

/// The four tables, apart from the statistics so that they can be written
/// while the statistics are read.
pub struct TableFrames {
    pub features: polars::prelude::DataFrame,
    pub feature_labels: polars::prelude::DataFrame,
    pub feature_acts: polars::prelude::DataFrame,
    pub neurons: polars::prelude::DataFrame,
}

impl FeatureTables {
    /// All four tables from the non-zero activations of the train and test rows.
    pub fn build(
        sae: &sae::Sae,
        baseline: &Baseline,
        layer: &LayerData,
        sparse_train: &SparseActs,
        sparse_test: &SparseActs,
        cfg: &AnalysisConfig,
    ) -> Result<FeatureTables, AnalysisError> {
        let d_sae = sae.d_sae();
        let (train_counts, test_counts) = rayon::join(
            || UnitCounts::from_sparse(sparse_train, d_sae, layer.train_labels),
            || UnitCounts::from_sparse(sparse_test, d_sae, layer.test_labels),
        );
        let (train_counts, test_counts) = (train_counts?, test_counts?);
        let info = labelinfo::label_info(sparse_train, layer.train_labels, d_sae, cfg.mi_bins);
        let stats = stats::unit_stats(&train_counts, &test_counts, &info, cfg.min_support);
        let decoder_norms: Vec<f64> = sae
            .w_dec
            .chunks_exact(sae.d_out())
            .map(|row| row.iter().map(|&w| (w as f64).powi(2)).sum::<f64>().sqrt())
            .collect();
        let features = tables::unit_table("feature", &stats, Some(&decoder_norms))?;
        let feature_labels = tables::feature_label_table(&train_counts)?;
        let mut feature_acts =
            tables::feature_acts_table("train", sparse_train, layer.train_labels)?;
        feature_acts
            .vstack_mut(&tables::feature_acts_table(
                "test",
                sparse_test,
                layer.test_labels,
            )?)
            .map_err(AnalysisError::polars(
                "stacking the train and test feature_acts",
            ))?;
        let neurons = tables::unit_table("neuron", &baseline.stats, None)?;
        Ok(FeatureTables {
            stats,
            train_counts,
            frames: TableFrames {
                features,
                feature_labels,
                feature_acts,
                neurons,
            },
            nonzeros: sparse_train.len() + sparse_test.len(),
        })
    }
}

impl TableFrames {
    /// Writes the four tables as `<name>.parquet`, each frame dropped once
    /// written (`feature_acts` has a row per non-zero activation: 93 million
    /// at d_sae 65536 and L0 1324); returns their file names.
    pub fn write(self, out_dir: &Path) -> Result<Vec<PathBuf>, AnalysisError> {
        let frames = [
            ("features", self.features),
            ("feature_labels", self.feature_labels),
            ("feature_acts", self.feature_acts),
            ("neurons", self.neurons),
        ];
        let mut names = Vec::new();
        for (name, mut df) in frames {
            let file = format!("{name}.parquet");
            tables::write_parquet(&mut df, &out_dir.join(&file))?;
            drop(df);
            names.push(PathBuf::from(file));
        }
        Ok(names)
    }
}
