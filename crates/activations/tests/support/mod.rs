//! The one test helper: a synthetic store whose every value is a known function
//! of (split, row, unit, layer), mirrored in `check_shards.py`.
#![allow(dead_code)]

use activations::{write_split, LayerValues, ShardConfig, ShardInfo, ShardMeta};

/// Layer names and widths of the synthetic store, in writer order.
pub const LAYERS: [(&str, usize); 3] = [("fc1.pre", 8), ("fc2.post", 5), ("logits", 3)];

pub fn split_salt(split: &str) -> usize {
    split.bytes().map(usize::from).sum::<usize>() % 97
}

/// Exactly representable in f32, so Rust and numpy agree bit for bit.
pub fn value(split: &str, row: usize, unit: usize, layer: usize) -> f32 {
    let k = (row * 131 + unit * 7 + layer * 1009 + split_salt(split) * 17) % 4099;
    k as f32 * 0.25 - 500.0
}

pub fn label(row: usize) -> u8 {
    ((row * 7 + 3) % 10) as u8
}

pub fn dataset_index(row: usize) -> u32 {
    (row * 3 + 1) as u32
}

pub fn meta() -> ShardMeta {
    ShardMeta {
        mlp_key: "mlp-test-key".into(),
        dataset_digest: "dataset-test-digest".into(),
    }
}

pub struct Synthetic {
    pub dir: tempfile::TempDir,
    pub shards: Vec<ShardInfo>,
}

impl Synthetic {
    pub fn path(&self, shard: usize) -> std::path::PathBuf {
        self.dir.path().join(&self.shards[shard].file)
    }
}

/// Writes every `(split, rows)` with `rows_per_shard` into a fresh tempdir.
pub fn build_store(splits: &[(&str, usize)], rows_per_shard: usize) -> Synthetic {
    let dir = tempfile::tempdir().unwrap();
    let mut shards = Vec::new();
    for &(split, rows) in splits {
        let data: Vec<Vec<f32>> = LAYERS
            .iter()
            .enumerate()
            .map(|(layer, &(_, width))| {
                (0..rows * width)
                    .map(|i| value(split, i / width, i % width, layer))
                    .collect()
            })
            .collect();
        let layers: Vec<LayerValues<'_>> = LAYERS
            .iter()
            .zip(&data)
            .map(|(&(name, width), data)| LayerValues { name, width, data })
            .collect();
        let labels: Vec<u8> = (0..rows).map(label).collect();
        let index: Vec<u32> = (0..rows).map(dataset_index).collect();
        let cfg = ShardConfig { rows_per_shard };
        shards.extend(
            write_split(dir.path(), split, &layers, &labels, &index, &cfg, &meta()).unwrap(),
        );
    }
    Synthetic { dir, shards }
}
