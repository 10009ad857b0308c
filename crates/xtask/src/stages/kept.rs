//! What the store keeps of SAE training that is not yet an artifact, so an
//! interrupted sweep loses as little as it can:
//! - `<store>/.finished/<key>/`: a point that has trained (its SAE folder and
//!   training record), written the moment it finished while its group
//!   trains on; its stage reads it back instead of training.
//! - `<store>/.checkpoints/<key>/{a,b}/`: a point still training, its whole
//!   state (`sae::ResumePoint`) at the end of an epoch, every
//!   `--checkpoint-every` seconds, in two slots written in turn (one whole
//!   state is always in place); the next run resumes from the later one, to
//!   the same bits.
//!
//! Each folder is written whole or not at all (a temporary folder renamed
//! into place) with the SHA-256 of every file, and is used only while those
//! still match. Writing is best effort: a store that cannot take it
//! (read-only) only loses the protection. Both go once the point's artifact
//! is committed; `gc` removes leftovers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use artifacts::Key;
use sae::Trained;

pub const FINISHED: &str = ".finished";
pub const CHECKPOINTS: &str = ".checkpoints";

pub fn finished_dir(store_root: &Path, key: &Key) -> PathBuf {
    store_root.join(FINISHED).join(key.as_str())
}

pub fn checkpoint_dir(store_root: &Path, key: &Key) -> PathBuf {
    store_root.join(CHECKPOINTS).join(key.as_str())
}

/// In a kept folder: the SHA-256 of each of its other files.
const KEPT_DIGESTS: &str = "digests.json";

/// Writes `dir` whole through `fill` (a temporary folder, its digests, then
/// renamed into place, replacing an older `dir`).
fn write_whole(dir: &Path, fill: impl FnOnce(&Path) -> Result<(), String>) {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let name = name.to_string_lossy();
    let pid = std::process::id();
    let tmp = parent.join(format!(".tmp-{name}-{pid}"));
    let old = parent.join(format!(".old-{name}-{pid}"));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = std::fs::create_dir_all(&tmp)
        .map_err(|e| e.to_string())
        .and_then(|()| fill(&tmp))
        .and_then(|()| {
            // Last: what the files must hash to when read back.
            let digests = file_digests(&tmp)?;
            let text = serde_json::to_string(&digests).map_err(|e| e.to_string())?;
            std::fs::write(tmp.join(KEPT_DIGESTS), text).map_err(|e| e.to_string())
        })
        .and_then(|()| {
            if dir.exists() {
                std::fs::rename(dir, &old).map_err(|e| e.to_string())?;
            }
            std::fs::rename(&tmp, dir).map_err(|e| e.to_string())
        });
    let _ = std::fs::remove_dir_all(&old);
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

/// File name -> SHA-256 of every file in `dir` but [`KEPT_DIGESTS`].
fn file_digests(dir: &Path) -> Result<BTreeMap<String, String>, String> {
    let mut digests = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != KEPT_DIGESTS {
            let digest = artifacts::sha256_file(&entry.path()).map_err(|e| e.to_string())?;
            digests.insert(name, digest);
        }
    }
    Ok(digests)
}

/// Whether `dir`'s files still hash as they did when written.
fn intact(dir: &Path) -> bool {
    let recorded: Option<BTreeMap<String, String>> = std::fs::read(dir.join(KEPT_DIGESTS))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    recorded.is_some_and(|recorded| file_digests(dir).ok() == Some(recorded))
}

/// Keeps a point that has trained; its checkpoint has served.
pub fn keep_finished(store_root: &Path, key: &Key, trained: &Trained, origin: &sae::Origin) {
    write_whole(&finished_dir(store_root, key), |tmp| {
        sae::save(&trained.sae, tmp, origin).map_err(|e| e.to_string())?;
        sae::TrainingRecord::of(trained)
            .save(tmp)
            .map_err(|e| e.to_string())
    });
    let _ = std::fs::remove_dir_all(checkpoint_dir(store_root, key));
}

/// A point kept by [`keep_finished`] whose files still hash as they did when
/// kept, or `None` (absent, changed or unreadable: it is trained again).
pub fn load_finished(store_root: &Path, key: &Key) -> Option<Trained> {
    let dir = finished_dir(store_root, key);
    if !intact(&dir) {
        return None;
    }
    let sae = sae::load(&dir).ok()?;
    let record = sae::TrainingRecord::load(&dir).ok()?;
    Some(Trained {
        sae,
        curve: record.curve,
        latents: record.latents,
        resamples: record.resamples,
        steps: record.steps,
        seconds: record.seconds,
        resumed_after_epoch: None,
    })
}

/// The two slots a point's states alternate between, so that one whole
/// state is always in place while the next is written.
const SLOTS: [&str; 2] = ["a", "b"];

/// The epochs a slot's state had trained, from its JSON alone.
fn slot_epochs(slot: &Path) -> Option<(u64, String, u64)> {
    let text = std::fs::read(slot.join(sae::RESUME_STATE_FILE)).ok()?;
    let state: serde_json::Value = serde_json::from_slice(&text).ok()?;
    Some((
        state["epochs_done"].as_u64()?,
        state["point"].as_str()?.to_string(),
        state["cfg"]["epochs"].as_u64()?,
    ))
}

/// Keeps a training point's state in the slot that does not hold its latest.
pub fn keep_checkpoint(store_root: &Path, key: &Key, state: &sae::ResumePoint) {
    let dir = checkpoint_dir(store_root, key);
    let epochs = |slot: &str| slot_epochs(&dir.join(slot)).map(|(e, _, _)| e);
    let older = if epochs("a") <= epochs("b") { "a" } else { "b" };
    write_whole(&dir.join(older), |tmp| {
        state.save(tmp).map_err(|e| e.to_string())
    });
}

/// The latest state kept by [`keep_checkpoint`] whose files still hash as
/// written: slots are tried latest first (by their JSON), so only the one
/// used is hashed and read whole.
pub fn load_checkpoint(store_root: &Path, key: &Key) -> Option<sae::ResumePoint> {
    let dir = checkpoint_dir(store_root, key);
    let mut slots: Vec<(u64, PathBuf)> = SLOTS
        .iter()
        .map(|slot| dir.join(slot))
        .filter_map(|slot| Some((slot_epochs(&slot)?.0, slot)))
        .collect();
    slots.sort_by_key(|(epochs, _)| std::cmp::Reverse(*epochs));
    slots
        .into_iter()
        .filter(|(_, slot)| intact(slot))
        .find_map(|(_, slot)| sae::ResumePoint::load(&slot).ok())
}

/// One line per kept checkpoint: the point and how far it had trained.
/// Reads each state's JSON only (an interrupt is no time to hash and parse
/// every buffer).
pub fn describe_checkpoints(store_root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(store_root.join(CHECKPOINTS)) else {
        return Vec::new();
    };
    let mut lines: Vec<String> = entries
        .flatten()
        .filter(|e| Key::parse(&e.file_name().to_string_lossy()).is_some())
        .filter_map(|e| {
            let slots = SLOTS
                .iter()
                .filter_map(|slot| slot_epochs(&e.path().join(slot)));
            let (done, point, epochs) = slots.max()?;
            Some(format!("{point} after epoch {done}/{epochs}"))
        })
        .collect();
    lines.sort();
    lines
}

/// `gc`'s share for kept folders (both kinds): an entry goes once its
/// artifact exists (it was committed), or when `keep` does not reach it and
/// it is older than `options` keep; returns what was (or would be) removed.
pub fn collect_kept(
    store_root: &Path,
    keep: &BTreeSet<(String, Key)>,
    options: artifacts::GcOptions,
) -> std::io::Result<Vec<PathBuf>> {
    let old = |path: &Path| match options.keep_newer_than_s {
        None => true,
        Some(limit) => std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age.as_secs() >= limit),
    };
    let mut removed = Vec::new();
    for folder in [FINISHED, CHECKPOINTS] {
        let Ok(entries) = std::fs::read_dir(store_root.join(folder)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = match Key::parse(&name) {
                Some(key) => {
                    store_root.join("sae").join(key.as_str()).exists()
                        || (!keep.contains(&("sae".to_string(), key)) && old(&path))
                }
                // A temporary or replaced folder of a killed writer.
                None => name.starts_with(".tmp-") || name.starts_with(".old-"),
            };
            if stale {
                if !options.dry_run {
                    std::fs::remove_dir_all(&path)?;
                }
                removed.push(path);
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_lets_kept_folders_go_once_committed_unreached_and_old_or_half_written() {
        let store = tempfile::tempdir().unwrap();
        let root = store.path();
        let key = |k: &str| Key::parse(k).unwrap();
        let (committed, reached, unreached) = (
            key("00000000000000aa"),
            key("00000000000000bb"),
            key("00000000000000cc"),
        );
        for k in [&committed, &reached, &unreached] {
            std::fs::create_dir_all(finished_dir(root, k)).unwrap();
        }
        // A checkpoint of a point never committed nor reached.
        std::fs::create_dir_all(checkpoint_dir(root, &unreached)).unwrap();
        std::fs::create_dir_all(root.join("sae").join(committed.as_str())).unwrap();
        let tmp = root.join(FINISHED).join(".tmp-00000000000000dd-42");
        std::fs::create_dir_all(&tmp).unwrap();
        let keep: std::collections::BTreeSet<(String, Key)> =
            [("sae".to_string(), reached.clone())].into();
        let options = |dry_run, keep_newer_than_s| artifacts::GcOptions {
            keep_newer_than_s,
            dry_run,
        };
        // Just written: an unreached entry is kept for its age, as artifacts are.
        let mut removed = collect_kept(root, &keep, options(true, Some(86_400))).unwrap();
        removed.sort();
        let mut expected = vec![finished_dir(root, &committed), tmp.clone()];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(tmp.exists(), "a dry run removes nothing");
        // Whatever its age: the unreached one goes too; the reached one stays.
        let removed = collect_kept(root, &keep, options(false, None)).unwrap();
        assert_eq!(removed.len(), 4);
        assert!(!checkpoint_dir(root, &unreached).exists());
        assert!(finished_dir(root, &reached).exists());
        for gone in [
            finished_dir(root, &committed),
            finished_dir(root, &unreached),
            tmp,
        ] {
            assert!(!gone.exists(), "{}", gone.display());
        }
    }
}
