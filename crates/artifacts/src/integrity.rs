//! Whether an artifact's files still hold the bytes its manifest recorded,
//! cheaply enough to ask on every run.
//!
//! Hashing every file on every `cargo xtask all` would cost seconds, so, as
//! git's index does, the store keeps a *stat stamp* per artifact beside it
//! (`.stamps/<kind>-<key>.json`: size, mtime, ctime and inode of each file)
//! taken when the files were last hashed and matched. A file whose stat still
//! matches its stamp is trusted; any other is re-hashed against the manifest.
//! Writing a file in place changes its ctime (which no user call can set
//! back), so any write since the last hash is caught. Bit rot under an
//! unchanged stat is what `verify` (every file re-hashed) is for.
//!
//! An artifact found corrupt another way (by `verify`, or because a stage
//! failed reading it) gets a *mark* (`.invalid/<kind>-<key>`) holding the
//! reason; a marked artifact is stale until it is rebuilt. Stamps and marks
//! are written best-effort: a read-only store is re-hashed each time instead.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::write_durably;
use crate::FileEntry;

pub(crate) const STAMPS: &str = ".stamps";
pub(crate) const MARKS: &str = ".invalid";

/// What `stat` says about one file; equal stamps mean "not written since".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileStamp {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub inode: u64,
}

impl FileStamp {
    pub fn of(dir: &Path, path: &str) -> Option<FileStamp> {
        let meta = fs::metadata(dir.join(path)).ok()?;
        #[cfg(unix)]
        let (ctime_ns, inode) = {
            use std::os::unix::fs::MetadataExt;
            (
                meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
                meta.ino(),
            )
        };
        #[cfg(not(unix))]
        let (ctime_ns, inode) = (0, 0);
        let mtime_ns = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos() as i128;
        Some(FileStamp {
            path: path.to_string(),
            size: meta.len(),
            mtime_ns,
            ctime_ns,
            inode,
        })
    }
}

/// The bookkeeping file for `kind`/`key` in folder `folder` of the store.
pub(crate) fn side_file(root: &Path, folder: &str, kind: &str, key: &str) -> PathBuf {
    root.join(folder).join(format!("{kind}-{key}"))
}

pub(crate) fn read_stamps(path: &Path) -> Vec<FileStamp> {
    fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Records the current stat of every listed file; failures only cost a re-hash later.
pub(crate) fn write_stamps(path: &Path, dir: &Path, files: &[FileEntry]) {
    let stamps: Option<Vec<FileStamp>> =
        files.iter().map(|f| FileStamp::of(dir, &f.path)).collect();
    let (Some(stamps), Some(parent)) = (stamps, path.parent()) else {
        return;
    };
    if fs::create_dir_all(parent).is_ok() {
        let text = serde_json::to_vec(&stamps).expect("stamps always serialise");
        let _ = write_durably(path, &text);
    }
}

/// The files whose stat differs from the stamp taken when they last matched.
pub(crate) fn changed<'f>(
    dir: &Path,
    files: &'f [FileEntry],
    stamps: &[FileStamp],
) -> Vec<&'f FileEntry> {
    let by_path: std::collections::HashMap<&str, &FileStamp> =
        stamps.iter().map(|s| (s.path.as_str(), s)).collect();
    files
        .iter()
        .filter(|f| FileStamp::of(dir, &f.path).as_ref() != by_path.get(f.path.as_str()).copied())
        .collect()
}
