//! Writing one split's layers into safetensors shards, in parallel, each file
//! fsynced and digested as it is written (the data is hashed once, on the way out).

use std::fs::File;
use std::io::Write;
use std::path::Path;

use rayon::prelude::*;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ActivationsError;
use crate::format::{
    encode_header, shard_file_name, LayerInfo, ShardInfo, TensorSpec, FORMAT_TAG, INDEX_TENSOR,
    LABELS_TENSOR,
};

/// One layer's activations for every row of a split, f32 row-major `[rows, width]`.
#[derive(Debug, Clone, Copy)]
pub struct LayerValues<'a> {
    pub name: &'a str,
    pub width: usize,
    pub data: &'a [f32],
}

/// How a split is cut into files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardConfig {
    /// Rows per file; the last file of a split holds the remainder.
    pub rows_per_shard: usize,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            rows_per_shard: 10_000,
        }
    }
}

/// Provenance recorded in every shard's `__metadata__`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// Artifact key of the MLP that produced the activations.
    pub mlp_key: String,
    /// Digest of the dataset the rows come from.
    pub dataset_digest: String,
}

/// Writes rows `0..labels.len()` of `split` as `{split}-{shard:05}.safetensors`
/// files in `out_dir` (created if missing) and returns one [`ShardInfo`] per file,
/// in row order. `index[r]` is the dataset index of row `r` and `labels[r]` its
/// label. Each file is written under a temporary name, fsynced, then renamed.
pub fn write_split(
    out_dir: &Path,
    split: &str,
    layers: &[LayerValues<'_>],
    labels: &[u8],
    index: &[u32],
    cfg: &ShardConfig,
    meta: &ShardMeta,
) -> Result<Vec<ShardInfo>, ActivationsError> {
    let rows = labels.len();
    check_inputs(split, layers, rows, index.len(), cfg)?;
    std::fs::create_dir_all(out_dir)
        .map_err(|e| ActivationsError::io("create directory", out_dir, e))?;

    let shard_count = rows.div_ceil(cfg.rows_per_shard);
    let infos = (0..shard_count)
        .into_par_iter()
        .map(|shard| {
            let row_start = shard * cfg.rows_per_shard;
            let row_end = (row_start + cfg.rows_per_shard).min(rows);
            let shard = ShardRows {
                file: shard_file_name(split, shard),
                split,
                row_start,
                row_end,
            };
            write_shard(out_dir, &shard, layers, labels, index, meta)
        })
        .collect::<Result<Vec<_>, _>>()?;

    sync_dir(out_dir)?;
    Ok(infos)
}

fn check_inputs(
    split: &str,
    layers: &[LayerValues<'_>],
    rows: usize,
    index_len: usize,
    cfg: &ShardConfig,
) -> Result<(), ActivationsError> {
    let invalid = |msg: String| Err(ActivationsError::InvalidInput(msg));
    if split.is_empty()
        || !split
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return invalid(format!(
            "split name `{split}` must be non-empty ASCII letters, digits or `_`"
        ));
    }
    if cfg.rows_per_shard == 0 {
        return invalid("rows_per_shard must be at least 1".into());
    }
    if rows == 0 {
        return invalid(format!("split `{split}` has no rows to write"));
    }
    if u32::try_from(rows).is_err() {
        return invalid(format!(
            "split `{split}` has {rows} rows, more than u32 row indices allow"
        ));
    }
    if index_len != rows {
        return invalid(format!(
            "split `{split}` has {rows} labels but {index_len} dataset indices"
        ));
    }
    if layers.is_empty() {
        return invalid(format!("split `{split}` has no layers to write"));
    }
    for (i, layer) in layers.iter().enumerate() {
        let name = layer.name;
        if name.is_empty()
            || name.contains(',')
            || name == LABELS_TENSOR
            || name == INDEX_TENSOR
            || name == "__metadata__"
        {
            return invalid(format!(
                "layer name `{name}` is not allowed (empty, contains `,`, or reserved)"
            ));
        }
        if layers[..i].iter().any(|other| other.name == name) {
            return invalid(format!("layer `{name}` is given twice"));
        }
        if layer.width == 0 {
            return invalid(format!("layer `{name}` has width 0"));
        }
        if Some(layer.data.len()) != rows.checked_mul(layer.width) {
            return invalid(format!(
                "layer `{name}` has {} values but {rows} rows x width {} need {}",
                layer.data.len(),
                layer.width,
                rows.saturating_mul(layer.width)
            ));
        }
    }
    Ok(())
}

struct ShardRows<'a> {
    file: String,
    split: &'a str,
    row_start: usize,
    row_end: usize,
}

fn write_shard(
    out_dir: &Path,
    shard: &ShardRows<'_>,
    layers: &[LayerValues<'_>],
    labels: &[u8],
    index: &[u32],
    meta: &ShardMeta,
) -> Result<ShardInfo, ActivationsError> {
    let (start, end) = (shard.row_start, shard.row_end);
    let rows = end - start;
    let layer_list = layers.iter().map(|l| l.name).collect::<Vec<_>>().join(",");
    let metadata = [
        ("format", FORMAT_TAG.to_string()),
        ("split", shard.split.to_string()),
        ("row_start", start.to_string()),
        ("row_end", end.to_string()),
        ("layers", layer_list),
        ("mlp_key", meta.mlp_key.clone()),
        ("dataset_digest", meta.dataset_digest.clone()),
    ];

    // F32 layers first, then U32, then U8: every tensor stays aligned to its dtype.
    let mut specs = Vec::with_capacity(layers.len() + 2);
    let mut payloads: Vec<&[u8]> = Vec::with_capacity(layers.len() + 2);
    for layer in layers {
        let data: &[u8] = bytemuck::cast_slice(&layer.data[start * layer.width..end * layer.width]);
        specs.push(TensorSpec {
            name: layer.name,
            dtype: Dtype::F32,
            shape: vec![rows, layer.width],
            byte_len: data.len(),
        });
        payloads.push(data);
    }
    let index_bytes: &[u8] = bytemuck::cast_slice(&index[start..end]);
    specs.push(TensorSpec {
        name: INDEX_TENSOR,
        dtype: Dtype::U32,
        shape: vec![rows],
        byte_len: index_bytes.len(),
    });
    payloads.push(index_bytes);
    specs.push(TensorSpec {
        name: LABELS_TENSOR,
        dtype: Dtype::U8,
        shape: vec![rows],
        byte_len: rows,
    });
    payloads.push(&labels[start..end]);

    let header = encode_header(&metadata, &specs).map_err(|e| {
        ActivationsError::bad_shard(
            out_dir.join(&shard.file),
            format!("its header could not be encoded ({e})"),
        )
    })?;

    let final_path = out_dir.join(&shard.file);
    let temp_path = out_dir.join(format!(".{}.partial", shard.file));
    let mut file =
        File::create(&temp_path).map_err(|e| ActivationsError::io("create", &temp_path, e))?;
    let mut hasher = Sha256::new();
    let mut size_bytes = 0u64;
    for part in std::iter::once(header.as_slice()).chain(payloads) {
        hasher.update(part);
        file.write_all(part)
            .map_err(|e| ActivationsError::io("write", &temp_path, e))?;
        size_bytes += part.len() as u64;
    }
    file.sync_all()
        .map_err(|e| ActivationsError::io("fsync", &temp_path, e))?;
    drop(file);
    std::fs::rename(&temp_path, &final_path)
        .map_err(|e| ActivationsError::io("rename into place", &final_path, e))?;

    Ok(ShardInfo {
        file: shard.file.clone(),
        split: shard.split.to_string(),
        row_start: start,
        row_end: end,
        size_bytes,
        sha256: hex::encode(hasher.finalize()),
        layers: layers
            .iter()
            .map(|l| LayerInfo {
                name: l.name.to_string(),
                width: l.width,
            })
            .collect(),
    })
}

/// Makes the renames durable.
fn sync_dir(dir: &Path) -> Result<(), ActivationsError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ActivationsError::io("fsync directory", dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
