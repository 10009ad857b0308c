//! `activations` owns the on-disk cache of MLP activations: it writes named layers
//! (`fc1.pre`, `fc1.post`, `fc2.pre`, `fc2.post`, `logits`, or any others) of one
//! dataset split into safetensors shards, and reads them back through validated,
//! memory-mapped, zero-copy views and batch iterators for SAE trainers. Every row
//! keeps its dataset index and label, in dataset order. It must not depend on
//! polars, candle-nn or the `mlp` crate, and it knows nothing about caching:
//! the runner decides where shards live and records the returned [`ShardInfo`]s.
//!
//! Shard layout (`{split}-{shard:05}.safetensors`): one F32 tensor per layer,
//! `[rows_in_shard, width]`, in the caller's layer order, then `index` (U32,
//! dataset row index) and `labels` (U8). The JSON header is padded to a multiple
//! of 8 bytes, so every F32 and U32 tensor starts 4-byte aligned in the file and
//! in its memory map. `__metadata__` holds `format`, `split`, `row_start`,
//! `row_end`, `layers` (comma list, writer order), `mlp_key` and `dataset_digest`.

#[cfg(target_endian = "big")]
compile_error!(
    "safetensors data is little-endian; the zero-copy reader assumes a little-endian host"
);

mod batch;
mod error;
mod format;
mod store;
mod writer;

pub use batch::{Batch, BatchConfig, BatchIter, EpochBatches, LastBatch, Order, Residency};
pub use error::ActivationsError;
pub use format::{shard_file_name, LayerInfo, ShardInfo, INDEX_TENSOR, LABELS_TENSOR};
pub use store::{
    write_shard_list, ActivationStore, LayerView, ShardChunk, VerifyMode, SHARD_LIST_FILE,
};
pub use writer::{write_split, LayerValues, ShardConfig, ShardMeta};
