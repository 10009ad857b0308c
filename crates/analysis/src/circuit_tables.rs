//! The `circuits` stage's parquet tables (polars lives in this crate only):
//! - `circuit_images`: two rows per test image (`graph` = `transcoders` or
//!   `neurons`): `image`, `label`, `predicted`, `active`,
//!   `features_by_influence`, `features_kept`, `errors_kept`, `edges_kept`,
//!   `replacement_score`, `completeness_score`, and for transcoder graphs
//!   `faithfulness_circuit`, `_complement`, `_random` (null for neurons).
//! - `circuit_ablations`: every feature (and neuron) of the first
//!   `ablation_images` images ablated alone: `image`, `graph`, `layer`,
//!   `feature`, `target` (the top class), `predicted` (by the graph) and
//!   `actual` (in the MLP) change of the target's logit node.
//! - `circuit_nodes`: every node of each digit's mean graph: `digit`, `graph`,
//!   `node` (its label), `kind`, `layer`, `index`, `value` (mean over the
//!   digit's images), `influence`, `cumulative`, `kept`.
//! - `circuit_edges`: the kept edges of each digit's pruned graph: `digit`,
//!   `graph`, `source`, `target`, `weight`.
//! - `circuit_splice`: `replaced`, `with_errors`, `accuracy`, `ce`, `kl`,
//!   `top1_agreement`.

use std::path::Path;

use circuits::{NodeId, Study};
use polars::prelude::*;

use crate::tables::write_parquet;
use crate::AnalysisError;

pub const CIRCUIT_TABLES: [&str; 5] = [
    "circuit_images",
    "circuit_ablations",
    "circuit_nodes",
    "circuit_edges",
    "circuit_splice",
];

fn frame(columns: Vec<Column>) -> Result<DataFrame, AnalysisError> {
    let rows = columns.first().map_or(0, |c| c.len());
    DataFrame::new(rows, columns).map_err(AnalysisError::polars("building a circuit table"))
}

fn col<T>(name: &str, values: Vec<T>) -> Column
where
    Series: NamedFrom<Vec<T>, [T]>,
{
    Column::new(name.into(), values)
}

fn kind_of(id: NodeId) -> (&'static str, Option<u32>, Option<u32>) {
    match id {
        NodeId::Feature { layer, index } => ("feature", Some(layer as u32), Some(index)),
        NodeId::Error { layer } => ("error", Some(layer as u32), None),
        NodeId::Pixel(p) => ("pixel", None, Some(p as u32)),
        NodeId::Logit(c) => ("logit", None, Some(c as u32)),
    }
}

/// Writes the four tables into `dir`.
pub fn write_circuit_tables(study: &Study, dir: &Path) -> Result<(), AnalysisError> {
    let im = &study.images;
    let mut images = frame(vec![
        col("image", im.iter().map(|r| r.image).collect()),
        col("label", im.iter().map(|r| r.label as u32).collect()),
        col("predicted", im.iter().map(|r| r.predicted as u32).collect()),
        col("graph", im.iter().map(|r| r.graph.name()).collect()),
        col("active", im.iter().map(|r| r.active).collect()),
        col(
            "features_by_influence",
            im.iter().map(|r| r.features_by_influence).collect(),
        ),
        col(
            "features_kept",
            im.iter().map(|r| r.features_kept).collect(),
        ),
        col("errors_kept", im.iter().map(|r| r.errors_kept).collect()),
        col("edges_kept", im.iter().map(|r| r.edges_kept).collect()),
        col(
            "replacement_score",
            im.iter().map(|r| r.replacement_score).collect(),
        ),
        col(
            "completeness_score",
            im.iter().map(|r| r.completeness_score).collect(),
        ),
        col(
            "faithfulness_circuit",
            im.iter()
                .map(|r| r.faithfulness.map(|f| f.circuit))
                .collect(),
        ),
        col(
            "faithfulness_complement",
            im.iter()
                .map(|r| r.faithfulness.map(|f| f.complement))
                .collect(),
        ),
        col(
            "faithfulness_random",
            im.iter()
                .map(|r| r.faithfulness.map(|f| f.random))
                .collect(),
        ),
    ])?;
    write_parquet(&mut images, &dir.join("circuit_images.parquet"))?;

    let (mut digit, mut graph, mut node, mut kind, mut layer, mut index) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut value, mut influence, mut cumulative, mut kept) = (vec![], vec![], vec![], vec![]);
    let (mut e_digit, mut e_graph, mut source, mut target, mut weight) =
        (vec![], vec![], vec![], vec![], vec![]);
    for d in &study.digits {
        let names = d.kind.layer_names();
        let n = d.graph.len();
        for (i, nd) in d.graph.nodes.iter().enumerate() {
            let (k, l, x) = kind_of(nd.id);
            digit.push(d.digit as u32);
            graph.push(d.kind.name());
            node.push(nd.id.label(names));
            kind.push(k);
            layer.push(l);
            index.push(x);
            value.push(nd.value);
            influence.push(d.pruned.influence[i]);
            cumulative.push(d.pruned.cumulative[i]);
            kept.push(d.pruned.node_mask[i]);
        }
        for t in 0..n {
            for s in 0..n {
                if d.pruned.edge_mask[t * n + s] {
                    e_digit.push(d.digit as u32);
                    e_graph.push(d.kind.name());
                    source.push(d.graph.nodes[s].id.label(names));
                    target.push(d.graph.nodes[t].id.label(names));
                    weight.push(d.graph.edge(t, s));
                }
            }
        }
    }
    let mut nodes = frame(vec![
        col("digit", digit),
        col("graph", graph),
        col("node", node),
        col("kind", kind),
        col("layer", layer),
        col("index", index),
        col("value", value),
        col("influence", influence),
        col("cumulative", cumulative),
        col("kept", kept),
    ])?;
    write_parquet(&mut nodes, &dir.join("circuit_nodes.parquet"))?;
    let mut edges = frame(vec![
        col("digit", e_digit),
        col("graph", e_graph),
        col("source", source),
        col("target", target),
        col("weight", weight),
    ])?;
    write_parquet(&mut edges, &dir.join("circuit_edges.parquet"))?;
    let ab = &study.ablations;
    let mut ablations = frame(vec![
        col("image", ab.iter().map(|a| a.image).collect()),
        col("graph", ab.iter().map(|a| a.graph.name()).collect()),
        col("layer", ab.iter().map(|a| a.layer as u32).collect()),
        col("feature", ab.iter().map(|a| a.feature).collect()),
        col("target", ab.iter().map(|a| a.target as u32).collect()),
        col("predicted", ab.iter().map(|a| a.predicted).collect()),
        col("actual", ab.iter().map(|a| a.actual).collect()),
    ])?;
    write_parquet(&mut ablations, &dir.join("circuit_ablations.parquet"))?;
    let sp = &study.splice;
    let mut splice = frame(vec![
        col("replaced", sp.iter().map(|r| r.replaced.clone()).collect()),
        col("with_errors", sp.iter().map(|r| r.with_errors).collect()),
        col("accuracy", sp.iter().map(|r| r.accuracy).collect()),
        col("ce", sp.iter().map(|r| r.ce).collect()),
        col("kl", sp.iter().map(|r| r.kl).collect()),
        col(
            "top1_agreement",
            sp.iter().map(|r| r.top1_agreement).collect(),
        ),
    ])?;
    write_parquet(&mut splice, &dir.join("circuit_splice.parquet"))
}
