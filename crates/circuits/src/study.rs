//! The circuits of a whole test set: every image's graph (the replacement's
//! and the MLP's), scored and pruned; each digit's mean graph; splicing.
//! Digit by digit, so memory holds one digit's traces at a time.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::aggregate::digit_graph;
use crate::graph::{Graph, LogitTargets};
use crate::intervene::{Ablation, Agreement, Faithfulness};
use crate::network::Replacement;
use crate::prune::{prune, scores, PruneOptions, Pruned, Scores};
use crate::splice::{argmax, splice_metrics, SpliceRow};
use crate::CircuitError;

/// The `[circuits]` settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitsConfig {
    /// circuit-tracer's shares: nodes kept to this share of the influence ...
    pub node_threshold: f64,
    /// ... then edges to this share of the edge scores.
    pub edge_threshold: f64,
    /// The first this-many test images have every active feature (and
    /// neuron) ablated once, predicted by the graph and measured in the MLP.
    pub ablation_images: usize,
    /// Random feature sets of a circuit's sizes per image: faithfulness's baseline.
    pub random_draws: usize,
}

impl Default for CircuitsConfig {
    fn default() -> Self {
        let prune = PruneOptions::default();
        CircuitsConfig {
            node_threshold: prune.node_threshold,
            edge_threshold: prune.edge_threshold,
            ablation_images: 1000,
            random_draws: 5,
        }
    }
}

impl CircuitsConfig {
    pub fn prune(&self) -> PruneOptions {
        PruneOptions {
            node_threshold: self.node_threshold,
            edge_threshold: self.edge_threshold,
        }
    }

    /// One sentence naming the key (without its section) that is out of range.
    pub fn validate(&self) -> Result<(), String> {
        self.prune().validate()?;
        if !(1..=100).contains(&self.random_draws) {
            return Err(format!(
                "random_draws is {}; it must be between 1 and 100",
                self.random_draws
            ));
        }
        Ok(())
    }
}

/// Which model a graph reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphKind {
    /// The replacement: T1's and T2's features and errors.
    Transcoders,
    /// The MLP with its ReLU gates frozen: its neurons.
    Neurons,
}

impl GraphKind {
    pub fn name(self) -> &'static str {
        match self {
            GraphKind::Transcoders => "transcoders",
            GraphKind::Neurons => "neurons",
        }
    }

    /// How a feature of each layer is called.
    pub fn layer_names(self) -> [&'static str; 2] {
        match self {
            GraphKind::Transcoders => ["T1", "T2"],
            GraphKind::Neurons => ["fc1", "fc2"],
        }
    }
}

/// One image's graph, pruned and scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageScores {
    pub image: u32,
    pub label: u8,
    /// The real MLP's top class.
    pub predicted: u8,
    pub graph: GraphKind,
    /// Active features (or neurons) of both layers.
    pub active: u32,
    /// Features (or neurons) that carry the node threshold's share of the influence.
    pub features_by_influence: u32,
    /// Features (or neurons) left after pruning edges too.
    pub features_kept: u32,
    pub errors_kept: u32,
    pub edges_kept: u32,
    pub replacement_score: f64,
    pub completeness_score: f64,
    /// Transcoder graphs only: the replacement with only the kept features,
    /// only the dropped ones, and random sets of the kept sizes (1: the
    /// whole replacement, 0: none of its features).
    pub faithfulness: Option<Faithfulness>,
}

impl ImageScores {
    fn of(
        image: u32,
        label: u8,
        predicted: u8,
        kind: GraphKind,
        g: &Graph,
        p: &Pruned,
        s: Scores,
    ) -> Self {
        let errors_kept = p.node_mask[g.n_features..g.n_features + g.n_errors]
            .iter()
            .filter(|&&k| k)
            .count();
        ImageScores {
            image,
            label,
            predicted,
            graph: kind,
            active: g.n_features as u32,
            features_by_influence: p.features_by_influence as u32,
            features_kept: p.features_kept(g) as u32,
            errors_kept: errors_kept as u32,
            edges_kept: p.edges_kept() as u32,
            replacement_score: s.replacement,
            completeness_score: s.completeness,
            faithfulness: None,
        }
    }
}

/// A digit's mean graph toward its logit, pruned and scored.
#[derive(Clone, Debug)]
pub struct DigitCircuit {
    pub digit: u8,
    pub kind: GraphKind,
    pub images: usize,
    pub graph: Graph,
    pub pruned: Pruned,
    pub scores: Scores,
}

pub struct Study {
    /// Two rows per image (transcoders, neurons), in image order.
    pub images: Vec<ImageScores>,
    /// Per digit, the transcoders' graph then the neurons'.
    pub digits: Vec<DigitCircuit>,
    /// Over every image.
    pub splice: Vec<SpliceRow>,
    /// Every feature and neuron of the first `ablation_images` images, ablated.
    pub ablations: Vec<Ablation>,
}

impl Study {
    /// Predicted against actual ablation effects, per graph and layer.
    pub fn agreement(&self) -> Vec<(GraphKind, u8, Agreement)> {
        let mut out = Vec::new();
        for kind in [GraphKind::Transcoders, GraphKind::Neurons] {
            for layer in 0..2u8 {
                let rows = self
                    .ablations
                    .iter()
                    .filter(|a| a.graph == kind && a.layer == layer);
                if rows.clone().next().is_some() {
                    out.push((kind, layer, Agreement::of(rows)));
                }
            }
        }
        out
    }
}

/// Every image of `input` (`[rows, 784]` rows of the `input` layer) with its label.
pub fn study(
    r: &Replacement,
    input: &[f32],
    labels: &[u8],
    config: CircuitsConfig,
) -> Result<Study, CircuitError> {
    config.validate().map_err(CircuitError::Input)?;
    let options = config.prune();
    if input.len() != labels.len() * mlp::INPUT {
        return Err(CircuitError::Input(format!(
            "{} labels need {} input values; got {}",
            labels.len(),
            labels.len() * mlp::INPUT,
            input.len()
        )));
    }
    let mut images = Vec::with_capacity(2 * labels.len());
    let mut digits = Vec::new();
    let mut splice: Vec<(SpliceRow, usize)> = Vec::new();
    let mut ablations = Vec::new();
    for digit in 0..mlp::CLASSES as u8 {
        let which: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == digit).collect();
        if which.is_empty() {
            continue;
        }
        let rows: Vec<f32> = which
            .iter()
            .flat_map(|&i| input[i * mlp::INPUT..(i + 1) * mlp::INPUT].iter().copied())
            .collect();
        let traces = r.trace(&rows)?;
        type Scored = ([ImageScores; 2], Vec<Ablation>);
        let scored: Vec<Scored> = traces
            .par_iter()
            .zip(&which)
            .map(|(t, &i)| -> Result<Scored, CircuitError> {
                let predicted = argmax(&t.real.logits) as u8;
                let ablate = i < config.ablation_images;
                let mut ablated = Vec::new();
                let mut one = |kind, g: Graph| -> Result<ImageScores, CircuitError> {
                    let p = prune(&g, options)?;
                    let s = scores(&g)?;
                    let mut row = ImageScores::of(i as u32, digit, predicted, kind, &g, &p, s);
                    if kind == GraphKind::Transcoders {
                        row.faithfulness =
                            Some(r.faithfulness(t, &g, &p, config.random_draws, i as u64)?);
                    }
                    if ablate {
                        ablated.extend(r.ablations(i as u32, t, &g, kind));
                    }
                    Ok(row)
                };
                let rows = [
                    one(GraphKind::Transcoders, r.graph(t, LogitTargets::default()))?,
                    one(
                        GraphKind::Neurons,
                        r.network.graph(&t.input, LogitTargets::default()),
                    )?,
                ];
                Ok((rows, ablated))
            })
            .collect::<Result<_, _>>()?;
        for (rows, ablated) in scored {
            images.extend(rows);
            ablations.extend(ablated);
        }
        let inputs: Vec<&[f64]> = traces.iter().map(|t| t.input.as_slice()).collect();
        for (kind, mean) in [
            (GraphKind::Transcoders, digit_graph(r, digit, &traces)),
            (GraphKind::Neurons, r.network.digit_graph(digit, &inputs)),
        ] {
            digits.push(DigitCircuit {
                digit,
                kind,
                images: mean.images,
                pruned: prune(&mean.graph, options)?,
                scores: scores(&mean.graph)?,
                graph: mean.graph,
            });
        }
        let digit_labels = vec![digit; traces.len()];
        for row in splice_metrics(r, &traces, &digit_labels)? {
            splice.push((row, traces.len()));
        }
    }
    images.sort_by_key(|s| (s.image, s.graph == GraphKind::Neurons));
    ablations.sort_by_key(|a| (a.image, a.graph == GraphKind::Neurons, a.layer, a.feature));
    Ok(Study {
        images,
        digits,
        splice: pooled(splice),
        ablations,
    })
}

/// Per-digit splice rows pooled into one per (replaced, with_errors): every
/// field is a mean over images, so each digit weighs by its image count.
fn pooled(rows: Vec<(SpliceRow, usize)>) -> Vec<SpliceRow> {
    let mut out: Vec<(SpliceRow, usize)> = Vec::new();
    for (row, n) in rows {
        let w = n as f64;
        match out
            .iter_mut()
            .find(|(o, _)| o.replaced == row.replaced && o.with_errors == row.with_errors)
        {
            Some((o, total)) => {
                let t = *total as f64;
                let mix = |a: f64, b: f64| (a * t + b * w) / (t + w);
                o.accuracy = mix(o.accuracy, row.accuracy);
                o.ce = mix(o.ce, row.ce);
                o.kl = mix(o.kl, row.kl);
                o.top1_agreement = mix(o.top1_agreement, row.top1_agreement);
                *total += n;
            }
            None => out.push((row, n)),
        }
    }
    out.into_iter().map(|(row, _)| row).collect()
}
