//! The stage graph: keys in dependency order, staleness with reasons, and a run
//! that builds what is not fresh and skips what is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::store::Check;
use crate::{Key, KeySpec, Manifest, Store, StoreError, Verify};

pub type StageError = Box<dyn std::error::Error + Send + Sync>;

/// One node of the pipeline. Implementations hold their own params and code.
pub trait Stage: Sync {
    /// Unique instance name, e.g. `mlp` or `sae/fc2.pre/l1=0.003`.
    fn name(&self) -> &str;
    /// The store folder its artifacts go to, e.g. `sae`.
    fn kind(&self) -> &str;
    /// Changes whenever the code that makes the artifact changes.
    fn fingerprint(&self) -> String;
    fn params(&self) -> Value;
    /// (role, upstream instance name) pairs.
    fn inputs(&self) -> Vec<(String, String)>;
    /// Writes the artifact's files into `out` and returns its metrics.
    fn run(&self, inputs: &StageInputs, out: &Path) -> Result<Value, StageError>;
}

/// The fresh upstream artifacts a stage reads, by role.
#[derive(Debug, Default)]
pub struct StageInputs {
    inputs: BTreeMap<String, (PathBuf, Manifest)>,
}

impl StageInputs {
    pub fn dir(&self, role: &str) -> &Path {
        &self
            .inputs
            .get(role)
            .unwrap_or_else(|| panic!("stage has no input named {role}"))
            .0
    }
    pub fn manifest(&self, role: &str) -> &Manifest {
        &self
            .inputs
            .get(role)
            .unwrap_or_else(|| panic!("stage has no input named {role}"))
            .1
    }
}

#[derive(Debug, Clone)]
pub enum State {
    Fresh(Box<Manifest>),
    Missing,
    /// Every reason it would run, each one sentence.
    Stale(Vec<String>),
}

impl State {
    pub fn label(&self) -> String {
        match self {
            State::Fresh(_) => "fresh".into(),
            State::Missing => "missing".into(),
            State::Stale(why) => format!("stale: {}", why.join("; ")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Planned {
    pub name: String,
    pub kind: String,
    pub spec: KeySpec,
    pub key: Key,
    pub state: State,
    /// Its own artifact looks fine, but an input it was built from is corrupt:
    /// it is rebuilt after that input (a run marks it so until then).
    pub input_corrupt: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stage names or kinds to rebuild even when fresh.
    pub force: BTreeSet<String>,
    /// Run only these stages (names or kinds) and what they need; all when empty.
    pub targets: BTreeSet<String>,
    /// Stage names to build after every other stage (and what reads them after
    /// them): another process is building them, and this run should not wait
    /// for it while it holds locks of its own.
    pub defer: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Ran {
        name: String,
        manifest: Box<Manifest>,
    },
    Cached {
        name: String,
        manifest: Box<Manifest>,
    },
    Failed {
        name: String,
        error: String,
    },
    Skipped {
        name: String,
        because: String,
    },
}

impl Outcome {
    pub fn name(&self) -> &str {
        match self {
            Outcome::Ran { name, .. }
            | Outcome::Cached { name, .. }
            | Outcome::Failed { name, .. }
            | Outcome::Skipped { name, .. } => name,
        }
    }
    pub fn manifest(&self) -> Option<&Manifest> {
        match self {
            Outcome::Ran { manifest, .. } | Outcome::Cached { manifest, .. } => Some(manifest),
            _ => None,
        }
    }
}

/// Called as the run goes: before a stage runs, when it waits for another
/// process, and with each outcome.
pub enum Event<'a> {
    Running(&'a Planned),
    Waiting(&'a Planned),
    Finished(&'a Outcome),
}

pub struct Graph<'s> {
    /// Topologically sorted.
    stages: Vec<&'s dyn Stage>,
}

impl<'s> Graph<'s> {
    /// Refuses duplicate names, unknown inputs and cycles.
    pub fn new(stages: &[&'s dyn Stage]) -> Result<Graph<'s>, String> {
        let mut by_name = BTreeMap::new();
        for s in stages {
            if by_name.insert(s.name().to_string(), *s).is_some() {
                return Err(format!("two stages are named {}", s.name()));
            }
        }
        for s in stages {
            for (role, up) in s.inputs() {
                if !by_name.contains_key(&up) {
                    return Err(format!(
                        "stage {} reads {role} from {up}, which is not a stage",
                        s.name()
                    ));
                }
            }
        }
        let mut sorted: Vec<&dyn Stage> = Vec::new();
        let mut done = BTreeSet::new();
        while sorted.len() < stages.len() {
            let ready: Vec<&dyn Stage> = stages
                .iter()
                .copied()
                .filter(|s| {
                    !done.contains(s.name())
                        && s.inputs().iter().all(|(_, up)| done.contains(up.as_str()))
                })
                .collect();
            if ready.is_empty() {
                return Err("the stage graph has a cycle".into());
            }
            for s in ready {
                done.insert(s.name());
                sorted.push(s);
            }
        }
        Ok(Graph { stages: sorted })
    }

    pub fn stages(&self) -> impl Iterator<Item = &'s dyn Stage> + '_ {
        self.stages.iter().copied()
    }

    /// Keys and states of every stage, upstream first. A stage whose artifact
    /// is corrupt (or downstream of one) is stale, and so is everything built from it.
    pub fn plan(&self, store: &Store) -> Vec<Planned> {
        let mut keys: BTreeMap<String, Key> = BTreeMap::new();
        let mut corrupt: BTreeSet<String> = BTreeSet::new();
        let mut plan = Vec::new();
        for stage in &self.stages {
            let inputs = stage
                .inputs()
                .into_iter()
                .map(|(role, up)| (role, keys[&up].clone()))
                .collect();
            let spec = KeySpec {
                stage: stage.kind().to_string(),
                fingerprint: stage.fingerprint(),
                params: stage.params(),
                inputs,
            };
            let key = spec.key();
            let corrupt_input = stage
                .inputs()
                .into_iter()
                .find(|(_, up)| corrupt.contains(up))
                .map(|(_, up)| up);
            let mut input_corrupt = false;
            let state = match store.check(stage.kind(), &key) {
                Check::Fresh(m) => match &corrupt_input {
                    None => State::Fresh(m),
                    Some(up) => {
                        input_corrupt = true;
                        corrupt.insert(stage.name().to_string());
                        State::Stale(vec![format!("built from {up}, which is corrupt")])
                    }
                },
                Check::Invalid(why) => {
                    corrupt.insert(stage.name().to_string());
                    State::Stale(vec![why])
                }
                Check::Missing => match store.latest(stage.name()) {
                    Some(before) if before.key() != key => {
                        let why = spec.differences(&before);
                        if why.is_empty() {
                            State::Missing
                        } else {
                            State::Stale(why)
                        }
                    }
                    _ => State::Missing,
                },
            };
            keys.insert(stage.name().to_string(), key.clone());
            plan.push(Planned {
                name: stage.name().to_string(),
                kind: stage.kind().to_string(),
                spec,
                key,
                state,
                input_corrupt,
            });
        }
        plan
    }

    /// Names of the targets and everything they read, transitively.
    fn closure(&self, targets: &BTreeSet<String>) -> BTreeSet<String> {
        let mut wanted: BTreeSet<String> = self
            .stages
            .iter()
            .filter(|s| targets.contains(s.name()) || targets.contains(s.kind()))
            .map(|s| s.name().to_string())
            .collect();
        for stage in self.stages.iter().rev() {
            if wanted.contains(stage.name()) {
                wanted.extend(stage.inputs().into_iter().map(|(_, up)| up));
            }
        }
        wanted
    }

    /// Builds every wanted stage that is not fresh. A failed stage does not stop
    /// stages that do not depend on it.
    pub fn run(
        &self,
        store: &Store,
        options: &RunOptions,
        on_event: &dyn Fn(Event<'_>),
    ) -> Result<Vec<Outcome>, StoreError> {
        let plan = self.plan(store);
        let wanted = (!options.targets.is_empty()).then(|| self.closure(&options.targets));
        let mut outcomes: Vec<Outcome> = Vec::new();
        let mut made: BTreeMap<String, (PathBuf, Manifest)> = BTreeMap::new();
        let mut wanted_stages: Vec<(&dyn Stage, &Planned)> = self
            .stages
            .iter()
            .copied()
            .zip(&plan)
            .filter(|(stage, _)| wanted.as_ref().is_none_or(|w| w.contains(stage.name())))
            .collect();
        // Deferred stages and everything downstream of them go last, in order.
        let mut deferred = options.defer.clone();
        for stage in &self.stages {
            if stage.inputs().iter().any(|(_, up)| deferred.contains(up)) {
                deferred.insert(stage.name().to_string());
            }
        }
        wanted_stages.sort_by_key(|(stage, _)| deferred.contains(stage.name()));
        // Held until the run ends, so a concurrent gc cannot remove what it reads.
        let _held: Vec<_> = wanted_stages
            .iter()
            .map(|(_, p)| store.hold(&p.kind, &p.key))
            .collect();
        for (_, planned) in &wanted_stages {
            if let (true, State::Stale(why)) = (planned.input_corrupt, &planned.state) {
                store.invalidate(&planned.kind, &planned.key, &why.join("; "))?;
            }
        }
        for (stage, planned) in wanted_stages {
            let outcome = self.build_one(store, stage, planned, options, &made, on_event)?;
            if let Some(m) = outcome.manifest() {
                made.insert(
                    planned.name.clone(),
                    (store.artifact_dir(&planned.kind, &planned.key), m.clone()),
                );
            }
            on_event(Event::Finished(&outcome));
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    fn build_one(
        &self,
        store: &Store,
        stage: &dyn Stage,
        planned: &Planned,
        options: &RunOptions,
        made: &BTreeMap<String, (PathBuf, Manifest)>,
        on_event: &dyn Fn(Event<'_>),
    ) -> Result<Outcome, StoreError> {
        let name = planned.name.clone();
        let mut inputs = StageInputs::default();
        for (role, up) in stage.inputs() {
            match made.get(&up) {
                Some(found) => {
                    inputs.inputs.insert(role, found.clone());
                }
                None => {
                    return Ok(Outcome::Skipped {
                        name,
                        because: format!("its input {up} was not built"),
                    })
                }
            }
        }
        let forced = options.force.contains(stage.name()) || options.force.contains(stage.kind());
        if let (false, State::Fresh(m)) = (forced, &planned.state) {
            // Only `explain`'s memory: a read-only store still serves its results.
            let _ = store.record_latest(&name, &planned.spec);
            return Ok(Outcome::Cached {
                name,
                manifest: m.clone(),
            });
        }
        let _lock = store.lock(&planned.kind, &planned.key, || {
            on_event(Event::Waiting(planned))
        })?;
        if !forced {
            if let Check::Fresh(m) = store.check(&planned.kind, &planned.key) {
                store.record_latest(&name, &planned.spec)?;
                return Ok(Outcome::Cached { name, manifest: m });
            }
        }
        on_event(Event::Running(planned));
        match store.commit(&planned.spec, |out| stage.run(&inputs, out)) {
            Ok(manifest) => {
                store.record_latest(&name, &planned.spec)?;
                Ok(Outcome::Ran {
                    name,
                    manifest: Box::new(manifest),
                })
            }
            Err(StoreError::Stage { source, .. }) => {
                let mut error = source.to_string();
                // A stage that fails reading an input may have met bytes that
                // rotted under an unchanged stat: re-hash its inputs, and mark
                // any that no longer match so the next run rebuilds them.
                for (role, up) in stage.inputs() {
                    let Some((dir, manifest)) = made.get(&up) else {
                        continue;
                    };
                    let kind = manifest.stage.as_str();
                    if let Check::Invalid(why) =
                        store.check_with(kind, &manifest.key, Verify::Digests)
                    {
                        let _ = store.invalidate(kind, &manifest.key, &why);
                        error.push_str(&format!(
                            "; its input {role} ({}) is corrupt: {why}; it is now stale and the next run rebuilds it",
                            dir.display()
                        ));
                    }
                }
                Ok(Outcome::Failed { name, error })
            }
            Err(other) => Err(other),
        }
    }
}
