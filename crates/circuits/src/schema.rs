//! A pruned graph as circuit-tracer's graph JSON (`frontend/graph_models.py`:
//! `metadata`, `qParams`, `nodes`, `links`), which its frontend reads.
//! Pixels are its "embedding" nodes, one context position (an image has no
//! sequence); only pixels with a kept edge are listed.

use serde_json::{json, Value};

use crate::graph::{Graph, NodeId};
use crate::prune::Pruned;

/// What the JSON says about where a graph came from.
pub struct SchemaInfo {
    pub slug: String,
    /// Names the transcoders (or the MLP) the graph reads.
    pub scan: String,
    pub transcoder_list: Vec<String>,
    pub prompt: String,
    pub node_threshold: f64,
    /// How a feature of each layer is named in `clerp`: "T1", "T2" or "fc1", "fc2".
    pub layer_names: [String; 2],
}

fn node_id(id: NodeId) -> String {
    match id {
        NodeId::Feature { layer, index } => format!("{layer}_{index}_0"),
        NodeId::Error { layer } => format!("0_{layer}_0"),
        NodeId::Pixel(p) => format!("E_{p}_0"),
        NodeId::Logit(c) => format!("3_{c}_0"),
    }
}

pub fn circuit_tracer_json(graph: &Graph, pruned: &Pruned, info: &SchemaInfo) -> Value {
    let n = graph.len();
    let mut links = Vec::new();
    let mut connected = vec![false; n];
    for t in 0..n {
        for s in 0..n {
            if pruned.edge_mask[t * n + s] && pruned.node_mask[t] && pruned.node_mask[s] {
                links.push(json!({
                    "source": node_id(graph.nodes[s].id),
                    "target": node_id(graph.nodes[t].id),
                    "weight": graph.edge(t, s),
                }));
                connected[t] = true;
                connected[s] = true;
            }
        }
    }
    let logit_start = n - graph.n_logits;
    let nodes: Vec<Value> = (0..n)
        .filter(|&i| pruned.node_mask[i] && (connected[i] || i >= logit_start))
        .map(|i| {
            let node = graph.nodes[i];
            let influence = pruned.cumulative[i];
            let id = node_id(node.id);
            match node.id {
                NodeId::Feature { layer, index } => json!({
                    "node_id": id, "feature": index, "layer": layer.to_string(), "ctx_idx": 0,
                    "feature_type": "cross layer transcoder", "jsNodeId": format!("{layer}_{index}-0"),
                    "clerp": format!("{} #{index}", info.layer_names[layer as usize]),
                    "influence": influence, "activation": node.value,
                }),
                NodeId::Error { layer } => json!({
                    "node_id": id, "feature": -1, "layer": layer.to_string(), "ctx_idx": 0,
                    "feature_type": "mlp reconstruction error", "jsNodeId": format!("{layer}_0-0"),
                    "clerp": format!("{} error (norm {:.3})", info.layer_names[layer as usize], node.value),
                    "influence": influence,
                }),
                NodeId::Pixel(p) => json!({
                    "node_id": id, "feature": p, "layer": "E", "ctx_idx": 0,
                    "feature_type": "embedding", "jsNodeId": format!("E_{p}-0"),
                    "clerp": format!("pixel row {} col {} ({:+.3})", p / 28, p % 28, node.value),
                    "influence": influence, "activation": node.value,
                }),
                NodeId::Logit(c) => {
                    let prob = graph.logit_weights[i - logit_start];
                    json!({
                        "node_id": id, "feature": c, "layer": "3", "ctx_idx": 0,
                        "feature_type": "logit", "token_prob": prob,
                        "is_target_logit": i == logit_start, "jsNodeId": format!("L_{c}-0"),
                        "clerp": format!("Output \"{c}\" (p={prob:.3})"),
                        "activation": node.value,
                    })
                }
            }
        })
        .collect();
    json!({
        "metadata": {
            "slug": info.slug,
            "scan": info.scan,
            "transcoder_list": info.transcoder_list,
            "prompt_tokens": [info.prompt],
            "prompt": info.prompt,
            "node_threshold": info.node_threshold,
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    })
}
