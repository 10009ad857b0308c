//! The content-addressed artifact store and the generic stage runner.
//!
//! This crate owns where artifacts live, what makes one exist, and when one is
//! stale. An artifact is `<root>/<stage>/<key>/` holding the stage's files and
//! a `manifest.json` written last; the key hashes the stage name, the stage's
//! code fingerprint, its canonical params and the keys of its inputs. Invariants:
//! an artifact without a valid manifest whose files match does not exist; a stage
//! writes into a staging folder that is renamed into place, so a killed process
//! never leaves a half artifact that counts; one key is built by one process at a
//! time (a file lock), and the loser of the race finds the work done.
//! It must not know what any stage means: stages are trait objects to it.

mod graph;
mod integrity;
mod key;
mod manifest;
mod store;

pub use graph::{
    Event, Graph, Outcome, Planned, RunOptions, Stage, StageError, StageInputs, State,
};
pub use key::{Key, KeySpec};
pub use manifest::{FileEntry, Manifest};
pub use store::{
    folder_bytes, remove_own_staging, sha256_file, try_remove_own_staging, write_durably, Check,
    GcOptions, GcReport, KeyLock, Store, StoreError, UseLock, Verify, MANIFEST,
};

/// saelab's version, recorded in every manifest.
pub const SAELAB_VERSION: &str = env!("CARGO_PKG_VERSION");
