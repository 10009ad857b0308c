//! What the circuits stage found, as numbers: `summary.json` of a circuits
//! artifact, from which its page and the report's Circuits section are
//! drawn (the report reads the file; it never recomputes a graph).

use circuits::{DigitCircuit, Faithfulness, GraphKind, ImageScores, NodeId, SpliceRow, Study};
use serde::{Deserialize, Serialize};

/// How one kind of graph did over a set of images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphSummary {
    pub images: usize,
    /// The features (or neurons) that carry the node threshold's share of
    /// the influence on the logits: median and mean over the images.
    pub median_nodes: f64,
    pub mean_nodes: f64,
    pub mean_active: f64,
    pub mean_edges_kept: f64,
    pub mean_replacement_score: f64,
    pub mean_completeness_score: f64,
}

/// Medians over images: an image whose logit barely moves from no feature
/// to all divides by almost nothing, so means are dominated by a few.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaithfulnessSummary {
    pub median_circuit: f64,
    pub median_complement: f64,
    pub median_random: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgreementRow {
    pub graph: String,
    /// `T1`, `T2`, `fc1` or `fc2`.
    pub layer: String,
    pub pairs: usize,
    pub r2: f64,
    pub sign_agreement: f64,
    pub spearman: f64,
}

/// A node with one of the largest edges into a digit's logit, and what feeds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathRow {
    pub node: String,
    pub weight: f64,
    /// Its share of the absolute weight of the logit's incoming edges.
    pub share: f64,
    /// Its largest non-pixel inputs: (node, edge weight).
    pub fed_by: Vec<(String, f64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DigitSummary {
    pub digit: u8,
    pub transcoders: GraphSummary,
    pub neurons: GraphSummary,
    pub faithfulness: FaithfulnessSummary,
    /// The digit's mean graph through the transcoders: features kept after
    /// pruning, and its scores; and the neurons' graph's kept neurons.
    pub mean_graph_features_kept: usize,
    pub mean_graph_replacement_score: f64,
    pub mean_graph_completeness_score: f64,
    pub mean_graph_neurons_kept: usize,
    pub top_paths: Vec<PathRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CircuitsSummary {
    /// The circuits stage's name.
    pub name: String,
    /// The answer, from the numbers below.
    pub verdict: String,
    pub node_threshold: f64,
    pub seconds: f64,
    pub transcoders: GraphSummary,
    pub neurons: GraphSummary,
    pub faithfulness: FaithfulnessSummary,
    pub ablation_agreement: Vec<AgreementRow>,
    pub splice: Vec<SpliceRow>,
    pub digits: Vec<DigitSummary>,
}

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

fn graph_summary(rows: &[&ImageScores]) -> GraphSummary {
    GraphSummary {
        images: rows.len(),
        median_nodes: median(
            rows.iter()
                .map(|r| r.features_by_influence as f64)
                .collect(),
        ),
        mean_nodes: mean(rows.iter().map(|r| r.features_by_influence as f64)),
        mean_active: mean(rows.iter().map(|r| r.active as f64)),
        mean_edges_kept: mean(rows.iter().map(|r| r.edges_kept as f64)),
        mean_replacement_score: mean(rows.iter().map(|r| r.replacement_score)),
        mean_completeness_score: mean(rows.iter().map(|r| r.completeness_score)),
    }
}

fn faithfulness(rows: &[&ImageScores]) -> FaithfulnessSummary {
    let of = |f: fn(&Faithfulness) -> f64| {
        median(
            rows.iter()
                .filter_map(|r| r.faithfulness.as_ref().map(f))
                .collect(),
        )
    };
    FaithfulnessSummary {
        median_circuit: of(|f| f.circuit),
        median_complement: of(|f| f.complement),
        median_random: of(|f| f.random),
    }
}

/// The three nodes with the largest edges into a digit's logit, each with
/// its three largest non-pixel inputs.
fn top_paths(d: &DigitCircuit) -> Vec<PathRow> {
    let names = d.kind.layer_names();
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
    into.iter()
        .take(3)
        .map(|&k| {
            let mut inputs: Vec<usize> = (0..n)
                .filter(|&s| g.edge(k, s) != 0.0 && !matches!(g.nodes[s].id, NodeId::Pixel(_)))
                .collect();
            inputs.sort_by(|&a, &b| g.edge(k, b).abs().total_cmp(&g.edge(k, a).abs()));
            PathRow {
                node: g.nodes[k].id.label(names),
                weight: g.edge(logit, k),
                share: g.edge(logit, k).abs() / total,
                fed_by: inputs
                    .iter()
                    .take(3)
                    .map(|&s| (g.nodes[s].id.label(names), g.edge(k, s)))
                    .collect(),
            }
        })
        .collect()
}

impl CircuitsSummary {
    pub fn of(name: &str, study: &Study, node_threshold: f64, seconds: f64) -> CircuitsSummary {
        let rows = |kind: GraphKind, digit: Option<u8>| -> Vec<&ImageScores> {
            study
                .images
                .iter()
                .filter(|r| r.graph == kind && digit.is_none_or(|d| r.label == d))
                .collect()
        };
        let digits = study
            .digits
            .iter()
            .filter(|d| d.kind == GraphKind::Transcoders)
            .map(|d| {
                let neurons = study
                    .digits
                    .iter()
                    .find(|n| n.kind == GraphKind::Neurons && n.digit == d.digit);
                let tc = rows(GraphKind::Transcoders, Some(d.digit));
                DigitSummary {
                    digit: d.digit,
                    transcoders: graph_summary(&tc),
                    neurons: graph_summary(&rows(GraphKind::Neurons, Some(d.digit))),
                    faithfulness: faithfulness(&tc),
                    mean_graph_features_kept: d.pruned.features_kept(&d.graph),
                    mean_graph_replacement_score: d.scores.replacement,
                    mean_graph_completeness_score: d.scores.completeness,
                    mean_graph_neurons_kept: neurons
                        .map_or(0, |n| n.pruned.features_kept(&n.graph)),
                    top_paths: top_paths(d),
                }
            })
            .collect();
        let ablation_agreement = study
            .agreement()
            .into_iter()
            .map(|(kind, layer, a)| AgreementRow {
                graph: kind.name().into(),
                layer: kind.layer_names()[layer as usize].into(),
                pairs: a.pairs,
                r2: a.r2,
                sign_agreement: a.sign_agreement,
                spearman: a.spearman,
            })
            .collect();
        let tc = rows(GraphKind::Transcoders, None);
        let mut summary = CircuitsSummary {
            name: name.to_string(),
            verdict: String::new(),
            node_threshold,
            seconds,
            transcoders: graph_summary(&tc),
            neurons: graph_summary(&rows(GraphKind::Neurons, None)),
            faithfulness: faithfulness(&tc),
            ablation_agreement,
            splice: study.splice.clone(),
            digits,
        };
        summary.verdict = summary.answer();
        summary
    }

    /// "Do transcoder features explain the MLP's decisions with fewer nodes
    /// than its neurons?", answered from the numbers.
    fn answer(&self) -> String {
        let (t, n) = (self.transcoders.median_nodes, self.neurons.median_nodes);
        let fewer_digits = self
            .digits
            .iter()
            .filter(|d| d.transcoders.median_nodes < d.neurons.median_nodes)
            .count();
        let replacement = self.transcoders.mean_replacement_score;
        let mut s = format!(
            "Transcoder features explain the MLP's decisions with {} nodes than its neurons: a median of {t:.0} features carry {:.0}% of an image's influence on its logits, against {n:.0} neurons ({fewer_digits} of {} digits need fewer). \
{:.0}% of that influence flows through the transcoders' errors (replacement score {replacement:.3}); keeping only each image's pruned circuit recovers a median {:.0}% of the logit's move from no feature to all, against {:.0}% for random features as many.",
            if t < n { "fewer" } else { "no fewer" },
            100.0 * self.node_threshold,
            self.digits.len(),
            100.0 * (1.0 - replacement),
            100.0 * self.faithfulness.median_circuit,
            100.0 * self.faithfulness.median_random,
        );
        if let Some(a) = self
            .ablation_agreement
            .iter()
            .find(|a| a.graph == GraphKind::Transcoders.name() && a.layer == "T1")
        {
            s.push_str(&format!(
                " Ablating one T1 feature in the real MLP moves the top logit as the graph predicts with R² {:.2} (signs agree {:.0}% of the time).",
                a.r2,
                100.0 * a.sign_agreement
            ));
        }
        s
    }
}
