//! The sweep's figures: static PNG/SVG files (plotters) for papers, and the
//! same data as Vega-Lite specs that the vendored vega-embed draws in the
//! index with hover, zoom and pan, and each architecture's Pareto frontier.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::verdict::architecture;
use crate::plots::{self, Figure, Layer, Mark};
use crate::types::SaeSummary;
use crate::AnalysisError;

/// The vendored Vega-Lite builds, written once into each report folder so the
/// report works offline (see `vendor/vega/README.md`).
pub const VENDOR: [(&str, &[u8]); 5] = [
    (
        "vega.min.js",
        include_bytes!("../../vendor/vega/vega.min.js"),
    ),
    (
        "vega-lite.min.js",
        include_bytes!("../../vendor/vega/vega-lite.min.js"),
    ),
    (
        "vega-embed.min.js",
        include_bytes!("../../vendor/vega/vega-embed.min.js"),
    ),
    (
        "LICENSE-vega-lite",
        include_bytes!("../../vendor/vega/LICENSE-vega-lite"),
    ),
    (
        "LICENSE-vega-embed",
        include_bytes!("../../vendor/vega/LICENSE-vega-embed"),
    ),
];

/// The folder, inside a report folder, that holds [`VENDOR`].
pub const VENDOR_DIR: &str = "vendor";

pub fn write_vendor(out_dir: &Path) -> Result<(), AnalysisError> {
    let dir = out_dir.join(VENDOR_DIR);
    std::fs::create_dir_all(&dir).map_err(AnalysisError::io(&dir))?;
    for (name, bytes) in VENDOR {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(AnalysisError::io(&path))?;
    }
    Ok(())
}

/// The static figures of the sweep, written into `out_dir`: (caption, PNG).
pub fn static_figures(
    summaries: &[SaeSummary],
    mlp_losses: &[f32],
    out_dir: &Path,
) -> Result<Vec<(String, PathBuf)>, AnalysisError> {
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
            ("features, live-mean binned", |s| {
                s.features.live_mean_mi_binned_bits
            }),
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
            (
                "neurons, live-mean binned",
                neurons.live_mean_mi_binned_bits,
            ),
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
    Ok(sweep_plots)
}

/// matplotlib's tab10, the static figures' colours in the same order, so an
/// architecture has one colour in every figure of a report.
const TAB10: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// An interactive figure of the index: its element id, caption, Vega-Lite
/// spec and the static PNG drawn from the same data (for papers).
pub struct Interactive {
    pub id: String,
    pub caption: String,
    pub spec: Value,
    /// The static files drawn from the same data.
    pub pngs: Vec<PathBuf>,
}

/// The architectures of the sweep in first-seen order: every figure's colour domain.
fn architectures(summaries: &[SaeSummary]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for s in summaries {
        if !out.contains(&architecture(s)) {
            out.push(architecture(s));
        }
    }
    out
}

/// A transcoder predicts another layer than it reads (`fc1.post->fc2.post`).
pub fn is_transcoder(s: &SaeSummary) -> bool {
    s.layer.contains("->")
}

/// 1-2-5 ticks covering `lo..=hi` (positive), for a log axis.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi >= lo && hi.is_finite()) {
        return Vec::new();
    }
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi * 10.0 {
        for m in [1.0, 2.0, 5.0] {
            let t = m * decade;
            // Rounded so 0.1 * 2 prints as 0.2, not 0.2000000000004.
            let t = (t * 1e9).round() / 1e9;
            if t >= lo / 1.25 && t <= hi * 1.25 {
                ticks.push(t);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// Which points of one architecture no other of it beats on both axes:
/// fewer active latents and a better value.
fn pareto(points: &[(f64, f64)], higher_better: bool) -> Vec<bool> {
    let better = |a: f64, b: f64| if higher_better { a >= b } else { a <= b };
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            !points
                .iter()
                .enumerate()
                .any(|(j, &(xj, yj))| j != i && xj <= x && better(yj, y) && (xj < x || yj != y))
        })
        .collect()
}

/// One measure against L0 for the given SAEs: points coloured by
/// architecture, each architecture's Pareto frontier as a line, hover for the
/// SAE and its values, drag to pan and wheel to zoom (`zoom` names the
/// binding); `neuron` draws the best neuron as a dashed rule.
fn panel(
    members: &[&SaeSummary],
    domain: &[&str],
    measure: &str,
    y: &dyn Fn(&SaeSummary) -> f64,
    higher_better: bool,
    neuron: Option<f64>,
    zoom: &str,
) -> Value {
    let mut rows = Vec::new();
    for &a in domain {
        let of: Vec<&&SaeSummary> = members.iter().filter(|s| architecture(s) == a).collect();
        let points: Vec<(f64, f64)> = of.iter().map(|s| (s.metrics.l0, y(s))).collect();
        for (s, on) in of.iter().zip(pareto(&points, higher_better)) {
            rows.push(json!({
                "sae": s.name,
                "architecture": a,
                "d_sae": s.d_sae,
                "live": s.features.units - s.features.dead,
                "l0": s.metrics.l0,
                "value": y(s),
                "pareto": on,
            }));
        }
    }
    let (lo, hi) = members
        .iter()
        .map(|s| s.metrics.l0)
        .filter(|&l| l > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), l| {
            (lo.min(l), hi.max(l))
        });
    let x = json!({
        "field": "l0", "type": "quantitative", "title": "L0 (test)",
        "scale": {"type": "log"},
        "axis": {"values": log_ticks(lo, hi), "format": "~g"},
    });
    let y_enc = json!({"field": "value", "type": "quantitative", "title": measure, "scale": {"zero": false}});
    let color = json!({
        "field": "architecture", "type": "nominal", "title": "architecture",
        "scale": {"domain": domain, "range": TAB10.iter().cycle().take(domain.len()).collect::<Vec<_>>()},
        "legend": {"orient": "right"},
    });
    let mut layers = vec![
        json!({
            "transform": [{"filter": "datum.pareto"}],
            "mark": {"type": "line", "strokeWidth": 1.5},
            "encoding": {"x": x, "y": y_enc, "color": color, "order": {"field": "l0"}},
        }),
        json!({
            "params": [{"name": zoom, "select": "interval", "bind": "scales"}],
            "mark": {"type": "point", "filled": true, "size": 80},
            "encoding": {
                "x": x, "y": y_enc, "color": color,
                "tooltip": [
                    {"field": "sae", "title": "SAE"},
                    {"field": "architecture"},
                    {"field": "d_sae"},
                    {"field": "live", "title": "live latents (train)"},
                    {"field": "l0", "title": "L0 (test)", "format": ".2f"},
                    {"field": "value", "title": measure, "format": ".4f"},
                    {"field": "pareto", "title": "on the frontier"},
                ],
            },
        }),
    ];
    if let Some(v) = neuron {
        layers.push(json!({
            "data": {"values": [{"value": v, "label": format!("best neuron: {v:.4}")}]},
            "mark": {"type": "rule", "strokeDash": [5, 4], "color": "#333"},
            "encoding": {"y": {"field": "value", "type": "quantitative"}, "tooltip": {"field": "label"}},
        }));
    }
    json!({"width": 380, "height": 260, "title": measure, "data": {"values": rows}, "layer": layers})
}

/// The index's interactive figures: the four frontiers (EV split into SAEs
/// and transcoders, whose EV measures different layers) and label
/// information against L0 with the best neuron as a rule; each names the
/// [`static_figures`] files drawn from the same data.
pub fn interactive(summaries: &[SaeSummary], out_dir: &Path) -> Vec<Interactive> {
    if summaries.is_empty() {
        return Vec::new();
    }
    let domain = architectures(summaries);
    let all: Vec<&SaeSummary> = summaries.iter().collect();
    let (transcoders, saes): (Vec<&SaeSummary>, Vec<&SaeSummary>) =
        all.iter().partition(|s| is_transcoder(s));
    let neurons = &summaries[0].neurons;
    let ev = |s: &SaeSummary| s.metrics.explained_variance;
    let chart = |views: Vec<Value>| {
        json!({
            "config": {"view": {"stroke": "#ccc"}, "font": "sans-serif"},
            "hconcat": views,
            "resolve": {"scale": {"color": "shared"}},
        })
    };
    let mut ev_views = Vec::new();
    for (group, label, zoom) in [
        (&saes, "explained variance of the layer (test)", "zoom_sae"),
        (
            &transcoders,
            "transcoders: explained variance of their output (test)",
            "zoom_tc",
        ),
    ] {
        if !group.is_empty() {
            ev_views.push(panel(group, &domain, label, &ev, true, None, zoom));
        }
    }
    let figure = |id: &str, caption: &str, spec: Value| Interactive {
        id: id.into(),
        caption: caption.into(),
        spec,
        pngs: match id {
            "mi_vs_l0" => vec![
                out_dir.join("mi_vs_l0.png"),
                out_dir.join("frontier_mi.png"),
            ],
            _ => vec![out_dir.join(format!("{id}.png"))],
        },
    };
    vec![
        figure(
            "frontier_ev",
            "Sparsity vs reconstruction: SAEs and transcoders on their own axes (test split)",
            chart(ev_views),
        ),
        figure(
            "frontier_ce",
            "Sparsity vs downstream loss: CE recovered against zero-ablation (test split)",
            chart(vec![panel(
                &all,
                &domain,
                "CE recovered (test)",
                &|s| s.metrics.ce_recovered,
                true,
                None,
                "zoom",
            )]),
        ),
        figure(
            "frontier_dead",
            "Sparsity vs dead latents: the share never active (train split)",
            chart(vec![panel(
                &all,
                &domain,
                "dead fraction (train)",
                &|s| s.features.dead as f64 / s.features.units.max(1) as f64,
                false,
                None,
                "zoom",
            )]),
        ),
        figure(
            "mi_vs_l0",
            "Label information against L0, the best neuron as a dashed rule (train split)",
            chart(vec![
                panel(
                    &all,
                    &domain,
                    "best binary MI, bits",
                    &|s| s.features.max_mi_bits,
                    true,
                    Some(neurons.max_mi_bits),
                    "zoom_binary",
                ),
                panel(
                    &all,
                    &domain,
                    "best binned MI, bits",
                    &|s| s.features.max_mi_binned_bits,
                    true,
                    Some(neurons.max_mi_binned_bits),
                    "zoom_binned",
                ),
                panel(
                    &all,
                    &domain,
                    "live-mean binned MI, bits",
                    &|s| s.features.live_mean_mi_binned_bits,
                    true,
                    Some(neurons.live_mean_mi_binned_bits),
                    "zoom_live",
                ),
            ]),
        ),
    ]
}
