//! The report: a site, not a page. `report.html` is the index (the verdict,
//! one table of every SAE against the neurons, interactive figures, how to
//! rebuild it); each SAE has its page (`<name>/sae.html`) and its feature
//! browser; images are files beside the pages, loaded when scrolled to.

mod circuit_page;
mod circuits_page;
mod feature_page;
mod figures;
mod html;
mod index;
mod sae_page;
mod tables;
mod verdict;

use std::path::{Path, PathBuf};

pub use circuit_page::{circuit_page, CircuitPage};
pub use circuits_page::{circuits_section, write_circuits_report, CIRCUITS_PAGE};
pub use feature_page::{fill_matches, write_feature_pages, FEATURE_DIR};
pub use figures::{log_ticks, VENDOR_DIR};
pub use sae_page::{dashboard_page_name, write_dashboard_page, SAE_PAGE};
pub use tables::{probe_table, records_source, records_table, sweep_table, Record};
pub use verdict::{
    contests, family_verdict, feature_wins, run_verdict, sweep_verdict, verdict, Contest, FEW_LIVE,
};

use crate::tables as parquet;
use crate::types::{AnalysisConfig, RunInfo, SaeSummary};
use crate::AnalysisError;

/// Writes `sweep.parquet`, the sweep's figures, the vendored Vega-Lite
/// builds, each SAE's page and the index `report.html` into `out_dir`;
/// returns the index's path.
pub fn write_report(
    summaries: &[SaeSummary],
    run: &RunInfo,
    cfg: &AnalysisConfig,
    out_dir: &Path,
) -> Result<PathBuf, AnalysisError> {
    std::fs::create_dir_all(out_dir).map_err(AnalysisError::io(out_dir))?;
    let mut sweep = sweep_table(summaries)?;
    parquet::write_parquet(&mut sweep, &out_dir.join("sweep.parquet"))?;
    let static_figures = figures::static_figures(summaries, &run.mlp_losses, out_dir)?;
    let interactive = figures::interactive(summaries, out_dir);
    figures::write_vendor(out_dir)?;
    let path = out_dir.join("report.html");
    for s in summaries {
        sae_page::write_sae_page(s, cfg, &path)?;
    }
    let html = index::render(
        summaries,
        &sweep,
        &static_figures,
        &interactive,
        run,
        cfg,
        out_dir,
    );
    std::fs::write(&path, html).map_err(AnalysisError::io(&path))?;
    Ok(path)
}
