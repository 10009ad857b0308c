//! The pipeline's stages as the runner sees them: params, inputs, fingerprint,
//! and a `run` that calls the stage crate. No stage logic lives here beyond
//! reading inputs and writing the artifact's files.

pub mod analysis;
pub mod circuits;
pub mod extract;
pub mod kept;
pub mod mlp;
pub mod mnist;
pub mod neurons;
pub mod sae;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use artifacts::{Event, Graph, Outcome, RunOptions, Stage, Store};

use crate::config::Config;
use crate::sweep::SweepTrainer;

/// What every stage may need from the command line.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// `--mnist-dir`, `SAELAB_MNIST_DIR` or `mnist.dir`, in that order.
    pub mnist_dir: Option<PathBuf>,
    pub store_root: PathBuf,
    /// This command's `--config`, `--preset` and `--set` flags, for the
    /// report's rebuild commands.
    pub flags: String,
    /// How often a training SAE point's state is kept (`--checkpoint-every`).
    pub checkpoint_every: std::time::Duration,
}

/// The stages a config asks for, upstream first, and the trainer its SAE points share.
pub struct Pipeline {
    pub stages: Vec<Box<dyn Stage>>,
    pub sweep: Arc<SweepTrainer>,
}

pub fn build(config: &Config, ctx: &Context) -> Pipeline {
    let sweep = SweepTrainer::new(&config.sae);
    let mut stages: Vec<Box<dyn Stage>> = vec![
        Box::new(mnist::MnistStage {
            dir: ctx.mnist_dir.clone(),
            store_root: ctx.store_root.clone(),
        }),
        Box::new(mlp::MlpStage {
            cfg: config.mlp.clone(),
        }),
        Box::new(extract::ExtractStage {
            cfg: config.extract.clone(),
        }),
    ];
    for point in config.sae.points() {
        stages.push(Box::new(sae::SaeStage {
            point,
            trainer: sweep.clone(),
            store_root: ctx.store_root.clone(),
            checkpoint_every: ctx.checkpoint_every,
        }));
    }
    let points = config.sae.points();
    for layer in analysis::report_layers(&points) {
        stages.push(Box::new(neurons::NeuronsStage::new(
            layer,
            &config.analysis,
        )));
    }
    let circuit_stages = circuits::stages(&points, &config.circuits);
    let circuit_names = circuit_stages.iter().map(|c| c.name.clone()).collect();
    for stage in circuit_stages {
        stages.push(Box::new(stage));
    }
    stages.push(Box::new(analysis::AnalysisStage {
        circuits: circuit_names,
        points: config.sae.points(),
        cfg: config.analysis.clone(),
        flags: ctx.flags.clone(),
    }));
    Pipeline { stages, sweep }
}

impl Pipeline {
    pub fn graph(&self) -> anyhow::Result<Graph<'_>> {
        let refs: Vec<&dyn Stage> = self.stages.iter().map(|s| s.as_ref()).collect();
        Graph::new(&refs).map_err(anyhow::Error::msg)
    }

    /// Runs the graph, telling the SAE trainer first which points will be
    /// built, so that it trains them together. Each of those points is locked
    /// before anything trains: a point another run holds is left to it, and
    /// built (found, once that run commits it) after every other stage, so
    /// two runs with overlapping sweeps train a shared point once and never
    /// wait for each other while holding a lock.
    pub fn run(
        &self,
        store: &Store,
        options: &RunOptions,
        on_event: &dyn Fn(Event<'_>),
    ) -> anyhow::Result<Vec<Outcome>> {
        let graph = self.graph()?;
        let named = |set: &BTreeSet<String>, p: &artifacts::Planned| {
            set.contains(&p.name) || set.contains(&p.kind)
        };
        let candidates: Vec<artifacts::Planned> = graph
            .plan(store)
            .into_iter()
            .filter(|p| {
                p.kind == "sae" && (options.targets.is_empty() || named(&options.targets, p))
            })
            .filter(|p| named(&options.force, p) || !matches!(p.state, artifacts::State::Fresh(_)))
            // Kept by an interrupted run: read back by its own stage, not retrained.
            .filter(|p| !kept::finished_dir(store.root(), &p.key).is_dir())
            .collect();
        let (mut pending, mut options) = (BTreeSet::new(), options.clone());
        let mut own = BTreeMap::new();
        for p in candidates {
            match store.try_lock(&p.kind, &p.key) {
                Ok(Some(lock)) => {
                    own.insert(p.name.clone(), lock);
                    pending.insert(p.name);
                }
                Ok(None) => {
                    options.defer.insert(p.name);
                }
                // A store that cannot be locked: the point's own stage says why.
                Err(_) => {
                    pending.insert(p.name);
                }
            }
        }
        self.sweep.set_pending(pending);
        let own = Mutex::new(own);
        // A point's kept copy goes once its artifact is committed (or found),
        // and its lock once its stage is done, whatever the outcome.
        let after_each = |event: Event<'_>| {
            if let Event::Finished(outcome) = &event {
                if let Some(m) = outcome.manifest().filter(|m| m.stage == "sae") {
                    let _ = std::fs::remove_dir_all(kept::finished_dir(store.root(), &m.key));
                    let _ = std::fs::remove_dir_all(kept::checkpoint_dir(store.root(), &m.key));
                }
                own.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(outcome.name());
            }
            on_event(event);
        };
        Ok(graph.run(store, &options, &after_each)?)
    }
}

/// Writes `value` as pretty JSON into `dir/name`.
pub fn write_json(
    dir: &std::path::Path,
    name: &str,
    value: &impl serde::Serialize,
) -> Result<(), artifacts::StageError> {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)
        .map_err(|e| format!("{}: cannot write it: {e}", path.display()).into())
}

/// Reads `dir/name` as `T`; a file that is missing or does not parse is an
/// error that names it (never a default).
pub fn read_json<T: serde::de::DeserializeOwned>(
    dir: &std::path::Path,
    name: &str,
) -> Result<T, artifacts::StageError> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not the file saelab wrote: {e}", path.display()).into())
}

#[cfg(test)]
mod tests {
    use super::sae::{SaeMetricsFile, METRICS_FILE};

    #[test]
    fn an_artifact_file_that_does_not_parse_is_an_error_naming_it_not_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        // A renamed key, a missing one, garbage, and no file at all.
        for text in [
            r#"{"train": {}, "test": {}, "downstream": {}, "deads": 3}"#,
            "{}",
            "[1, 2",
        ] {
            std::fs::write(&path, text).unwrap();
            let message = super::read_json::<SaeMetricsFile>(dir.path(), METRICS_FILE)
                .unwrap_err()
                .to_string();
            assert!(
                message.starts_with(&format!("{}: not the file saelab wrote: ", path.display())),
                "{text}: {message}"
            );
        }
        std::fs::remove_file(&path).unwrap();
        let missing = super::read_json::<SaeMetricsFile>(dir.path(), METRICS_FILE)
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with(&path.display().to_string()),
            "{missing}"
        );
    }
}
