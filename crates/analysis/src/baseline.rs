//! The MLP neurons' statistics and probes on one layer: what every SAE of
//! that layer is compared with (the `neurons/<layer>` stage keeps it).

use serde::{Deserialize, Serialize};

use crate::digit_probe::{self, DigitProbe};
use crate::labelinfo;
use crate::probe::{self, ProbeData, ProbeResult};
use crate::stats::{self, MiSummary, UnitCounts, UnitStats};
use crate::tables::SparseActs;
use crate::tpp::LayerProbes;
use crate::types::{AnalysisConfig, LayerData};
use crate::AnalysisError;

/// The MLP neurons' statistics and probes: the baseline SAE features are compared with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub layer: String,
    pub stats: Vec<UnitStats>,
    pub mi: MiSummary,
    pub probes: Vec<ProbeResult>,
    /// SAEBench's one-digit-against-the-rest probes (`digit_probe`).
    pub digit_probes: Vec<DigitProbe>,
    /// A probe per digit on the layer's own values, which TPP perturbs.
    pub layer_probes: LayerProbes,
}

impl Baseline {
    /// Statistics of every neuron of `layer` (active = positive, i.e. post-ReLU > 0) and its probes.
    pub fn compute(layer: &LayerData, cfg: &AnalysisConfig) -> Result<Baseline, AnalysisError> {
        layer.check()?;
        let relu = |v: &[f32]| v.iter().map(|x| x.max(0.0)).collect::<Vec<f32>>();
        let (train_relu, test_relu) = (relu(layer.train), relu(layer.test));
        let data = ProbeData {
            train: probe::Columns::Dense {
                values: &train_relu,
                width: layer.width,
            },
            test: probe::Columns::Dense {
                values: &test_relu,
                width: layer.width,
            },
            train_labels: layer.train_labels,
            test_labels: layer.test_labels,
        };
        // The statistics and the k-sparse probes they rank beside the probes
        // that need no ranking: rayon keeps both cores busy through the
        // serial parts of each.
        let (ranked, (digit_probes, layer_probes)) = rayon::join(
            || -> Result<_, AnalysisError> {
                let sparse_train = SparseActs::from_dense(layer.train, layer.width);
                let train =
                    UnitCounts::from_sparse(&sparse_train, layer.width, layer.train_labels)?;
                let test = UnitCounts::count(layer.test, layer.width, layer.test_labels)?;
                let info = labelinfo::label_info(
                    &sparse_train,
                    layer.train_labels,
                    layer.width,
                    cfg.mi_bins,
                );
                let stats = stats::unit_stats(&train, &test, &info, cfg.min_support);
                let probes = probe::k_sparse_probes(&data, &stats::rank_by_mi(&stats), &cfg.probe)?;
                Ok((stats, probes))
            },
            || {
                rayon::join(
                    || digit_probe::digit_probes(&data, layer.width, cfg.probe.train_rows),
                    || {
                        LayerProbes::fit(
                            layer.train,
                            layer.width,
                            layer.train_labels,
                            cfg.probe.train_rows,
                        )
                    },
                )
            },
        );
        let (stats, probes) = ranked?;
        Ok(Baseline {
            layer_probes,
            layer: layer.layer.to_string(),
            mi: MiSummary::of(&stats),
            stats,
            probes,
            digit_probes,
        })
    }
}
