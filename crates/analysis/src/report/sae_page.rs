//! One page per SAE (`<name>/sae.html`): its answer, features against
//! neurons, its plots and its dashboards; and the page of dashboards
//! rendered on demand.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::html::{escape, figure_html, page, STYLE};
use super::verdict::verdict;
use crate::stats::MiSummary;
use crate::types::{AnalysisConfig, SaeSummary};
use crate::AnalysisError;

/// The page's file name inside an SAE's folder.
pub const SAE_PAGE: &str = "sae.html";

/// Features against neurons for one SAE: live units only in every mean and
/// share, so populations of different sizes are never compared by count.
fn summary_html(s: &SaeSummary, cfg: &AnalysisConfig) -> String {
    let mut out = format!(
        "<div class=\"scroll\"><table><tr><th>units (train split)</th><th>count</th><th>live</th>\
<th>share of live with binary MI &gt; 0.1</th><th>best binary MI</th><th>live-mean binary MI</th>\
<th>best binned MI ({} bins)</th><th>live-mean binned MI</th><th>best detector (unit: class, F1, AUROC)</th>",
        cfg.mi_bins
    );
    for p in &s.feature_probes {
        let _ = write!(out, "<th>probe k={} (test)</th>", p.k);
    }
    out.push_str("</tr>");
    let neuron_label = format!("MLP {} neurons", s.layer);
    let rows: [(&str, &MiSummary, Vec<Option<f64>>); 2] = [
        (
            "SAE features",
            &s.features,
            s.feature_probes
                .iter()
                .map(|p| Some(p.test_accuracy))
                .collect(),
        ),
        (
            &neuron_label,
            &s.neurons,
            s.feature_probes
                .iter()
                .map(|p| {
                    s.neuron_probes
                        .iter()
                        .find(|n| n.k == p.k)
                        .map(|n| n.test_accuracy)
                })
                .collect(),
        ),
    ];
    for (i, (label, mi, accs)) in rows.into_iter().enumerate() {
        // The best feature opens its page (the first row is the features').
        let unit = |u: usize| match i {
            0 => format!("<a href=\"{}/{u}.html\">{u}</a>", super::FEATURE_DIR),
            _ => u.to_string(),
        };
        let detector = mi
            .best_detector
            .as_ref()
            .map(|(u, d)| format!("{}: {}, {:.3}, {:.3}", unit(*u), d.class, d.f1, d.auroc))
            .unwrap_or_default();
        let live = mi.units - mi.dead;
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{live}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{detector}</td>",
            escape(label),
            mi.units,
            mi.above_0_1_bits as f64 / live.max(1) as f64,
            mi.max_mi_bits,
            mi.live_mean_mi_bits,
            mi.max_mi_binned_bits,
            mi.live_mean_mi_binned_bits,
        );
        for acc in accs {
            let _ = write!(
                out,
                "<td>{}</td>",
                acc.map(|a| format!("{a:.3}")).unwrap_or_default()
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</table></div>");
    out
}

/// Writes `<s.dir>/sae.html`: the SAE's answer, its table against the
/// neurons, its plots and dashboards, with a link back to the index
/// (`report`, the index's path).
pub fn write_sae_page(
    s: &SaeSummary,
    cfg: &AnalysisConfig,
    report: &Path,
) -> Result<PathBuf, AnalysisError> {
    let back = report
        .file_name()
        .map(|f| format!("../{}", f.to_string_lossy()))
        .unwrap_or_default();
    let mut body = format!(
        "<nav><a href=\"{back}\">&larr; the report</a> &middot; <a href=\"{}\">all {} live features</a> &middot; \
<a href=\"#plots\">plots</a> &middot; <a href=\"#dashboards\">dashboards</a></nav><h1>{}</h1><p>{} on {}, d_sae {}.</p><h2>The answer</h2><ul>",
        crate::browser::BROWSER_FILE,
        s.features.units - s.features.dead,
        escape(&s.name),
        escape(super::verdict::architecture(s)),
        escape(&s.layer),
        s.d_sae,
    );
    for line in verdict(s, cfg) {
        let _ = write!(body, "<li>{}</li>", escape(&line));
    }
    let _ = write!(
        body,
        "</ul><h2>Features and neurons</h2>{}<p>Tables:",
        summary_html(s, cfg)
    );
    for t in &s.tables {
        let _ = write!(
            body,
            " <a href=\"{0}\">{0}</a>",
            escape(&t.to_string_lossy())
        );
    }
    let _ = write!(
        body,
        ". Timings: encode {:.3} s, tables {:.3} s, parquet {:.3} s, probes {:.2} s, plots {:.2} s.</p>\
<h2 id=\"plots\">Plots</h2><div class=\"grid\">",
        s.timings.encode_s, s.timings.tables_s, s.timings.parquet_s, s.timings.probes_s, s.timings.plots_s
    );
    for png in &s.plots {
        let name = png
            .file_stem()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        body.push_str(&figure_html(
            &s.dir.join(png),
            &name.replace('_', " "),
            &s.dir,
        ));
    }
    body.push_str(
        "</div><h2 id=\"dashboards\">Dashboards</h2><p>The top features by binary MI, binned MI, detector F1, purity (with support) and frequency, in that order; \
a feature already shown for an earlier criterion is skipped and the next one of this criterion shown instead. \
Each links its page, which draws it; <code>cargo xtask dashboard --sae NAME --feature N</code> draws one as PNG and SVG figures.</p>",
    );
    for d in &s.dashboards {
        let page = format!("{}/{}.html", super::FEATURE_DIR, d.feature);
        body.push_str(&dashboard_html(&s.name, d, Some(&page), &s.dir, &s.dir)?);
    }
    let path = s.dir.join(SAE_PAGE);
    std::fs::write(&path, page(&s.name, "", &body)).map_err(AnalysisError::io(&path))?;
    Ok(path)
}

/// `unit 3 (+0.412), unit 9 (-0.301)`: a dashboard's neighbour list.
fn pairs(what: &str, list: &[(usize, f64)], value: fn(f64) -> String) -> String {
    list.iter()
        .map(|&(i, v)| format!("{what} {i} ({})", value(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One feature's dashboard as HTML: its numbers, neighbours, a link to its
/// feature `page` where it has one, and its images where drawn (files in
/// `dir`, links relative to `out_dir`); anchored `<name>-feature-<id>`.
pub fn dashboard_html(
    name: &str,
    d: &crate::types::Dashboard,
    page: Option<&str>,
    dir: &Path,
    out_dir: &Path,
) -> Result<String, AnalysisError> {
    let mut html = String::new();
    let _ = write!(
        html,
        "<h3 id=\"{}-feature-{}\">Feature {} (picked for: {}){}</h3>\
<p>Binary MI {:.3} bits, binned MI {:.3} bits, frequency {:.4} on train, purity {}, top label {}{}. \
Its effect on each class logit (with it minus without it, mean over {} rows): {}.</p>\
<p>Its decoder writes most to {}; it correlates most with {}; nearest features by decoder cosine: {}.</p><div class=\"grid\">",
        escape(name),
        d.feature,
        d.feature,
        escape(&d.reason),
        page.map(|p| format!(" &middot; <a href=\"{}\">its page</a>", escape(p)))
            .unwrap_or_default(),
        d.mi_bits,
        d.mi_binned_bits,
        d.freq_train,
        d.purity.map(|p| format!("{p:.3}")).unwrap_or_else(|| "- (below min_support)".into()),
        d.top_label.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
        d.detector
            .as_ref()
            .map(|t| format!(", best detector of {} (F1 {:.3}, AUROC {:.3})", t.class, t.f1, t.auroc))
            .unwrap_or_default(),
        d.logit_effect_rows,
        d.logit_effect
            .iter()
            .enumerate()
            .map(|(c, e)| format!("{c}: {e:+.3}"))
            .collect::<Vec<_>>()
            .join(", "),
        pairs("unit", &d.decoder_top_units, |w| format!("{w:+.3}")),
        pairs("unit", &d.correlated_units, |r| format!("r = {r:+.3}")),
        pairs("feature", &d.nearest_features, |c| format!("cos {c:.3}")),
    );
    if !d.top_rows.is_empty() {
        let rows: Vec<String> = d
            .top_rows
            .iter()
            .map(|(r, v, y)| format!("#{r} ({v:.3}, digit {y})"))
            .collect();
        let _ = write!(
            html,
            "<p>Top activations on train (dataset index, value, label): {}.</p>",
            rows.join(", ")
        );
    }
    if let (Some((missed, of, first)), Some(det)) = (&d.misses, &d.detector) {
        let _ = write!(
            html,
            "<p>Its detector misses {missed} of the {of} train rows of digit {} (recall {:.3}){}.</p>",
            det.class,
            1.0 - *missed as f64 / (*of).max(1) as f64,
            if first.is_empty() {
                String::new()
            } else {
                format!(
                    "; the first: {}",
                    first.iter().map(|r| format!("#{r}")).collect::<Vec<_>>().join(", ")
                )
            }
        );
    }
    for png in &d.images {
        let name = png
            .file_stem()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let caption = name
            .split_once("_")
            .and_then(|(_, rest)| rest.split_once('_'))
            .map_or(name.as_str(), |(_, what)| what)
            .replace('_', " ");
        html.push_str(&figure_html(&dir.join(png), &caption, out_dir));
    }
    html.push_str("</div>");
    Ok(html)
}

/// The page of on-demand dashboards for these features: `features-3-17.html`,
/// one file per set asked for, so a later request never overwrites it.
pub fn dashboard_page_name(features: &[usize]) -> String {
    const LISTED: usize = 10;
    let ids: Vec<String> = features
        .iter()
        .take(LISTED)
        .map(|f| f.to_string())
        .collect();
    let rest = &features[features.len().min(LISTED)..];
    if rest.is_empty() {
        format!("features-{}.html", ids.join("-"))
    } else {
        // The rest by count and a position-weighted sum: sets that share
        // their first ten ids still get their own page.
        let mix = rest.iter().enumerate().fold(0u64, |h, (i, &f)| {
            h.wrapping_mul(1_000_003)
                .wrapping_add(((i as u64) << 32) ^ f as u64)
        });
        format!(
            "features-{}-and-{}-more-{mix:x}.html",
            ids.join("-"),
            rest.len()
        )
    }
}

/// A page of dashboards rendered on demand (`cargo xtask dashboard`), with a
/// line per feature that could not get one (`notes`); its name comes from
/// `features` ([`dashboard_page_name`]).
pub fn write_dashboard_page(
    name: &str,
    features: &[usize],
    dashboards: &[crate::types::Dashboard],
    notes: &[String],
    dir: &Path,
    out_dir: &Path,
) -> Result<PathBuf, AnalysisError> {
    let mut html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{0}: dashboards</title><style>{STYLE}</style></head><body><h1>{0}: dashboards on demand</h1>",
        escape(name)
    );
    for note in notes {
        let _ = write!(html, "<p>{}</p>", escape(note));
    }
    for d in dashboards {
        html.push_str(&dashboard_html(name, d, None, dir, out_dir)?);
    }
    html.push_str("</body></html>\n");
    let path = out_dir.join(dashboard_page_name(features));
    std::fs::write(&path, html).map_err(AnalysisError::io(&path))?;
    Ok(path)
}
