//! The reader: validates every shard against its [`ShardInfo`] with ordinary
//! reads (so a truncated file is refused before it is mapped and can never raise
//! SIGBUS), then memory-maps it and hands out zero-copy layer views.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ActivationsError;
use crate::format::{read_layout, ByteRange, LayerInfo, ShardInfo, ShardLayout};
use crate::writer::ShardMeta;

/// How much of each shard `ActivationStore::open` checks before mapping it.
/// The header, shapes, dtypes and sizes are always checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerifyMode {
    /// Sizes and headers only: cheap, catches truncation and appended bytes.
    #[default]
    Sizes,
    /// Also the SHA-256 of every file (reads every byte once).
    Digests,
}

struct MappedShard {
    file: String,
    row_start: usize,
    row_end: usize,
    layout: ShardLayout,
    map: Mmap,
}

/// A validated, memory-mapped set of shards, one or more splits, all sharing
/// the same layers.
pub struct ActivationStore {
    dir: PathBuf,
    layers: Vec<LayerInfo>,
    splits: BTreeMap<String, Vec<MappedShard>>,
    meta: ShardMeta,
}

impl std::fmt::Debug for ActivationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivationStore")
            .field("dir", &self.dir)
            .field("layers", &self.layers)
            .field("splits", &self.splits.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ActivationStore {
    /// Opens the store an extraction wrote into `dir`, as its `shards.json`
    /// lists it.
    pub fn open_dir(dir: &Path, verify: VerifyMode) -> Result<Self, ActivationsError> {
        let path = dir.join(SHARD_LIST_FILE);
        let text = std::fs::read(&path).map_err(|e| ActivationsError::io("read", &path, e))?;
        let shards: Vec<ShardInfo> =
            serde_json::from_slice(&text).map_err(|e| ActivationsError::BadShardList {
                path: path.clone(),
                problem: e.to_string(),
            })?;
        Self::open(dir, &shards, verify)
    }

    /// Checks the shard list, then every listed file in `dir` against its entry
    /// (existence, exact size, header, dtypes, shapes, metadata, and under
    /// [`VerifyMode::Digests`] the SHA-256), then maps them.
    pub fn open(
        dir: &Path,
        expected: &[ShardInfo],
        verify: VerifyMode,
    ) -> Result<Self, ActivationsError> {
        let layers = check_shard_list(dir, expected)?;
        let mut shards = expected
            .par_iter()
            .map(|info| open_shard(dir, info, verify))
            .collect::<Result<Vec<_>, _>>()?;

        let meta = shard_meta(&shards[0]);
        for shard in &shards[1..] {
            let other = shard_meta(shard);
            if other != meta {
                return Err(ActivationsError::bad_shard(
                    dir.join(&shard.file),
                    format!(
                        "its provenance (mlp_key `{}`, dataset_digest `{}`) differs from {}'s (`{}`, `{}`)",
                        other.mlp_key, other.dataset_digest, shards[0].file, meta.mlp_key, meta.dataset_digest
                    ),
                ));
            }
        }

        let mut splits: BTreeMap<String, Vec<MappedShard>> = BTreeMap::new();
        for (info, shard) in expected.iter().zip(shards.drain(..)) {
            splits.entry(info.split.clone()).or_default().push(shard);
        }
        for split_shards in splits.values_mut() {
            split_shards.sort_by_key(|s| s.row_start);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            layers,
            splits,
            meta,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Split names, sorted.
    pub fn splits(&self) -> Vec<&str> {
        self.splits.keys().map(String::as_str).collect()
    }

    /// Layer names in writer order.
    pub fn layer_names(&self) -> Vec<&str> {
        self.layers.iter().map(|l| l.name.as_str()).collect()
    }

    /// `(layer, width)` in writer order.
    pub fn widths(&self) -> Vec<(&str, usize)> {
        self.layers
            .iter()
            .map(|l| (l.name.as_str(), l.width))
            .collect()
    }

    pub fn layers(&self) -> &[LayerInfo] {
        &self.layers
    }

    /// Provenance shared by every shard.
    pub fn meta(&self) -> &ShardMeta {
        &self.meta
    }

    pub fn rows(&self, split: &str) -> Result<usize, ActivationsError> {
        Ok(self.split_shards(split)?.1.last().map_or(0, |s| s.row_end))
    }

    /// A zero-copy view of layer `name` over every shard of `split`.
    pub fn layer(&self, split: &str, name: &str) -> Result<LayerView<'_>, ActivationsError> {
        let (split, shards) = self.split_shards(split)?;
        let (slot, info) = self
            .layers
            .iter()
            .enumerate()
            .find(|(_, l)| l.name == name)
            .ok_or_else(|| ActivationsError::UnknownLayer {
                layer: name.to_string(),
                available: self.layer_names().join(", "),
            })?;
        let chunks = shards
            .iter()
            .map(|shard| {
                let path = || self.dir.join(&shard.file);
                Ok(ShardChunk {
                    file: &shard.file,
                    row_start: shard.row_start,
                    x: cast(&shard.map, shard.layout.layers[slot], name, path)?,
                    labels: &shard.map[shard.layout.labels.start..shard.layout.labels.end()],
                    indices: cast(&shard.map, shard.layout.index, crate::INDEX_TENSOR, path)?,
                    map: &shard.map,
                })
            })
            .collect::<Result<Vec<_>, ActivationsError>>()?;
        Ok(LayerView {
            split,
            name: &info.name,
            width: info.width,
            rows: shards.last().map_or(0, |s| s.row_end),
            chunks,
        })
    }

    fn split_shards(&self, split: &str) -> Result<(&str, &[MappedShard]), ActivationsError> {
        self.splits
            .get_key_value(split)
            .map(|(name, shards)| (name.as_str(), shards.as_slice()))
            .ok_or_else(|| ActivationsError::UnknownSplit {
                split: split.to_string(),
                available: self.splits().join(", "),
            })
    }
}

fn cast<'a, T: bytemuck::AnyBitPattern>(
    map: &'a Mmap,
    range: ByteRange,
    tensor: &str,
    path: impl Fn() -> PathBuf,
) -> Result<&'a [T], ActivationsError> {
    bytemuck::try_cast_slice(&map[range.start..range.end()]).map_err(|e| {
        ActivationsError::bad_shard(
            path(),
            format!("tensor `{tensor}` cannot be viewed in place ({e})"),
        )
    })
}

fn shard_meta(shard: &MappedShard) -> ShardMeta {
    let get = |key: &str| shard.layout.metadata.get(key).cloned().unwrap_or_default();
    ShardMeta {
        mlp_key: get("mlp_key"),
        dataset_digest: get("dataset_digest"),
    }
}

/// Checks the list itself: plain unique file names, shared layers, and rows of
/// each split that start at 0 and follow on without gaps or overlaps.
fn check_shard_list(
    dir: &Path,
    expected: &[ShardInfo],
) -> Result<Vec<LayerInfo>, ActivationsError> {
    let first = expected.first().ok_or_else(|| {
        ActivationsError::InvalidInput(format!(
            "no shards are listed for the activation store in {}",
            dir.display()
        ))
    })?;
    if first.layers.is_empty() {
        return Err(ActivationsError::bad_shard(
            dir.join(&first.file),
            "its manifest entry lists no layers",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for info in expected {
        let path = dir.join(&info.file);
        let plain = Path::new(&info.file).file_name().and_then(|n| n.to_str()) == Some(&info.file);
        if !plain || !info.file.ends_with(".safetensors") {
            return Err(ActivationsError::bad_shard(
                path,
                "its manifest name is not a plain `.safetensors` file name",
            ));
        }
        if !seen.insert(info.file.as_str()) {
            return Err(ActivationsError::bad_shard(path, "it is listed twice"));
        }
        if info.row_end <= info.row_start {
            return Err(ActivationsError::bad_shard(
                path,
                format!(
                    "its manifest rows {}..{} are empty",
                    info.row_start, info.row_end
                ),
            ));
        }
        if info.layers != first.layers {
            return Err(ActivationsError::bad_shard(
                path,
                format!("its layers differ from those of {}", first.file),
            ));
        }
    }

    let mut by_split: BTreeMap<&str, Vec<&ShardInfo>> = BTreeMap::new();
    for info in expected {
        by_split.entry(&info.split).or_default().push(info);
    }
    for (split, mut infos) in by_split {
        infos.sort_by_key(|i| i.row_start);
        let mut previous: Option<&ShardInfo> = None;
        for info in infos {
            let want = previous.map_or(0, |p| p.row_end);
            if info.row_start != want {
                let after = previous.map_or_else(
                    || format!("the first shard of split `{split}` must start at row 0"),
                    |p| {
                        format!(
                            "the previous shard of split `{split}`, {}, ends at row {}",
                            p.file, p.row_end
                        )
                    },
                );
                return Err(ActivationsError::bad_shard(
                    dir.join(&info.file),
                    format!("it starts at row {} but {after}", info.row_start),
                ));
            }
            previous = Some(info);
        }
    }
    Ok(first.layers.clone())
}

fn open_shard(
    dir: &Path,
    info: &ShardInfo,
    verify: VerifyMode,
) -> Result<MappedShard, ActivationsError> {
    let path = dir.join(&info.file);
    let refuse = |problem: String| ActivationsError::bad_shard(&path, problem);
    let stat = match std::fs::metadata(&path) {
        Ok(stat) => stat,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refuse("it does not exist".into()))
        }
        Err(e) => return Err(ActivationsError::io("inspect", &path, e)),
    };
    if !stat.is_file() {
        return Err(refuse("it is not a regular file".into()));
    }
    if stat.len() != info.size_bytes {
        return Err(refuse(format!(
            "it is {} bytes long but {} are expected (truncated, appended to or replaced)",
            stat.len(),
            info.size_bytes
        )));
    }

    let mut file = File::open(&path).map_err(|e| ActivationsError::io("open", &path, e))?;
    let layout = read_layout(&mut file, stat.len(), info).map_err(&refuse)?;

    if verify == VerifyMode::Digests {
        file.seek(SeekFrom::Start(0))
            .and_then(|_| {
                let mut hasher = Sha256::new();
                std::io::copy(&mut file, &mut hasher)?;
                Ok(hex::encode(hasher.finalize()))
            })
            .map_err(|e| ActivationsError::io("read for its digest", &path, e))
            .and_then(|digest| {
                if digest.eq_ignore_ascii_case(&info.sha256) {
                    Ok(())
                } else {
                    Err(refuse(format!(
                        "its SHA-256 is {digest} but {} is expected",
                        info.sha256
                    )))
                }
            })?;
    }

    // SAFETY: the file's size and header were checked above; shards are
    // write-once artifacts, and the map is read-only.
    let map =
        unsafe { Mmap::map(&file) }.map_err(|e| ActivationsError::io("memory-map", &path, e))?;
    if map.len() as u64 != info.size_bytes {
        return Err(refuse(format!(
            "it changed size to {} bytes while being opened",
            map.len()
        )));
    }
    Ok(MappedShard {
        file: info.file.clone(),
        row_start: info.row_start,
        row_end: info.row_end,
        layout,
        map,
    })
}

/// One shard's part of a layer: rows `row_start..row_start + labels.len()` of the split.
#[derive(Debug, Clone, Copy)]
pub struct ShardChunk<'a> {
    pub file: &'a str,
    pub row_start: usize,
    /// `[rows, width]`, row-major, straight from the map.
    pub x: &'a [f32],
    pub labels: &'a [u8],
    /// Dataset index of each row.
    pub indices: &'a [u32],
    map: &'a Mmap,
}

impl ShardChunk<'_> {
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    /// Drops the pages of `x` from this process's resident set. The data stays
    /// valid: the next read faults the same bytes back in from the page cache.
    /// One-pass scans call this behind their cursor so that their RSS stays
    /// near one shard instead of growing to the whole layer.
    pub fn release(&self) {
        #[cfg(unix)]
        {
            let offset = self.x.as_ptr() as usize - self.map.as_ptr() as usize;
            // SAFETY: the map is a read-only shared mapping of a file nobody
            // writes while it is mapped (artifacts are immutable), so
            // MADV_DONTNEED only unmaps pages; reads through live borrows
            // refault identical bytes. Failure is harmless (pages stay resident).
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    offset,
                    std::mem::size_of_val(self.x),
                )
            };
        }
    }
}

/// Layer `name` of one split, across all its shards, without copying.
/// Row `i` is the split's `i`-th row in dataset order.
#[derive(Debug, Clone)]
pub struct LayerView<'a> {
    split: &'a str,
    name: &'a str,
    width: usize,
    rows: usize,
    chunks: Vec<ShardChunk<'a>>,
}

impl<'a> LayerView<'a> {
    pub fn split(&self) -> &'a str {
        self.split
    }

    pub fn name(&self) -> &'a str {
        self.name
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Which chunk holds row `row`, and the row's position inside it.
    /// Panics if `row >= self.rows()`, like slice indexing.
    pub(crate) fn locate(&self, row: usize) -> (usize, usize) {
        assert!(
            row < self.rows,
            "row {row} is out of range for layer `{}` of split `{}` with {} rows",
            self.name,
            self.split,
            self.rows
        );
        let chunk = self.chunks.partition_point(|c| c.row_start <= row) - 1;
        (chunk, row - self.chunks[chunk].row_start)
    }

    /// Row `row` (`width` values). Panics if out of range.
    pub fn row(&self, row: usize) -> &'a [f32] {
        let (chunk, local) = self.locate(row);
        &self.chunks[chunk].x[local * self.width..(local + 1) * self.width]
    }

    /// Label of row `row`. Panics if out of range.
    pub fn label(&self, row: usize) -> u8 {
        let (chunk, local) = self.locate(row);
        self.chunks[chunk].labels[local]
    }

    /// Dataset index of row `row`. Panics if out of range.
    pub fn dataset_index(&self, row: usize) -> u32 {
        let (chunk, local) = self.locate(row);
        self.chunks[chunk].indices[local]
    }

    /// One contiguous `[rows_in_shard, width]` slice per shard, in row order.
    pub fn shards(&self) -> impl Iterator<Item = &'a [f32]> + '_ {
        self.chunks.iter().map(|c| c.x)
    }

    /// Per-shard slices of values, labels and dataset indices, in row order.
    pub fn chunks(&self) -> &[ShardChunk<'a>] {
        &self.chunks
    }

    /// The whole layer as one owned `[rows, width]` buffer (the only copying
    /// accessor). Each shard's pages are released once copied, so the process
    /// holds the copy, not the copy and the mapped layer.
    pub fn to_vec(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.width);
        for c in &self.chunks {
            out.extend_from_slice(c.x);
            c.release();
        }
        out
    }

    pub fn labels(&self) -> Vec<u8> {
        self.chunks
            .iter()
            .flat_map(|c| c.labels.iter().copied())
            .collect()
    }

    pub fn indices(&self) -> Vec<u32> {
        self.chunks
            .iter()
            .flat_map(|c| c.indices.iter().copied())
            .collect()
    }
}

/// The list of an extraction's shards, written beside them.
pub const SHARD_LIST_FILE: &str = "shards.json";

/// Writes `dir/shards.json`, which [`ActivationStore::open_dir`] reads.
pub fn write_shard_list(dir: &Path, shards: &[ShardInfo]) -> Result<(), ActivationsError> {
    let path = dir.join(SHARD_LIST_FILE);
    let json = serde_json::to_vec_pretty(shards).expect("a shard list serialises");
    std::fs::write(&path, json).map_err(|e| ActivationsError::io("write", &path, e))
}
