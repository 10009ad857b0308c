//! The sweep table, the sweep plots and the self-contained `report.html`.
//!
//! Over 600 lines: the report's sections read one sweep table and share its
//! helpers; splitting it by section is the report's redesign (issue 25).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::plots::{self, Figure, Layer, Mark};
use crate::probe::ProbeResult;
use crate::stats::MiSummary;
use crate::tables;
use crate::types::{AnalysisConfig, SaeSummary};
use crate::AnalysisError;

/// `probes`: one row per probe: source (`features` or `neurons`), k, accuracies, the units read.
pub fn probe_table(
    features: &[ProbeResult],
    neurons: &[ProbeResult],
) -> Result<DataFrame, AnalysisError> {
    let rows: Vec<(&str, &ProbeResult)> = features
        .iter()
        .map(|p| ("features", p))
        .chain(neurons.iter().map(|p| ("neurons", p)))
        .collect();
    DataFrame::new(
        rows.len(),
        vec![
            Column::new(
                "source".into(),
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            ),
            Column::new(
                "k".into(),
                rows.iter().map(|r| r.1.k as u32).collect::<Vec<_>>(),
            ),
            Column::new(
                "test_accuracy".into(),
                rows.iter().map(|r| r.1.test_accuracy).collect::<Vec<_>>(),
            ),
            Column::new(
                "train_accuracy".into(),
                rows.iter().map(|r| r.1.train_accuracy).collect::<Vec<_>>(),
            ),
            Column::new(
                "steps".into(),
                rows.iter().map(|r| r.1.steps as u32).collect::<Vec<_>>(),
            ),
            Column::new(
                "converged".into(),
                rows.iter().map(|r| r.1.converged).collect::<Vec<_>>(),
            ),
            Column::new(
                "train_loss".into(),
                rows.iter().map(|r| r.1.train_loss).collect::<Vec<_>>(),
            ),
            Column::new(
                "units".into(),
                rows.iter()
                    .map(|r| {
                        r.1.units
                            .iter()
                            .map(|u| u.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .collect::<Vec<_>>(),
            ),
        ],
    )
    .map_err(AnalysisError::polars("building the probes table"))
}

/// One typed column from JSON values: nulls stay null; integers, floats,
/// booleans and text each get their own dtype (mixed kinds become text).
fn typed_column(name: PlSmallStr, values: &[&serde_json::Value]) -> Column {
    use serde_json::Value;
    let present = || values.iter().filter(|v| !v.is_null());
    if present().all(|v| v.is_u64() || v.is_i64()) {
        Column::new(name, values.iter().map(|v| v.as_i64()).collect::<Vec<_>>())
    } else if present().all(|v| v.is_number()) {
        Column::new(name, values.iter().map(|v| v.as_f64()).collect::<Vec<_>>())
    } else if present().all(|v| v.is_boolean()) {
        Column::new(name, values.iter().map(|v| v.as_bool()).collect::<Vec<_>>())
    } else {
        let text = |v: &&Value| match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        Column::new(name, values.iter().map(text).collect::<Vec<_>>())
    }
}

/// One row of [`records_table`]: (column, value) pairs in column order.
pub type Record = Vec<(String, serde_json::Value)>;

/// A table from records: one typed column per key (in first-seen order),
/// null where a record lacks the key.
pub fn records_table(records: &[Record]) -> Result<DataFrame, AnalysisError> {
    let mut keys: Vec<&String> = Vec::new();
    for (key, _) in records.iter().flatten() {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let columns = keys
        .into_iter()
        .map(|key| {
            let values: Vec<&serde_json::Value> = records
                .iter()
                .map(|r| {
                    r.iter()
                        .find(|(k, _)| k == key)
                        .map_or(&serde_json::Value::Null, |(_, v)| v)
                })
                .collect();
            typed_column(key.as_str().into(), &values)
        })
        .collect();
    DataFrame::new(records.len(), columns)
        .map_err(AnalysisError::polars("building a table from records"))
}

/// [`records_table`] as a table `query` can read.
pub fn records_source(records: &[Record]) -> Result<crate::TableSource, AnalysisError> {
    Ok(crate::TableSource::Frame(Box::new(
        records_table(records)?.lazy(),
    )))
}

/// `sweep`: one row per SAE: `name`, its metrics (each header says its split:
/// quality on test, dead features on train, label information on train), then
/// its sweep coordinates as typed `param_*` columns (in the order the first SAE
/// lists them).
pub fn sweep_table(summaries: &[SaeSummary]) -> Result<DataFrame, AnalysisError> {
    let n = summaries.len();
    let metric = |name: &str, f: &dyn Fn(&SaeSummary) -> f64| {
        Column::new(name.into(), summaries.iter().map(f).collect::<Vec<_>>())
    };
    let count = |name: &str, f: &dyn Fn(&SaeSummary) -> usize| {
        Column::new(
            name.into(),
            summaries.iter().map(|s| f(s) as u32).collect::<Vec<_>>(),
        )
    };
    let mut columns = vec![
        Column::new(
            "name".into(),
            summaries.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        ),
        metric("l0_test", &|s| s.metrics.l0),
        metric("ev_test", &|s| s.metrics.explained_variance),
        metric("mse_test", &|s| s.metrics.mse),
        metric("ce_recovered_test", &|s| s.metrics.ce_recovered),
        metric("spliced_accuracy_test", &|s| s.metrics.spliced_accuracy),
        count("dead_train", &|s| s.metrics.dead),
        count("d_sae", &|s| s.d_sae),
        metric("max_mi_bits_train", &|s| s.features.max_mi_bits),
        metric("max_mi_binned_bits_train", &|s| {
            s.features.max_mi_binned_bits
        }),
        metric("best_detector_f1_train", &|s| {
            s.features.best_detector.as_ref().map_or(0.0, |d| d.1.f1)
        }),
    ];
    // d_sae is a column of its own, above.
    let params: Vec<Record> = summaries
        .iter()
        .map(|s| {
            s.params
                .iter()
                .filter(|(key, _)| *key != "d_sae")
                .map(|(key, value)| (format!("param_{key}"), value.clone()))
                .collect()
        })
        .collect();
    columns.extend(records_table(&params)?.columns().iter().cloned());
    DataFrame::new(n, columns).map_err(AnalysisError::polars("building the sweep table"))
}

/// The notebook's question, answered for one SAE: features vs neurons.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub name: String,
    pub features: MiSummary,
    pub neurons: MiSummary,
    /// `(k, feature probe test accuracy, neuron probe test accuracy)`.
    pub probes: Vec<(usize, f64, Option<f64>)>,
}

impl SummaryRow {
    pub fn of(s: &SaeSummary) -> SummaryRow {
        SummaryRow {
            name: s.name.clone(),
            features: s.features.clone(),
            neurons: s.neurons.clone(),
            probes: s
                .feature_probes
                .iter()
                .map(|p| {
                    let neuron = s
                        .neuron_probes
                        .iter()
                        .find(|n| n.k == p.k)
                        .map(|n| n.test_accuracy);
                    (p.k, p.test_accuracy, neuron)
                })
                .collect(),
        }
    }
}

/// Standard base64 (RFC 4648) for data URIs.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `path` relative to `base` when inside it, else as given.
fn link(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// A figure: the PNG embedded, linked to its full-size file (the SVG next to
/// it where there is one) so a click zooms, with a caption.
fn figure_html(png: &Path, caption: &str, out_dir: &Path) -> Result<String, AnalysisError> {
    let svg = png.with_extension("svg");
    let full = link(if svg.is_file() { &svg } else { png }, out_dir);
    Ok(format!(
        "<figure><a href=\"{full}\" title=\"open full size\">{}</a><figcaption>{}</figcaption></figure>",
        embed_png(png, caption)?,
        escape(caption)
    ))
}

fn embed_png(path: &Path, alt: &str) -> Result<String, AnalysisError> {
    let bytes = std::fs::read(path).map_err(AnalysisError::io(path))?;
    Ok(format!(
        "<img alt=\"{}\" src=\"data:image/png;base64,{}\">",
        escape(alt),
        base64(&bytes)
    ))
}

/// Writes `sweep.parquet`, the sweep plots and `report.html` into `out_dir`;
/// returns the report's path. `mlp_losses` are the MLP's per-step training losses.
pub fn write_report(
    summaries: &[SaeSummary],
    mlp_losses: &[f32],
    cfg: &AnalysisConfig,
    out_dir: &Path,
) -> Result<PathBuf, AnalysisError> {
    std::fs::create_dir_all(out_dir).map_err(AnalysisError::io(out_dir))?;
    let mut sweep = sweep_table(summaries)?;
    tables::write_parquet(&mut sweep, &out_dir.join("sweep.parquet"))?;

    let mut sweep_plots: Vec<(String, PathBuf)> = Vec::new();
    if !mlp_losses.is_empty() {
        let raw: Vec<(f64, f64)> = mlp_losses
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as f64, l as f64))
            .collect();
        let window = (mlp_losses.len() / 50).max(1);
        let smooth: Vec<(f64, f64)> = mlp_losses
            .chunks(window)
            .enumerate()
            .map(|(i, c)| {
                (
                    ((i * window) as f64 + (c.len() as f64 - 1.0) / 2.0),
                    c.iter().map(|&l| l as f64).sum::<f64>() / c.len() as f64,
                )
            })
            .collect();
        let [png, _] = plots::save_figure(
            &Figure {
                title: "MLP training loss".into(),
                x_label: "step".into(),
                y_label: "cross-entropy".into(),
                layers: vec![
                    Layer {
                        name: "per step".into(),
                        mark: Mark::Lines,
                        points: raw,
                    },
                    Layer {
                        name: format!("mean of {window} steps"),
                        mark: Mark::Lines,
                        points: smooth,
                    },
                ],
                log_y: true,
                ..Default::default()
            },
            &out_dir.join("mlp_loss"),
        )?;
        sweep_plots.push(("MLP training loss".into(), png));
    }
    if !summaries.is_empty() {
        let labels: Vec<String> = summaries.iter().map(|s| s.name.clone()).collect();
        // One series (colour) per architecture, in the sweep's order.
        let mut architectures: Vec<&str> = Vec::new();
        for s in summaries {
            if !architectures.contains(&architecture(s)) {
                architectures.push(architecture(s));
            }
        }
        let frontier = |title: &str, y_label: &str, y: fn(&SaeSummary) -> f64| Figure {
            title: title.into(),
            x_label: "L0 (mean active features per test row)".into(),
            y_label: y_label.into(),
            layers: architectures
                .iter()
                .map(|&a| {
                    let members: Vec<(usize, &SaeSummary)> = summaries
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| architecture(s) == a)
                        .collect();
                    Layer {
                        name: a.into(),
                        mark: Mark::Points {
                            labels: members.iter().map(|(i, _)| labels[*i].clone()).collect(),
                        },
                        points: members.iter().map(|(_, s)| (s.metrics.l0, y(s))).collect(),
                    }
                })
                .collect(),
            log_x: true,
            ..Default::default()
        };
        for (stem, title, figure) in [
            (
                "frontier_ev",
                "Sparsity vs reconstruction: L0 vs 1 - explained variance",
                frontier(
                    "Sparsity vs reconstruction across the sweep (test)",
                    "1 - explained variance",
                    |s| 1.0 - s.metrics.explained_variance,
                ),
            ),
            (
                "frontier_ce",
                "Sparsity vs downstream loss: L0 vs CE recovered",
                frontier(
                    "Sparsity vs CE recovered across the sweep (test)",
                    "CE loss recovered (1 = no loss from splicing)",
                    |s| s.metrics.ce_recovered,
                ),
            ),
            (
                "frontier_dead",
                "Sparsity vs dead latents: L0 vs the dead fraction",
                frontier(
                    "Sparsity vs dead latents across the sweep (train split)",
                    "fraction of latents dead",
                    |s| s.features.dead as f64 / s.features.units.max(1) as f64,
                ),
            ),
            (
                "frontier_mi",
                "Sparsity vs label information: L0 vs the best feature's binned MI",
                frontier(
                    "Sparsity vs the best feature's label information (train split)",
                    "best binned I(feature; digit), bits",
                    |s| s.features.max_mi_binned_bits,
                ),
            ),
        ] {
            let [png, _] = plots::save_figure(&figure, &out_dir.join(stem))?;
            sweep_plots.push((title.into(), png));
        }
        // The neurons do not depend on the SAE: reference lines across the L0 range.
        let l0s: Vec<f64> = summaries.iter().map(|s| s.metrics.l0).collect();
        let (lo, hi) = l0s
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            (lo * 0.8, hi * 1.25)
        };
        let neurons = &summaries[0].neurons;
        let mut layers: Vec<Layer> = [
            (
                "features, best binned",
                (|s| s.features.max_mi_binned_bits) as fn(&SaeSummary) -> f64,
            ),
            ("features, best binary", |s| s.features.max_mi_bits),
            ("features, mean binned", |s| s.features.mean_mi_binned_bits),
        ]
        .into_iter()
        .map(|(name, mi)| Layer {
            name: name.into(),
            mark: Mark::Points { labels: Vec::new() },
            points: summaries.iter().map(|s| (s.metrics.l0, mi(s))).collect(),
        })
        .collect();
        for (name, value) in [
            ("neurons, best binned", neurons.max_mi_binned_bits),
            ("neurons, best binary", neurons.max_mi_bits),
            ("neurons, mean binned", neurons.mean_mi_binned_bits),
        ] {
            layers.push(Layer {
                name: name.into(),
                mark: Mark::Lines,
                points: vec![(lo, value), (hi, value)],
            });
        }
        let [png, _] = plots::save_figure(
            &Figure {
                title: "Label information per SAE vs the neurons (lines)".into(),
                x_label: "L0".into(),
                y_label: "bits".into(),
                layers,
                log_x: true,
                ..Default::default()
            },
            &out_dir.join("mi_vs_l0"),
        )?;
        sweep_plots.push(("MI vs L0, neurons as reference lines".into(), png));
    }

    let html = render_html(summaries, &sweep, &sweep_plots, cfg, out_dir)?;
    let path = out_dir.join("report.html");
    std::fs::write(&path, html).map_err(AnalysisError::io(&path))?;
    Ok(path)
}

fn cell(v: &AnyValue) -> String {
    match v {
        AnyValue::Null => String::new(),
        AnyValue::Float64(f) => number(*f),
        AnyValue::Float32(f) => number(*f as f64),
        AnyValue::String(s) => escape(s),
        AnyValue::StringOwned(s) => escape(s),
        other => escape(&other.to_string()),
    }
}

/// Integers without decimals, tiny values in scientific notation, else 4 decimals.
fn number(v: f64) -> String {
    if v.is_finite() && v == v.round() && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

fn html_table(df: &DataFrame) -> String {
    let mut out = String::from("<div class=\"scroll\"><table><tr>");
    for name in df.get_column_names() {
        let _ = write!(out, "<th>{}</th>", escape(name));
    }
    out.push_str("</tr>");
    for i in 0..df.height() {
        out.push_str("<tr>");
        for column in df.columns() {
            let value = column.get(i).unwrap_or(AnyValue::Null);
            let _ = write!(out, "<td>{}</td>", cell(&value));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table></div>");
    out
}

// Nothing may be wider than the page: wide tables scroll inside their box,
// figures shrink to the column (two per row on a wide screen).
const STYLE: &str = "*{box-sizing:border-box}body{font-family:sans-serif;margin:1.5em auto;padding:0 1em;max-width:1400px}\
table{border-collapse:collapse;margin:0}td,th{border:1px solid #bbb;padding:3px 7px;text-align:right;white-space:nowrap}\
th{background:#eee;position:sticky;top:0}.scroll{overflow-x:auto;max-width:100%;margin:1em 0}\
img{max-width:100%;height:auto;border:1px solid #ddd;display:block}\
.grid{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}\
.grid figure{margin:0;flex:1 1 560px;max-width:680px;min-width:0}.grid img{width:100%}\
figcaption{font-size:small;color:#444}p,li{max-width:70em;line-height:1.4;overflow-wrap:anywhere}";

fn summary_html(summaries: &[SaeSummary], cfg: &AnalysisConfig) -> String {
    let mut out = format!(
        "<div class=\"scroll\"><table><tr><th>model</th><th>units</th><th>count</th><th>dead</th>\
<th>binary MI &gt; 0.1</th><th>binary MI &gt; 0.5</th><th>best binary MI</th><th>mean binary MI</th>\
<th>best binned MI ({} bins)</th><th>mean binned MI</th><th>best detector (unit: class, F1, AUROC)</th>",
        cfg.mi_bins
    );
    let ks: Vec<usize> = summaries
        .first()
        .map(|s| s.feature_probes.iter().map(|p| p.k).collect())
        .unwrap_or_default();
    for k in &ks {
        let _ = write!(out, "<th>probe k={k} (test)</th>");
    }
    out.push_str("</tr>");
    for s in summaries {
        let row = SummaryRow::of(s);
        let mlp_layer = format!("MLP {}", s.layer);
        for (model, kind, mi, accs) in [
            (
                row.name.as_str(),
                "SAE features",
                &row.features,
                row.probes.iter().map(|p| Some(p.1)).collect::<Vec<_>>(),
            ),
            (
                mlp_layer.as_str(),
                "neurons",
                &row.neurons,
                row.probes.iter().map(|p| p.2).collect::<Vec<_>>(),
            ),
        ] {
            let detector = mi
                .best_detector
                .as_ref()
                .map(|(u, d)| format!("{u}: {}, {:.3}, {:.3}", d.class, d.f1, d.auroc))
                .unwrap_or_default();
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{kind}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{detector}</td>",
                escape(model),
                mi.units,
                mi.dead,
                mi.above_0_1_bits,
                mi.above_0_5_bits,
                mi.max_mi_bits,
                mi.mean_mi_bits,
                mi.max_mi_binned_bits,
                mi.mean_mi_binned_bits,
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
    }
    out.push_str("</table></div>");
    out
}

/// `unit 3 (+0.412), unit 9 (-0.301)`: a dashboard's neighbour list.
fn pairs(what: &str, list: &[(usize, f64)], value: fn(f64) -> String) -> String {
    list.iter()
        .map(|&(i, v)| format!("{what} {i} ({})", value(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One feature's dashboard as HTML: its numbers, neighbours and images (files
/// in `dir`, links relative to `out_dir`); anchored `<name>-feature-<id>`.
pub fn dashboard_html(
    name: &str,
    d: &crate::types::Dashboard,
    dir: &Path,
    out_dir: &Path,
) -> Result<String, AnalysisError> {
    let mut html = String::new();
    let _ = write!(
        html,
        "<h3 id=\"{}-feature-{}\">Feature {} (picked for: {})</h3>\
<p>Binary MI {:.3} bits, binned MI {:.3} bits, frequency {:.4} on train, purity {}, top label {}{}. \
Its effect on each class logit (with it minus without it, mean over {} rows): {}.</p>\
<p>Its decoder writes most to {}; it correlates most with {}; nearest features by decoder cosine: {}.</p><div class=\"grid\">",
        escape(name),
        d.feature,
        d.feature,
        escape(&d.reason),
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
        html.push_str(&figure_html(&dir.join(png), &caption, out_dir)?);
    }
    html.push_str("</div>");
    Ok(html)
}

/// A page of dashboards rendered on demand (`cargo xtask dashboard`).
pub fn write_dashboard_page(
    name: &str,
    dashboards: &[crate::types::Dashboard],
    dir: &Path,
    out_dir: &Path,
) -> Result<PathBuf, AnalysisError> {
    let mut html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{0}: dashboards</title><style>{STYLE}</style></head><body><h1>{0}: dashboards on demand</h1>",
        escape(name)
    );
    for d in dashboards {
        html.push_str(&dashboard_html(name, d, dir, out_dir)?);
    }
    html.push_str("</body></html>\n");
    let path = out_dir.join("dashboards.html");
    std::fs::write(&path, html).map_err(AnalysisError::io(&path))?;
    Ok(path)
}

/// Which side wins a comparison, in words.
fn more(features: f64, neurons: f64) -> &'static str {
    if features > neurons {
        "SAE features"
    } else if neurons > features {
        "MLP neurons"
    } else {
        "neither"
    }
}

/// The answer to the notebook's question for one SAE, written from its numbers.
pub fn verdict(s: &SaeSummary, cfg: &AnalysisConfig) -> Vec<String> {
    let (f, n) = (&s.features, &s.neurons);
    let mut lines = vec![format!(
        "One unit at a time, {} carry more label information: the best binary I(active; Y) is {:.3} bits for a feature vs {:.3} for a neuron; with the magnitude in {} quantile bins, {:.3} vs {:.3} bits (mean over units {:.3} vs {:.3}).",
        more(f.max_mi_binned_bits, n.max_mi_binned_bits),
        f.max_mi_bits,
        n.max_mi_bits,
        cfg.mi_bins,
        f.max_mi_binned_bits,
        n.max_mi_binned_bits,
        f.mean_mi_binned_bits,
        n.mean_mi_binned_bits
    )];
    if let (Some((fu, fd)), Some((nu, nd))) = (&f.best_detector, &n.best_detector) {
        lines.push(format!(
            "As single-class detectors, {} win: feature {fu} detects {} with F1 {:.3} (precision {:.3}, recall {:.3}, AUROC {:.3}); the best neuron, {nu}, detects {} with F1 {:.3} (precision {:.3}, recall {:.3}, AUROC {:.3}).",
            more(fd.f1, nd.f1),
            fd.class,
            fd.f1,
            fd.precision,
            fd.recall,
            fd.auroc,
            nd.class,
            nd.f1,
            nd.precision,
            nd.recall,
            nd.auroc
        ));
    }
    let (mut feature_wins, mut neuron_wins) = (Vec::new(), Vec::new());
    for p in &s.feature_probes {
        if let Some(q) = s.neuron_probes.iter().find(|q| q.k == p.k) {
            if p.test_accuracy > q.test_accuracy {
                feature_wins.push(format!(
                    "k={} ({:.3} vs {:.3})",
                    p.k, p.test_accuracy, q.test_accuracy
                ));
            } else {
                neuron_wins.push(format!(
                    "k={} ({:.3} vs {:.3})",
                    p.k, q.test_accuracy, p.test_accuracy
                ));
            }
        }
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    lines.push(format!(
        "Sparse probes on the k most informative units (test accuracy): SAE features win at {}; neurons at {}.",
        list(&feature_wins),
        list(&neuron_wins)
    ));
    if !s.feature_digit_probes.is_empty() && !s.neuron_digit_probes.is_empty() {
        let at: Vec<String> = crate::digit_probe::DIGIT_PROBE_KS
            .iter()
            .map(|&k| {
                let (f, n) = (
                    crate::digit_probe::mean_accuracy(&s.feature_digit_probes, k),
                    crate::digit_probe::mean_accuracy(&s.neuron_digit_probes, k),
                );
                format!("k={k}: {f:.3} vs {n:.3} ({} ahead)", more(f, n))
            })
            .collect();
        lines.push(format!(
            "SAEBench's k-sparse probing, one digit against the rest on balanced rows, the k units whose means differ most (mean test accuracy over digits, features vs neurons): {}.",
            at.join("; ")
        ));
    }
    if !s.tpp.is_empty() {
        let at: Vec<String> = s
            .tpp
            .iter()
            .map(|t| {
                format!(
                    "{} latents: {:.3} and {:.3} (TPP {:.3})",
                    t.latents,
                    t.intended,
                    t.unintended,
                    t.score()
                )
            })
            .collect();
        lines.push(format!(
            "SAEBench's targeted probe perturbation: ablating the latents that most push a digit's probe lowers that digit's probe accuracy, and the other digits' (mean over digits): {}.",
            at.join("; ")
        ));
    }
    let unconverged = s
        .feature_probes
        .iter()
        .chain(&s.neuron_probes)
        .filter(|p| !p.converged)
        .count();
    if unconverged > 0 {
        lines.push(format!(
            "{unconverged} of {} probes stopped at the step limit before converging (see probes.parquet: steps, converged).",
            s.feature_probes.len() + s.neuron_probes.len()
        ));
    }
    let live = f.units - f.dead;
    lines.push(format!(
        "Dead features: {} of {} ({:.0}%) never fire on the train split, so the comparison is between {live} live features and {} neurons ({} of them never active). Test L0 {:.1}, explained variance {:.3}, CE recovered {:.3}.",
        f.dead,
        f.units,
        100.0 * f.dead as f64 / f.units.max(1) as f64,
        n.units,
        n.dead,
        s.metrics.l0,
        s.metrics.explained_variance,
        s.metrics.ce_recovered
    ));
    lines
}

/// The architecture (`sae.architecture`) an SAE of the sweep has.
fn architecture(s: &SaeSummary) -> &str {
    s.params
        .get("architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("unknown")
}

/// Share of latents dead on the train split under which an architecture
/// counts as keeping its latents alive.
const ALIVE_BELOW: f64 = 0.1;

/// The notebook's question over every SAE of the sweep (two or more): the
/// best feature of any SAE against the best neuron, per measure.
pub fn sweep_verdict(summaries: &[SaeSummary]) -> Option<String> {
    let first = summaries.get(1).and(summaries.first())?;
    let measures: [(&str, fn(&MiSummary) -> f64); 3] = [
        ("binary MI", |m| m.max_mi_bits),
        ("binned MI", |m| m.max_mi_binned_bits),
        ("detector F1", |m| {
            m.best_detector.as_ref().map_or(0.0, |(_, d)| d.f1)
        }),
    ];
    let (mut parts, mut feature_wins, mut neuron_wins) = (Vec::new(), Vec::new(), Vec::new());
    for (measure, of) in measures {
        let best = summaries
            .iter()
            .max_by(|a, b| of(&a.features).total_cmp(&of(&b.features)))
            .expect("two or more SAEs");
        let (feature, neuron) = (of(&best.features), of(&first.neurons));
        parts.push(format!(
            "{measure} {feature:.3} ({}) vs {neuron:.3}",
            best.name
        ));
        if feature > neuron {
            feature_wins.push(measure);
        } else {
            neuron_wins.push(measure);
        }
    }
    let list = |v: &[&str]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    Some(format!(
        "Over all {} SAEs, the best feature of any against the best neuron: {}. Features win on {}; neurons on {}.",
        summaries.len(),
        parts.join("; "),
        list(&feature_wins),
        list(&neuron_wins)
    ))
}

/// Across architectures (only when the sweep has two or more): which keep
/// their latents alive, and at what cost in explained variance and CE
/// recovered. Each architecture is represented by its SAE with the fewest
/// dead latents (the best EV among ties).
pub fn family_verdict(summaries: &[SaeSummary]) -> Vec<String> {
    let dead = |s: &SaeSummary| s.features.dead as f64 / s.features.units.max(1) as f64;
    let mut best: Vec<&SaeSummary> = Vec::new();
    for s in summaries {
        match best.iter_mut().find(|b| architecture(b) == architecture(s)) {
            Some(b) => {
                if (dead(s), -s.metrics.explained_variance)
                    < (dead(b), -b.metrics.explained_variance)
                {
                    *b = s;
                }
            }
            None => best.push(s),
        }
    }
    if best.len() < 2 {
        return Vec::new();
    }
    best.sort_by(|a, b| {
        dead(a).total_cmp(&dead(b)).then(
            b.metrics
                .explained_variance
                .total_cmp(&a.metrics.explained_variance),
        )
    });
    let listed: Vec<String> = best
        .iter()
        .map(|s| {
            format!(
                "{} {:.0}% ({} of {}; EV {:.3}, CE recovered {:.3}, L0 {:.1})",
                architecture(s),
                100.0 * dead(s),
                s.features.dead,
                s.features.units,
                s.metrics.explained_variance,
                s.metrics.ce_recovered,
                s.metrics.l0
            )
        })
        .collect();
    let mut lines = vec![format!(
        "Dead latents by architecture, fewest first (train split; test EV, CE recovered and L0; each architecture's SAE with the fewest): {}.",
        listed.join("; ")
    )];
    let (alive, dying): (Vec<&SaeSummary>, Vec<&SaeSummary>) =
        best.iter().partition(|s| dead(s) < ALIVE_BELOW);
    let names = |v: &[&SaeSummary]| {
        v.iter()
            .map(|s| architecture(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let top = |v: &[&SaeSummary], f: fn(&SaeSummary) -> f64| {
        v.iter().map(|s| f(s)).fold(f64::NEG_INFINITY, f64::max)
    };
    lines.push(if alive.is_empty() {
        format!("No architecture keeps {:.0}% of its latents alive.", 100.0 * (1.0 - ALIVE_BELOW))
    } else if dying.is_empty() {
        format!("Every architecture keeps over {:.0}% of its latents alive.", 100.0 * (1.0 - ALIVE_BELOW))
    } else {
        let ev = top(&alive, |s| s.metrics.explained_variance) - top(&dying, |s| s.metrics.explained_variance);
        let ce = top(&alive, |s| s.metrics.ce_recovered) - top(&dying, |s| s.metrics.ce_recovered);
        let word = |d: f64| if d >= 0.0 { "gain" } else { "cost" };
        format!(
            "Under {:.0}% dead: {}; the others: {}. Keeping latents alive comes at a {} of {:.3} in the best explained variance and a {} of {:.3} in the best CE recovered.",
            100.0 * ALIVE_BELOW,
            names(&alive),
            names(&dying),
            word(ev),
            ev.abs(),
            word(ce),
            ce.abs()
        )
    });
    lines
}

fn render_html(
    summaries: &[SaeSummary],
    sweep: &DataFrame,
    sweep_plots: &[(String, PathBuf)],
    cfg: &AnalysisConfig,
    out_dir: &Path,
) -> Result<String, AnalysisError> {
    let mut answer = String::new();
    let family = family_verdict(summaries);
    if let Some(line) = sweep_verdict(summaries) {
        let _ = write!(
            answer,
            "<h3>Over the sweep</h3><ul><li>{}</li></ul>",
            escape(&line)
        );
    }
    if !family.is_empty() {
        answer.push_str("<h3>Across architectures</h3><ul>");
        for line in family {
            let _ = write!(answer, "<li>{}</li>", escape(&line));
        }
        answer.push_str("</ul>");
    }
    for s in summaries {
        let _ = write!(answer, "<h3>{}</h3><ul>", escape(&s.name));
        for line in verdict(s, cfg) {
            let _ = write!(answer, "<li>{}</li>", escape(&line));
        }
        answer.push_str("</ul>");
    }
    let mut html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>saelab report</title><style>{STYLE}</style></head><body>\
<h1>saelab report</h1>\
<p>Do SAE features carry more information about the digit than the MLP's own neurons?</p>\
<h2>The answer</h2>{answer}\
<h2>Summary</h2><p>All on the train split. Binary MI: I(A; Y) between a unit being active (value &gt; 0) and the label; it cannot exceed 1 bit and is small for rare units however pure. \
Binned MI: I(B; Y) with B = off or one of {} equal-count quantile bins of the unit's positive values. \
Detector: the class for which \"active\" has the best F1, and the AUROC of the value for it. \
Probes: multinomial logistic regression on the k units with the highest binary MI, test accuracy. \
Purity and top label need {} active rows (analysis.min_support). \
Why latents die: a latent's margin is its largest pre-activation over 2048 train rows minus its firing level (0, or JumpReLU's threshold); \
below 0 it fires on none of them. The b_enc, b_dec and encoder-norm lines are its parts.</p>{}\
<h2>Sweep</h2><p>Metrics first (the suffix says the split), then the sweep coordinates.</p>{}\
<p><a href=\"sweep.parquet\">sweep.parquet</a></p><div class=\"grid\">",
        cfg.mi_bins,
        cfg.min_support,
        summary_html(summaries, cfg),
        html_table(sweep)
    );
    for (title, png) in sweep_plots {
        html.push_str(&figure_html(png, title, out_dir)?);
    }
    html.push_str("</div>");
    for s in summaries {
        let _ = write!(
            html,
            "<h2 id=\"{0}\">SAE {0}</h2><p><a href=\"{0}/{1}\">Browse all {2} live features</a> \
(sortable, filterable; each links to its dashboard). Tables:",
            escape(&s.name),
            crate::browser::BROWSER_FILE,
            s.features.units - s.features.dead
        );
        for t in &s.tables {
            let _ = write!(
                html,
                " <a href=\"{}\">{}</a>",
                link(&s.dir.join(t), out_dir),
                escape(&t.to_string_lossy())
            );
        }
        let _ = write!(
            html,
            ". Timings: encode {:.3} s, tables {:.3} s, parquet {:.3} s, probes {:.2} s, plots {:.2} s.</p>\
<p>Dashboards below: the top features by binary MI, binned MI, detector F1, purity (with support) and frequency, in that order; \
a feature already shown for an earlier criterion is skipped and the next one of this criterion shown instead.</p><div class=\"grid\">",
            s.timings.encode_s, s.timings.tables_s, s.timings.parquet_s, s.timings.probes_s, s.timings.plots_s
        );
        for png in &s.plots {
            let name = png
                .file_stem()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            html.push_str(&figure_html(
                &s.dir.join(png),
                &name.replace('_', " "),
                out_dir,
            )?);
        }
        html.push_str("</div>");
        for d in &s.dashboards {
            html.push_str(&dashboard_html(&s.name, d, &s.dir, out_dir)?);
        }
    }
    html.push_str("</body></html>\n");
    Ok(html)
}
