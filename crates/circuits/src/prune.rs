//! circuit-tracer's pruning and scores (`circuit_tracer/graph.py`), in f64:
//! row-normalised |A|, influence `w^T (Â + Â² + ...)`, nodes kept to a share
//! of the influence, edges to a share of the edge scores, and nodes left
//! without an outgoing (features, errors) or incoming (features) edge removed
//! until none is.

use crate::graph::Graph;
use crate::CircuitError;

/// circuit-tracer's defaults: 0.8 of the node influence, 0.98 of the edges'.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PruneOptions {
    pub node_threshold: f64,
    pub edge_threshold: f64,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            node_threshold: 0.8,
            edge_threshold: 0.98,
        }
    }
}

impl PruneOptions {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("node_threshold", self.node_threshold),
            ("edge_threshold", self.edge_threshold),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} is {v}; it must be between 0 and 1"));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pruned {
    pub node_mask: Vec<bool>,
    /// `[n, n]` as the adjacency.
    pub edge_mask: Vec<bool>,
    /// Each node's influence on the weighted logits.
    pub influence: Vec<f64>,
    /// Each node's share of the influence of itself and every node more
    /// influential (circuit-tracer's `cumulative_scores`).
    pub cumulative: Vec<f64>,
    /// Features that pass the node threshold, before the edges are pruned.
    pub features_by_influence: usize,
}

impl Pruned {
    pub fn features_kept(&self, graph: &Graph) -> usize {
        self.node_mask[..graph.n_features]
            .iter()
            .filter(|&&k| k)
            .count()
    }

    pub fn edges_kept(&self) -> usize {
        self.edge_mask.iter().filter(|&&k| k).count()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    /// Influence from the inputs over influence from inputs and errors.
    pub replacement: f64,
    /// Incoming edge weight not from errors, averaged over nodes weighted by
    /// their influence plus their logit weight.
    pub completeness: f64,
}

/// `|A|` with each row divided by its sum (rows of zeros stay zero).
fn normalised(adjacency: &[f64], n: usize) -> Vec<f64> {
    let mut out: Vec<f64> = adjacency.iter().map(|a| a.abs()).collect();
    for row in out.chunks_exact_mut(n) {
        let sum: f64 = row.iter().sum::<f64>().max(1e-10);
        row.iter_mut().for_each(|a| *a /= sum);
    }
    out
}

/// `w^T (A + A² + ...)` for a normalised `A`; the graphs here are acyclic, so
/// the series ends. Fails if it has not after `n + 1` terms (a cycle).
pub fn influence(normalised: &[f64], n: usize, weights: &[f64]) -> Result<Vec<f64>, CircuitError> {
    let times_a = |v: &[f64]| {
        let mut out = vec![0.0; n];
        for (i, &vi) in v.iter().enumerate() {
            if vi != 0.0 {
                for (o, a) in out.iter_mut().zip(&normalised[i * n..(i + 1) * n]) {
                    *o += vi * a;
                }
            }
        }
        out
    };
    let mut current = times_a(weights);
    let mut total = current.clone();
    let mut terms = 0;
    while current.iter().any(|&c| c != 0.0) {
        if terms > n {
            return Err(CircuitError::Input(format!(
                "the influence of a {n}-node graph did not end after {terms} terms: the graph has a cycle"
            )));
        }
        current = times_a(&current);
        total.iter_mut().zip(&current).for_each(|(t, c)| *t += c);
        terms += 1;
    }
    Ok(total)
}

/// The score at which the largest scores reach `threshold` of the total.
fn find_threshold(scores: &[f64], threshold: f64) -> f64 {
    let mut sorted: Vec<f64> = scores.iter().copied().filter(|&s| s > 0.0).collect();
    if sorted.is_empty() {
        return 0.0;
    }
    sorted.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = sorted.iter().sum();
    let mut cumulative = 0.0;
    for &s in &sorted {
        cumulative += s;
        if cumulative / total >= threshold {
            return s;
        }
    }
    // Only at threshold 1 when the running and total sums round apart.
    *sorted.last().expect("not empty")
}

/// Prunes `graph` as circuit-tracer's `prune_graph`: pixels and logits are
/// always kept.
pub fn prune(graph: &Graph, options: PruneOptions) -> Result<Pruned, CircuitError> {
    let n = graph.len();
    let weights = graph.output_weights();
    let first_input = n - graph.n_logits - graph.n_pixels;
    let norm = normalised(&graph.adjacency, n);
    let node_influence = influence(&norm, n, &weights)?;
    let node_cut = find_threshold(&node_influence, options.node_threshold);
    let mut node_mask: Vec<bool> = node_influence.iter().map(|&i| i >= node_cut).collect();
    node_mask[first_input..].iter_mut().for_each(|k| *k = true);
    let features_by_influence = node_mask[..graph.n_features].iter().filter(|&&k| k).count();

    let mut pruned = graph.adjacency.clone();
    for t in 0..n {
        for s in 0..n {
            if !node_mask[t] || !node_mask[s] {
                pruned[t * n + s] = 0.0;
            }
        }
    }
    let pruned_norm = normalised(&pruned, n);
    let mut pruned_influence = influence(&pruned_norm, n, &weights)?;
    pruned_influence
        .iter_mut()
        .zip(&weights)
        .for_each(|(i, w)| *i += w);
    let edge_scores: Vec<f64> = pruned_norm
        .chunks_exact(n)
        .zip(&pruned_influence)
        .flat_map(|(row, &inf)| row.iter().map(move |a| a * inf))
        .collect();
    let edge_cut = find_threshold(&edge_scores, options.edge_threshold);
    let mut edge_mask: Vec<bool> = edge_scores.iter().map(|&s| s >= edge_cut).collect();

    loop {
        let before = node_mask.clone();
        // Features and errors need an outgoing edge, features an incoming one.
        for s in 0..first_input {
            node_mask[s] &= (0..n).any(|t| edge_mask[t * n + s]);
        }
        for t in 0..graph.n_features {
            node_mask[t] &= edge_mask[t * n..(t + 1) * n].iter().any(|&e| e);
        }
        if node_mask == before {
            break;
        }
        for t in 0..n {
            for s in 0..n {
                if !node_mask[t] || !node_mask[s] {
                    edge_mask[t * n + s] = false;
                }
            }
        }
    }

    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        node_influence[b]
            .total_cmp(&node_influence[a])
            .then(a.cmp(&b))
    });
    let total: f64 = node_influence.iter().sum();
    let mut cumulative = vec![0.0; n];
    let mut running = 0.0;
    for i in order {
        running += node_influence[i];
        cumulative[i] = if total > 0.0 { running / total } else { 0.0 };
    }
    Ok(Pruned {
        node_mask,
        edge_mask,
        influence: node_influence,
        cumulative,
        features_by_influence,
    })
}

/// circuit-tracer's `compute_graph_scores`. A graph with no error node
/// scores 1 on both.
pub fn scores(graph: &Graph) -> Result<Scores, CircuitError> {
    let n = graph.len();
    let weights = graph.output_weights();
    let error_start = graph.n_features;
    let error_end = error_start + graph.n_errors;
    let input_end = error_end + graph.n_pixels;
    let norm = normalised(&graph.adjacency, n);
    let node_influence = influence(&norm, n, &weights)?;
    let input_influence: f64 = node_influence[error_end..input_end].iter().sum();
    let error_influence: f64 = node_influence[error_start..error_end].iter().sum();
    let replacement = input_influence / (input_influence + error_influence);
    let mut weighted = 0.0;
    let mut total = 0.0;
    for t in 0..n {
        let from_errors: f64 = norm[t * n + error_start..t * n + error_end].iter().sum();
        let output = node_influence[t] + weights[t];
        weighted += (1.0 - from_errors) * output;
        total += output;
    }
    Ok(Scores {
        replacement,
        completeness: weighted / total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_the_score_where_the_running_share_reaches_it() {
        // Shares of 10: 0.4, 0.7, 0.9, 1.0.
        let scores = [1.0, 4.0, 0.0, 3.0, 2.0];
        assert_eq!(find_threshold(&scores, 0.4), 4.0);
        assert_eq!(find_threshold(&scores, 0.5), 3.0);
        assert_eq!(find_threshold(&scores, 0.9), 2.0);
        assert_eq!(find_threshold(&scores, 0.95), 1.0);
        assert_eq!(find_threshold(&scores, 1.0), 1.0);
        assert_eq!(find_threshold(&[0.0, 0.0], 0.8), 0.0);
    }

    #[test]
    fn influence_is_the_sum_of_the_powers_of_the_normalised_matrix() {
        // A chain 2 -> 1 -> 0 plus 2 -> 0, logit weight on node 0.
        let n = 3;
        let mut a = vec![0.0; 9];
        a[1] = 2.0; // 0 <- 1
        a[2] = -2.0; // 0 <- 2
        a[3 + 2] = 5.0; // 1 <- 2
        let norm = normalised(&a, n);
        let inf = influence(&norm, n, &[1.0, 0.0, 0.0]).unwrap();
        // Direct: 1 gets 0.5, 2 gets 0.5; through 1: 2 gets 0.5 * 1.
        assert_eq!(inf, vec![0.0, 0.5, 1.0]);
    }

    #[test]
    fn a_cycle_is_refused() {
        let a = vec![0.0, 1.0, 1.0, 0.0];
        let err = influence(&normalised(&a, 2), 2, &[1.0, 0.0]).unwrap_err();
        assert!(err.to_string().contains("has a cycle"), "{err}");
    }

    #[test]
    fn thresholds_outside_zero_to_one_are_refused_by_name() {
        let bad = PruneOptions {
            node_threshold: 1.2,
            ..PruneOptions::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("node_threshold is 1.2"));
    }
}
