//! The SAE sweep as the stages see it: the points of a config, trained on
//! first demand by [`sae::SweepScheduler`], on the path and device the config
//! names, with a progress bar per point. In the SAE fingerprint: it picks the
//! trainer path.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use artifacts::StageError;
use candle_core::Device;
use sae::{SweepPoint, Trained};

use crate::config::{Point, SaeSweep, TrainerDevice};
use crate::progress::Progress;

/// The sweep's points, trained on first demand by [`sae::SweepScheduler`]
/// (points of one layer and path train together), with a progress bar each.
pub struct SweepTrainer {
    scheduler: sae::SweepScheduler,
    /// Reference-path points run on the first CUDA device.
    pub cuda: bool,
}

impl SweepTrainer {
    pub fn new(sweep: &SaeSweep) -> Arc<SweepTrainer> {
        let points = sweep
            .points()
            .into_iter()
            .map(|p| sae::ScheduledPoint {
                group: format!("{}/{}", p.layer, p.reference_path),
                point: SweepPoint {
                    name: p.name,
                    cfg: p.cfg,
                },
            })
            .collect();
        Arc::new(SweepTrainer {
            scheduler: sae::SweepScheduler::new(points),
            cuda: sweep.device == TrainerDevice::Cuda,
        })
    }

    pub fn set_pending(&self, names: BTreeSet<String>) {
        self.scheduler.set_pending(names);
    }

    pub fn trained(&self, point: &Point, train: &[f32]) -> Result<Trained, StageError> {
        let path = if point.reference_path {
            let device = if self.cuda {
                Device::new_cuda(0)?
            } else {
                Device::Cpu
            };
            sae::TrainPath::Reference { device }
        } else {
            sae::TrainPath::Fast
        };
        let bars: Mutex<BTreeMap<String, Progress>> = Mutex::new(BTreeMap::new());
        let trained = self.scheduler.trained(&point.name, train, &path, &|event| {
            let mut bars = bars.lock().expect("no panics while locked");
            let bar = bars
                .entry(event.point.to_string())
                .or_insert_with(|| Progress::new(event.point, event.steps_total as u64, "steps"));
            bar.set(event.step as u64, || {
                format!(
                    "epoch {}/{} loss {:.3} L0 {:.1}",
                    event.epoch, event.epochs, event.loss, event.l0
                )
            });
        });
        bars.into_inner()
            .expect("no panics while locked")
            .values()
            .for_each(Progress::finish);
        Ok(trained?)
    }
}
