//! Pruning and scores against dense linear algebra written here, and the
//! digit graphs against the mean of their images' graphs.

mod common;

use circuits::{influence, prune, scores, Graph, LogitTargets, NodeId, PruneOptions};
use common::{kinds, traces};

/// `w^T ((I - Â)^-1 - I)` by Gauss-Jordan elimination, Â = |A| row-normalised.
fn influence_by_inverse(g: &Graph) -> Vec<f64> {
    let n = g.len();
    let mut a: Vec<f64> = g.adjacency.iter().map(|x| x.abs()).collect();
    for row in a.chunks_exact_mut(n) {
        let s: f64 = row.iter().sum::<f64>().max(1e-10);
        row.iter_mut().for_each(|x| *x /= s);
    }
    // Solve x (I - Â) = w, i.e. (I - Â)^T x = w; influence = x - w.
    let w = g.output_weights();
    let mut m: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let mut row: Vec<f64> = (0..n)
                .map(|j| (i == j) as u8 as f64 - a[j * n + i])
                .collect();
            row.push(w[i]);
            row
        })
        .collect();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&x, &y| m[x][c].abs().total_cmp(&m[y][c].abs()))
            .unwrap();
        m.swap(c, p);
        let pivot = m[c][c];
        m[c].iter_mut().for_each(|x| *x /= pivot);
        for r in 0..n {
            if r != c && m[r][c] != 0.0 {
                let f = m[r][c];
                let pivot_row = m[c].clone();
                m[r].iter_mut()
                    .zip(&pivot_row)
                    .for_each(|(x, y)| *x -= f * y);
            }
        }
    }
    (0..n).map(|i| m[i][n] - w[i]).collect()
}

#[test]
fn influence_and_scores_match_the_inverse() {
    for (what, r) in kinds() {
        for t in traces(&r).iter().take(2) {
            let g = r.graph(t, LogitTargets::default());
            let n = g.len();
            let mut norm: Vec<f64> = g.adjacency.iter().map(|x| x.abs()).collect();
            for row in norm.chunks_exact_mut(n) {
                let s: f64 = row.iter().sum::<f64>().max(1e-10);
                row.iter_mut().for_each(|x| *x /= s);
            }
            let ours = influence(&norm, n, &g.output_weights()).unwrap();
            let theirs = influence_by_inverse(&g);
            for (a, b) in ours.iter().zip(&theirs) {
                assert!((a - b).abs() < 1e-9, "{what}: influence {a} against {b}");
            }
            let errors: f64 = theirs[g.n_features..g.n_features + 2].iter().sum();
            let inputs: f64 = theirs[g.n_features + 2..n - g.n_logits].iter().sum();
            let s = scores(&g).unwrap();
            assert!(
                (s.replacement - inputs / (inputs + errors)).abs() < 1e-9,
                "{what}: {s:?}"
            );
            assert!(s.replacement > 0.0 && s.replacement < 1.0, "{what}: {s:?}");
            assert!(
                s.completeness > 0.0 && s.completeness < 1.0,
                "{what}: {s:?}"
            );
            let mlp = scores(&r.network.graph(&t.input, LogitTargets::default())).unwrap();
            assert!(
                (mlp.replacement - 1.0).abs() < 1e-12 && (mlp.completeness - 1.0).abs() < 1e-12
            );
        }
    }
}

#[test]
fn a_pruned_graph_keeps_what_circuit_tracer_keeps() {
    for (what, r) in kinds() {
        for t in traces(&r).iter().take(2) {
            let g = r.graph(t, LogitTargets::default());
            let n = g.len();
            let p = prune(&g, PruneOptions::default()).unwrap();
            let first_input = n - g.n_pixels - g.n_logits;
            assert!(
                p.node_mask[first_input..].iter().all(|&k| k),
                "{what}: an input or logit dropped"
            );
            for t in 0..n {
                for s in 0..n {
                    if p.edge_mask[t * n + s] {
                        assert!(
                            p.node_mask[t] && p.node_mask[s],
                            "{what}: an edge of a dropped node"
                        );
                        assert!(g.edge(t, s) != 0.0, "{what}: a kept edge of weight 0");
                    }
                }
            }
            for i in 0..first_input {
                if p.node_mask[i] {
                    assert!(
                        (0..n).any(|t| p.edge_mask[t * n + i]),
                        "{what}: {:?} kept without an outgoing edge",
                        g.nodes[i].id
                    );
                }
                if i < g.n_features && p.node_mask[i] {
                    assert!(
                        (0..n).any(|s| p.edge_mask[i * n + s]),
                        "{what}: {:?} kept without an incoming edge",
                        g.nodes[i].id
                    );
                }
            }
            let kept = p.features_kept(&g);
            assert!(
                kept > 0 && kept <= p.features_by_influence && kept < g.n_features,
                "{what}: {kept} of {}",
                g.n_features
            );
            // A larger share keeps at least as many nodes by influence.
            let more = prune(
                &g,
                PruneOptions {
                    node_threshold: 0.95,
                    edge_threshold: 0.98,
                },
            )
            .unwrap();
            assert!(more.features_by_influence >= p.features_by_influence);
            let all = prune(
                &g,
                PruneOptions {
                    node_threshold: 1.0,
                    edge_threshold: 1.0,
                },
            )
            .unwrap();
            let live = (0..g.n_features).filter(|&i| p.influence[i] > 0.0).count();
            assert_eq!(all.features_by_influence, live, "{what}");
            // The cumulative share is 1 at the least influential node.
            let max = p.cumulative.iter().cloned().fold(0.0, f64::max);
            assert!((max - 1.0).abs() < 1e-12);
        }
    }
}

#[test]
fn a_digit_graph_is_the_mean_of_its_images_graphs() {
    for (what, r) in kinds() {
        let traces = traces(&r);
        let digit = circuits::digit_graph(&r, 3, &traces);
        assert_eq!(digit.images, traces.len());
        let g = &digit.graph;
        assert_eq!(
            (g.n_errors, g.n_logits, g.logit_weights.as_slice()),
            (2, 1, &[1.0][..]),
            "{what}"
        );
        let singles: Vec<Graph> = traces
            .iter()
            .map(|t| r.graph(t, LogitTargets::Class(3)))
            .collect();
        let edge_of =
            |single: &Graph, t: NodeId, s: NodeId| match (single.position(t), single.position(s)) {
                (Some(t), Some(s)) => single.edge(t, s),
                _ => 0.0,
            };
        let n = g.len();
        for t in (0..n).step_by(7) {
            for s in 0..n {
                let (tid, sid) = (g.nodes[t].id, g.nodes[s].id);
                let mean = singles
                    .iter()
                    .map(|one| edge_of(one, tid, sid))
                    .sum::<f64>()
                    / singles.len() as f64;
                assert!(
                    (g.edge(t, s) - mean).abs() < 1e-12,
                    "{what}: {tid:?} <- {sid:?}"
                );
            }
            let incoming: f64 = (0..n).map(|s| g.edge(t, s)).sum();
            if matches!(g.nodes[t].id, NodeId::Feature { .. } | NodeId::Logit(_)) {
                let node = g.nodes[t];
                assert!(
                    (incoming + node.constant - node.value).abs() < 1e-9,
                    "{what}: {:?}",
                    node.id
                );
            }
        }
        let union: usize = (0..2u8)
            .map(|layer| {
                let mut ids: Vec<u32> = traces
                    .iter()
                    .flat_map(|t| {
                        if layer == 0 {
                            &t.t1.features
                        } else {
                            &t.t2.features
                        }
                        .clone()
                    })
                    .collect();
                ids.sort();
                ids.dedup();
                ids.len()
            })
            .sum();
        assert_eq!(g.n_features, union, "{what}");
    }
}
