//! Sweeps trained on demand: the runner asks for one point at a time (each
//! point is its own artifact), but every pending point that reads the same
//! data trains in the same pass, and the others' results wait here until
//! they are asked for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::resume::Checkpoints;
use crate::train::{ProgressEvent, SweepPoint, TrainData, TrainPath, Trained};
use crate::SaeError;

/// One point of a sweep and the group of points it can train with (those
/// reading the same data on the same path).
#[derive(Clone, Debug)]
pub struct ScheduledPoint {
    pub point: SweepPoint,
    pub group: String,
}

/// Trains, on first demand, a point together with every pending point of its
/// group, and hands each point its result once.
pub struct SweepScheduler {
    points: Vec<ScheduledPoint>,
    /// Points the caller will ask for in this run.
    pending: Mutex<BTreeSet<String>>,
    results: Mutex<BTreeMap<String, Result<Trained, SaeError>>>,
}

impl SweepScheduler {
    pub fn new(points: Vec<ScheduledPoint>) -> SweepScheduler {
        SweepScheduler {
            points,
            pending: Mutex::new(BTreeSet::new()),
            results: Mutex::new(BTreeMap::new()),
        }
    }

    /// The points that will be asked for in this run: they train with the
    /// first of their group that is asked for.
    pub fn set_pending(&self, names: BTreeSet<String>) {
        *self.pending.lock().expect("no panics while locked") = names;
    }

    /// Whether an earlier call trained the point `name` with its group and
    /// holds its result.
    pub fn holds(&self, name: &str) -> bool {
        self.results
            .lock()
            .expect("no panics while locked")
            .contains_key(name)
    }

    /// The trained point `name`, training it and its group's pending points on
    /// `data` unless an earlier call already did. `on_trained` hears of each
    /// point of the group the moment it has trained; `checkpoints` keeps and
    /// resumes their states ([`crate::train_sweep_resuming`]).
    pub fn trained(
        &self,
        name: &str,
        data: TrainData,
        path: &TrainPath,
        progress: &(dyn Fn(&ProgressEvent) + Sync),
        on_trained: &(dyn Fn(&str, &Trained) + Sync),
        checkpoints: Option<&Checkpoints>,
    ) -> Result<Trained, SaeError> {
        if let Some(done) = self
            .results
            .lock()
            .expect("no panics while locked")
            .remove(name)
        {
            return done;
        }
        let Some(asked) = self.points.iter().find(|p| p.point.name == name) else {
            return Err(SaeError::InvalidConfig(format!(
                "no sweep point is named {name}"
            )));
        };
        let mut pending = self.pending.lock().expect("no panics while locked");
        let group: Vec<SweepPoint> = self
            .points
            .iter()
            .filter(|p| {
                p.group == asked.group && (p.point.name == name || pending.contains(&p.point.name))
            })
            .map(|p| p.point.clone())
            .collect();
        for p in &group {
            pending.remove(&p.name);
        }
        drop(pending);
        let results = crate::train::train_sweep_resuming(
            &group,
            data,
            path,
            progress,
            on_trained,
            checkpoints,
        );
        let mut mine = None;
        let mut kept = self.results.lock().expect("no panics while locked");
        for (p, result) in group.into_iter().zip(results) {
            if p.name == name {
                mine = Some(result);
            } else {
                kept.insert(p.name, result);
            }
        }
        mine.expect("the asked point is in its group")
    }
}
