//! Mini-batches over one layer for trainers: sequential or shuffled (a fresh,
//! reproducible permutation per epoch), optionally over a subset of rows.

use std::borrow::Cow;
use std::ops::Range;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::ActivationsError;
use crate::store::LayerView;

/// Row order within an epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Order {
    /// Rows in split order (or in the order of the subset).
    #[default]
    Sequential,
    /// A permutation drawn from ChaCha8 seeded with `seed`, stream = epoch number.
    Shuffled { seed: u64 },
}

/// What happens to the final batch when the epoch's rows do not divide evenly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LastBatch {
    /// Yield it, smaller than `batch_size`.
    #[default]
    Keep,
    /// Skip it, so every batch has exactly `batch_size` rows.
    Drop,
}

/// What happens to the pages of the memory map once an epoch has read them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Residency {
    /// Leave them mapped: right for trainers, which read the layer every epoch.
    #[default]
    Keep,
    /// Release each shard's pages once the epoch is past it (sequential order
    /// without a subset), and all of them when the epoch ends. A one-pass scan
    /// then holds about one shard resident, not the whole layer.
    ReleaseBehind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchConfig {
    pub batch_size: usize,
    pub order: Order,
    /// Rows (positions within the split) to iterate instead of all of them; no repeats.
    pub rows: Option<Vec<u32>>,
    pub last_batch: LastBatch,
    pub residency: Residency,
}

impl BatchConfig {
    pub fn sequential(batch_size: usize) -> Self {
        Self {
            batch_size,
            order: Order::Sequential,
            rows: None,
            last_batch: LastBatch::Keep,
            residency: Residency::Keep,
        }
    }

    pub fn shuffled(batch_size: usize, seed: u64) -> Self {
        Self {
            order: Order::Shuffled { seed },
            ..Self::sequential(batch_size)
        }
    }
}

/// Rows `[len, width]` of one layer. Each field borrows from the memory map when
/// the batch is a run of consecutive rows inside one shard, and is copied otherwise.
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    /// `[len, width]`, row-major.
    pub x: Cow<'a, [f32]>,
    pub labels: Cow<'a, [u8]>,
    /// Dataset index of each row.
    pub indices: Cow<'a, [u32]>,
    pub width: usize,
}

impl Batch<'_> {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Whether `x` points straight into the memory map.
    pub fn is_borrowed(&self) -> bool {
        matches!(self.x, Cow::Borrowed(_))
    }

    /// `x` as an f32 tensor `[len, width]` on `device` (one copy).
    #[cfg(feature = "candle")]
    pub fn to_tensor(
        &self,
        device: &candle_core::Device,
    ) -> Result<candle_core::Tensor, ActivationsError> {
        Ok(candle_core::Tensor::from_slice(
            &self.x,
            (self.len(), self.width),
            device,
        )?)
    }
}

/// Batches of one layer view; `epoch(e)` yields epoch `e`'s batches.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    view: LayerView<'a>,
    batch_size: usize,
    order: Order,
    subset: Option<Vec<u32>>,
    last_batch: LastBatch,
    residency: Residency,
}

impl<'a> BatchIter<'a> {
    pub fn new(view: &LayerView<'a>, cfg: &BatchConfig) -> Result<Self, ActivationsError> {
        let invalid = |msg: String| Err(ActivationsError::InvalidInput(msg));
        if cfg.batch_size == 0 {
            return invalid("batch_size must be at least 1".into());
        }
        if let Some(rows) = &cfg.rows {
            if rows.is_empty() {
                return invalid(format!(
                    "the row subset for layer `{}` of split `{}` is empty",
                    view.name(),
                    view.split()
                ));
            }
            let mut seen = vec![false; view.rows()];
            for &row in rows {
                let slot = seen.get_mut(row as usize).ok_or_else(|| {
                    ActivationsError::InvalidInput(format!(
                        "subset row {row} is out of range for split `{}` with {} rows",
                        view.split(),
                        view.rows()
                    ))
                })?;
                if std::mem::replace(slot, true) {
                    return invalid(format!("subset row {row} appears more than once"));
                }
            }
        }
        Ok(Self {
            view: view.clone(),
            batch_size: cfg.batch_size,
            order: cfg.order,
            subset: cfg.rows.clone(),
            last_batch: cfg.last_batch,
            residency: cfg.residency,
        })
    }

    pub fn view(&self) -> &LayerView<'a> {
        &self.view
    }

    pub fn rows_per_epoch(&self) -> usize {
        self.subset.as_ref().map_or(self.view.rows(), Vec::len)
    }

    pub fn batches_per_epoch(&self) -> usize {
        let rows = self.rows_per_epoch();
        match self.last_batch {
            LastBatch::Keep => rows.div_ceil(self.batch_size),
            LastBatch::Drop => rows / self.batch_size,
        }
    }

    /// Epoch `epoch`'s batches. Shuffled order depends only on (seed, epoch).
    pub fn epoch(&self, epoch: u64) -> EpochBatches<'_, 'a> {
        let positions = match (self.order, &self.subset) {
            (Order::Sequential, None) => None,
            (Order::Sequential, Some(rows)) => Some(Cow::Borrowed(rows.as_slice())),
            (Order::Shuffled { seed }, subset) => {
                let mut rows = match subset {
                    Some(rows) => rows.clone(),
                    None => (0..self.view.rows() as u32).collect(),
                };
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(epoch);
                rows.shuffle(&mut rng);
                Some(Cow::Owned(rows))
            }
        };
        EpochBatches {
            batches: self,
            positions,
            next: 0,
            count: self.batches_per_epoch(),
            released: 0,
        }
    }
}

/// The batches of one epoch, in order.
#[derive(Debug)]
pub struct EpochBatches<'s, 'a> {
    batches: &'s BatchIter<'a>,
    /// `None` means all rows in split order.
    positions: Option<Cow<'s, [u32]>>,
    next: usize,
    count: usize,
    /// Chunks already released under [`Residency::ReleaseBehind`].
    released: usize,
}

impl EpochBatches<'_, '_> {
    /// Under [`Residency::ReleaseBehind`], releases every chunk before `chunk`.
    fn release_before(&mut self, chunk: usize) {
        if self.batches.residency != Residency::ReleaseBehind {
            return;
        }
        let chunks = self.batches.view.chunks();
        let end = chunk.min(chunks.len());
        for c in chunks.get(self.released..end).unwrap_or_default() {
            c.release();
        }
        self.released = self.released.max(end);
    }
}

impl<'a> Iterator for EpochBatches<'_, 'a> {
    type Item = Batch<'a>;

    fn next(&mut self) -> Option<Batch<'a>> {
        if self.next >= self.count {
            self.release_before(usize::MAX);
            return None;
        }
        let size = self.batches.batch_size;
        let lo = self.next * size;
        let hi = (lo + size).min(self.batches.rows_per_epoch());
        self.next += 1;
        if self.positions.is_none() {
            let (chunk, _) = self.batches.view.locate(lo);
            self.release_before(chunk);
        }
        let view = &self.batches.view;
        Some(match &self.positions {
            None => range_batch(view, lo..hi),
            Some(positions) => {
                let rows = &positions[lo..hi];
                let consecutive = rows.windows(2).all(|w| w[1] == w[0] + 1);
                if consecutive {
                    let start = rows[0] as usize;
                    range_batch(view, start..start + rows.len())
                } else {
                    gather_batch(view, rows)
                }
            }
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.count - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for EpochBatches<'_, '_> {}

/// Consecutive rows: borrowed if they lie in one shard, else one copy per shard piece.
fn range_batch<'a>(view: &LayerView<'a>, rows: Range<usize>) -> Batch<'a> {
    let width = view.width();
    let (first, first_local) = view.locate(rows.start);
    let (last, _) = view.locate(rows.end - 1);
    let chunks = view.chunks();
    if first == last {
        let c = &chunks[first];
        let local = first_local..first_local + rows.len();
        return Batch {
            x: Cow::Borrowed(&c.x[local.start * width..local.end * width]),
            labels: Cow::Borrowed(&c.labels[local.clone()]),
            indices: Cow::Borrowed(&c.indices[local]),
            width,
        };
    }
    let mut x = Vec::with_capacity(rows.len() * width);
    let mut labels = Vec::with_capacity(rows.len());
    let mut indices = Vec::with_capacity(rows.len());
    for c in &chunks[first..=last] {
        let lo = rows.start.max(c.row_start) - c.row_start;
        let hi = rows.end.min(c.row_start + c.rows()) - c.row_start;
        x.extend_from_slice(&c.x[lo * width..hi * width]);
        labels.extend_from_slice(&c.labels[lo..hi]);
        indices.extend_from_slice(&c.indices[lo..hi]);
    }
    Batch {
        x: Cow::Owned(x),
        labels: Cow::Owned(labels),
        indices: Cow::Owned(indices),
        width,
    }
}

fn gather_batch<'a>(view: &LayerView<'a>, rows: &[u32]) -> Batch<'a> {
    let width = view.width();
    let chunks = view.chunks();
    let mut x = Vec::with_capacity(rows.len() * width);
    let mut labels = Vec::with_capacity(rows.len());
    let mut indices = Vec::with_capacity(rows.len());
    for &row in rows {
        let (chunk, local) = view.locate(row as usize);
        let c = &chunks[chunk];
        x.extend_from_slice(&c.x[local * width..(local + 1) * width]);
        labels.push(c.labels[local]);
        indices.push(c.indices[local]);
    }
    Batch {
        x: Cow::Owned(x),
        labels: Cow::Owned(labels),
        indices: Cow::Owned(indices),
        width,
    }
}
