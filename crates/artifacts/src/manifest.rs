//! `manifest.json`: the record that makes an artifact exist.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{Key, KeySpec, MANIFEST};

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
    /// SHA-256 of this manifest's canonical JSON with `digest` empty: what
    /// makes an edit anywhere in it (metrics and file digests included) seen.
    /// Empty in manifests written before it existed.
    #[serde(default)]
    pub digest: String,
}

impl Manifest {
    /// The spec this manifest's stage, fingerprint, params and inputs hash to.
    pub fn spec(&self) -> KeySpec {
        KeySpec {
            stage: self.stage.clone(),
            fingerprint: self.fingerprint.clone(),
            params: self.params.clone(),
            inputs: self.inputs.clone(),
        }
    }

    /// The digest of everything in the manifest but `digest` itself, over its
    /// canonical JSON (serde_json's objects are sorted maps, and floats are
    /// written so that they read back to the same value).
    pub fn content_digest(&self) -> String {
        let mut without = self.clone();
        without.digest.clear();
        let canonical = serde_json::to_value(&without)
            .and_then(|v| serde_json::to_string(&v))
            .expect("a manifest always serialises");
        hex::encode(Sha256::digest(canonical.as_bytes()))
    }

    /// Why this manifest cannot be what `stage`'s build of `key` wrote, if it cannot.
    pub fn inconsistency(&self, stage: &str, key: &Key) -> Option<String> {
        if &self.key != key {
            return Some(format!("{MANIFEST} names key {}", self.key));
        }
        if self.stage != stage {
            return Some(format!("{MANIFEST} names stage {}", self.stage));
        }
        if self.digest.is_empty() {
            return Some(format!(
                "{MANIFEST} carries no digest of itself (written by an older saelab)"
            ));
        }
        if self.digest != self.content_digest() {
            return Some(format!(
                "{MANIFEST} changed since it was built: its content no longer matches its own digest"
            ));
        }
        let derived = self.spec().key();
        if &derived != key {
            return Some(format!(
                "{MANIFEST}'s stage, fingerprint, params and inputs hash to key {derived}, not to its folder's"
            ));
        }
        None
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(metrics: Value) -> Manifest {
        let spec = KeySpec {
            stage: "toy".into(),
            fingerprint: "f".into(),
            params: serde_json::json!({ "x": 0.003 }),
            inputs: BTreeMap::new(),
        };
        let mut m = Manifest {
            saelab_version: "0".into(),
            stage: spec.stage.clone(),
            key: spec.key(),
            fingerprint: spec.fingerprint.clone(),
            params: spec.params.clone(),
            inputs: spec.inputs.clone(),
            files: Vec::new(),
            metrics,
            wall_time_s: 1.0 / 3.0,
            created_unix_s: 1,
            digest: String::new(),
        };
        m.digest = m.content_digest();
        m
    }

    #[test]
    fn a_written_manifest_reads_back_to_its_own_digest_whatever_its_floats() {
        // Floats of every magnitude and full precision (f32 widened to f64 as
        // the stages report them): each must read back to the value written.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let floats: Vec<f64> = (0..2000)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let x = f64::from_bits(state);
                if !x.is_finite() {
                    0.5
                } else if i % 2 == 0 {
                    x as f32 as f64
                } else {
                    x
                }
            })
            .collect();
        let m = manifest(serde_json::json!({ "headline": "L0 41.3", "values": floats }));
        let text = serde_json::to_string_pretty(&m).unwrap();
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.inconsistency("toy", &m.key), None);
    }
}
