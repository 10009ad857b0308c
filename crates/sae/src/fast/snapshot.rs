//! The fast trainer's state as named buffers, to resume a run bit for bit.
//! Resting features are woken first (their skipped second-moment decays
//! replayed), so the snapshot is the dense state, which dormancy never
//! changes a bit of; a restored trainer starts with every feature awake.

use std::collections::BTreeMap;

use super::FastTrainer;
use crate::trainer::TrainerSnapshot;

impl FastTrainer {
    /// Every buffer a step reads or carries over, by name.
    fn buffers_mut(&mut self) -> Vec<(&'static str, &mut Vec<f32>)> {
        let FastTrainer {
            params: p,
            magnitude: mag,
            threshold,
            ..
        } = self;
        vec![
            ("w_enc_t", &mut p.w_enc_t),
            ("w_enc_t.m", &mut p.adam_w_enc_t.m),
            ("w_enc_t.v", &mut p.adam_w_enc_t.v),
            ("w_dec", &mut p.w_dec),
            ("w_dec.m", &mut p.adam_w_dec.m),
            ("w_dec.v", &mut p.adam_w_dec.v),
            ("b_enc", &mut p.b_enc),
            ("b_enc.m", &mut p.adam_b_enc.m),
            ("b_enc.v", &mut p.adam_b_enc.v),
            ("b_dec", &mut p.b_dec),
            ("b_dec.m", &mut p.adam_b_dec.m),
            ("b_dec.v", &mut p.adam_b_dec.v),
            ("log_threshold", &mut p.log_threshold),
            ("log_threshold.m", &mut p.adam_log_threshold.m),
            ("log_threshold.v", &mut p.adam_log_threshold.v),
            // Not exp(log_threshold) after a resampling reset: kept as is.
            ("threshold", threshold),
            ("w_skip", &mut p.w_skip),
            ("w_skip.m", &mut p.adam_w_skip.m),
            ("w_skip.v", &mut p.adam_w_skip.v),
            ("r_mag", &mut mag.r_mag),
            ("r_mag.m", &mut mag.adam_r_mag.m),
            ("r_mag.v", &mut mag.adam_r_mag.v),
            ("b_mag", &mut mag.b_mag),
            ("b_mag.m", &mut mag.adam_b_mag.m),
            ("b_mag.v", &mut mag.adam_b_mag.v),
            ("scale", &mut mag.scale),
        ]
    }

    pub(super) fn take_snapshot(&mut self) -> TrainerSnapshot {
        self.wake_all();
        let buffers: BTreeMap<String, Vec<f32>> = self
            .buffers_mut()
            .into_iter()
            .map(|(name, b)| (name.to_string(), b.clone()))
            .collect();
        TrainerSnapshot {
            adam_t: self.adam_t,
            batch_threshold: self.batch_threshold.as_ref().and_then(|t| t.value()),
            buffers,
        }
    }

    pub(super) fn restore_snapshot(&mut self, snapshot: &TrainerSnapshot) -> Result<(), String> {
        if snapshot.batch_threshold.is_some() && self.batch_threshold.is_none() {
            return Err("a running threshold for an architecture without one".into());
        }
        let mut names: Vec<&str> = Vec::new();
        for (name, buffer) in self.buffers_mut() {
            let got = snapshot.buffers.get(name).map_or(0, Vec::len);
            if got != buffer.len() {
                return Err(format!(
                    "buffer `{name}` has {got} values, expected {}",
                    buffer.len()
                ));
            }
            names.push(name);
        }
        if let Some(extra) = snapshot
            .buffers
            .keys()
            .find(|k| !names.contains(&k.as_str()))
        {
            return Err(format!(
                "buffer `{extra}` belongs to no part of this trainer"
            ));
        }
        for (name, buffer) in self.buffers_mut() {
            if let Some(values) = snapshot.buffers.get(name) {
                buffer.copy_from_slice(values);
            }
        }
        self.adam_t = snapshot.adam_t;
        if let Some(threshold) = &mut self.batch_threshold {
            threshold.set_value(snapshot.batch_threshold);
        }
        Ok(())
    }
}
