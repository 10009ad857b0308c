//! `cargo xtask circuit`: one attribution graph drawn on demand, a test
//! image's or a digit's, through the transcoders or the MLP's neurons, from
//! the fresh artifacts of this config, into `<store>/.circuits/<T1 key>-<T2 key>/`
//! (outside every artifact: nothing stored changes): circuit-tracer's graph
//! JSON and an offline HTML page.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use artifacts::Graph;
use circuits::{GraphKind, LogitTargets};

use crate::stages::circuits::{stages, CircuitsStage};
use crate::stages::mlp::load_mnist;
use crate::Session;

pub const CIRCUITS_DIR: &str = ".circuits";

/// What to draw.
pub enum Subject {
    Image(usize),
    Digit(u8),
}

pub struct Drawn {
    pub json: PathBuf,
    pub html: PathBuf,
    pub summary: String,
    pub stage: String,
}

fn pick<'a>(all: &'a [CircuitsStage], name: Option<&str>) -> Result<&'a CircuitsStage> {
    let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    match name {
        Some(name) => all.iter().find(|s| s.name == name).with_context(|| {
            format!("--circuit {name}: this config has no such circuit; it has {}", names.join(", "))
        }),
        None => all.first().context(
            "this config has no circuit: it needs a transcoder from `input` to fc1.post and one from fc1.post to fc2.post of the same settings (`--preset circuits` has them)",
        ),
    }
}

/// Where the report keeps T1's and T2's feature pages, relative to a page in
/// `<store>/.circuits/<keys>/`, when the analysis is fresh and has them.
fn feature_pages(
    session: &Session,
    graph: &Graph<'_>,
    stage: &CircuitsStage,
) -> [Option<(String, PathBuf)>; 2] {
    // Only a fresh analysis: a stale one's pages may show other features.
    let Ok((dir, _)) = crate::fresh(session, graph, "analysis") else {
        return [None, None];
    };
    let points = session.config.sae.points();
    [&stage.t1, &stage.t2].map(|name| {
        let point = points.iter().find(|p| &p.name == name)?;
        let layer = crate::stages::analysis::report_layer(point, &points);
        let features = dir
            .join(crate::stages::analysis::layer_folder(layer))
            .join(crate::stages::analysis::run_folder(point))
            .join(analysis::FEATURE_DIR);
        let relative = features.strip_prefix(session.store.root()).ok()?;
        let relative = format!("../../{}", relative.to_string_lossy());
        features.is_dir().then_some((relative, features))
    })
}

pub fn draw(
    session: &Session,
    graph: &Graph<'_>,
    circuit: Option<&str>,
    subject: Subject,
    kind: GraphKind,
) -> Result<Drawn> {
    let all = stages(&session.config.sae.points(), &session.config.circuits);
    let stage = pick(&all, circuit)?;
    let (mnist_dir, _) = crate::fresh(session, graph, "mnist")?;
    let (mlp_dir, _) = crate::fresh(session, graph, "mlp")?;
    let (t1_dir, t1) = crate::fresh(session, graph, &stage.t1)?;
    let (t2_dir, t2) = crate::fresh(session, graph, &stage.t2)?;
    let data = load_mnist(&mnist_dir).map_err(anyhow::Error::msg)?;
    let r = crate::stages::circuits::load_replacement(&mlp_dir, &t1_dir, &t2_dir)
        .map_err(anyhow::Error::msg)?;
    let labels = &data.test.labels.labels;
    let pixels = &data.test.images.pixels;
    let (stem, title, digit_images) = match subject {
        Subject::Image(i) => {
            if i >= labels.len() {
                bail!(
                    "--image {i}: the test set has {} images, 0 to {}",
                    labels.len(),
                    labels.len() - 1
                );
            }
            (
                format!("image-{i:05}"),
                format!("MNIST test image {i} (label {})", labels[i]),
                vec![i],
            )
        }
        Subject::Digit(d) => {
            if d > 9 {
                bail!("--digit {d}: a digit is 0 to 9");
            }
            let which: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == d).collect();
            (
                format!("digit-{d}"),
                format!(
                    "Digit {d}: the mean graph of its {} test images",
                    which.len()
                ),
                which,
            )
        }
    };
    let rows: Vec<u8> = digit_images
        .iter()
        .flat_map(|&i| pixels[i * mlp::INPUT..(i + 1) * mlp::INPUT].iter().copied())
        .collect();
    let traces = r.trace(&circuits::Network::input_rows(&rows))?;
    let g = match (&subject, kind) {
        (Subject::Image(_), GraphKind::Transcoders) => r.graph(&traces[0], LogitTargets::default()),
        (Subject::Image(_), GraphKind::Neurons) => {
            r.network.graph(&traces[0].input, LogitTargets::default())
        }
        (Subject::Digit(d), GraphKind::Transcoders) => circuits::digit_graph(&r, *d, &traces).graph,
        (Subject::Digit(d), GraphKind::Neurons) => {
            let inputs: Vec<&[f64]> = traces.iter().map(|t| t.input.as_slice()).collect();
            r.network.digit_graph(*d, &inputs).graph
        }
    };
    let pruned = circuits::prune(&g, session.config.circuits.prune())?;
    let scores = circuits::scores(&g)?;
    let stem = match kind {
        GraphKind::Transcoders => stem,
        GraphKind::Neurons => format!("{stem}-neurons"),
    };
    let names = kind.layer_names();
    let summary = format!(
        "{} of {} {} carry {:.0}% of the influence ({} kept after pruning edges, {} edges); replacement score {:.3}, completeness {:.3}.",
        pruned.features_by_influence,
        g.n_features,
        match kind {
            GraphKind::Transcoders => "active transcoder features",
            GraphKind::Neurons => "active neurons",
        },
        session.config.circuits.node_threshold * 100.0,
        pruned.features_kept(&g),
        pruned.edges_kept(),
        scores.replacement,
        scores.completeness,
    );
    let dir = session
        .store
        .root()
        .join(CIRCUITS_DIR)
        .join(format!("{}-{}", t1.key, t2.key));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let info = circuits::SchemaInfo {
        slug: stem.clone(),
        scan: match kind {
            GraphKind::Transcoders => format!("saelab-{}-{}", t1.key, t2.key),
            GraphKind::Neurons => "saelab-mlp-neurons".into(),
        },
        transcoder_list: match kind {
            GraphKind::Transcoders => vec![stage.t1.clone(), stage.t2.clone()],
            GraphKind::Neurons => Vec::new(),
        },
        prompt: title.clone(),
        node_threshold: session.config.circuits.node_threshold,
        layer_names: names.map(String::from),
    };
    let mut json = circuits::circuit_tracer_json(&g, &pruned, &info);
    json["saelab"] = serde_json::json!({
        "graph": kind.name(),
        "replacement_score": scores.replacement,
        "completeness_score": scores.completeness,
        "features_by_influence": pruned.features_by_influence,
        "active": g.n_features,
        "images": digit_images.len(),
    });
    let json_path = dir.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let html = analysis::circuit_page(
        &g,
        &pruned,
        &analysis::CircuitPage {
            title: &title,
            summary: &summary,
            layer_names: names,
            feature_pages: match kind {
                GraphKind::Transcoders => feature_pages(session, graph, stage),
                GraphKind::Neurons => [None, None],
            },
        },
    );
    let html_path = dir.join(format!("{stem}.html"));
    std::fs::write(&html_path, html)
        .with_context(|| format!("cannot write {}", html_path.display()))?;
    Ok(Drawn {
        json: json_path,
        html: html_path,
        summary,
        stage: stage.name.clone(),
    })
}
