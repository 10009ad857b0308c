//! Analysis of trained SAEs: feature tables, label statistics, mutual
//! information, k-sparse probes, plots, per-feature dashboards, SQL queries and
//! the HTML report.
//!
//! This crate owns everything that reads trained artifacts and turns them into
//! parquet tables (polars), PNG/SVG plots (plotters) and `report.html`. It is the
//! only crate that depends on polars. It must not train anything (the probes are
//! small logistic regressions fitted on cached activations for evaluation only)
//! and must not write outside the folders its caller names.
//!
//! Caller's flow: build one [`LayerData`] for the layer the SAEs read, compute the
//! neurons' [`Baseline`] once, call [`analyse_sae`] per SAE (one folder each),
//! then [`write_report`] with the summaries.
//!
//! Tables (parquet, one set per SAE folder):
//! - `features`: `feature`, `freq_train`, `freq_test` (fraction of rows with the
//!   activation > 0), `dead` (never active on train), `mean_act` and `max_act`
//!   (over the train rows where active; null when dead), `decoder_norm`,
//!   `mi_bits` (I(A_f; Y) on train, A_f = active), `mi_binned_bits` (I(B_f; Y),
//!   B_f = off or one of `mi_bins` quantile bins of the positive values),
//!   `h_y_given_on_bits` (H(Y | A_f = 1)), `purity` (max_y P(y | A_f = 1)) and
//!   `top_label` (the three null below `min_support` active rows), and the best
//!   one-vs-rest detector: `detector_class`, `_precision`, `_recall`, `_f1`,
//!   `_auroc` (of the value as a score for that class) (see [`labelinfo`]).
//! - `neurons`: the same (no `decoder_norm`) for the layer's neurons, active
//!   where the value is > 0 (for `fc2.pre`: where `fc2.post` > 0).
//! - `feature_labels`: `feature`, `label`, `count` (train rows with the feature
//!   active and that label), `mean_act` over those rows.
//! - `feature_acts`: every non-zero: `split`, `row` (dataset index), `label`,
//!   `feature`, `value`.
//! - `probes`: `source` (`features`/`neurons`), `k`, `test_accuracy`,
//!   `train_accuracy`, `units`.
//! - `sweep` (report folder): one row per SAE: `name`, `param_*`, metrics, MI stats.

mod analyse;
pub mod atlas;
mod baseline;
pub mod browser;
mod circuit_tables;
mod circuits_summary;
pub mod dashboard;
pub mod digit_probe;
pub mod dying;
mod error;
mod feature_tables;
pub mod labelinfo;
pub mod plots;
pub mod probe;
mod query;
mod report;
pub mod stats;
pub mod tables;
pub mod text_table;
pub mod tpp;
mod types;

pub use analyse::{analyse_sae, analyse_sweep, dashboards_on_demand, Baseline, TABLES};
pub use circuit_tables::{write_circuit_tables, CIRCUIT_TABLES};
pub use circuits_summary::{
    AgreementRow, CircuitsSummary, DigitSummary, FaithfulnessSummary, GraphSummary, PathRow,
};
pub use dashboard::Dashboard;
pub use error::AnalysisError;
pub use feature_tables::FeatureTables;
pub use probe::{ProbeConfig, ProbeResult};
pub use query::{
    activation_frame, activation_table_name, activation_tables, folder_tables, query,
    report_tables, OutputFormat, TableSource,
};
pub use report::{
    circuit_page, circuits_section, contests, dashboard_page_name, family_verdict, feature_wins,
    log_ticks, probe_table, records_source, records_table, run_verdict, sweep_table, sweep_verdict,
    verdict, write_circuits_report, write_report, CircuitPage, Contest, Record, CIRCUITS_PAGE,
    FEATURE_DIR, FEW_LIVE, SAE_PAGE, VENDOR_DIR,
};
pub use stats::{MiSummary, UnitCounts, UnitStats};
pub use types::{
    headline, sweep_params, AnalysisConfig, CircuitLink, Downstream, LayerData, RunInfo,
    SaeMetrics, SaeRun, SaeSummary, Timings,
};
