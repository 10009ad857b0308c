//! The report's tables: the sweep (one row per SAE), the probes, and any table built from records (`runs`).

use polars::prelude::*;

use crate::probe::ProbeResult;
use crate::types::SaeSummary;
use crate::AnalysisError;

/// `probes`: one row per probe: source (`features` or `neurons`), k, accuracies, the units read.
pub fn probe_table(
    features: &[ProbeResult],
    neurons: &[ProbeResult],
) -> Result<DataFrame, AnalysisError> {
    let rows: Vec<(&str, &ProbeResult)> = features
        .iter()
        .map(|p| ("features", p))
        .chain(neurons.iter().map(|p| ("neurons", p)))
        .collect();
    DataFrame::new(
        rows.len(),
        vec![
            Column::new(
                "source".into(),
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            ),
            Column::new(
                "k".into(),
                rows.iter().map(|r| r.1.k as u32).collect::<Vec<_>>(),
            ),
            Column::new(
                "test_accuracy".into(),
                rows.iter().map(|r| r.1.test_accuracy).collect::<Vec<_>>(),
            ),
            Column::new(
                "train_accuracy".into(),
                rows.iter().map(|r| r.1.train_accuracy).collect::<Vec<_>>(),
            ),
            Column::new(
                "steps".into(),
                rows.iter().map(|r| r.1.steps as u32).collect::<Vec<_>>(),
            ),
            Column::new(
                "converged".into(),
                rows.iter().map(|r| r.1.converged).collect::<Vec<_>>(),
            ),
            Column::new(
                "train_loss".into(),
                rows.iter().map(|r| r.1.train_loss).collect::<Vec<_>>(),
            ),
            Column::new(
                "units".into(),
                rows.iter()
                    .map(|r| {
                        r.1.units
                            .iter()
                            .map(|u| u.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .collect::<Vec<_>>(),
            ),
        ],
    )
    .map_err(AnalysisError::polars("building the probes table"))
}

/// One typed column from JSON values: nulls stay null; integers, floats,
/// booleans and text each get their own dtype (mixed kinds become text).
fn typed_column(name: PlSmallStr, values: &[&serde_json::Value]) -> Column {
    use serde_json::Value;
    let present = || values.iter().filter(|v| !v.is_null());
    if present().all(|v| v.is_u64() || v.is_i64()) {
        Column::new(name, values.iter().map(|v| v.as_i64()).collect::<Vec<_>>())
    } else if present().all(|v| v.is_number()) {
        Column::new(name, values.iter().map(|v| v.as_f64()).collect::<Vec<_>>())
    } else if present().all(|v| v.is_boolean()) {
        Column::new(name, values.iter().map(|v| v.as_bool()).collect::<Vec<_>>())
    } else {
        let text = |v: &&Value| match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        Column::new(name, values.iter().map(text).collect::<Vec<_>>())
    }
}

/// One row of [`records_table`]: (column, value) pairs in column order.
pub type Record = Vec<(String, serde_json::Value)>;

/// A table from records: one typed column per key (in first-seen order),
/// null where a record lacks the key.
pub fn records_table(records: &[Record]) -> Result<DataFrame, AnalysisError> {
    let mut keys: Vec<&String> = Vec::new();
    for (key, _) in records.iter().flatten() {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let columns = keys
        .into_iter()
        .map(|key| {
            let values: Vec<&serde_json::Value> = records
                .iter()
                .map(|r| {
                    r.iter()
                        .find(|(k, _)| k == key)
                        .map_or(&serde_json::Value::Null, |(_, v)| v)
                })
                .collect();
            typed_column(key.as_str().into(), &values)
        })
        .collect();
    DataFrame::new(records.len(), columns)
        .map_err(AnalysisError::polars("building a table from records"))
}

/// [`records_table`] as a table `query` can read.
pub fn records_source(records: &[Record]) -> Result<crate::TableSource, AnalysisError> {
    Ok(crate::TableSource::Frame(Box::new(
        records_table(records)?.lazy(),
    )))
}

/// `sweep`: one row per SAE: `name`, its metrics (each header says its split:
/// quality on test, dead features on train, label information on train), then
/// its sweep coordinates as typed `param_*` columns (in the order the first SAE
/// lists them).
pub fn sweep_table(summaries: &[SaeSummary]) -> Result<DataFrame, AnalysisError> {
    let n = summaries.len();
    let metric = |name: &str, f: &dyn Fn(&SaeSummary) -> f64| {
        Column::new(name.into(), summaries.iter().map(f).collect::<Vec<_>>())
    };
    let count = |name: &str, f: &dyn Fn(&SaeSummary) -> usize| {
        Column::new(
            name.into(),
            summaries.iter().map(|s| f(s) as u32).collect::<Vec<_>>(),
        )
    };
    let mut columns = vec![
        Column::new(
            "name".into(),
            summaries.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        ),
        metric("l0_test", &|s| s.metrics.l0),
        metric("ev_test", &|s| s.metrics.explained_variance),
        metric("mse_test", &|s| s.metrics.mse),
        metric("ce_recovered_test", &|s| s.metrics.ce_recovered),
        metric("spliced_accuracy_test", &|s| s.metrics.spliced_accuracy),
        count("dead_train", &|s| s.metrics.dead),
        count("d_sae", &|s| s.d_sae),
        metric("max_mi_bits_train", &|s| s.features.max_mi_bits),
        metric("max_mi_binned_bits_train", &|s| {
            s.features.max_mi_binned_bits
        }),
        metric("best_detector_f1_train", &|s| {
            s.features.best_detector.as_ref().map_or(0.0, |d| d.1.f1)
        }),
    ];
    // d_sae is a column of its own, above.
    let params: Vec<Record> = summaries
        .iter()
        .map(|s| {
            s.params
                .iter()
                .filter(|(key, _)| *key != "d_sae")
                .map(|(key, value)| (format!("param_{key}"), value.clone()))
                .collect()
        })
        .collect();
    columns.extend(records_table(&params)?.columns().iter().cloned());
    DataFrame::new(n, columns).map_err(AnalysisError::polars("building the sweep table"))
}
