//! `mnist`: the four verified MNIST files, from wherever they can be had.

use std::path::{Path, PathBuf};

use artifacts::{Stage, StageError, StageInputs};
use serde_json::{json, Value};

pub struct MnistStage {
    pub dir: Option<PathBuf>,
    pub store_root: PathBuf,
}

impl Stage for MnistStage {
    fn name(&self) -> &str {
        "mnist"
    }
    fn kind(&self) -> &str {
        "mnist"
    }
    fn fingerprint(&self) -> String {
        env!("SAELAB_FP_MNIST").into()
    }
    /// None: the content is pinned by SHA-256, so where it came from does not matter.
    fn params(&self) -> Value {
        json!({})
    }
    fn inputs(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    fn run(&self, _inputs: &StageInputs, out: &Path) -> Result<Value, StageError> {
        // Copies verified under an older fingerprint are reused before any download.
        let cached_copies = std::fs::read_dir(self.store_root.join("mnist"))
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.join(artifacts::MANIFEST).exists())
                    .collect()
            })
            .unwrap_or_default();
        let cfg = mnist::FetchConfig {
            dir: self.dir.clone(),
            cached_copies,
            ..mnist::FetchConfig::default()
        };
        let report = mnist::fetch(&cfg, out)?;
        Ok(
            json!({ "source": report.source.to_string(), "headline": format!("verified, from {}", report.source) }),
        )
    }
}

/// A folder named with `--mnist-dir`, `SAELAB_MNIST_DIR` or `mnist.dir` is
/// used or refused even when the store already holds MNIST (the stage is then
/// cached and never reads it): its four files are checked against the pins
/// before anything runs. The folder's file stats (size, mtime, ctime, inode)
/// are remembered in the store after a success, so an unchanged folder is not
/// re-read on every run; any write to a file changes its ctime.
pub fn check_named_dir(dir: &Path, store_root: &Path) -> Result<(), String> {
    let stamp_path = store_root.join(".stamps").join("mnist-named-dir.json");
    let stamp = dir_stamp(dir);
    let remembered = std::fs::read_to_string(&stamp_path).ok();
    if stamp.is_some() && remembered == stamp {
        return Ok(());
    }
    mnist::verify_explicit_dir(dir, &mnist::Pins::canonical()).map_err(|e| e.to_string())?;
    if let Some(stamp) = stamp {
        // Best-effort: a read-only store re-checks every run.
        let _ = std::fs::create_dir_all(stamp_path.parent().expect("a stamp has a folder"))
            .and_then(|()| std::fs::write(&stamp_path, stamp));
    }
    Ok(())
}

/// The folder's path and each file's name and stat, or `None` where it cannot be read.
fn dir_stamp(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mut entries: Vec<(String, std::fs::Metadata)> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            Some((
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().ok()?,
            ))
        })
        .filter(|(_, meta)| meta.is_file())
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let files: Vec<Value> = entries
        .iter()
        .map(|(name, meta)| {
            #[cfg(unix)]
            let identity = {
                use std::os::unix::fs::MetadataExt;
                json!([
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.ctime(),
                    meta.ctime_nsec(),
                    meta.ino()
                ])
            };
            #[cfg(not(unix))]
            let identity = json!(meta.modified().ok().map(|t| format!("{t:?}")));
            json!({ "name": name, "size": meta.len(), "stat": identity })
        })
        .collect();
    Some(json!({ "dir": dir, "files": files }).to_string())
}
