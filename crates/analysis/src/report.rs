//! The sweep table, the sweep plots and the self-contained `report.html`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::plots::{self, Figure, Layer, Mark};
use crate::probe::ProbeResult;
use crate::stats::MiSummary;
use crate::tables;
use crate::types::SaeSummary;
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

/// `sweep`: one row per SAE: `name`, its sweep coordinates as typed `param_*`
/// columns (in the order the first SAE lists them), the caller's metrics and
/// the MI statistics.
pub fn sweep_table(summaries: &[SaeSummary]) -> Result<DataFrame, AnalysisError> {
    let mut keys: Vec<&String> = Vec::new();
    for key in summaries.iter().flat_map(|s| s.params.keys()) {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let n = summaries.len();
    let mut columns = vec![Column::new(
        "name".into(),
        summaries.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
    )];
    for key in keys {
        let values: Vec<&serde_json::Value> = summaries
            .iter()
            .map(|s| s.params.get(key).unwrap_or(&serde_json::Value::Null))
            .collect();
        columns.push(typed_column(format!("param_{key}").into(), &values));
    }
    let metric = |name: &str, f: &dyn Fn(&SaeSummary) -> f64| {
        Column::new(name.into(), summaries.iter().map(f).collect::<Vec<_>>())
    };
    columns.extend([
        Column::new(
            "layer".into(),
            summaries
                .iter()
                .map(|s| s.layer.clone())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "d_sae".into(),
            summaries.iter().map(|s| s.d_sae as u32).collect::<Vec<_>>(),
        ),
        metric("l0", &|s| s.metrics.l0),
        metric("mse", &|s| s.metrics.mse),
        metric("explained_variance", &|s| s.metrics.explained_variance),
        Column::new(
            "dead".into(),
            summaries
                .iter()
                .map(|s| s.metrics.dead as u32)
                .collect::<Vec<_>>(),
        ),
        metric("ce_recovered", &|s| s.metrics.ce_recovered),
        metric("spliced_accuracy", &|s| s.metrics.spliced_accuracy),
        metric("mean_mi_bits", &|s| s.features.mean_mi_bits),
        metric("max_mi_bits", &|s| s.features.max_mi_bits),
        Column::new(
            "features_above_0_1_bits".into(),
            summaries
                .iter()
                .map(|s| s.features.above_0_1_bits as u32)
                .collect::<Vec<_>>(),
        ),
    ]);
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
            },
            &out_dir.join("mlp_loss"),
        )?;
        sweep_plots.push(("MLP training loss".into(), png));
    }
    if !summaries.is_empty() {
        let [png, _] = plots::save_figure(
            &Figure {
                title: "L0 vs MSE across the sweep".into(),
                x_label: "L0 (mean active features per row)".into(),
                y_label: "MSE".into(),
                layers: vec![Layer {
                    name: "SAEs".into(),
                    mark: Mark::Points {
                        labels: summaries.iter().map(|s| s.name.clone()).collect(),
                    },
                    points: summaries
                        .iter()
                        .map(|s| (s.metrics.l0, s.metrics.mse))
                        .collect(),
                }],
            },
            &out_dir.join("l0_vs_mse"),
        )?;
        sweep_plots.push(("L0 vs MSE".into(), png));
        let [png, _] = plots::save_figure(
            &Figure {
                title: "Mean and best I(A; Y) per SAE vs the neurons".into(),
                x_label: "L0".into(),
                y_label: "bits".into(),
                layers: [
                    (
                        "features, mean",
                        (|s| s.features.mean_mi_bits) as fn(&SaeSummary) -> f64,
                    ),
                    ("features, best", |s| s.features.max_mi_bits),
                    ("neurons, mean", |s| s.neurons.mean_mi_bits),
                    ("neurons, best", |s| s.neurons.max_mi_bits),
                ]
                .into_iter()
                .map(|(name, mi)| Layer {
                    name: name.into(),
                    mark: Mark::Points { labels: Vec::new() },
                    points: summaries.iter().map(|s| (s.metrics.l0, mi(s))).collect(),
                })
                .collect(),
            },
            &out_dir.join("mi_vs_l0"),
        )?;
        sweep_plots.push(("MI vs L0".into(), png));
    }

    let html = render_html(summaries, &sweep, &sweep_plots, out_dir)?;
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

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1400px}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}\
th{background:#eee}.scroll{overflow-x:auto}img{max-width:100%;margin:4px;border:1px solid #ddd}\
.grid{display:flex;flex-wrap:wrap;align-items:flex-start}.grid figure{margin:4px;width:420px}\
.grid img{width:400px}figcaption{font-size:small}";

fn summary_html(summaries: &[SaeSummary]) -> String {
    let mut out = String::from(
        "<table><tr><th>SAE</th><th>units</th><th>units</th><th>dead</th><th>&gt; 0.1 bit</th><th>&gt; 0.5 bit</th>\
<th>&gt; 1 bit</th><th>best MI</th><th>mean MI</th>",
    );
    let ks: Vec<usize> = summaries
        .first()
        .map(|s| s.feature_probes.iter().map(|p| p.k).collect())
        .unwrap_or_default();
    for k in &ks {
        let _ = write!(out, "<th>probe k={k}</th>");
    }
    out.push_str("</tr>");
    for s in summaries {
        let row = SummaryRow::of(s);
        for (kind, mi, accs) in [
            (
                "SAE features",
                &row.features,
                row.probes.iter().map(|p| Some(p.1)).collect::<Vec<_>>(),
            ),
            (
                "neurons",
                &row.neurons,
                row.probes.iter().map(|p| p.2).collect::<Vec<_>>(),
            ),
        ] {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{kind}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td>",
                escape(&row.name),
                mi.units,
                mi.dead,
                mi.above_0_1_bits,
                mi.above_0_5_bits,
                mi.above_1_bits,
                mi.max_mi_bits,
                mi.mean_mi_bits
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
    out.push_str("</table>");
    out
}

fn render_html(
    summaries: &[SaeSummary],
    sweep: &DataFrame,
    sweep_plots: &[(String, PathBuf)],
    out_dir: &Path,
) -> Result<String, AnalysisError> {
    let mut html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>saelab report</title><style>{STYLE}</style></head><body>\
<h1>saelab report</h1>\
<p>Do SAE features carry more information about the digit than the MLP's own neurons? \
I(A; Y) is the mutual information in bits between a unit being active (value &gt; 0) and the label, on the train split. \
Probes: multinomial logistic regression on the k units with the highest MI, test accuracy.</p>\
<h2>Summary</h2>{}<h2>Sweep</h2>{}<p><a href=\"sweep.parquet\">sweep.parquet</a></p><div class=\"grid\">",
        summary_html(summaries),
        html_table(sweep)
    );
    for (title, png) in sweep_plots {
        let _ = write!(
            html,
            "<figure>{}<figcaption>{} (<a href=\"{}\">svg</a>)</figcaption></figure>",
            embed_png(png, title)?,
            escape(title),
            link(&png.with_extension("svg"), out_dir)
        );
    }
    html.push_str("</div>");
    for s in summaries {
        let _ = write!(
            html,
            "<h2 id=\"{0}\">SAE {0}</h2><p>Tables:",
            escape(&s.name)
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
            ". Timings: encode {:.3} s, tables {:.3} s, parquet {:.3} s, probes {:.2} s, plots {:.2} s.</p><div class=\"grid\">",
            s.timings.encode_s, s.timings.tables_s, s.timings.parquet_s, s.timings.probes_s, s.timings.plots_s
        );
        for png in &s.plots {
            let name = png
                .file_stem()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let _ = write!(
                html,
                "<figure>{}<figcaption>{} (<a href=\"{}\">svg</a>)</figcaption></figure>",
                embed_png(&s.dir.join(png), &name)?,
                escape(&name),
                link(&s.dir.join(png.with_extension("svg")), out_dir)
            );
        }
        html.push_str("</div>");
        for d in &s.dashboards {
            let _ = write!(
                html,
                "<h3>Feature {} ({}): I = {:.3} bits, frequency {:.4}, purity {}, top label {}</h3>\
<p>Mean logit change per class when removed: {}</p><div class=\"grid\">",
                d.feature,
                escape(&d.reason),
                d.mi_bits,
                d.freq_train,
                d.purity.map(|p| format!("{p:.3}")).unwrap_or_default(),
                d.top_label.map(|l| l.to_string()).unwrap_or_default(),
                d.logit_effect.iter().map(|e| format!("{e:+.3}")).collect::<Vec<_>>().join(" ")
            );
            for png in &d.images {
                let name = png
                    .file_stem()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let _ = write!(
                    html,
                    "<figure>{}</figure>",
                    embed_png(&s.dir.join(png), &name)?
                );
            }
            html.push_str("</div>");
        }
    }
    html.push_str("</body></html>\n");
    Ok(html)
}
