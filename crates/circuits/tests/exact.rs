//! The graphs are exact: checked against a forward pass written here from the
//! weights alone (not the crate's precomputed products), on random
//! transcoders of every kind the graph reads (plain, skip, Gated, TopK).

mod common;

use circuits::{Graph, LogitTargets, Network, NodeId, Replacement};
use common::{images, kinds, softmax, traces, transcoder, D1, D2};
use sae::{Architecture, Sae, SaeConfig};

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The replacement's pre-activations written from the weights: T1's
/// features from the pixels, T2's from its input, the logit nodes from T2's.
struct Independent<'a> {
    r: &'a Replacement,
    probs: Vec<f64>,
}

impl Independent<'_> {
    fn value_path(sae: &Sae, f: usize) -> (f64, f64) {
        if sae.r_mag.is_empty() {
            (1.0, sae.b_enc[f] as f64)
        } else {
            ((sae.r_mag[f] as f64).exp(), sae.b_mag[f] as f64)
        }
    }

    fn pre(sae: &Sae, x: &[f64], f: usize) -> f64 {
        let (scale, bias) = Self::value_path(sae, f);
        let sum: f64 = (0..sae.d_in())
            .map(|i| x[i] * sae.w_enc[i * sae.d_sae() + f] as f64)
            .sum();
        scale * sum + bias
    }

    /// A transcoder's output from its features' values, an error and its input.
    fn output(sae: &Sae, features: &[u32], values: &[f64], error: &[f64], x: &[f64]) -> Vec<f64> {
        (0..128)
            .map(|o| {
                let mut v = sae.b_dec[o] as f64 + error[o];
                for (&f, &a) in features.iter().zip(values) {
                    v += a * sae.w_dec[f as usize * 128 + o] as f64;
                }
                if !sae.w_skip.is_empty() {
                    v += (0..x.len())
                        .map(|i| sae.w_skip[o * x.len() + i] as f64 * x[i])
                        .sum::<f64>();
                }
                v
            })
            .collect()
    }

    fn logit_node(&self, h2: &[f64], c: usize) -> f64 {
        let w = &self.r.network;
        let logits: Vec<f64> = (0..10)
            .map(|k| w.b3[k] + (0..128).map(|i| w.w3[k * 128 + i] * h2[i]).sum::<f64>())
            .collect();
        logits[c]
            - self
                .probs
                .iter()
                .zip(&logits)
                .map(|(p, l)| p * l)
                .sum::<f64>()
    }
}

/// Every node with incoming edges: value = incoming edges + constant.
fn assert_conserved(graph: &Graph, what: &str) {
    let n = graph.len();
    for t in 0..n {
        let node = graph.nodes[t];
        if matches!(node.id, NodeId::Pixel(_) | NodeId::Error { .. }) {
            assert!(
                (0..n).all(|s| graph.edge(t, s) == 0.0),
                "{what}: a source has an incoming edge"
            );
            continue;
        }
        let incoming: f64 = (0..n).map(|s| graph.edge(t, s)).sum();
        let got = incoming + node.constant;
        assert!(
            (got - node.value).abs() <= 1e-9 * (1.0 + node.value.abs()),
            "{what}: {:?} is {} but its edges and constant sum to {got}",
            node.id,
            node.value
        );
    }
}

#[test]
fn every_node_is_its_incoming_edges_plus_its_constant() {
    for (what, r) in kinds() {
        for t in traces(&r) {
            assert!(
                !t.t1.features.is_empty() && !t.t2.features.is_empty(),
                "{what}: no active feature"
            );
            assert_conserved(&r.graph(&t, LogitTargets::default()), what);
            assert_conserved(&r.graph(&t, LogitTargets::Class(4)), what);
            assert_conserved(&r.network.graph(&t.input, LogitTargets::default()), "mlp");
        }
    }
}

#[test]
fn doubling_a_source_moves_each_direct_target_by_its_edge() {
    for (what, r) in kinds() {
        for t in traces(&r).iter().take(3) {
            let g = r.graph(t, LogitTargets::Class(2));
            let ind = Independent {
                r: &r,
                probs: softmax(&t.real.logits),
            };
            let h1 = |a1: &[f64], e1: &[f64], input: &[f64]| {
                Independent::output(&r.t1, &t.t1.features, a1, e1, input)
            };
            let h2 = |a2: &[f64], e2: &[f64], h1: &[f64]| {
                Independent::output(&r.t2, &t.t2.features, a2, e2, h1)
            };
            // Every pre-activation as a function of every source's value.
            let pres =
                |input: &[f64], a1: &[f64], e1: &[f64], a2: &[f64], e2: &[f64]| -> Vec<f64> {
                    let mut out: Vec<f64> =
                        t.t1.features
                            .iter()
                            .map(|&f| Independent::pre(&r.t1, input, f as usize))
                            .collect();
                    let h1 = h1(a1, e1, input);
                    out.extend(
                        t.t2.features
                            .iter()
                            .map(|&f| Independent::pre(&r.t2, &h1, f as usize)),
                    );
                    let h2 = h2(a2, e2, &h1);
                    out.push(ind.logit_node(&h2, 2));
                    out
                };
            let base = pres(&t.input, &t.t1.values, &t.e1, &t.t2.values, &t.e2);
            let targets: Vec<usize> = (0..t.t1.features.len() + t.t2.features.len())
                .chain([g.len() - 1])
                .collect();
            let check = |source: usize, moved: Vec<f64>| {
                for (i, &target) in targets.iter().enumerate() {
                    let change = moved[i] - base[i];
                    let edge = g.edge(target, source);
                    assert!(
                        (change - edge).abs() <= 1e-5 * (1.0 + edge.abs()),
                        "{what}: doubling {:?} moved {:?} by {change}, its edge is {edge}",
                        g.nodes[source].id,
                        g.nodes[target].id
                    );
                }
            };
            let n1 = t.t1.features.len();
            for j in 0..n1 {
                let mut a1 = t.t1.values.clone();
                a1[j] *= 2.0;
                check(j, pres(&t.input, &a1, &t.e1, &t.t2.values, &t.e2));
            }
            for k in 0..t.t2.features.len() {
                let mut a2 = t.t2.values.clone();
                a2[k] *= 2.0;
                check(n1 + k, pres(&t.input, &t.t1.values, &t.e1, &a2, &t.e2));
            }
            let twice = |e: &[f64]| e.iter().map(|x| 2.0 * x).collect::<Vec<f64>>();
            let at = |id| g.position(id).unwrap();
            check(
                at(NodeId::Error { layer: 0 }),
                pres(&t.input, &t.t1.values, &twice(&t.e1), &t.t2.values, &t.e2),
            );
            check(
                at(NodeId::Error { layer: 1 }),
                pres(&t.input, &t.t1.values, &t.e1, &t.t2.values, &twice(&t.e2)),
            );
            for p in [g.n_features + 2, g.n_features + 2 + g.n_pixels / 2] {
                let NodeId::Pixel(pixel) = g.nodes[p].id else {
                    panic!("not a pixel")
                };
                let mut input = t.input.clone();
                input[pixel as usize] *= 2.0;
                check(p, pres(&input, &t.t1.values, &t.e1, &t.t2.values, &t.e2));
            }
        }
    }
}

#[test]
fn the_replacement_with_its_errors_is_the_real_mlp() {
    let weights = mlp::Weights::init(3);
    let pixels = images(6, 9);
    let mlp = mlp::Mlp::new(&weights, &candle_core::Device::Cpu).unwrap();
    let candle = mlp
        .logits(&mlp.input(&pixels).unwrap())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (what, r) in kinds() {
        let traces = traces(&r);
        for (t, real) in traces.iter().zip(&candle) {
            for (a, b) in t.real.logits.iter().zip(real) {
                assert!(
                    (a - *b as f64).abs() < 1e-4,
                    "{what}: f64 logit {a}, candle's {b}"
                );
            }
            let h1: Vec<f64> = r
                .t1_output(&t.input, &t.t1)
                .iter()
                .zip(&t.e1)
                .map(|(a, b)| a + b)
                .collect();
            let h2: Vec<f64> = r
                .t2_output(&h1, &t.t2)
                .iter()
                .zip(&t.e2)
                .map(|(a, b)| a + b)
                .collect();
            let logits = r.network.logits_from_h2(&h2);
            for (a, b) in logits.iter().zip(&t.real.logits) {
                assert!((a - b).abs() < 1e-9, "{what}: replacement {a}, MLP {b}");
            }
        }
        let labels: Vec<u8> = traces.iter().map(|t| (t.input.len() % 10) as u8).collect();
        let rows = circuits::splice_metrics(&r, &traces, &labels).unwrap();
        let exact = rows
            .iter()
            .find(|row| row.replaced == "T1+T2" && row.with_errors)
            .unwrap();
        assert!(
            exact.kl.abs() < 1e-12 && exact.top1_agreement == 1.0,
            "{what}: {exact:?}"
        );
    }
}

#[test]
fn the_mlp_graph_moves_by_its_edges_too() {
    let weights = mlp::Weights::init(3);
    let net = Network::new(&weights);
    let input: Vec<f64> = wide(&Network::input_rows(&images(1, 5)));
    let g = net.graph(&input, LogitTargets::Class(7));
    let real = net.forward(&input);
    // fc2 neuron pre-activations from fc1.post, the logit node from fc2.post.
    let probs = softmax(&real.logits);
    let pre2 = |h1: &[f64], k: usize| {
        net.b2[k] + (0..128).map(|i| net.w2[k * 128 + i] * h1[i]).sum::<f64>()
    };
    let logit = |h2: &[f64]| {
        let l = net.logits_from_h2(h2);
        l[7] - probs.iter().zip(&l).map(|(p, x)| p * x).sum::<f64>()
    };
    for s in 0..g.n_features {
        let NodeId::Feature { layer, index } = g.nodes[s].id else {
            panic!()
        };
        let (mut h1, mut h2) = (real.h1.clone(), real.h2.clone());
        if layer == 0 {
            h1[index as usize] *= 2.0;
            for t in 0..g.n_features {
                if let NodeId::Feature { layer: 1, index: k } = g.nodes[t].id {
                    let change = pre2(&h1, k as usize) - pre2(&real.h1, k as usize);
                    assert!((change - g.edge(t, s)).abs() < 1e-9);
                }
            }
        } else {
            h2[index as usize] *= 2.0;
            let change = logit(&h2) - logit(&real.h2);
            assert!((change - g.edge(g.len() - 1, s)).abs() < 1e-9);
        }
    }
}

#[test]
fn transcoders_that_cannot_replace_the_sublayers_are_refused_by_name() {
    let weights = mlp::Weights::init(3);
    let t2 = || transcoder(128, D2, Architecture::l1(1e-3), false, 2);
    let sae = Sae::init(
        &SaeConfig {
            d_in: 784,
            d_sae: 16,
            ..SaeConfig::default()
        },
        &[],
    )
    .unwrap();
    let err = Replacement::new(&weights, sae, t2())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("T1 (input -> fc1.post) is an SAE, not a transcoder"),
        "{err}"
    );
    let err = Replacement::new(&weights, t2(), t2())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("T1 (input -> fc1.post) maps 128 values to 128; it must map 784 to 128"),
        "{err}"
    );
    let r = Replacement::new(
        &weights,
        transcoder(784, D1, Architecture::l1(1e-3), false, 1),
        t2(),
    )
    .unwrap();
    let err = r.trace(&[0.0; 1000]).err().unwrap().to_string();
    assert!(err.contains("1000 values are not whole rows"), "{err}");
    let traces = r.trace(&Network::input_rows(&images(2, 1))).unwrap();
    let err = circuits::splice_metrics(&r, &traces, &[1])
        .unwrap_err()
        .to_string();
    assert!(err.contains("got 2 images and 1 labels"), "{err}");
}
