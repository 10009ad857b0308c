//! `circuits/<point>`: the MLP replaced by a T1 (`input` -> `fc1.post`) and a
//! T2 (`fc1.post` -> `fc2.post`) of the same sweep settings, and every test
//! image's attribution graph against the MLP's own (`circuits::study`).

use std::path::Path;
use std::time::Instant;

use artifacts::{Stage, StageError, StageInputs};
use circuits::Replacement;
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
        let replacement = load_replacement(inputs.dir("mlp"), inputs.dir("t1"), inputs.dir("t2"))?;
        let data = load_mnist(inputs.dir("mnist"))?;
        let input = circuits::Network::input_rows(&data.test.images.pixels);
        let start = Instant::now();
        let study = circuits::study(&replacement, &input, &data.test.labels.labels, self.options)?;
        let seconds = start.elapsed().as_secs_f64();
        let summary =
            analysis::CircuitsSummary::of(&self.name, &study, self.options.node_threshold, seconds);
        analysis::write_circuit_tables(&study, out)?;
        analysis::write_circuits_report(&study, &summary, out)?;
        super::write_json(out, SUMMARY_FILE, &summary)?;
        let (tc, nn) = (&summary.transcoders, &summary.neurons);
        Ok(json!({
            "headline": format!(
                "{} images in {seconds:.1} s: median {:.0} transcoder features carry {:.0}% of the influence, {:.0} neurons; replacement {:.3}, completeness {:.3}",
                tc.images,
                tc.median_nodes,
                self.options.node_threshold * 100.0,
                nn.median_nodes,
                tc.mean_replacement_score,
                tc.mean_completeness_score,
            ),
        }))
    }
}

/// A circuits artifact (in `dir`) as a report in `<store>/analysis/<key>/<layer>/`
/// links it: its answer, and its page relative to the report.
pub fn link(dir: &Path) -> Result<analysis::CircuitLink, StageError> {
    let key = dir.file_name().unwrap_or_default().to_string_lossy();
    Ok(analysis::CircuitLink {
        summary: super::read_json(dir, SUMMARY_FILE)?,
        folder: format!("../../../circuits/{key}/"),
    })
}

/// The MLP and the two transcoders a circuit reads, from their artifact
/// folders (the stage's, `cargo xtask circuit`'s and the bench's one loader).
pub fn load_replacement(mlp: &Path, t1: &Path, t2: &Path) -> Result<Replacement, StageError> {
    let weights = load_weights(mlp)?;
    Ok(Replacement::new(&weights, sae::load(t1)?, sae::load(t2)?)?)
}
