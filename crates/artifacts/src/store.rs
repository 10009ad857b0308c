//! The store on disk: lookup, locking, atomic commit, listing and collection.
//! One file, over 600 lines: these share the folder layout and the lock
//! protocol (stamps and marks are in `integrity.rs`, manifests in `manifest.rs`).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::integrity::{self, MARKS, STAMPS};
use crate::{FileEntry, Key, KeySpec, Manifest, SAELAB_VERSION};

pub const MANIFEST: &str = "manifest.json";
const STAGING_PREFIX: &str = ".staging-";
const TRASH_PREFIX: &str = ".trash-";
const LOCKS: &str = ".locks";
const LATEST: &str = ".latest";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: manifest is not valid JSON: {source}")]
    BadJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("stage {stage} failed: {source}")]
    Stage {
        stage: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What is on disk for one key.
#[derive(Debug, Clone)]
pub enum Check {
    Fresh(Box<Manifest>),
    Missing,
    /// The folder exists but does not count, and why.
    Invalid(String),
}

/// How hard [`Store::check_with`] looks at the files a manifest lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Sizes, then the SHA-256 of every file written since it was last hashed
    /// (its stat stamp changed): what [`Store::check`] does.
    Stamps,
    /// Sizes and the SHA-256 of every file, whatever its stamp says.
    Digests,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Holds the per-key build lock until dropped. Re-entrant within a process:
/// a second lock of a key this process holds shares the first's file, and
/// the lock is released when the last of them is dropped.
pub struct KeyLock {
    _file: std::sync::Arc<File>,
}

/// The build locks this process holds, by lock file: an flock taken twice
/// through two open files of one process would wait for itself.
static HELD_LOCKS: std::sync::Mutex<std::collections::BTreeMap<PathBuf, std::sync::Weak<File>>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// A shared hold on an artifact a run reads or builds, until dropped: `gc`
/// does not remove an artifact anyone holds. `None` inside where the store is
/// read-only (nobody can remove anything from it then).
pub struct UseLock {
    _file: Option<File>,
}

/// What `gc` may remove besides what no config reaches.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Keep unreached artifacts built less than this many seconds ago
    /// (`None`: remove them whatever their age).
    pub keep_newer_than_s: Option<u64>,
    pub dry_run: bool,
}

/// What `gc` did (or, dry, would do), counted in folders.
#[derive(Debug, Default)]
pub struct GcReport {
    pub removed: Vec<PathBuf>,
    pub removed_bytes: u64,
    /// Artifact folders kept because a config reaches them.
    pub kept_reached: usize,
    /// Unreached, but newer than `keep_newer_than_s`.
    pub kept_recent: usize,
    /// Unreached, but a running process holds them.
    pub kept_in_use: Vec<PathBuf>,
    /// Lock files of artifacts that are gone, removed (`.locks/`).
    pub removed_locks: usize,
}

/// Whether `file` is still the file at `path` (the same inode): a lock file
/// removed by `gc` after it was opened is not.
fn still_at(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

/// Staging folders this process is writing, removed by [`remove_own_staging`]
/// when it is interrupted.
static OWN_STAGING: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Removes the staging folders this process is writing (for a signal handler:
/// the process must exit right after). Returns what it removed.
pub fn remove_own_staging() -> Vec<PathBuf> {
    let mut own = OWN_STAGING.lock().unwrap_or_else(|e| e.into_inner());
    let removed: Vec<PathBuf> = own.drain(..).filter(|p| p.exists()).collect();
    for path in &removed {
        let _ = fs::remove_dir_all(path);
    }
    removed
}

/// [`remove_own_staging`] where the registry may be held by the very thread
/// that failed (an allocation failure): gives up rather than wait.
pub fn try_remove_own_staging() -> Option<Vec<PathBuf>> {
    let mut own = OWN_STAGING.try_lock().ok()?;
    let removed: Vec<PathBuf> = own.drain(..).filter(|p| p.exists()).collect();
    for path in &removed {
        let _ = fs::remove_dir_all(path);
    }
    Some(removed)
}

fn forget_staging(path: &Path) {
    OWN_STAGING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| p != path);
}

impl Store {
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn artifact_dir(&self, stage: &str, key: &Key) -> PathBuf {
        self.root.join(stage).join(key.as_str())
    }

    /// Whether the artifact exists and its files hold the bytes its manifest
    /// records (sizes always; digests of files written since they were last hashed).
    pub fn check(&self, stage: &str, key: &Key) -> Check {
        self.check_with(stage, key, Verify::Stamps)
    }

    pub fn check_with(&self, stage: &str, key: &Key, verify: Verify) -> Check {
        let dir = self.artifact_dir(stage, key);
        if !dir.exists() {
            return Check::Missing;
        }
        let manifest = match read_manifest(&dir) {
            Ok(m) => m,
            Err(e) => return Check::Invalid(e),
        };
        // The manifest is checked like the files it lists: re-derived and re-hashed.
        if let Some(why) = manifest.inconsistency(stage, key) {
            return Check::Invalid(why);
        }
        if let Ok(reason) =
            fs::read_to_string(integrity::side_file(&self.root, MARKS, stage, key.as_str()))
        {
            return Check::Invalid(reason);
        }
        // Reasons name the file inside the artifact; `explain` shows the folder.
        for file in &manifest.files {
            match fs::metadata(dir.join(&file.path)) {
                Err(_) => return Check::Invalid(format!("file {} is missing", file.path)),
                Ok(meta) if meta.len() != file.size => {
                    return Check::Invalid(format!(
                        "file {} has {} bytes, manifest says {}",
                        file.path,
                        meta.len(),
                        file.size
                    ))
                }
                Ok(_) => {}
            }
        }
        let stamp_file = integrity::side_file(&self.root, STAMPS, stage, key.as_str());
        let to_hash: Vec<&FileEntry> = match verify {
            Verify::Digests => manifest.files.iter().collect(),
            Verify::Stamps => {
                integrity::changed(&dir, &manifest.files, &integrity::read_stamps(&stamp_file))
            }
        };
        if !to_hash.is_empty() {
            let mismatch = to_hash.par_iter().find_map_first(|file| {
                let path = dir.join(&file.path);
                match sha256_file(&path) {
                    Ok(d) if d == file.sha256 => None,
                    Ok(_) => Some(format!(
                        "file {} changed since it was built: its SHA-256 no longer matches the manifest",
                        file.path
                    )),
                    Err(e) => Some(e.to_string()),
                }
            });
            if let Some(why) = mismatch {
                return Check::Invalid(why);
            }
            integrity::write_stamps(&stamp_file, &dir, &manifest.files);
        }
        Check::Fresh(Box::new(manifest))
    }

    /// Blocks until this process is the only one working on `key`. `on_wait` is
    /// called once if another process holds it.
    pub fn lock(
        &self,
        stage: &str,
        key: &Key,
        on_wait: impl FnOnce(),
    ) -> Result<KeyLock, StoreError> {
        let mut on_wait = Some(on_wait);
        self.lock_key(stage, key, &mut || {
            if let Some(on_wait) = on_wait.take() {
                on_wait();
            }
            true
        })
        .map(|lock| lock.expect("a blocking lock always ends holding the key"))
    }

    /// The lock of `key` if no other process holds it; `None` at once if one does.
    pub fn try_lock(&self, stage: &str, key: &Key) -> Result<Option<KeyLock>, StoreError> {
        self.lock_key(stage, key, &mut || false)
    }

    /// Takes `key`'s lock; when another process holds it, `wait()` says
    /// whether to block until it is free (or give up with `None`).
    fn lock_key(
        &self,
        stage: &str,
        key: &Key,
        wait: &mut dyn FnMut() -> bool,
    ) -> Result<Option<KeyLock>, StoreError> {
        let dir = self.root.join(LOCKS);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(format!("{stage}-{key}.lock"));
        let held = || HELD_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = held().get(&path).and_then(std::sync::Weak::upgrade) {
            return Ok(Some(KeyLock { _file: file }));
        }
        loop {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    if !wait() {
                        return Ok(None);
                    }
                    file.lock().map_err(io_err(&path))?;
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
            }
            // `gc` removes a stale lock file while holding it: a lock taken
            // on a file no longer at `path` locks nothing, so take it again.
            if still_at(&file, &path) {
                let file = std::sync::Arc::new(file);
                held().insert(path, std::sync::Arc::downgrade(&file));
                return Ok(Some(KeyLock { _file: file }));
            }
        }
    }

    /// Builds an artifact in a staging folder and renames it into place. The
    /// caller holds the key's lock. `build` writes its files into the folder it
    /// is given and returns the stage's metrics; the manifest is written last.
    pub fn commit(
        &self,
        spec: &KeySpec,
        build: impl FnOnce(&Path) -> Result<Value, Box<dyn std::error::Error + Send + Sync>>,
    ) -> Result<Manifest, StoreError> {
        let key = spec.key();
        let stage_dir = self.root.join(&spec.stage);
        fs::create_dir_all(&stage_dir).map_err(io_err(&stage_dir))?;
        let staging = stage_dir.join(format!(
            "{STAGING_PREFIX}{key}-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        fs::create_dir(&staging).map_err(io_err(&staging))?;
        OWN_STAGING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(staging.clone());
        let result = self.build_and_seal(spec, &key, &staging, build);
        forget_staging(&staging);
        result
    }

    fn build_and_seal(
        &self,
        spec: &KeySpec,
        key: &Key,
        staging: &Path,
        build: impl FnOnce(&Path) -> Result<Value, Box<dyn std::error::Error + Send + Sync>>,
    ) -> Result<Manifest, StoreError> {
        let started = Instant::now();
        let metrics = match build(staging) {
            Ok(m) => m,
            Err(source) => {
                let _ = fs::remove_dir_all(staging);
                return Err(StoreError::Stage {
                    stage: spec.stage.clone(),
                    source,
                });
            }
        };
        let wall_time_s = started.elapsed().as_secs_f64();
        let result = self.seal(spec, key, staging, metrics, wall_time_s);
        if result.is_err() {
            let _ = fs::remove_dir_all(staging);
        }
        result
    }

    fn seal(
        &self,
        spec: &KeySpec,
        key: &Key,
        staging: &Path,
        metrics: Value,
        wall_time_s: f64,
    ) -> Result<Manifest, StoreError> {
        let files = describe_files(staging)?;
        let manifest = Manifest {
            saelab_version: SAELAB_VERSION.to_string(),
            stage: spec.stage.clone(),
            key: key.clone(),
            fingerprint: spec.fingerprint.clone(),
            params: spec.params.clone(),
            inputs: spec.inputs.clone(),
            files,
            metrics,
            wall_time_s,
            created_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            digest: String::new(),
        };
        let manifest = Manifest {
            digest: manifest.content_digest(),
            ..manifest
        };
        let text = serde_json::to_string_pretty(&manifest).expect("a manifest always serialises");
        write_durably(&staging.join(MANIFEST), text.as_bytes())?;
        let target = self.artifact_dir(&spec.stage, key);
        if target.exists() {
            // An invalid leftover: move it aside first so the rename below is atomic.
            let trash = target.with_file_name(format!("{TRASH_PREFIX}{key}-{}", unique_suffix()));
            fs::rename(&target, &trash).map_err(io_err(&target))?;
            let _ = fs::remove_dir_all(&trash);
        }
        fs::rename(staging, &target).map_err(io_err(&target))?;
        sync_dir(target.parent().expect("an artifact folder has a parent"));
        let _ = fs::remove_file(integrity::side_file(
            &self.root,
            MARKS,
            &spec.stage,
            key.as_str(),
        ));
        integrity::write_stamps(
            &integrity::side_file(&self.root, STAMPS, &spec.stage, key.as_str()),
            &target,
            &manifest.files,
        );
        Ok(manifest)
    }

    /// Every artifact folder on disk, with its state.
    pub fn list(&self) -> Result<Vec<(String, Key, Check)>, StoreError> {
        let mut out = Vec::new();
        for stage in sorted_entries(&self.root)? {
            let name = file_name(&stage);
            if name.starts_with('.') || !stage.is_dir() {
                continue;
            }
            for entry in sorted_entries(&stage)? {
                if let Some(key) = Key::parse(&file_name(&entry)) {
                    let check = self.check(&name, &key);
                    out.push((name.clone(), key, check));
                }
            }
        }
        Ok(out)
    }

    /// Marks an artifact corrupt: it is stale, with `reason`, until rebuilt.
    pub fn invalidate(&self, stage: &str, key: &Key, reason: &str) -> Result<(), StoreError> {
        let path = integrity::side_file(&self.root, MARKS, stage, key.as_str());
        let parent = path.parent().expect("a mark has a folder");
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        write_durably(&path, reason.as_bytes())
    }

    fn use_lock_path(&self, stage: &str, key: &Key) -> PathBuf {
        self.root.join(LOCKS).join(format!("{stage}-{key}.use"))
    }

    /// Holds `key` against `gc` until the returned lock is dropped. Never
    /// fails: where the lock file cannot be made (a read-only store), it holds
    /// nothing, since nothing can be removed there either.
    pub fn hold(&self, stage: &str, key: &Key) -> UseLock {
        let path = self.use_lock_path(stage, key);
        // A few tries: `gc` may remove a stale lock file between open and lock.
        for _ in 0..8 {
            let file = fs::create_dir_all(self.root.join(LOCKS))
                .and_then(|()| {
                    File::options()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)
                })
                .or_else(|_| File::open(&path))
                .ok()
                .filter(|file| file.lock_shared().is_ok());
            match file {
                Some(file) if !still_at(&file, &path) => continue,
                file => return UseLock { _file: file },
            }
        }
        UseLock { _file: None }
    }

    /// Removes every artifact not in `keep` that is older than the options
    /// allow and that no running process holds, and leftovers of killed runs.
    pub fn gc(
        &self,
        keep: &BTreeSet<(String, Key)>,
        options: GcOptions,
    ) -> Result<GcReport, StoreError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut report = GcReport::default();
        let mut held = Vec::new();
        for stage in sorted_entries(&self.root)? {
            let stage_name = file_name(&stage);
            if stage_name.starts_with('.') || !stage.is_dir() {
                continue;
            }
            for entry in sorted_entries(&stage)? {
                let name = file_name(&entry);
                let leftover =
                    name.starts_with(TRASH_PREFIX) || self.is_abandoned_staging(&stage_name, &name);
                let key = Key::parse(&name);
                if let Some(key) = &key {
                    if keep.contains(&(stage_name.clone(), key.clone())) {
                        report.kept_reached += 1;
                        continue;
                    }
                    let built = read_manifest(&entry).map(|m| m.created_unix_s).ok();
                    if let (Some(limit), Some(built)) = (options.keep_newer_than_s, built) {
                        if now.saturating_sub(built) < limit {
                            report.kept_recent += 1;
                            continue;
                        }
                    }
                    // Taken exclusively and kept until removal: a run that
                    // starts now waits for it, then finds the artifact gone.
                    match self.try_exclusive(&stage_name, key) {
                        Some(lock) => held.push(lock),
                        None => {
                            report.kept_in_use.push(entry);
                            continue;
                        }
                    }
                } else if !leftover {
                    continue;
                }
                report.removed_bytes += folder_bytes(&entry);
                report.removed.push(entry);
            }
        }
        if !options.dry_run {
            for path in &report.removed {
                fs::remove_dir_all(path).map_err(io_err(path))?;
                if let (Some(kind), Some(key)) = (
                    path.parent().map(file_name),
                    path.file_name()
                        .and_then(|n| Key::parse(&n.to_string_lossy())),
                ) {
                    for folder in [STAMPS, MARKS] {
                        let _ = fs::remove_file(integrity::side_file(
                            &self.root,
                            folder,
                            &kind,
                            key.as_str(),
                        ));
                    }
                }
            }
        }
        // After the artifacts' own locks are let go, so theirs go too.
        drop(held);
        self.collect_stale_locks(&mut report, options.dry_run)?;
        Ok(report)
    }

    /// Lock files (`.locks/<kind>-<key>.lock` and `.use`) whose artifact is
    /// gone (or removed by this gc) and that nobody holds: each is removed
    /// while gc holds it exclusively, so a process that opened it meanwhile
    /// sees it gone and takes a fresh one (`still_at`).
    fn collect_stale_locks(&self, report: &mut GcReport, dry_run: bool) -> Result<(), StoreError> {
        let dir = self.root.join(LOCKS);
        if !dir.is_dir() {
            return Ok(());
        }
        for path in sorted_entries(&dir)? {
            let name = file_name(&path);
            let Some(stem) = name
                .strip_suffix(".lock")
                .or_else(|| name.strip_suffix(".use"))
            else {
                continue;
            };
            let Some((kind, key)) = stem.rsplit_once('-') else {
                continue;
            };
            if Key::parse(key).is_none() {
                continue;
            }
            let artifact = self.root.join(kind).join(key);
            let removed = report.removed.contains(&artifact);
            if artifact.exists() && !removed {
                continue;
            }
            let Ok(file) = File::options().write(true).open(&path) else {
                continue;
            };
            if file.try_lock().is_err() {
                continue;
            }
            if !dry_run {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
            report.removed_locks += 1;
        }
        Ok(())
    }

    /// The exclusive use lock of `key`, or `None` while someone holds it.
    fn try_exclusive(&self, stage: &str, key: &Key) -> Option<File> {
        let path = self.use_lock_path(stage, key);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ok()?;
        file.try_lock().ok().map(|()| file)
    }

    /// A staging folder whose key nobody holds the lock for belongs to a dead process.
    fn is_abandoned_staging(&self, stage: &str, name: &str) -> bool {
        let Some(rest) = name.strip_prefix(STAGING_PREFIX) else {
            return false;
        };
        let Some(key) = rest.get(..16).and_then(Key::parse) else {
            return true;
        };
        let path = self.root.join(LOCKS).join(format!("{stage}-{key}.lock"));
        match File::options().write(true).open(&path) {
            Ok(file) => file.try_lock().is_ok(),
            Err(_) => true,
        }
    }

    /// Remembers the spec last built for a named stage instance, for `explain`.
    pub fn record_latest(&self, instance: &str, spec: &KeySpec) -> Result<(), StoreError> {
        let dir = self.root.join(LATEST);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let text = serde_json::to_string_pretty(spec).expect("a KeySpec always serialises");
        write_durably(
            &dir.join(format!("{}.json", safe_name(instance))),
            text.as_bytes(),
        )
    }

    pub fn latest(&self, instance: &str) -> Option<KeySpec> {
        let path = self
            .root
            .join(LATEST)
            .join(format!("{}.json", safe_name(instance)));
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let path = dir.join(MANIFEST);
    let bytes = fs::read(&path).map_err(|_| {
        format!(
            "{} has no {MANIFEST} (unfinished or damaged)",
            dir.display()
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a valid manifest: {e}", path.display()))
}

fn describe_files(dir: &Path) -> Result<Vec<FileEntry>, StoreError> {
    let mut paths = Vec::new();
    collect_files(dir, dir, &mut paths)?;
    paths.sort();
    paths
        .par_iter()
        .map(|rel| {
            let path = dir.join(rel);
            let size = fs::metadata(&path).map_err(io_err(&path))?.len();
            let sha256 = sha256_file(&path)?;
            Ok(FileEntry {
                path: rel.clone(),
                size,
                sha256,
            })
        })
        .collect()
}

fn collect_files(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), StoreError> {
    for entry in sorted_entries(dir)? {
        if entry.is_dir() {
            collect_files(base, &entry, out)?;
        } else {
            let rel = entry.strip_prefix(base).expect("walked from base");
            out.push(
                rel.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/"),
            );
        }
    }
    Ok(())
}

pub fn sha256_file(path: &Path) -> Result<String, StoreError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Writes through a temporary name and fsyncs, so readers see all or nothing.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension(format!("tmp-{}", unique_suffix()));
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Bytes of every file under `dir` (symlinks not followed), 0 for what cannot be read.
pub fn folder_bytes(dir: &Path) -> u64 {
    sorted_entries(dir)
        .unwrap_or_default()
        .iter()
        .map(|p| match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => folder_bytes(p),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut entries: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(dir)(e)),
    };
    entries.sort();
    Ok(entries)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn safe_name(instance: &str) -> String {
    instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._=-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn unique_suffix() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
