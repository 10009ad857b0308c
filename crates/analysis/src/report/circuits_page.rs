//! `circuits.html`: what the circuits stage found, in a minute. One sentence
//! answering "do transcoder features explain the MLP's decisions with fewer
//! nodes than its neurons?", the per-digit table, the checks against the real
//! MLP (ablations, faithfulness, splicing), each digit's strongest paths, and
//! each digit's mean graph drawn on its own page beside it.

use std::fmt::Write as _;
use std::path::Path;

use circuits::{DigitCircuit, GraphKind, ImageScores, NodeId, Study};

use super::circuit_page::{circuit_page, CircuitPage};
use super::html::{escape, page};
use crate::AnalysisError;

pub const CIRCUITS_PAGE: &str = "circuits.html";

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    sum / n.max(1) as f64
}

fn rows(study: &Study, kind: GraphKind, digit: Option<u8>) -> Vec<&ImageScores> {
    study
        .images
        .iter()
        .filter(|r| r.graph == kind && digit.is_none_or(|d| r.label == d))
        .collect()
}

fn nodes_80(rows: &[&ImageScores]) -> f64 {
    median(
        rows.iter()
            .map(|r| r.features_by_influence as f64)
            .collect(),
    )
}

/// The answer, from the numbers.
pub fn circuits_verdict(study: &Study) -> String {
    let tc = rows(study, GraphKind::Transcoders, None);
    let nn = rows(study, GraphKind::Neurons, None);
    let (t, n) = (nodes_80(&tc), nodes_80(&nn));
    let digits_fewer = (0..10u8)
        .filter(|&d| {
            let (a, b) = (
                rows(study, GraphKind::Transcoders, Some(d)),
                rows(study, GraphKind::Neurons, Some(d)),
            );
            !a.is_empty() && nodes_80(&a) < nodes_80(&b)
        })
        .count();
    let replacement = mean(tc.iter().map(|r| r.replacement_score));
    // Medians: an image whose logit barely moves from no feature to all
    // divides by almost nothing.
    let faithful = median(
        tc.iter()
            .filter_map(|r| r.faithfulness.map(|f| f.circuit))
            .collect(),
    );
    let random = median(
        tc.iter()
            .filter_map(|r| r.faithfulness.map(|f| f.random))
            .collect(),
    );
    let t1 = study
        .agreement()
        .into_iter()
        .find(|(k, l, _)| *k == GraphKind::Transcoders && *l == 0);
    let fewer = if t < n { "fewer" } else { "no fewer" };
    let mut s = format!(
        "Transcoder features explain the MLP's decisions with {fewer} nodes than its neurons: a median of {t:.0} features carry 80% of an image's influence on its logits, against {n:.0} neurons ({digits_fewer} of 10 digits need fewer). \
{:.0}% of that influence flows through the transcoders' errors (replacement score {replacement:.3}); keeping only each image's pruned circuit recovers a median {:.0}% of the logit's move from no feature to all, against {:.0}% for random features as many.",
        100.0 * (1.0 - replacement),
        100.0 * faithful,
        100.0 * random,
    );
    if let Some((_, _, a)) = t1 {
        let _ = write!(
            s,
            " Ablating one T1 feature in the real MLP moves the top logit as the graph predicts with R² {:.2} (signs agree {:.0}% of the time).",
            a.r2,
            100.0 * a.sign_agreement
        );
    }
    s
}

/// The strongest T2 features into a digit's logit, each with its strongest inputs.
fn top_paths(d: &DigitCircuit, names: [&str; 2]) -> String {
    let g = &d.graph;
    let n = g.len();
    let logit = n - 1;
    let total: f64 = (0..n)
        .map(|s| g.edge(logit, s).abs())
        .sum::<f64>()
        .max(1e-12);
    let mut into: Vec<usize> = (0..g.n_features + g.n_errors)
        .filter(|&s| g.edge(logit, s) != 0.0)
        .collect();
    into.sort_by(|&a, &b| g.edge(logit, b).abs().total_cmp(&g.edge(logit, a).abs()));
    let mut out = String::from("<ul>");
    for &k in into.iter().take(3) {
        let mut inputs: Vec<usize> = (0..n).filter(|&s| g.edge(k, s) != 0.0).collect();
        inputs.sort_by(|&a, &b| g.edge(k, b).abs().total_cmp(&g.edge(k, a).abs()));
        let feeding: Vec<String> = inputs
            .iter()
            .filter(|&&s| !matches!(g.nodes[s].id, NodeId::Pixel(_)))
            .take(3)
            .map(|&s| format!("{} ({:+.3})", g.nodes[s].id.label(names), g.edge(k, s)))
            .collect();
        let _ = write!(
            out,
            "<li><b>{}</b> {:+.3} ({:.0}% of the logit's incoming weight), fed by {}</li>",
            escape(&g.nodes[k].id.label(names)),
            g.edge(logit, k),
            100.0 * g.edge(logit, k).abs() / total,
            escape(&feeding.join(", ")),
        );
    }
    out.push_str("</ul>");
    out
}

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

/// Writes `circuits.html` and each digit's graph pages (`digit-D.html`,
/// `digit-D-neurons.html`) into `dir`. `title` names the circuit.
pub fn write_circuits_report(study: &Study, dir: &Path, title: &str) -> Result<(), AnalysisError> {
    let mut digit_rows = Vec::new();
    for d in study
        .digits
        .iter()
        .filter(|d| d.kind == GraphKind::Transcoders)
    {
        let neurons = study
            .digits
            .iter()
            .find(|n| n.kind == GraphKind::Neurons && n.digit == d.digit);
        for (c, kind) in [
            (Some(d), GraphKind::Transcoders),
            (neurons, GraphKind::Neurons),
        ] {
            let Some(c) = c else { continue };
            let names = kind.layer_names();
            let file = match kind {
                GraphKind::Transcoders => format!("digit-{}.html", c.digit),
                GraphKind::Neurons => format!("digit-{}-neurons.html", c.digit),
            };
            let summary = format!(
                "{} of {} {} carry {:.0}% of the influence on the logit of {} (the mean graph of {} test images); replacement score {:.3}, completeness {:.3}.",
                c.pruned.features_by_influence,
                c.graph.n_features,
                if kind == GraphKind::Transcoders { "transcoder features" } else { "neurons" },
                80.0,
                c.digit,
                c.images,
                c.scores.replacement,
                c.scores.completeness
            );
            let html = circuit_page(
                &c.graph,
                &c.pruned,
                &CircuitPage {
                    title: &format!("Digit {} through the {}", c.digit, kind.name()),
                    summary: &summary,
                    layer_names: names,
                    feature_pages: [None, None],
                },
            );
            let path = dir.join(&file);
            std::fs::write(&path, html).map_err(AnalysisError::io(&path))?;
        }
        let (tc, nn) = (
            rows(study, GraphKind::Transcoders, Some(d.digit)),
            rows(study, GraphKind::Neurons, Some(d.digit)),
        );
        let f = |g: &dyn Fn(&circuits::Faithfulness) -> f64| {
            median(
                tc.iter()
                    .filter_map(|r| r.faithfulness.as_ref().map(g))
                    .collect(),
            )
        };
        digit_rows.push(vec![
            d.digit.to_string(),
            tc.len().to_string(),
            format!("{:.0}", nodes_80(&tc)),
            format!("{:.0}", nodes_80(&nn)),
            format!("{:.3}", mean(tc.iter().map(|r| r.replacement_score))),
            format!("{:.3}", mean(tc.iter().map(|r| r.completeness_score))),
            format!("{:.3}", f(&|x| x.circuit)),
            format!("{:.3}", f(&|x| x.random)),
            format!("{:.3}", f(&|x| x.complement)),
            format!(
                "<a href=\"digit-{0}.html\">transcoders</a> · <a href=\"digit-{0}-neurons.html\">neurons</a>",
                d.digit
            ),
        ]);
    }
    let agreement: Vec<Vec<String>> = study
        .agreement()
        .into_iter()
        .map(|(kind, layer, a)| {
            vec![
                kind.name().into(),
                kind.layer_names()[layer as usize].into(),
                a.pairs.to_string(),
                format!("{:.3}", a.r2),
                format!("{:.3}", a.sign_agreement),
                format!("{:.3}", a.spearman),
            ]
        })
        .collect();
    let splice: Vec<Vec<String>> = study
        .splice
        .iter()
        .map(|s| {
            vec![
                escape(&s.replaced),
                if s.with_errors { "yes" } else { "no" }.into(),
                format!("{:.4}", s.accuracy),
                format!("{:.4}", s.ce),
                format!("{:.4}", s.kl.max(0.0)),
                format!("{:.4}", s.top1_agreement),
            ]
        })
        .collect();
    let mut paths = String::new();
    for d in study
        .digits
        .iter()
        .filter(|d| d.kind == GraphKind::Transcoders)
    {
        let _ = write!(
            paths,
            "<h3>Digit {}</h3>{}",
            d.digit,
            top_paths(d, GraphKind::Transcoders.layer_names())
        );
    }
    let body = format!(
        "<h1>Circuits: {}</h1><p class=\"verdict\">{}</p>\
<h2>Per digit</h2><p>Nodes for 80%: the median over the digit's test images of the features (or neurons) that carry 80% of the influence on the image's logits (circuit-tracer's node pruning). Faithfulness (median over the digit's images): the replacement (errors frozen) with only the pruned circuit's features, random features as many, or only the ones pruning dropped; 1 is every feature, 0 none.</p>{}\
<h2>Ablations: the graph against the real MLP</h2><p>Each active feature (or neuron) of the first test images removed alone; the change in the top logit (less the probability-weighted mean logit) as the graph predicts it, gates frozen, and as the real MLP gives it. A T2 feature or an fc2 neuron acts linearly on the logits, so those are exact.</p>{}\
<h2>Splicing</h2><p>The MLP with T1, T2 or both in place of their sublayers, on the test set; with their errors added back the replacement is the MLP.</p>{}\
<h2>Strongest paths</h2><p>Per digit's mean graph: the three nodes with the largest edges into the digit's logit, and what feeds each.</p>{}",
        escape(title),
        escape(&circuits_verdict(study)),
        table(
            &["digit", "images", "nodes for 80%: transcoders", "neurons", "replacement", "completeness", "faithfulness: circuit", "random", "complement", "graphs"],
            &digit_rows
        ),
        table(&["graph", "layer", "ablations", "R²", "sign agreement", "Spearman"], &agreement),
        table(&["replaced", "with errors", "accuracy", "CE", "KL to the MLP", "top-1 agreement"], &splice),
        paths
    );
    let path = dir.join(CIRCUITS_PAGE);
    std::fs::write(&path, page(&format!("Circuits: {title}"), "", &body))
        .map_err(AnalysisError::io(&path))
}
