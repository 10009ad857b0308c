//! Ablations and faithfulness against what must hold exactly.

mod common;

use circuits::{Ablation, Agreement, GraphKind, LogitTargets, NodeId, PruneOptions, Pruned};
use common::{kinds, traces};

#[test]
fn agreement_is_r2_sign_and_rank_correlation() {
    let row = |predicted, actual| Ablation {
        image: 0,
        graph: GraphKind::Transcoders,
        layer: 0,
        feature: 0,
        target: 0,
        predicted,
        actual,
    };
    let rows = [row(1.0, 2.0), row(2.0, 1.0), row(3.0, 3.0), row(-1.0, 0.0)];
    let a = Agreement::of(&rows);
    // Mean actual 1.5; residuals 1 + 1 + 0 + 1 over 0.25 + 0.25 + 2.25 + 2.25.
    assert!((a.r2 - (1.0 - 3.0 / 5.0)).abs() < 1e-12, "{a:?}");
    assert_eq!(a.sign_agreement, 0.75);
    // Ranks: actual 3, 2, 4, 1; predicted 2, 3, 4, 1: Spearman 1 - 6 * 2 / (4 * 15).
    assert!((a.spearman - 0.8).abs() < 1e-12, "{a:?}");
}

#[test]
fn a_layer_1_ablation_is_predicted_exactly_and_a_layer_0_one_where_no_gate_moves() {
    for (what, r) in kinds() {
        for t in traces(&r).iter().take(3) {
            for kind in [GraphKind::Transcoders, GraphKind::Neurons] {
                let g = match kind {
                    GraphKind::Transcoders => r.graph(t, LogitTargets::default()),
                    GraphKind::Neurons => r.network.graph(&t.input, LogitTargets::default()),
                };
                let rows = r.ablations(0, t, &g, kind);
                assert_eq!(rows.len(), g.n_features);
                for a in &rows {
                    let exact = match (kind, a.layer) {
                        (_, 1) => true,
                        // Gates frozen is exact when no fc2 gate opens or closes.
                        (GraphKind::Neurons, _) => {
                            let mut h1 = t.real.h1.clone();
                            h1[a.feature as usize] = 0.0;
                            let after = r.network.fc2_post(&h1);
                            after
                                .iter()
                                .zip(&t.real.h2)
                                .all(|(x, y)| (*x > 0.0) == (*y > 0.0))
                        }
                        _ => false,
                    };
                    if exact {
                        assert!(
                            (a.predicted - a.actual).abs() < 1e-9 * (1.0 + a.actual.abs()),
                            "{what} {kind:?}: {a:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn faithfulness_is_one_for_every_feature_and_zero_for_none() {
    for (what, r) in kinds() {
        for t in traces(&r).iter().take(2) {
            let g = r.graph(t, LogitTargets::default());
            let all = Pruned {
                node_mask: vec![true; g.len()],
                ..circuits::prune(&g, PruneOptions::default()).unwrap()
            };
            let f = r.faithfulness(t, &g, &all, 3, 7).unwrap();
            assert!((f.circuit - 1.0).abs() < 1e-9, "{what}: {f:?}");
            assert!(f.complement.abs() < 1e-9, "{what}: {f:?}");
            // Random sets as large as the whole are the whole.
            assert!((f.random - 1.0).abs() < 1e-9, "{what}: {f:?}");
            let pruned = circuits::prune(&g, PruneOptions::default()).unwrap();
            let f = r.faithfulness(t, &g, &pruned, 3, 7).unwrap();
            assert!(f.circuit.is_finite() && f.complement.is_finite() && f.random.is_finite());
            assert!(g
                .nodes
                .iter()
                .any(|n| matches!(n.id, NodeId::Feature { layer: 1, .. })));
        }
    }
}
