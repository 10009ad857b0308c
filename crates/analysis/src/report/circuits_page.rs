//! A circuits artifact drawn: `circuits.html` and each digit's mean graph as
//! a page (written by the circuits stage), and the same section inside the
//! report's `report.html` (drawn from `summary.json`): the answer, the
//! per-digit table against the neurons, the checks against the real MLP
//! (ablations, faithfulness, splicing) and each digit's strongest paths.

use std::fmt::Write as _;
use std::path::Path;

use circuits::{GraphKind, Study};

use super::circuit_page::{circuit_page, CircuitPage};
use super::html::{escape, page};
use crate::circuits_summary::CircuitsSummary;
use crate::AnalysisError;

pub const CIRCUITS_PAGE: &str = "circuits.html";

fn table(head: &[&str], body: &[Vec<String>]) -> String {
    let mut t = String::from("<div class=\"scroll\"><table><tr>");
    for h in head {
        let _ = write!(t, "<th>{}</th>", escape(h));
    }
    t.push_str("</tr>");
    for row in body {
        t.push_str("<tr>");
        for cell in row {
            let _ = write!(t, "<td>{cell}</td>");
        }
        t.push_str("</tr>");
    }
    t.push_str("</table></div>");
    t
}

fn digit_page(digit: u8, kind: GraphKind) -> String {
    match kind {
        GraphKind::Transcoders => format!("digit-{digit}.html"),
        GraphKind::Neurons => format!("digit-{digit}-neurons.html"),
    }
}

/// The section's body (headings from h3 down); its links to the digit
/// pages start with `prefix` (the circuits artifact's folder, relative to
/// the page that shows it).
pub fn circuits_section(s: &CircuitsSummary, prefix: &str) -> String {
    let f = |x: f64| format!("{x:.3}");
    let digits: Vec<Vec<String>> = s
        .digits
        .iter()
        .map(|d| {
            vec![
                d.digit.to_string(),
                d.transcoders.images.to_string(),
                format!("{:.0}", d.transcoders.median_nodes),
                format!("{:.0}", d.neurons.median_nodes),
                f(d.transcoders.mean_replacement_score),
                f(d.transcoders.mean_completeness_score),
                f(d.faithfulness.median_circuit),
                f(d.faithfulness.median_random),
                f(d.faithfulness.median_complement),
                format!(
                    "<a href=\"{prefix}{}\">transcoders ({} kept)</a> · <a href=\"{prefix}{}\">neurons ({} kept)</a>",
                    digit_page(d.digit, GraphKind::Transcoders),
                    d.mean_graph_features_kept,
                    digit_page(d.digit, GraphKind::Neurons),
                    d.mean_graph_neurons_kept
                ),
            ]
        })
        .collect();
    let agreement: Vec<Vec<String>> = s
        .ablation_agreement
        .iter()
        .map(|a| {
            vec![
                escape(&a.graph),
                escape(&a.layer),
                a.pairs.to_string(),
                f(a.r2),
                f(a.sign_agreement),
                f(a.spearman),
            ]
        })
        .collect();
    let splice: Vec<Vec<String>> = s
        .splice
        .iter()
        .map(|r| {
            vec![
                escape(&r.replaced),
                if r.with_errors { "yes" } else { "no" }.into(),
                format!("{:.4}", r.accuracy),
                format!("{:.4}", r.ce),
                // Exact replacements give a rounding-sized KL of either sign.
                format!("{:.4}", r.kl.max(0.0)),
                format!("{:.4}", r.top1_agreement),
            ]
        })
        .collect();
    let mut paths = String::new();
    for d in &s.digits {
        let items: Vec<String> = d
            .top_paths
            .iter()
            .map(|p| {
                let fed: Vec<String> = p
                    .fed_by
                    .iter()
                    .map(|(node, w)| format!("{} ({w:+.3})", escape(node)))
                    .collect();
                format!(
                    "<b>{}</b> {:+.3} ({:.0}% of the incoming weight), fed by {}",
                    escape(&p.node),
                    p.weight,
                    100.0 * p.share,
                    fed.join(", ")
                )
            })
            .collect();
        let _ = write!(paths, "<li>Digit {}: {}</li>", d.digit, items.join("; "));
    }
    format!(
        "<p class=\"verdict\">{}</p>\
<h3>Per digit</h3><p>Nodes for {:.0}%: the median over the digit's test images of the features (or neurons) that carry that share of the influence on the image's logits (circuit-tracer's node pruning). \
Faithfulness (median over the digit's images): the replacement (errors frozen) with only the pruned circuit's features, random features as many, or only the ones pruning dropped; 1 is every feature, 0 none. \
Each digit's mean graph (toward its logit, over its test images) is drawn on its own page.</p>{}\
<h3>Ablations: the graph against the real MLP</h3><p>Each active feature (or neuron) of the first test images removed alone; the change in the top logit (less the probability-weighted mean logit) as the graph predicts it, gates frozen, and as the real MLP gives it. A T2 feature or an fc2 neuron acts linearly on the logits, so those are exact.</p>{}\
<h3>Splicing</h3><p>The MLP with T1, T2 or both in place of their sublayers, on the test set; with their errors added back the replacement is the MLP.</p>{}\
<h3>Strongest paths</h3><p>In each digit's mean graph: the nodes with the largest edges into the digit's logit, and what feeds each.</p><ul>{paths}</ul>",
        escape(&s.verdict),
        100.0 * s.node_threshold,
        table(
            &["digit", "images", "nodes: transcoders", "neurons", "replacement", "completeness", "faithfulness: circuit", "random", "complement", "mean graphs"],
            &digits
        ),
        table(&["graph", "layer", "ablations", "R²", "sign agreement", "Spearman"], &agreement),
        table(&["replaced", "with errors", "accuracy", "CE", "KL to the MLP", "top-1 agreement"], &splice),
    )
}

/// Writes `circuits.html` and each digit's graph pages (`digit-D.html`,
/// `digit-D-neurons.html`) into `dir`.
pub fn write_circuits_report(
    study: &Study,
    summary: &CircuitsSummary,
    dir: &Path,
) -> Result<(), AnalysisError> {
    for c in &study.digits {
        let what = if c.kind == GraphKind::Transcoders {
            "transcoder features"
        } else {
            "neurons"
        };
        let text = format!(
            "{} of {} {what} carry {:.0}% of the influence on the logit of {} (the mean graph of {} test images); replacement score {:.3}, completeness {:.3}.",
            c.pruned.features_by_influence,
            c.graph.n_features,
            100.0 * summary.node_threshold,
            c.digit,
            c.images,
            c.scores.replacement,
            c.scores.completeness
        );
        let html = circuit_page(
            &c.graph,
            &c.pruned,
            &CircuitPage {
                title: &format!("Digit {} through the {}", c.digit, c.kind.name()),
                summary: &text,
                layer_names: c.kind.layer_names(),
                feature_pages: [None, None],
            },
        );
        let path = dir.join(digit_page(c.digit, c.kind));
        std::fs::write(&path, html).map_err(AnalysisError::io(&path))?;
    }
    let body = format!(
        "<h1>Circuits: {}</h1>{}",
        escape(&summary.name),
        circuits_section(summary, "")
    );
    let path = dir.join(CIRCUITS_PAGE);
    std::fs::write(
        &path,
        page(&format!("Circuits: {}", summary.name), "", &body),
    )
    .map_err(AnalysisError::io(&path))
}
