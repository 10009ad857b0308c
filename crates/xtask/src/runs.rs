//! `cargo xtask runs` and the `runs` table of `query`: every SAE in the store,
//! whatever config built it, with its `[sae]` params and its metrics (as
//! `dvc exp show` lists experiments). Read from the SAE artifacts' manifests.

use analysis::Record;
use anyhow::Result;
use artifacts::{Check, Store};
use serde_json::Value;

use crate::stages::sae::SaeMetricsFile;

/// One record per fresh SAE artifact, newest first, metrics (with their split)
/// before params; and the SAE folders that could not be listed, with why.
fn records(store: &Store) -> Result<(Vec<Record>, Vec<String>)> {
    let mut records: Vec<(u64, Record)> = Vec::new();
    let mut skipped = Vec::new();
    for (kind, key, check) in store.list()? {
        if kind != "sae" {
            continue;
        }
        let manifest = match check {
            Check::Fresh(m) => m,
            Check::Invalid(why) => {
                skipped.push(format!("sae/{key}: {why}"));
                continue;
            }
            Check::Missing => continue,
        };
        let metrics: SaeMetricsFile = match serde_json::from_value(manifest.metrics.clone()) {
            Ok(m) => m,
            Err(e) => {
                skipped.push(format!(
                    "sae/{key}: metrics from another saelab version ({e})"
                ));
                continue;
            }
        };
        let mut record: Record = vec![
            ("key".into(), key.to_string().into()),
            ("built_unix_s".into(), manifest.created_unix_s.into()),
        ];
        for (name, value) in [
            ("l0_test", metrics.test.l0),
            ("ev_test", metrics.test.explained_variance),
            ("mse_test", metrics.test.mse),
            ("ce_recovered_test", metrics.downstream.ce_recovered_zero),
            ("spliced_accuracy_test", metrics.downstream.spliced.accuracy),
            ("l0_train", metrics.train.l0),
            ("ev_train", metrics.train.explained_variance),
            ("train_seconds", metrics.train_seconds),
        ] {
            record.push((name.into(), value.into()));
        }
        record.push(("dead_train".into(), metrics.train.dead.into()));
        if let Some(Value::Object(params)) = manifest.params.get("sae") {
            for (name, value) in params {
                let value = match value {
                    Value::Array(_) | Value::Object(_) => value.to_string().into(),
                    other => other.clone(),
                };
                record.push((format!("param_{name}"), value));
            }
        }
        records.push((manifest.created_unix_s, record));
    }
    records.sort_by_key(|(built, _)| std::cmp::Reverse(*built));
    Ok((records.into_iter().map(|(_, r)| r).collect(), skipped))
}

/// The `runs` table (newest first) as a queryable source, and what was skipped.
pub fn table(store: &Store) -> Result<(analysis::TableSource, Vec<String>)> {
    let (records, skipped) = records(store)?;
    Ok((analysis::records_source(&records)?, skipped))
}
