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
        record.push((
            "built".into(),
            crate::progress::iso_utc(manifest.created_unix_s).into(),
        ));
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

/// The `runs` table (newest first) as a queryable source, the SELECT list
/// that `cargo xtask runs` shows by default, and what was skipped.
pub fn table(store: &Store) -> Result<(analysis::TableSource, String, Vec<String>)> {
    let (records, skipped) = records(store)?;
    Ok((
        analysis::records_source(&records)?,
        default_columns(&records),
        skipped,
    ))
}

/// What fits a terminal (as `dvc exp show --only-changed`): when and which,
/// layer, architecture and width, every other param whose value differs
/// between runs, then L0, EV, dead latents and training time.
fn default_columns(records: &[Record]) -> String {
    let value = |r: &Record, key: &str| {
        r.iter()
            .find(|(k, _)| k == key)
            .map_or(Value::Null, |(_, v)| v.clone())
    };
    if records.is_empty() {
        return "*".into();
    }
    let present = |key: &str| records.iter().flatten().any(|(k, _)| k == key);
    let fixed = ["param_layer", "param_architecture", "param_d_sae"];
    let mut params: Vec<&String> = Vec::new();
    for (key, _) in records.iter().flatten() {
        if key.starts_with("param_") && !fixed.contains(&key.as_str()) && !params.contains(&key) {
            params.push(key);
        }
    }
    let differing = params.into_iter().filter(|key| {
        let first = records.first().map(|r| value(r, key));
        records.iter().any(|r| Some(value(r, key)) != first)
    });
    let mut columns = vec!["built".to_string(), "key".into()];
    columns.extend(
        fixed
            .iter()
            .filter(|p| present(p))
            .map(|p| format!("{p} AS {}", &p[6..])),
    );
    columns.extend(differing.map(|p| format!("{p} AS {}", &p[6..])));
    columns.extend(
        ["l0_test", "ev_test", "dead_train", "train_seconds"]
            .iter()
            .map(|c| c.to_string()),
    );
    columns.join(", ")
}
