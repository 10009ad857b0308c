//! A digit's graph: the mean of its images' graphs toward its own logit.
//! A feature is the same node in every image (MNIST has no positions), so
//! edges add up across images; an image where a node is silent adds zero.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::graph::{Graph, LogitTargets, Node, NodeId};
use crate::network::{Network, Replacement, Trace};

/// A digit's mean graph over `images` test images.
#[derive(Clone, Debug)]
pub struct DigitGraph {
    pub digit: u8,
    pub images: usize,
    pub graph: Graph,
}

/// The sum of graphs over a fixed superset of nodes.
struct Sum {
    ids: Vec<NodeId>,
    index: HashMap<NodeId, usize>,
    adjacency: Vec<f64>,
    values: Vec<f64>,
    constants: Vec<f64>,
    weights: Vec<f64>,
    present: Vec<usize>,
    count: usize,
}

impl Sum {
    fn new(mut ids: Vec<NodeId>) -> Sum {
        ids.sort();
        ids.dedup();
        let n = ids.len();
        let index = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        Sum {
            ids,
            index,
            adjacency: vec![0.0; n * n],
            values: vec![0.0; n],
            constants: vec![0.0; n],
            weights: vec![0.0; n],
            present: vec![0; n],
            count: 0,
        }
    }

    fn add(mut self, graph: &Graph) -> Sum {
        let n = self.ids.len();
        let at: Vec<usize> = graph
            .nodes
            .iter()
            .map(|node| {
                *self
                    .index
                    .get(&node.id)
                    .expect("the superset holds every node of every graph added")
            })
            .collect();
        let weights = graph.output_weights();
        for (i, node) in graph.nodes.iter().enumerate() {
            self.values[at[i]] += node.value;
            self.constants[at[i]] += node.constant;
            self.weights[at[i]] += weights[i];
            self.present[at[i]] += 1;
            let row = &graph.adjacency[i * graph.len()..(i + 1) * graph.len()];
            for (j, &a) in row.iter().enumerate() {
                if a != 0.0 {
                    self.adjacency[at[i] * n + at[j]] += a;
                }
            }
        }
        self.count += 1;
        self
    }

    fn merge(mut self, other: Sum) -> Sum {
        for (a, b) in [
            (&mut self.adjacency, &other.adjacency),
            (&mut self.values, &other.values),
            (&mut self.constants, &other.constants),
            (&mut self.weights, &other.weights),
        ] {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        self.present
            .iter_mut()
            .zip(&other.present)
            .for_each(|(x, y)| *x += y);
        self.count += other.count;
        self
    }

    /// The mean graph, without the nodes no graph had, in graph order.
    fn mean(self) -> Graph {
        let n = self.ids.len();
        let scale = 1.0 / self.count.max(1) as f64;
        let rank = |id: &NodeId| match id {
            NodeId::Feature { .. } => 0,
            NodeId::Error { .. } => 1,
            NodeId::Pixel(_) => 2,
            NodeId::Logit(_) => 3,
        };
        let mut kept: Vec<usize> = (0..n).filter(|&i| self.present[i] > 0).collect();
        kept.sort_by_key(|&i| (rank(&self.ids[i]), self.ids[i]));
        let m = kept.len();
        let mut adjacency = vec![0.0; m * m];
        for (t, &i) in kept.iter().enumerate() {
            for (s, &j) in kept.iter().enumerate() {
                adjacency[t * m + s] = self.adjacency[i * n + j] * scale;
            }
        }
        let nodes: Vec<Node> = kept
            .iter()
            .map(|&i| Node {
                id: self.ids[i],
                value: self.values[i] * scale,
                constant: self.constants[i] * scale,
            })
            .collect();
        let count = |r| kept.iter().filter(|&&i| rank(&self.ids[i]) == r).count();
        let n_logits = count(3);
        Graph {
            n_features: count(0),
            n_errors: count(1),
            n_pixels: count(2),
            n_logits,
            logit_weights: kept[m - n_logits..]
                .iter()
                .map(|&i| self.weights[i] * scale)
                .collect(),
            nodes,
            adjacency,
        }
    }
}

fn pixel_ids<'a>(inputs: impl Iterator<Item = &'a [f64]>) -> Vec<NodeId> {
    let mut lit = [false; mlp::INPUT];
    for input in inputs {
        for (p, &x) in input.iter().enumerate() {
            lit[p] |= x != 0.0;
        }
    }
    (0..mlp::INPUT)
        .filter(|&p| lit[p])
        .map(|p| NodeId::Pixel(p as u16))
        .collect()
}

fn mean_of<T: Sync>(ids: Vec<NodeId>, items: &[T], graph: impl Fn(&T) -> Graph + Sync) -> Graph {
    // One sum per thread: a sum is [nodes, nodes] f64.
    let per_thread = items.len().div_ceil(rayon::current_num_threads()).max(1);
    items
        .par_iter()
        .with_min_len(per_thread)
        .fold(|| Sum::new(ids.clone()), |sum, item| sum.add(&graph(item)))
        .reduce(|| Sum::new(ids.clone()), Sum::merge)
        .mean()
}

/// The replacement's graph of `digit`: the mean over `traces` (its images)
/// of each image's graph toward the digit's logit.
pub fn digit_graph(replacement: &Replacement, digit: u8, traces: &[Trace]) -> DigitGraph {
    let mut ids = pixel_ids(traces.iter().map(|t| t.input.as_slice()));
    for t in traces {
        for (layer, codes) in [(0u8, &t.t1), (1, &t.t2)] {
            ids.extend(
                codes
                    .features
                    .iter()
                    .map(|&index| NodeId::Feature { layer, index }),
            );
        }
    }
    ids.extend([
        NodeId::Error { layer: 0 },
        NodeId::Error { layer: 1 },
        NodeId::Logit(digit),
    ]);
    let graph = mean_of(ids, traces, |t| {
        replacement.graph(t, LogitTargets::Class(digit))
    });
    DigitGraph {
        digit,
        images: traces.len(),
        graph,
    }
}

impl Network {
    /// The MLP's frozen-gate graph of `digit`, the mean over its images'
    /// `input` rows.
    pub fn digit_graph(&self, digit: u8, inputs: &[&[f64]]) -> DigitGraph {
        let mut ids = pixel_ids(inputs.iter().copied());
        for layer in 0..2u8 {
            ids.extend((0..mlp::HIDDEN as u32).map(|index| NodeId::Feature { layer, index }));
        }
        ids.push(NodeId::Logit(digit));
        let graph = mean_of(ids, inputs, |i| self.graph(i, LogitTargets::Class(digit)));
        DigitGraph {
            digit,
            images: inputs.len(),
            graph,
        }
    }
}
