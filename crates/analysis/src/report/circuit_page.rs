//! One pruned attribution graph as a self-contained page: an inline SVG in
//! layers (the pixels as a 28x28 map coloured by their kept edges, then
//! layer 0's features and error, layer 1's, the logits), edge width by
//! weight (blue positive, red negative), every node and edge with its
//! values on hover. No script, font or file beside it.

use std::fmt::Write as _;

use circuits::{Graph, NodeId, Pruned};

use super::html::{escape, page};

const WIDTH: f64 = 1100.0;
const CELL: f64 = 8.0;
const COLUMNS: [f64; 3] = [430.0, 690.0, 950.0];
const TOP: f64 = 70.0;

/// What the page says about the graph it draws.
pub struct CircuitPage<'a> {
    pub title: &'a str,
    /// Sentences above the drawing (scores, node counts).
    pub summary: &'a str,
    /// How each layer's features are called: `["T1", "T2"]`, `["fc1", "fc2"]`.
    pub layer_names: [&'a str; 2],
    /// Per layer, the folder of its features' pages (`<id>.html`) relative
    /// to this page, and where it is: a click on a feature opens its page,
    /// where the report has one (live on train).
    pub feature_pages: [Option<(String, std::path::PathBuf)>; 2],
}

fn column(id: NodeId) -> Option<usize> {
    match id {
        NodeId::Feature { layer, .. } | NodeId::Error { layer } => Some(layer as usize),
        NodeId::Logit(_) => Some(2),
        NodeId::Pixel(_) => None,
    }
}

fn colour(weight: f64, scale: f64) -> String {
    let t = (weight.abs() / scale).min(1.0);
    let fade = (255.0 * (1.0 - t)) as u8;
    if weight >= 0.0 {
        format!("rgb({fade},{fade},255)")
    } else {
        format!("rgb(255,{fade},{fade})")
    }
}

pub fn circuit_page(graph: &Graph, pruned: &Pruned, what: &CircuitPage) -> String {
    let n = graph.len();
    let kept = |i: usize| pruned.node_mask[i];
    let edge = |t: usize, s: usize| pruned.edge_mask[t * n + s];
    // Each column's kept nodes, most influential first (logits in graph order).
    let mut columns: [Vec<usize>; 3] = Default::default();
    for i in (0..n).filter(|&i| kept(i)) {
        if let Some(c) = column(graph.nodes[i].id) {
            let has_edge = (0..n).any(|j| edge(i, j) || edge(j, i));
            if has_edge || c == 2 {
                columns[c].push(i);
            }
        }
    }
    for c in &mut columns[..2] {
        c.sort_by(|&a, &b| pruned.influence[b].total_cmp(&pruned.influence[a]));
    }
    let rows = columns.iter().map(Vec::len).max().unwrap_or(1).max(28);
    let step = 16.0;
    let height = TOP + rows as f64 * step + 40.0;
    let mut at = vec![None; n];
    for (c, nodes) in columns.iter().enumerate() {
        let offset = (rows - nodes.len()) as f64 * step / 2.0;
        for (r, &i) in nodes.iter().enumerate() {
            at[i] = Some((COLUMNS[c], TOP + offset + r as f64 * step));
        }
    }
    // The pixel map: each pixel's kept outgoing weight, summed.
    let grid_y = TOP + (rows as f64 * step - 28.0 * CELL) / 2.0;
    let grid_exit = (20.0 + 28.0 * CELL, grid_y + 14.0 * CELL);
    let mut pixel_weight = [0.0f64; 784];
    let mut into_feature = vec![0.0f64; n];
    // Each column's edges (those ending there) scaled by their own largest,
    // and the pixels' summed lines by theirs: the logits' edges are small
    // next to the pixels' but matter as much.
    let mut scale = [1e-12f64; 3];
    let mut pixel_line_scale = 1e-12f64;
    for t in 0..n {
        let Some(c) = column(graph.nodes[t].id) else {
            continue;
        };
        for s in 0..n {
            if edge(t, s) {
                let w = graph.edge(t, s);
                if let NodeId::Pixel(p) = graph.nodes[s].id {
                    pixel_weight[p as usize] += w;
                    into_feature[t] += w;
                } else {
                    scale[c] = scale[c].max(w.abs());
                }
            }
        }
        pixel_line_scale = pixel_line_scale.max(into_feature[t].abs());
    }
    let pixel_scale = pixel_weight.iter().fold(1e-12f64, |m, w| m.max(w.abs()));
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"10\">"
    );
    for (c, label) in ["pixels"]
        .into_iter()
        .chain([what.layer_names[0], what.layer_names[1], "logits"])
        .enumerate()
    {
        let x = if c == 0 { 20.0 } else { COLUMNS[c - 1] - 20.0 };
        let _ = write!(
            svg,
            "<text x=\"{x}\" y=\"30\" font-size=\"13\" font-weight=\"bold\">{}</text>",
            escape(label)
        );
    }
    for p in 0..784 {
        let (x, y) = (
            20.0 + (p % 28) as f64 * CELL,
            grid_y + (p / 28) as f64 * CELL,
        );
        let w = pixel_weight[p];
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{CELL}\" height=\"{CELL}\" fill=\"{}\" stroke=\"#eee\" stroke-width=\"0.3\"><title>pixel {},{}: kept edges sum {w:.4}</title></rect>",
            colour(w, pixel_scale),
            p / 28,
            p % 28
        );
    }
    // Edges first, so the nodes sit on top.
    for t in 0..n {
        let Some((tx, ty)) = at[t] else { continue };
        let scale = column(graph.nodes[t].id).map_or(1.0, |c| scale[c]);
        if into_feature[t] != 0.0 {
            let w = into_feature[t];
            let _ = write!(
                svg,
                "<line x1=\"{}\" y1=\"{}\" x2=\"{tx}\" y2=\"{ty}\" stroke=\"{}\" stroke-opacity=\"0.5\" stroke-width=\"{:.2}\"><title>pixels -&gt; {}: {w:.4}</title></line>",
                grid_exit.0,
                grid_exit.1,
                colour(w, pixel_line_scale),
                0.3 + 3.0 * (w.abs() / pixel_line_scale).min(1.0),
                escape(&graph.nodes[t].id.label(what.layer_names))
            );
        }
        for s in 0..n {
            let Some((sx, sy)) = at[s] else { continue };
            if !edge(t, s) {
                continue;
            }
            let w = graph.edge(t, s);
            let _ = write!(
                svg,
                "<line x1=\"{sx}\" y1=\"{sy}\" x2=\"{tx}\" y2=\"{ty}\" stroke=\"{}\" stroke-opacity=\"0.6\" stroke-width=\"{:.2}\"><title>{} -&gt; {}: {w:.4}</title></line>",
                colour(w, scale),
                0.3 + 4.0 * (w.abs() / scale).min(1.0),
                escape(&graph.nodes[s].id.label(what.layer_names)),
                escape(&graph.nodes[t].id.label(what.layer_names))
            );
        }
    }
    for i in 0..n {
        let Some((x, y)) = at[i] else { continue };
        let node = graph.nodes[i];
        let label = node.id.label(what.layer_names);
        let shape = match node.id {
            NodeId::Error { .. } => format!("<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"#999\"/>", x - 5.0, y - 5.0),
            NodeId::Logit(_) => format!("<circle cx=\"{x}\" cy=\"{y}\" r=\"6\" fill=\"#333\"/>"),
            _ => format!("<circle cx=\"{x}\" cy=\"{y}\" r=\"5\" fill=\"#f5a623\" stroke=\"#333\" stroke-width=\"0.5\"/>"),
        };
        let link = match node.id {
            NodeId::Feature { layer, index } => what.feature_pages[layer as usize]
                .as_ref()
                .filter(|(_, dir)| dir.join(format!("{index}.html")).is_file())
                .map(|(relative, _)| format!("{relative}/{index}.html")),
            _ => None,
        };
        let (open, close) = match &link {
            Some(href) => (format!("<a href=\"{}\">", escape(href)), "</a>"),
            None => (String::new(), ""),
        };
        let _ = write!(
            svg,
            "{open}<g>{shape}<text x=\"{}\" y=\"{}\">{}</text><title>{}: value {:.4}, constant {:.4}, influence {:.4}</title></g>{close}",
            x + 9.0,
            y + 3.5,
            escape(&label),
            escape(&label),
            node.value,
            node.constant,
            pruned.influence[i]
        );
    }
    svg.push_str("</svg>");
    let body = format!(
        "<h1>{}</h1><p>{}</p><p>Edges end at pre-activations: a node's value is the sum of its incoming edges plus its constant (biases). \
Hover a node or an edge for its numbers. The pixel map is coloured by each pixel's kept edges (blue: pushes up, red: pushes down).</p><div class=\"chart\">{svg}</div>",
        escape(what.title),
        escape(what.summary)
    );
    page(what.title, "", &body)
}
