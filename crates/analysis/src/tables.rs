//! The polars tables of one SAE and their parquet files.

use std::fs::File;
use std::path::Path;

use polars::prelude::*;
use rayon::prelude::*;

use crate::stats::{UnitCounts, UnitStats, CLASSES};
use crate::AnalysisError;

/// `features` / `neurons`: one row per unit. `id_column` names the unit column
/// (`feature` or `neuron`); `decoder_norms`, when given, adds `decoder_norm`.
pub fn unit_table(
    id_column: &str,
    stats: &[UnitStats],
    decoder_norms: Option<&[f64]>,
) -> Result<DataFrame, AnalysisError> {
    let mut columns = vec![
        Column::new(
            id_column.into(),
            stats.iter().map(|s| s.unit as u32).collect::<Vec<_>>(),
        ),
        Column::new(
            "freq_train".into(),
            stats.iter().map(|s| s.freq_train).collect::<Vec<_>>(),
        ),
        Column::new(
            "freq_test".into(),
            stats.iter().map(|s| s.freq_test).collect::<Vec<_>>(),
        ),
        Column::new(
            "dead".into(),
            stats.iter().map(|s| s.dead).collect::<Vec<_>>(),
        ),
        Column::new(
            "mean_act".into(),
            stats.iter().map(|s| s.mean_act).collect::<Vec<_>>(),
        ),
        Column::new(
            "max_act".into(),
            stats.iter().map(|s| s.max_act).collect::<Vec<_>>(),
        ),
    ];
    if let Some(norms) = decoder_norms {
        columns.push(Column::new("decoder_norm".into(), norms.to_vec()));
    }
    columns.extend([
        Column::new(
            "mi_bits".into(),
            stats.iter().map(|s| s.mi_bits).collect::<Vec<_>>(),
        ),
        Column::new(
            "mi_binned_bits".into(),
            stats.iter().map(|s| s.mi_binned_bits).collect::<Vec<_>>(),
        ),
        Column::new(
            "h_y_given_on_bits".into(),
            stats
                .iter()
                .map(|s| s.h_y_given_on_bits)
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "purity".into(),
            stats.iter().map(|s| s.purity).collect::<Vec<_>>(),
        ),
        Column::new(
            "top_label".into(),
            stats.iter().map(|s| s.top_label).collect::<Vec<_>>(),
        ),
    ]);
    let detector = |f: fn(&crate::labelinfo::Detector) -> f64| -> Vec<Option<f64>> {
        stats.iter().map(|s| s.detector.as_ref().map(f)).collect()
    };
    columns.extend([
        Column::new(
            "detector_class".into(),
            stats
                .iter()
                .map(|s| s.detector.as_ref().map(|d| d.class))
                .collect::<Vec<_>>(),
        ),
        Column::new("detector_precision".into(), detector(|d| d.precision)),
        Column::new("detector_recall".into(), detector(|d| d.recall)),
        Column::new("detector_f1".into(), detector(|d| d.f1)),
        Column::new("detector_auroc".into(), detector(|d| d.auroc)),
    ]);
    DataFrame::new(stats.len(), columns).map_err(AnalysisError::polars(format!(
        "building the {id_column} table"
    )))
}

/// `feature_labels`: one row per (feature, label) with the active-row count and
/// the mean activation over those rows (null when the count is 0).
pub fn feature_label_table(counts: &UnitCounts) -> Result<DataFrame, AnalysisError> {
    let n = counts.width * CLASSES;
    let (mut feature, mut label, mut count, mut mean) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for f in 0..counts.width {
        let (active, sums) = (counts.active_of(f), counts.sums_of(f));
        for y in 0..CLASSES {
            feature.push(f as u32);
            label.push(y as u8);
            count.push(active[y]);
            mean.push((active[y] > 0).then(|| sums[y] / active[y] as f64));
        }
    }
    DataFrame::new(
        n,
        vec![
            Column::new("feature".into(), feature),
            Column::new("label".into(), label),
            Column::new("count".into(), count),
            Column::new("mean_act".into(), mean),
        ],
    )
    .map_err(AnalysisError::polars("building the feature_labels table"))
}

/// The non-zeros of a dense `[rows, width]` matrix in row order: (row, unit, value).
pub struct SparseActs {
    pub row: Vec<u32>,
    pub unit: Vec<u32>,
    pub value: Vec<f32>,
}

impl SparseActs {
    pub fn from_dense(values: &[f32], width: usize) -> SparseActs {
        const CHUNK_ROWS: usize = 2048;
        let parts: Vec<SparseActs> = values
            .par_chunks(CHUNK_ROWS * width)
            .enumerate()
            .map(|(chunk, block)| {
                let mut part = SparseActs {
                    row: Vec::new(),
                    unit: Vec::new(),
                    value: Vec::new(),
                };
                for (r, row) in block.chunks_exact(width).enumerate() {
                    let row_index = (chunk * CHUNK_ROWS + r) as u32;
                    for (u, &v) in row.iter().enumerate() {
                        if v > 0.0 {
                            part.row.push(row_index);
                            part.unit.push(u as u32);
                            part.value.push(v);
                        }
                    }
                }
                part
            })
            .collect();
        let total = parts.iter().map(|p| p.row.len()).sum();
        let mut out = SparseActs {
            row: Vec::with_capacity(total),
            unit: Vec::with_capacity(total),
            value: Vec::with_capacity(total),
        };
        for p in parts {
            out.row.extend(p.row);
            out.unit.extend(p.unit);
            out.value.extend(p.value);
        }
        out
    }

    /// From an SAE's sparse codes (rows in order), keeping the positive values.
    pub fn from_codes(codes: &sae::SparseCodes) -> SparseActs {
        let mut out = SparseActs {
            row: Vec::with_capacity(codes.value.len()),
            unit: Vec::with_capacity(codes.value.len()),
            value: Vec::with_capacity(codes.value.len()),
        };
        for (r, bounds) in codes.row_start.windows(2).enumerate() {
            for e in bounds[0]..bounds[1] {
                if codes.value[e] > 0.0 {
                    out.row.push(r as u32);
                    out.unit.push(codes.feature[e]);
                    out.value.push(codes.value[e]);
                }
            }
        }
        out
    }

    /// `(row, value)` of every entry of `unit`, in row order.
    pub fn column(&self, unit: usize) -> Vec<(usize, f32)> {
        self.unit
            .iter()
            .zip(&self.row)
            .zip(&self.value)
            .filter(|((&u, _), _)| u as usize == unit)
            .map(|((_, &r), &v)| (r as usize, v))
            .collect()
    }

    /// Every unit's `(row, value)` non-zeros in row order: [`Self::column`]
    /// for all `width` units in one pass.
    pub fn columns(&self, width: usize) -> Vec<Vec<(u32, f32)>> {
        // Each column's exact size first: no room left over from doubling.
        let mut sizes = vec![0usize; width];
        self.unit.iter().for_each(|&u| sizes[u as usize] += 1);
        let mut columns: Vec<Vec<(u32, f32)>> = sizes.into_iter().map(Vec::with_capacity).collect();
        for ((&u, &r), &v) in self.unit.iter().zip(&self.row).zip(&self.value) {
            columns[u as usize].push((r, v));
        }
        columns
    }

    pub fn len(&self) -> usize {
        self.row.len()
    }

    pub fn is_empty(&self) -> bool {
        self.row.is_empty()
    }
}

/// `feature_acts` for one split: split, row (dataset index), label, feature, value.
pub fn feature_acts_table(
    split: &str,
    acts: &SparseActs,
    labels: &[u8],
) -> Result<DataFrame, AnalysisError> {
    let n = acts.len();
    DataFrame::new(
        n,
        vec![
            Column::new_scalar("split".into(), Scalar::from(PlSmallStr::from(split)), n),
            Column::new("row".into(), acts.row.clone()),
            Column::new(
                "label".into(),
                acts.row
                    .iter()
                    .map(|&r| labels[r as usize])
                    .collect::<Vec<u8>>(),
            ),
            Column::new("feature".into(), acts.unit.clone()),
            Column::new("value".into(), acts.value.clone()),
        ],
    )
    .map_err(AnalysisError::polars("building the feature_acts table"))
}

/// Writes `df` to `path` as zstd-compressed parquet.
pub fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<(), AnalysisError> {
    let file = File::create(path).map_err(AnalysisError::io(path))?;
    ParquetWriter::new(file)
        .with_compression(ParquetCompression::Zstd(None))
        .finish(df)
        .map_err(AnalysisError::polars(format!("writing {}", path.display())))?;
    Ok(())
}

/// Reads a parquet file eagerly (for tests and callers that want the table back).
pub fn read_parquet(path: &Path) -> Result<DataFrame, AnalysisError> {
    let file = File::open(path).map_err(AnalysisError::io(path))?;
    ParquetReader::new(file)
        .finish()
        .map_err(AnalysisError::polars(format!("reading {}", path.display())))
}
