//! Circuits: the MLP's two sublayers replaced by transcoders, and attribution
//! graphs from the pixels through their features to the logits, read in
//! closed form (Ameisen et al. 2025; `circuit-tracer`'s pruning and scores).
//!
//! T1 reads the `input` layer (pixels less a black pixel) and writes
//! `fc1.post`; T2 reads `fc1.post` and writes `fc2.post`. Each layer's
//! reconstruction error is a node, so the replacement reproduces the MLP's
//! logits exactly. With the active features frozen, every edge is a product
//! of an activation and a weight, and every node's pre-activation is the sum
//! of its incoming edges plus a constant (its biases).
//!
//! The baseline is the MLP's own graph with its ReLU gates frozen: neurons
//! as nodes and no error. Everything here is computed in f64 from the f32
//! weights; the transcoders' active sets are the ones `sae::encode_sparse`
//! selects.

mod aggregate;
mod graph;
mod intervene;
mod network;
mod prune;
mod schema;
mod splice;
mod study;

pub use aggregate::{digit_graph, DigitGraph};
pub use graph::{Graph, LogitTargets, Node, NodeId};
pub use intervene::{Ablation, Agreement, Faithfulness};
pub use network::{Codes, Network, Replacement, Trace};
pub use prune::{influence, prune, scores, PruneOptions, Pruned, Scores};
pub use schema::{circuit_tracer_json, SchemaInfo};
pub use splice::{splice_metrics, SpliceRow};
pub use study::{study, CircuitsConfig, DigitCircuit, GraphKind, ImageScores, Study};

#[derive(Debug, thiserror::Error)]
pub enum CircuitError {
    /// Transcoders that cannot replace the MLP's sublayers, named.
    #[error("{0}")]
    Replacement(String),
    /// Input of the wrong shape or value, named.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Sae(#[from] sae::SaeError),
}
