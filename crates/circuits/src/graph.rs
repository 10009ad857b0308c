//! Attribution graphs in closed form: the replacement's (pixels -> T1
//! features -> T2 features -> logits, with each layer's error) and the MLP's
//! with its ReLU gates frozen (pixels -> fc1 neurons -> fc2 neurons -> logits).
//!
//! Nodes are ordered as circuit-tracer orders them (features, errors, inputs,
//! logits), and `adjacency[target * n + source]` is the direct effect of the
//! source on the target's pre-activation. Edges end at pre-activations, so
//! for every feature and logit node, `value = sum of incoming edges + constant`.

use mlp::{CLASSES, HIDDEN, INPUT};

use crate::network::{dot, Forward, Replacement, Trace};

/// What a node stands for. `layer` 0 is fc1's sublayer (T1, fc1's neurons),
/// 1 is fc2's (T2, fc2's neurons).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeId {
    Feature { layer: u8, index: u32 },
    Error { layer: u8 },
    Pixel(u16),
    Logit(u8),
}

impl NodeId {
    /// A short name: `T1 #12`, `T2 error`, `pixel 14,7`, `logit 3`, with each
    /// layer's features called by `layer_names` (`["fc1", "fc2"]` for neurons).
    pub fn label(&self, layer_names: [&str; 2]) -> String {
        match *self {
            NodeId::Feature { layer, index } => format!("{} #{index}", layer_names[layer as usize]),
            NodeId::Error { layer } => format!("{} error", layer_names[layer as usize]),
            NodeId::Pixel(p) => format!("pixel {},{}", p / 28, p % 28),
            NodeId::Logit(c) => format!("logit {c}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Node {
    pub id: NodeId,
    /// A feature's or neuron's activation, a pixel's `input` value, an
    /// error's norm, a logit node's value (the logit less the
    /// probability-weighted mean logit).
    pub value: f64,
    /// A feature's or logit's pre-activation less its incoming edges: its
    /// biases (0 for pixels and errors, which are sources).
    pub constant: f64,
}

/// Which logits a graph explains, and with what weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LogitTargets {
    /// circuit-tracer's: the most probable classes until their probability
    /// sums to `cumulative`, at most `max`, each weighted by its probability.
    Top { cumulative: f64, max: usize },
    /// One class, weight 1 (a digit's aggregated graph).
    Class(u8),
}

impl Default for LogitTargets {
    fn default() -> Self {
        LogitTargets::Top {
            cumulative: 0.95,
            max: 10,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Graph {
    /// Features (layer 0, then 1, each by index), errors, pixels, logits.
    pub nodes: Vec<Node>,
    pub n_features: usize,
    pub n_errors: usize,
    pub n_pixels: usize,
    pub n_logits: usize,
    /// `[n, n]`: row = target, column = source.
    pub adjacency: Vec<f64>,
    /// Each logit node's weight (its probability, or 1).
    pub logit_weights: Vec<f64>,
}

impl Graph {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn edge(&self, target: usize, source: usize) -> f64 {
        self.adjacency[target * self.len() + source]
    }

    /// The position of a node, if the graph has it.
    pub fn position(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Every node's weight in the influence computation: the logits' own,
    /// zero elsewhere.
    pub fn output_weights(&self) -> Vec<f64> {
        let mut w = vec![0.0; self.len()];
        let start = self.len() - self.n_logits;
        w[start..].copy_from_slice(&self.logit_weights);
        w
    }
}

pub(crate) fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The classes a graph explains and their weights.
fn targets(probs: &[f64], targets: LogitTargets) -> Vec<(u8, f64)> {
    match targets {
        LogitTargets::Class(c) => vec![(c, 1.0)],
        LogitTargets::Top { cumulative, max } => {
            let mut order: Vec<usize> = (0..probs.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            let mut out = Vec::new();
            let mut sum = 0.0;
            for c in order.into_iter().take(max.max(1)) {
                out.push((c as u8, probs[c]));
                sum += probs[c];
                if sum >= cumulative {
                    break;
                }
            }
            out
        }
    }
}

/// Reads a vector's effect on the logit nodes: `u_c . v` with
/// `u_c = W3[c] - sum_c' p_c' W3[c']`, from `W3 v` (its effect on every logit).
struct LogitReader {
    probs: Vec<f64>,
    classes: Vec<u8>,
}

impl LogitReader {
    /// The reader of an image's `logits` and the classes it explains, with their weights.
    fn new(logits: &[f64], logit_targets: LogitTargets) -> (LogitReader, Vec<(u8, f64)>) {
        let probs = softmax(logits);
        let chosen = targets(&probs, logit_targets);
        let reader = LogitReader {
            probs,
            classes: chosen.iter().map(|t| t.0).collect(),
        };
        (reader, chosen)
    }

    /// `effects` is `W3 v` (10 values); returns one value per target class.
    fn read(&self, effects: &[f64]) -> impl Iterator<Item = f64> + '_ {
        let mean = dot(&self.probs, effects);
        let effects = effects.to_vec();
        self.classes
            .iter()
            .map(move |&c| effects[c as usize] - mean)
    }

    /// The `c'` column of a `[10, cols]` product, read.
    fn read_column(&self, matrix: &[f64], cols: usize, col: usize) -> Vec<f64> {
        let effects: Vec<f64> = (0..CLASSES).map(|c| matrix[c * cols + col]).collect();
        self.read(&effects).collect()
    }
}

/// Builds a graph: positions are assigned first, then edges set by id.
struct Builder {
    nodes: Vec<Node>,
    adjacency: Vec<f64>,
    n: usize,
}

impl Builder {
    fn new(nodes: Vec<Node>) -> Builder {
        let n = nodes.len();
        Builder {
            nodes,
            adjacency: vec![0.0; n * n],
            n,
        }
    }

    fn set(&mut self, target: usize, source: usize, weight: f64) {
        self.adjacency[target * self.n + source] = weight;
    }
}

/// The lit (non-zero) pixels of an `input` row: (pixel, value).
fn lit_pixels(input: &[f64]) -> Vec<(usize, f64)> {
    input
        .iter()
        .enumerate()
        .filter(|(_, &x)| x != 0.0)
        .map(|(p, &x)| (p, x))
        .collect()
}

fn pixel_nodes(lit: &[(usize, f64)]) -> Vec<Node> {
    lit.iter()
        .map(|&(p, x)| Node {
            id: NodeId::Pixel(p as u16),
            value: x,
            constant: 0.0,
        })
        .collect()
}

fn feature_nodes(layer: u8, features: &[u32], values: &[f64]) -> Vec<Node> {
    features
        .iter()
        .zip(values)
        .map(|(&index, &value)| Node {
            id: NodeId::Feature { layer, index },
            value,
            constant: 0.0,
        })
        .collect()
}

fn norm(v: &[f64]) -> f64 {
    dot(v, v).sqrt()
}

struct Layout {
    n1: usize,
    n2: usize,
    errors: usize,
    pixels: usize,
    logits: usize,
}

fn finish(b: Builder, layout: Layout, weights: Vec<f64>) -> Graph {
    Graph {
        nodes: b.nodes,
        n_features: layout.n1 + layout.n2,
        n_errors: layout.errors,
        n_pixels: layout.pixels,
        n_logits: layout.logits,
        adjacency: b.adjacency,
        logit_weights: weights,
    }
}

/// The logit nodes of the chosen classes, and their weights.
fn logit_nodes(
    real: &Forward,
    reader: &LogitReader,
    b3: &[f64],
    chosen: &[(u8, f64)],
) -> (Vec<Node>, Vec<f64>) {
    let values: Vec<f64> = reader.read(&real.logits).collect();
    let constants: Vec<f64> = reader.read(b3).collect();
    let nodes = reader
        .classes
        .iter()
        .zip(values.iter().zip(constants))
        .map(|(&c, (&value, constant))| Node {
            id: NodeId::Logit(c),
            value,
            constant,
        })
        .collect();
    (nodes, chosen.iter().map(|t| t.1).collect())
}

impl Replacement {
    /// The replacement's attribution graph of one traced image.
    pub fn graph(&self, trace: &Trace, logit_targets: LogitTargets) -> Graph {
        let (reader, chosen) = LogitReader::new(&trace.real.logits, logit_targets);
        let (d1, d2) = (self.t1.d_sae(), self.t2.d_sae());
        let mut nodes = feature_nodes(0, &trace.t1.features, &trace.t1.values);
        nodes.extend(feature_nodes(1, &trace.t2.features, &trace.t2.values));
        for (layer, e) in [(0u8, &trace.e1), (1, &trace.e2)] {
            nodes.push(Node {
                id: NodeId::Error { layer },
                value: norm(e),
                constant: 0.0,
            });
        }
        let pixel_list = lit_pixels(&trace.input);
        let n_pixels = pixel_list.len();
        nodes.extend(pixel_nodes(&pixel_list));
        let (logits, weights) = logit_nodes(&trace.real, &reader, &self.network.b3, &chosen);
        let n_logits = logits.len();
        nodes.extend(logits);
        let (n1, n2) = (trace.t1.features.len(), trace.t2.features.len());
        let (e1_at, e2_at, pixel_start) = (n1 + n2, n1 + n2 + 1, n1 + n2 + 2);
        let logit_start = pixel_start + n_pixels;
        let mut b = Builder::new(nodes);

        // T1 features <- pixels.
        for (t, &j) in trace.t1.features.iter().enumerate() {
            let j = j as usize;
            let scale = self.value1.scale[j];
            for (s, &(p, x)) in pixel_list.iter().enumerate() {
                b.set(t, pixel_start + s, x * scale * self.enc1[p * d1 + j]);
            }
            b.nodes[t].constant = self.value1.bias[j];
        }
        // T2 features <- T1 features, e1, pixels (T1's skip); constant through b_dec1.
        let mut column = vec![0.0; HIDDEN];
        for (k_at, &k) in trace.t2.features.iter().enumerate() {
            let (t, k) = (n1 + k_at, k as usize);
            let scale = self.value2.scale[k];
            for (i, c) in column.iter_mut().enumerate() {
                *c = self.enc2[i * d2 + k];
            }
            for (s, (&j, &a)) in trace.t1.features.iter().zip(&trace.t1.values).enumerate() {
                let j = j as usize;
                let d1_row = &self.dec1[j * HIDDEN..(j + 1) * HIDDEN];
                b.set(t, s, a * scale * dot(&column, d1_row));
            }
            b.set(t, e1_at, scale * dot(&column, &trace.e1));
            if !self.skip1.is_empty() {
                for (s, &(p, x)) in pixel_list.iter().enumerate() {
                    b.set(t, pixel_start + s, x * scale * self.e2_s1[k * INPUT + p]);
                }
            }
            b.nodes[t].constant = scale * dot(&column, &self.b_dec1) + self.value2.bias[k];
        }
        // Logits <- T2 features, e2, and through T2's skip: T1 features, e1, pixels.
        let e2_read: Vec<f64> = reader.read(&self.network.w3_times(&trace.e2)).collect();
        let skip2 = !self.skip2.is_empty();
        let e1_read: Vec<f64> = if skip2 {
            let w3_s2_e1: Vec<f64> = (0..CLASSES)
                .map(|c| dot(&self.w3_s2[c * HIDDEN..(c + 1) * HIDDEN], &trace.e1))
                .collect();
            reader.read(&w3_s2_e1).collect()
        } else {
            Vec::new()
        };
        for (k_at, (&k, &a)) in trace.t2.features.iter().zip(&trace.t2.values).enumerate() {
            let read = reader.read_column(&self.w3_d2, d2, k as usize);
            for (l, r) in read.into_iter().enumerate() {
                b.set(logit_start + l, n1 + k_at, a * r);
            }
        }
        for (l, &r) in e2_read.iter().enumerate() {
            b.set(logit_start + l, e2_at, r);
        }
        if skip2 {
            for (s, (&j, &a)) in trace.t1.features.iter().zip(&trace.t1.values).enumerate() {
                let read = reader.read_column(&self.w3_s2_d1, d1, j as usize);
                for (l, r) in read.into_iter().enumerate() {
                    b.set(logit_start + l, s, a * r);
                }
            }
            for (l, &r) in e1_read.iter().enumerate() {
                b.set(logit_start + l, e1_at, r);
            }
            if !self.w3_s2_s1.is_empty() {
                for (s, &(p, x)) in pixel_list.iter().enumerate() {
                    let read = reader.read_column(&self.w3_s2_s1, INPUT, p);
                    for (l, r) in read.into_iter().enumerate() {
                        b.set(logit_start + l, pixel_start + s, x * r);
                    }
                }
            }
        }
        // The logits' constants: b3 read above, plus the decoders' biases.
        let mut base = self.b_dec2.clone();
        if skip2 {
            for (o, row) in base.iter_mut().zip(self.skip2.chunks_exact(HIDDEN)) {
                *o += dot(row, &self.b_dec1);
            }
        }
        let base_read: Vec<f64> = reader.read(&self.network.w3_times(&base)).collect();
        for (l, r) in base_read.into_iter().enumerate() {
            b.nodes[logit_start + l].constant += r;
        }
        let layout = Layout {
            n1,
            n2,
            errors: 2,
            pixels: n_pixels,
            logits: n_logits,
        };
        finish(b, layout, weights)
    }
}

impl crate::Network {
    /// The MLP's own graph of one `input` row with its ReLU gates frozen: the active
    /// neurons of fc1 and fc2 as nodes, no error.
    pub fn graph(&self, input: &[f64], logit_targets: LogitTargets) -> Graph {
        let real = self.forward(input);
        let (reader, chosen) = LogitReader::new(&real.logits, logit_targets);
        let active = |h: &[f64]| -> (Vec<u32>, Vec<f64>) {
            h.iter()
                .enumerate()
                .filter(|(_, &v)| v > 0.0)
                .map(|(i, &v)| (i as u32, v))
                .unzip()
        };
        let (f1, v1) = active(&real.h1);
        let (f2, v2) = active(&real.h2);
        let mut nodes = feature_nodes(0, &f1, &v1);
        nodes.extend(feature_nodes(1, &f2, &v2));
        let pixel_list = lit_pixels(input);
        let n_pixels = pixel_list.len();
        nodes.extend(pixel_nodes(&pixel_list));
        let (logits, weights) = logit_nodes(&real, &reader, &self.b3, &chosen);
        let n_logits = logits.len();
        nodes.extend(logits);
        let (n1, n2) = (f1.len(), f2.len());
        let pixel_start = n1 + n2;
        let logit_start = pixel_start + n_pixels;
        let mut b = Builder::new(nodes);
        for (t, &i) in f1.iter().enumerate() {
            let i = i as usize;
            for (s, &(p, x)) in pixel_list.iter().enumerate() {
                b.set(t, pixel_start + s, x * self.w1[i * INPUT + p]);
            }
            b.nodes[t].constant = self.b1_from_input[i];
        }
        for (k_at, &k) in f2.iter().enumerate() {
            let k = k as usize;
            for (s, (&i, &h)) in f1.iter().zip(&v1).enumerate() {
                b.set(n1 + k_at, s, h * self.w2[k * HIDDEN + i as usize]);
            }
            b.nodes[n1 + k_at].constant = self.b2[k];
        }
        for (k_at, (&k, &h)) in f2.iter().zip(&v2).enumerate() {
            let read = reader.read_column(&self.w3, HIDDEN, k as usize);
            for (l, r) in read.into_iter().enumerate() {
                b.set(logit_start + l, n1 + k_at, h * r);
            }
        }
        let layout = Layout {
            n1,
            n2,
            errors: 0,
            pixels: n_pixels,
            logits: n_logits,
        };
        finish(b, layout, weights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_targets_stop_at_the_cumulative_probability_or_the_cap() {
        let probs = [0.05, 0.6, 0.3, 0.05];
        let top = |cumulative, max| targets(&probs, LogitTargets::Top { cumulative, max });
        assert_eq!(top(0.95, 10), vec![(1, 0.6), (2, 0.3), (0, 0.05)]);
        assert_eq!(top(0.5, 10), vec![(1, 0.6)]);
        assert_eq!(top(0.99, 2), vec![(1, 0.6), (2, 0.3)]);
        assert_eq!(targets(&probs, LogitTargets::Class(3)), vec![(3, 1.0)]);
    }
}
