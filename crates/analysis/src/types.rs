//! The analysis's data types, in their own module so that the modules that
//! compute (`analyse`), render (`dashboard`, `report`) and query them import
//! these and never each other in a circle.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::probe::{ProbeConfig, ProbeResult};
use crate::stats::{check_matrix, MiSummary};
use crate::AnalysisError;

/// The MLP layer the SAEs read, with everything the analysis needs from it.
/// Shared by every SAE of a sweep.
pub struct LayerData<'a> {
    /// Layer name, e.g. `fc2.pre`.
    pub layer: &'a str,
    pub width: usize,
    /// Row-major `[train rows, width]`, dataset order.
    pub train: &'a [f32],
    pub test: &'a [f32],
    pub train_labels: &'a [u8],
    pub test_labels: &'a [u8],
    /// Raw MNIST train pixels `[train rows, 784]`, same order.
    pub train_pixels: &'a [u8],
    pub mlp: &'a mlp::Mlp,
}

impl SaeRun<'_> {
    /// Its layer as the sweep table shows it: `fc2.pre`, or a transcoder's `fc1.post->fc2.post`.
    pub fn layer_label(&self) -> String {
        if self.reads.layer == self.writes {
            self.writes.to_string()
        } else {
            format!("{}->{}", self.reads.layer, self.writes)
        }
    }
}

impl LayerData<'_> {
    pub(crate) fn check(&self) -> Result<(), AnalysisError> {
        check_matrix(
            &format!("{} train activations", self.layer),
            self.train,
            self.width,
            self.train_labels,
        )?;
        check_matrix(
            &format!("{} test activations", self.layer),
            self.test,
            self.width,
            self.test_labels,
        )?;
        if self.train_pixels.len() != self.train_labels.len() * 784 {
            return Err(AnalysisError::Input(format!(
                "train pixels have {} bytes, expected {} rows x 784",
                self.train_pixels.len(),
                self.train_labels.len()
            )));
        }
        Ok(())
    }
}

/// Metrics of one SAE that the caller measured (the analysis does not recompute them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SaeMetrics {
    pub l0: f64,
    pub mse: f64,
    pub explained_variance: f64,
    pub dead: usize,
    pub ce_recovered: f64,
    /// Test accuracy with the reconstruction spliced into the MLP.
    pub spliced_accuracy: f64,
}

/// The clean MLP against the MLP with the SAE spliced in, on the test split:
/// the report's ΔCE and Δaccuracy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Downstream {
    /// Cross-entropy in nats.
    pub clean_loss: f64,
    pub clean_accuracy: f64,
    pub spliced_loss: f64,
}

/// One trained SAE (or transcoder) to analyse.
pub struct SaeRun<'a> {
    /// Folder-safe name, unique within the sweep.
    pub name: &'a str,
    /// Its config (`sae.cfg`) gives the sweep table's `param_*` columns.
    pub sae: &'a sae::Sae,
    /// The layer its encoder reads.
    pub reads: &'a LayerData<'a>,
    /// The layer its decoder writes (spliced into the MLP): `reads` for an
    /// SAE, the next layer for a transcoder.
    pub writes: &'a str,
    pub curve: &'a [sae::CurvePoint],
    /// When each latent last fired and how its encoder drifted (`None`:
    /// not recorded, e.g. an SAE from elsewhere).
    pub latents: Option<&'a sae::LatentHistory>,
    pub metrics: SaeMetrics,
    /// The MLP's test loss and accuracy, clean and with this SAE spliced in.
    pub downstream: Option<Downstream>,
    /// The command that renders one of its features' dashboard, less
    /// `--feature N` (empty: `cargo xtask dashboard`).
    pub dashboard_command: String,
}

/// What to compute besides the tables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalysisConfig {
    pub probe: ProbeConfig,
    /// Dashboards for this many features per criterion (binary MI, binned MI,
    /// detector F1, purity with support, frequency), none shown twice.
    pub dashboards_per_criterion: usize,
    /// Digit images per dashboard quantile group.
    pub digits_per_group: usize,
    /// Rows (first active ones in dataset order) used for a dashboard's logit effect.
    pub logit_effect_rows: usize,
    /// Quantile bins of a unit's positive values for the binned I(B; Y) (plus a zero bin).
    pub mi_bins: usize,
    /// Active train rows a unit needs before its purity, top label and
    /// H(Y | on) are reported (below it they are null).
    pub min_support: usize,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            probe: ProbeConfig::default(),
            dashboards_per_criterion: 3,
            digits_per_group: 8,
            logit_effect_rows: 2048,
            mi_bins: 4,
            min_support: 25,
        }
    }
}

/// Wall time of the table stage of one SAE.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// `sae::encode` of train and test.
    pub encode_s: f64,
    /// Counting, statistics, sparse extraction and building every DataFrame.
    pub tables_s: f64,
    /// Writing the parquet files.
    pub parquet_s: f64,
    pub probes_s: f64,
    pub plots_s: f64,
    /// The feature pages: their data, then (in a sweep, a share of) writing them.
    #[serde(default)]
    pub pages_s: f64,
}

/// Everything the report needs about one analysed SAE. Paths are relative to its folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaeSummary {
    pub name: String,
    /// Its sweep coordinates ([`sweep_params`]): config key -> value.
    pub params: serde_json::Map<String, serde_json::Value>,
    pub layer: String,
    pub d_sae: usize,
    pub metrics: SaeMetrics,
    /// `None` in summaries written before the report showed it.
    #[serde(default)]
    pub downstream: Option<Downstream>,
    pub features: MiSummary,
    pub neurons: MiSummary,
    pub feature_probes: Vec<ProbeResult>,
    pub neuron_probes: Vec<ProbeResult>,
    /// SAEBench's one-digit-against-the-rest probes on k = 1, 2, 5 units.
    #[serde(default)]
    pub feature_digit_probes: Vec<crate::digit_probe::DigitProbe>,
    #[serde(default)]
    pub neuron_digit_probes: Vec<crate::digit_probe::DigitProbe>,
    /// SAEBench's targeted probe perturbation (an SAE of the report's layer only).
    #[serde(default)]
    pub tpp: Vec<crate::tpp::TppResult>,
    /// Non-zeros in `feature_acts` (train + test).
    pub nonzeros: usize,
    /// The SAE's folder.
    pub dir: PathBuf,
    pub tables: Vec<PathBuf>,
    /// PNG files (an SVG sits next to each chart).
    pub plots: Vec<PathBuf>,
    pub dashboards: Vec<Dashboard>,
    pub timings: Timings,
}

/// One rendered dashboard; image paths are relative to the SAE's folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dashboard {
    pub feature: usize,
    /// Why it was chosen (one of [`crate::dashboard::pick`]'s criteria).
    pub reason: String,
    /// Its top activations on train: (dataset index, value, label), highest first.
    #[serde(default)]
    pub top_rows: Vec<(usize, f32, u8)>,
    /// Its detector's false negatives: train rows of the detected class where
    /// it does not fire, how many of that class's rows, and the first few
    /// dataset indices (drawn in the `misses` image).
    #[serde(default)]
    pub misses: Option<(usize, usize, Vec<usize>)>,
    pub mi_bits: f64,
    pub mi_binned_bits: f64,
    pub freq_train: f64,
    pub purity: Option<f64>,
    pub top_label: Option<u8>,
    pub detector: Option<crate::labelinfo::Detector>,
    /// The feature's own effect on each class logit: logits with it minus
    /// without it in the reconstruction, mean over the rows it was measured on.
    pub logit_effect: Vec<f64>,
    pub logit_effect_rows: usize,
    /// The layer's units its decoder row writes to most: (unit, weight), by |weight|.
    pub decoder_top_units: Vec<(usize, f64)>,
    /// The layer's units whose train activations correlate most with it: (unit, Pearson r), by |r|.
    pub correlated_units: Vec<(usize, f64)>,
    /// The features whose decoder rows point most nearly its way: (feature, cosine).
    pub nearest_features: Vec<(usize, f64)>,
    pub images: Vec<PathBuf>,
}

/// An SAE's sweep coordinates as the sweep table shows them, by `[sae]` key:
/// the shared axes, then every architecture's own (null where they do not apply).
pub fn sweep_params(
    layer: &str,
    cfg: &sae::SaeConfig,
) -> serde_json::Map<String, serde_json::Value> {
    let mut params = serde_json::Map::new();
    params.insert("layer".into(), layer.into());
    params.insert("architecture".into(), cfg.architecture_name().into());
    params.insert("d_sae".into(), cfg.d_sae.into());
    params.insert("seed".into(), cfg.seed.into());
    params.insert("epochs".into(), cfg.epochs.into());
    params.insert("resample".into(), cfg.resample.is_some().into());
    for (key, value) in cfg.architecture.sweep_coordinates() {
        params.insert(key.into(), value);
    }
    params
}

/// The analysis's one line for `status`: how many SAEs, and the best MI of
/// a feature against the best of a neuron.
pub fn headline(layer: &str, summaries: &[SaeSummary]) -> String {
    let best = |f: fn(&SaeSummary) -> f64| summaries.iter().map(f).fold(f64::NAN, f64::max);
    format!(
        "{} SAE(s) on {layer}: best MI {:.3} bits (features) vs {:.3} (neurons)",
        summaries.len(),
        best(|s| s.features.max_mi_bits),
        best(|s| s.neurons.max_mi_bits)
    )
}

/// What the report says about the run that built it: how to rebuild it, with
/// which saelab and when, and the MLP it read.
#[derive(Clone, Debug, Default)]
pub struct RunInfo {
    /// The command that rebuilds this analysis, e.g. `cargo xtask all --preset zoo`.
    pub reproduce: String,
    pub version: String,
    /// When it was built: an ISO 8601 date and time, UTC.
    pub built: String,
    /// The MLP's per-step training losses.
    pub mlp_losses: Vec<f32>,
    /// The MLP's test cross-entropy and accuracy.
    pub mlp_test: Option<(f64, f64)>,
    /// The run's circuits (the MLP replaced by transcoders), for the report's
    /// Circuits section.
    pub circuits: Vec<CircuitLink>,
}

/// A circuits artifact as the report shows it: what it found, and where
/// its folder is relative to the report's (ending in `/`).
#[derive(Clone, Debug)]
pub struct CircuitLink {
    pub summary: crate::CircuitsSummary,
    pub folder: String,
}
