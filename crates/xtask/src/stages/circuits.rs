//! `circuits/<point>`: the MLP replaced by a T1 (`input` -> `fc1.post`) and a
//! T2 (`fc1.post` -> `fc2.post`) of the same sweep settings, and every test
//! image's attribution graph against the MLP's own (`circuits::study`).

use std::path::Path;
use std::time::Instant;

use artifacts::{Stage, StageError, StageInputs};
use circuits::{GraphKind, ImageScores, Replacement, Study};
use serde_json::{json, Value};

use super::mlp::{load_mnist, load_weights};
use crate::sweep::Point;

pub const SUMMARY_FILE: &str = "summary.json";

pub struct CircuitsStage {
    pub name: String,
    pub t1: String,
    pub t2: String,
    pub options: circuits::CircuitsConfig,
}

/// A point's name less `sae/<layers>/`: what a T1 and a T2 of one circuit share.
fn settings(point: &Point) -> &str {
    point
        .name
        .splitn(3, '/')
        .nth(2)
        .unwrap_or(point.name.as_str())
}

/// One circuit per T1 point and T2 point of the same settings.
pub fn stages(points: &[Point], options: &circuits::CircuitsConfig) -> Vec<CircuitsStage> {
    let reads = |p: &Point, i: &str, o: &str| p.layer == i && p.output == o;
    let mut out = Vec::new();
    for t1 in points
        .iter()
        .filter(|p| reads(p, mlp::INPUT_LAYER, "fc1.post"))
    {
        for t2 in points.iter().filter(|p| reads(p, "fc1.post", "fc2.post")) {
            if settings(t1) == settings(t2) {
                out.push(CircuitsStage {
                    name: format!("circuits/{}", settings(t1)),
                    t1: t1.name.clone(),
                    t2: t2.name.clone(),
                    options: *options,
                });
            }
        }
    }
    out
}

impl Stage for CircuitsStage {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &str {
        "circuits"
    }
    fn fingerprint(&self) -> String {
        env!("SAELAB_FP_CIRCUITS").into()
    }
    fn params(&self) -> Value {
        json!({ "circuits": self.options })
    }
    fn inputs(&self) -> Vec<(String, String)> {
        vec![
            ("mnist".into(), "mnist".into()),
            ("mlp".into(), "mlp".into()),
            ("t1".into(), self.t1.clone()),
            ("t2".into(), self.t2.clone()),
        ]
    }
    fn run(&self, inputs: &StageInputs, out: &Path) -> Result<Value, StageError> {
        let replacement = load_replacement(inputs)?;
        let data = load_mnist(inputs.dir("mnist"))?;
        let input = circuits::Network::input_rows(&data.test.images.pixels);
        let start = Instant::now();
        let study = circuits::study(&replacement, &input, &data.test.labels.labels, self.options)?;
        let seconds = start.elapsed().as_secs_f64();
        analysis::write_circuit_tables(&study, out)?;
        analysis::write_circuits_report(&study, out, &self.name)?;
        let summary = summary(&study, seconds);
        super::write_json(out, SUMMARY_FILE, &summary)?;
        let (tc, nn) = (&summary["transcoders"], &summary["neurons"]);
        Ok(json!({
            "headline": format!(
                "{} images in {seconds:.1} s: median {} transcoder features carry {:.0}% of the influence, {} neurons; replacement {:.3}, completeness {:.3}",
                study.images.len() / 2,
                tc["median_features_by_influence"],
                self.options.node_threshold * 100.0,
                nn["median_features_by_influence"],
                tc["mean_replacement_score"].as_f64().unwrap_or(f64::NAN),
                tc["mean_completeness_score"].as_f64().unwrap_or(f64::NAN),
            ),
            "summary": summary,
        }))
    }
}

/// A circuits artifact (in `dir`) as a report in `<store>/analysis/<key>/<layer>/`
/// links it: its answer, and its page relative to the report.
pub fn link(name: &str, dir: &Path) -> Result<analysis::CircuitLink, StageError> {
    let summary: Value = super::read_json(dir, SUMMARY_FILE)?;
    let verdict = summary["verdict"]
        .as_str()
        .ok_or_else(|| format!("{}: no verdict in {SUMMARY_FILE}", dir.display()))?;
    let key = dir.file_name().unwrap_or_default().to_string_lossy();
    Ok(analysis::CircuitLink {
        name: name.to_string(),
        verdict: verdict.to_string(),
        page: format!("../../../circuits/{key}/{}", analysis::CIRCUITS_PAGE),
    })
}

/// The MLP and the two transcoders a circuits artifact reads.
pub fn load_replacement(inputs: &StageInputs) -> Result<Replacement, StageError> {
    let weights = load_weights(inputs.dir("mlp"))?;
    let t1 = sae::load(inputs.dir("t1"))?;
    let t2 = sae::load(inputs.dir("t2"))?;
    Ok(Replacement::new(&weights, t1, t2)?)
}

fn median(mut v: Vec<u32>) -> u32 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Per graph kind and per digit: how many nodes carry the influence, and the scores.
fn summary(study: &Study, seconds: f64) -> Value {
    let of_kind = |kind: GraphKind, rows: &[&ImageScores]| {
        let rows: Vec<&&ImageScores> = rows.iter().filter(|r| r.graph == kind).collect();
        let n = rows.len().max(1) as f64;
        let mean = |f: &dyn Fn(&ImageScores) -> f64| rows.iter().map(|r| f(r)).sum::<f64>() / n;
        json!({
            "images": rows.len(),
            "median_features_by_influence": median(rows.iter().map(|r| r.features_by_influence).collect()),
            "mean_features_by_influence": mean(&|r| r.features_by_influence as f64),
            "mean_active": mean(&|r| r.active as f64),
            "mean_edges_kept": mean(&|r| r.edges_kept as f64),
            "mean_replacement_score": mean(&|r| r.replacement_score),
            "mean_completeness_score": mean(&|r| r.completeness_score),
        })
    };
    let all: Vec<&ImageScores> = study.images.iter().collect();
    let digits: Vec<Value> = study
        .digits
        .iter()
        .map(|d| {
            let rows: Vec<&ImageScores> =
                all.iter().copied().filter(|r| r.label == d.digit).collect();
            json!({
                "digit": d.digit,
                "graph": d.kind.name(),
                "images": d.images,
                "nodes": d.graph.len(),
                "features": d.graph.n_features,
                "features_kept": d.pruned.features_kept(&d.graph),
                "replacement_score": d.scores.replacement,
                "completeness_score": d.scores.completeness,
                "per_image": of_kind(d.kind, &rows),
            })
        })
        .collect();
    let agreement: Vec<Value> = study
        .agreement()
        .into_iter()
        .map(|(kind, layer, a)| {
            json!({
                "graph": kind.name(),
                "layer": kind.layer_names()[layer as usize],
                "pairs": a.pairs,
                "r2": a.r2,
                "sign_agreement": a.sign_agreement,
                "spearman": a.spearman,
            })
        })
        .collect();
    // Medians: a ratio over an image whose logit barely moves is an outlier.
    let faithful: Vec<_> = study.images.iter().filter_map(|r| r.faithfulness).collect();
    let median_of = |f: &dyn Fn(&circuits::Faithfulness) -> f64| {
        let mut v: Vec<f64> = faithful.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let faithfulness = json!({
        "images": faithful.len(),
        "median_circuit": median_of(&|f| f.circuit),
        "median_complement": median_of(&|f| f.complement),
        "median_random": median_of(&|f| f.random),
    });
    json!({
        "verdict": analysis::circuits_verdict(study),
        "seconds": seconds,
        "ablation_agreement": agreement,
        "faithfulness": faithfulness,
        "ms_per_image": 1000.0 * seconds / (study.images.len() / 2).max(1) as f64,
        "transcoders": of_kind(GraphKind::Transcoders, &all),
        "neurons": of_kind(GraphKind::Neurons, &all),
        "digits": digits,
        "splice": study.splice,
    })
}
