//! SQL over the analysis tables and the cached activations (polars SQL).

use std::path::{Path, PathBuf};

use polars::prelude::*;
use polars::sql::SQLContext;

use crate::AnalysisError;

/// Where a queryable table comes from.
#[derive(Clone)]
pub enum TableSource {
    Frame(Box<LazyFrame>),
    Parquet(PathBuf),
}

impl TableSource {
    fn lazy(&self) -> Result<LazyFrame, AnalysisError> {
        match self {
            TableSource::Frame(lf) => Ok((**lf).clone()),
            TableSource::Parquet(path) => {
                if !path.is_file() {
                    return Err(AnalysisError::Input(format!(
                        "table file {} does not exist",
                        path.display()
                    )));
                }
                // Read eagerly: the tables are small, and it keeps polars' streaming
                // engine (and the cloud stack it pulls in) out of the build.
                Ok(crate::tables::read_parquet(path)?.lazy())
            }
        }
    }
}

/// How [`query`] returns its result.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputFormat {
    /// Aligned text, every row up to [`crate::text_table::TABLE_ROWS`], saying so when cut.
    Table,
    Csv,
    /// Written to this file; the returned text says where and how many rows.
    Parquet(PathBuf),
}

/// Each table's name and its columns with types, one short line per table:
/// numbered columns of one type collapse (`u0..u127: f32`).
fn describe(tables: &[(String, LazyFrame)]) -> String {
    tables
        .iter()
        .map(|(name, lf)| {
            let columns = match lf.clone().collect_schema() {
                Ok(schema) => {
                    let named: Vec<(String, String)> = schema
                        .iter()
                        .map(|(c, t)| (c.to_string(), t.to_string()))
                        .collect();
                    collapse_numbered(&named).join(", ")
                }
                Err(e) => format!("(schema unavailable: {e})"),
            };
            format!("  {name}({columns})")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `name: type` for each column, with runs like `u0, u1, ... u127` of one type
/// written `u0..u127: type`.
fn collapse_numbered(columns: &[(String, String)]) -> Vec<String> {
    let split = |name: &str| -> Option<(String, u64)> {
        let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        (digits > 0 && digits < name.len())
            .then(|| {
                (
                    name[..name.len() - digits].to_string(),
                    name[name.len() - digits..].parse().ok(),
                )
            })
            .and_then(|(p, n)| n.map(|n| (p, n)))
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < columns.len() {
        let (name, dtype) = &columns[i];
        let mut j = i + 1;
        if let Some((prefix, first)) = split(name) {
            while j < columns.len()
                && columns[j].1 == *dtype
                && split(&columns[j].0) == Some((prefix.clone(), first + (j - i) as u64))
            {
                j += 1;
            }
        }
        if j - i > 2 {
            out.push(format!("{name}..{}: {dtype}", columns[j - 1].0));
        } else {
            j = i + 1;
            out.push(format!("{name}: {dtype}"));
        }
        i = j;
    }
    out
}

/// Runs `sql` over `tables` (registered under their names). A query polars
/// rejects returns its message plus every table with its columns.
pub fn query(
    sql: &str,
    tables: &[(String, TableSource)],
    format: &OutputFormat,
) -> Result<String, AnalysisError> {
    let frames = tables
        .iter()
        .map(|(name, source)| Ok((name.clone(), source.lazy()?)))
        .collect::<Result<Vec<_>, AnalysisError>>()?;
    let mut ctx = SQLContext::new();
    for (name, lf) in &frames {
        ctx.register(name, lf.clone());
    }
    let rejected = |e: PolarsError| AnalysisError::Query {
        message: e.to_string(),
        tables: describe(&frames),
    };
    let mut df = ctx
        .execute(sql)
        .and_then(|lf| lf.collect())
        .map_err(rejected)?;
    match format {
        OutputFormat::Table => Ok(crate::text_table::text_table(
            &df,
            crate::text_table::TABLE_ROWS,
        )),
        OutputFormat::Csv => {
            let mut buffer = Vec::new();
            CsvWriter::new(&mut buffer)
                .finish(&mut df)
                .map_err(AnalysisError::polars("writing the query result as CSV"))?;
            Ok(String::from_utf8_lossy(&buffer).into_owned())
        }
        OutputFormat::Parquet(path) => {
            crate::tables::write_parquet(&mut df, path)?;
            Ok(format!("wrote {} rows to {}", df.height(), path.display()))
        }
    }
}

/// Name of the table of `layer` activations on `split`: `act_<split>_<layer>`
/// with dots as underscores, e.g. `act_train_fc2_pre`.
pub fn activation_table_name(split: &str, layer: &str) -> String {
    format!("act_{split}_{}", layer.replace(['.', '-'], "_"))
}

/// One layer's activations on one split as a table: `dataset_index`,
/// `label`, then one f32 column per unit (`u0`, `u1`, ...).
pub fn activation_frame(view: &activations::LayerView) -> Result<DataFrame, AnalysisError> {
    let (rows, width) = (view.rows(), view.width());
    let mut columns = Vec::with_capacity(width + 2);
    columns.push(Column::new("dataset_index".into(), view.indices()));
    columns.push(Column::new("label".into(), view.labels()));
    let mut units: Vec<Vec<f32>> = (0..width).map(|_| Vec::with_capacity(rows)).collect();
    for r in 0..rows {
        for (column, &v) in units.iter_mut().zip(view.row(r)) {
            column.push(v);
        }
    }
    columns.extend(
        units
            .into_iter()
            .enumerate()
            .map(|(u, values)| Column::new(format!("u{u}").into(), values)),
    );
    DataFrame::new(rows, columns).map_err(AnalysisError::polars(format!(
        "building the {} table",
        activation_table_name(view.split(), view.name())
    )))
}

/// Every (split, layer) of an activation store as a queryable table.
pub fn activation_tables(
    store: &activations::ActivationStore,
) -> Result<Vec<(String, TableSource)>, AnalysisError> {
    let mut out = Vec::new();
    for split in store.splits() {
        for layer in store.layer_names() {
            let view = store.layer(split, layer)?;
            out.push((
                activation_table_name(split, layer),
                TableSource::Frame(Box::new(activation_frame(&view)?.lazy())),
            ));
        }
    }
    Ok(out)
}

/// The parquet tables in an analysis folder (SAE folder or report folder), named by file stem.
pub fn folder_tables(dir: &Path) -> Result<Vec<(String, TableSource)>, AnalysisError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(AnalysisError::io(dir))? {
        let path = entry.map_err(AnalysisError::io(dir))?.path();
        if path.extension().is_some_and(|e| e == "parquet") {
            if let Some(stem) = path.file_stem() {
                out.push((
                    stem.to_string_lossy().to_string(),
                    TableSource::Parquet(path.clone()),
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The tables of a report folder for queries: its own (`sweep`), and each
/// per-SAE table (`features`, `feature_labels`, `feature_acts`, `neurons`,
/// `probes`) as one table over every SAE of the sweep, with an `sae` column
/// naming the SAE's folder.
pub fn report_tables(dir: &Path) -> Result<Vec<(String, TableSource)>, AnalysisError> {
    let mut out = folder_tables(dir)?;
    let mut saes: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(AnalysisError::io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("summary.json").is_file())
        .collect();
    saes.sort();
    let mut by_table: std::collections::BTreeMap<String, Vec<LazyFrame>> = Default::default();
    for sae_dir in &saes {
        let name = sae_dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        for (table, source) in folder_tables(sae_dir)? {
            by_table
                .entry(table)
                .or_default()
                .push(source.lazy()?.with_column(lit(name.clone()).alias("sae")));
        }
    }
    for (table, frames) in by_table {
        // Collected once: polars 0.55's SQL count(*) fails on a lazy union.
        let all = concat(frames, UnionArgs::default())
            .and_then(|lf| lf.collect())
            .map_err(|e| AnalysisError::Input(format!("table {table}: {e}")))?;
        out.push((table, TableSource::Frame(Box::new(all.lazy()))));
    }
    Ok(out)
}
