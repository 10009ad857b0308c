//! The crate's one error type; every message is a single sentence naming the
//! file, split, layer or value at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ActivationsError {
    /// A caller passed inconsistent arguments (writer inputs, batch config).
    #[error("{0}")]
    InvalidInput(String),
    /// A shard on disk, or its manifest entry, fails validation.
    #[error("shard {path} is refused: {problem}")]
    BadShard { path: PathBuf, problem: String },
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The shard list beside the shards does not parse.
    #[error("{path}: not a shard list saelab wrote: {problem}")]
    BadShardList { path: PathBuf, problem: String },
    #[error("unknown split `{split}`; the store holds: {available}")]
    UnknownSplit { split: String, available: String },
    #[error("unknown layer `{layer}`; the store holds: {available}")]
    UnknownLayer { layer: String, available: String },
    #[cfg(feature = "candle")]
    #[error("could not turn a batch into a candle tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ActivationsError {
    pub(crate) fn bad_shard(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Self::BadShard {
            path: path.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
