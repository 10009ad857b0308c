//! Checks of a graph against the real network: what ablating one feature
//! does to the top logit node, predicted by the graph and measured in the
//! real MLP; and circuit faithfulness, the replacement run with only a
//! pruned graph's features (errors frozen).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::graph::{softmax, Graph, NodeId};
use crate::network::{Codes, Replacement, Trace};
use crate::prune::Pruned;
use crate::study::GraphKind;

/// One feature (or neuron) ablated in one image.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ablation {
    pub image: u32,
    pub graph: GraphKind,
    pub layer: u8,
    pub feature: u32,
    /// The class whose logit node is read (the image's top class).
    pub target: u8,
    /// The change the graph predicts, its gates frozen.
    pub predicted: f64,
    /// The change in the real MLP.
    pub actual: f64,
}

/// How well predicted changes match actual ones.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub pairs: usize,
    /// `1 - sum (actual - predicted)^2 / sum (actual - mean actual)^2`.
    pub r2: f64,
    /// Share of pairs whose signs (-1, 0, 1) agree.
    pub sign_agreement: f64,
    /// Spearman's rank correlation (average ranks for ties).
    pub spearman: f64,
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            r[o] = mean;
        }
        i = j + 1;
    }
    r
}

/// -1, 0 or 1 (`f64::signum` calls 0 positive).
fn sign(x: f64) -> i8 {
    (x > 0.0) as i8 - (x < 0.0) as i8
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

impl Agreement {
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a Ablation>) -> Agreement {
        let (predicted, actual): (Vec<f64>, Vec<f64>) =
            rows.into_iter().map(|r| (r.predicted, r.actual)).unzip();
        let n = actual.len();
        let mean = actual.iter().sum::<f64>() / n.max(1) as f64;
        let residual: f64 = actual
            .iter()
            .zip(&predicted)
            .map(|(a, p)| (a - p).powi(2))
            .sum();
        let total: f64 = actual.iter().map(|a| (a - mean).powi(2)).sum();
        let agree = actual
            .iter()
            .zip(&predicted)
            .filter(|(a, p)| sign(**a) == sign(**p))
            .count();
        Agreement {
            pairs: n,
            r2: 1.0 - residual / total,
            sign_agreement: agree as f64 / n.max(1) as f64,
            spearman: pearson(&ranks(&actual), &ranks(&predicted)),
        }
    }
}

fn demeaned(logits: &[f64], probs: &[f64], c: usize) -> f64 {
    logits[c] - logits.iter().zip(probs).map(|(l, p)| l * p).sum::<f64>()
}

/// The graph's prediction for removing node `s` of layer 0 or 1: its own
/// edge to the logit node, and through every layer-1 node it feeds (each
/// moved by its edge, gates frozen).
fn predicted_removal(g: &Graph, s: usize, logit: usize) -> f64 {
    let mut total = g.edge(logit, s);
    for t in 0..g.n_features {
        if let NodeId::Feature { layer: 1, .. } = g.nodes[t].id {
            let value = g.nodes[t].value;
            if g.edge(t, s) != 0.0 && value != 0.0 {
                total += g.edge(t, s) * g.edge(logit, t) / value;
            }
        }
    }
    -total
}

impl Replacement {
    /// Every active feature (or neuron) of `g`, `trace`'s graph of `kind`,
    /// ablated on its own: the change in the top logit node (the logit less
    /// the clean probability-weighted mean) predicted by the graph and
    /// measured in the real MLP. A T1 feature: `h1 - a_j D1[j]` through the
    /// real fc2, ReLU and fc3; a T2 feature: `h2 - a_k D2[k]`; a neuron: set to 0.
    pub fn ablations(
        &self,
        image: u32,
        trace: &Trace,
        g: &Graph,
        kind: GraphKind,
    ) -> Vec<Ablation> {
        let logit = g.len() - g.n_logits;
        let NodeId::Logit(c) = g.nodes[logit].id else {
            unreachable!("a graph's last nodes are logits")
        };
        let probs = softmax(&trace.real.logits);
        let clean = demeaned(&trace.real.logits, &probs, c as usize);
        let net = &self.network;
        (0..g.n_features)
            .map(|s| {
                let NodeId::Feature { layer, index } = g.nodes[s].id else {
                    unreachable!("the first nodes are features")
                };
                let a = g.nodes[s].value;
                let logits = match (kind, layer) {
                    (GraphKind::Transcoders, 0) => {
                        let h1 = less(&trace.real.h1, a, decoder_row(&self.dec1, index));
                        net.logits_from_h2(&net.fc2_post(&h1))
                    }
                    (GraphKind::Transcoders, _) => {
                        net.logits_from_h2(&less(&trace.real.h2, a, decoder_row(&self.dec2, index)))
                    }
                    (GraphKind::Neurons, 0) => {
                        let mut h1 = trace.real.h1.clone();
                        h1[index as usize] = 0.0;
                        net.logits_from_h2(&net.fc2_post(&h1))
                    }
                    (GraphKind::Neurons, _) => {
                        let mut h2 = trace.real.h2.clone();
                        h2[index as usize] = 0.0;
                        net.logits_from_h2(&h2)
                    }
                };
                Ablation {
                    image,
                    graph: kind,
                    layer,
                    feature: index,
                    target: c,
                    predicted: predicted_removal(g, s, logit),
                    actual: demeaned(&logits, &probs, c as usize) - clean,
                }
            })
            .collect()
    }

    /// The top logit node with only the features in `keep1` (T1) and
    /// `keep2` (T2) active, errors frozen: T2 re-selects its features on
    /// the new fc1.post and keeps those in `keep2`. One value per pair.
    fn kept_logit(
        &self,
        trace: &Trace,
        c: usize,
        keeps: &[(Vec<u32>, Vec<u32>)],
    ) -> Result<Vec<f64>, crate::CircuitError> {
        let probs = softmax(&trace.real.logits);
        let h1s: Vec<Vec<f64>> = keeps
            .iter()
            .map(|(keep1, _)| {
                let codes = restrict(&trace.t1, keep1);
                let out = self.t1_output(&trace.input, &codes);
                out.iter().zip(&trace.e1).map(|(a, b)| a + b).collect()
            })
            .collect();
        let codes2 = self.codes_on_h1(&h1s)?;
        Ok(keeps
            .iter()
            .zip(h1s.iter().zip(&codes2))
            .map(|((_, keep2), (h1, codes))| {
                let out = self.t2_output(h1, &restrict(codes, keep2));
                let h2: Vec<f64> = out.iter().zip(&trace.e2).map(|(a, b)| a + b).collect();
                demeaned(&self.network.logits_from_h2(&h2), &probs, c)
            })
            .collect())
    }

    /// Circuit faithfulness of a pruned transcoder graph on its top logit
    /// node: `(m_kept - m_empty) / (m_full - m_empty)` for the graph's kept
    /// features, for the active features it dropped, and for random sets of
    /// the kept sizes (the mean of `draws`, seeded by the image).
    pub fn faithfulness(
        &self,
        trace: &Trace,
        g: &Graph,
        pruned: &Pruned,
        draws: usize,
        seed: u64,
    ) -> Result<Faithfulness, crate::CircuitError> {
        let c = match g.nodes[g.len() - g.n_logits].id {
            NodeId::Logit(c) => c as usize,
            _ => unreachable!("a graph's last nodes are logits"),
        };
        let mut kept = (Vec::new(), Vec::new());
        let mut dropped = (Vec::new(), Vec::new());
        for i in 0..g.n_features {
            if let NodeId::Feature { layer, index } = g.nodes[i].id {
                let side = if pruned.node_mask[i] {
                    &mut kept
                } else {
                    &mut dropped
                };
                if layer == 0 {
                    side.0.push(index)
                } else {
                    side.1.push(index)
                }
            }
        }
        let mut keeps = vec![
            (trace.t1.features.clone(), trace.t2.features.clone()),
            (Vec::new(), Vec::new()),
            kept.clone(),
            dropped,
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut draw = |from: &[u32], k: usize| -> Vec<u32> {
            let mut pool = from.to_vec();
            pool.partial_shuffle(&mut rng, k).0.to_vec()
        };
        for _ in 0..draws {
            let r1 = draw(&trace.t1.features, kept.0.len());
            let r2 = draw(&trace.t2.features, kept.1.len());
            keeps.push((r1, r2));
        }
        let m = self.kept_logit(trace, c, &keeps)?;
        let (full, empty) = (m[0], m[1]);
        let score = |v: f64| (v - empty) / (full - empty);
        Ok(Faithfulness {
            circuit: score(m[2]),
            complement: score(m[3]),
            random: m[4..].iter().map(|&v| score(v)).sum::<f64>() / draws.max(1) as f64,
        })
    }
}

/// Circuit faithfulness on one image: 1 is the full replacement, 0 none of its features.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Faithfulness {
    pub circuit: f64,
    pub complement: f64,
    pub random: f64,
}

fn decoder_row(dec: &[f64], feature: u32) -> &[f64] {
    &dec[feature as usize * mlp::HIDDEN..][..mlp::HIDDEN]
}

/// `v - a * row`.
fn less(v: &[f64], a: f64, row: &[f64]) -> Vec<f64> {
    v.iter().zip(row).map(|(x, d)| x - a * d).collect()
}

fn restrict(codes: &Codes, keep: &[u32]) -> Codes {
    let (features, values) = codes
        .features
        .iter()
        .zip(&codes.values)
        .filter(|(f, _)| keep.contains(f))
        .map(|(&f, &v)| (f, v))
        .unzip();
    Codes { features, values }
}
