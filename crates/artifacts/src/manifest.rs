//! `manifest.json`: the record that makes an artifact exist.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Key;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the artifact folder, with `/` separators.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub saelab_version: String,
    pub stage: String,
    pub key: Key,
    pub fingerprint: String,
    pub params: Value,
    pub inputs: BTreeMap<String, Key>,
    pub files: Vec<FileEntry>,
    /// Whatever the stage reports; the runner shows `metrics.headline` if present.
    pub metrics: Value,
    pub wall_time_s: f64,
    pub created_unix_s: u64,
}

impl Manifest {
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// The one-line metric a status table shows for this artifact.
    pub fn headline(&self) -> String {
        match self.metrics.get("headline") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        }
    }
}
