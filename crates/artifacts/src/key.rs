//! Artifact keys: a hash of everything that determines a stage's output.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Everything that determines an artifact. Two equal specs give the same key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeySpec {
    pub stage: String,
    pub fingerprint: String,
    pub params: Value,
    /// Input role -> the key of the artifact used for it.
    pub inputs: BTreeMap<String, Key>,
}

/// The first 16 hex digits of the SHA-256 of a [`KeySpec`]'s canonical JSON.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Key(String);

impl KeySpec {
    pub fn key(&self) -> Key {
        // serde_json's Value keeps objects in a BTreeMap, so this text is canonical.
        let canonical = serde_json::to_string(self).expect("a KeySpec always serialises");
        let digest = Sha256::digest(canonical.as_bytes());
        Key(hex::encode(&digest[..8]))
    }

    /// Human-readable differences from an earlier spec of the same stage instance.
    pub fn differences(&self, before: &KeySpec) -> Vec<String> {
        let mut why = Vec::new();
        if self.fingerprint != before.fingerprint {
            why.push(format!("code of stage {} changed", self.stage));
        }
        let mut changed = Vec::new();
        diff_values("", &before.params, &self.params, &mut changed);
        why.extend(changed.into_iter().map(|c| format!("param {c}")));
        for (role, key) in &self.inputs {
            match before.inputs.get(role) {
                Some(old) if old == key => {}
                Some(old) => why.push(format!("input {role} changed ({old} -> {key})")),
                None => why.push(format!("new input {role}")),
            }
        }
        why
    }
}

impl Key {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Accepts only what [`KeySpec::key`] produces, so a key is always a safe folder name.
    pub fn parse(text: &str) -> Option<Key> {
        let ok = text.len() == 16
            && text
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        ok.then(|| Key(text.to_string()))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn diff_values(path: &str, before: &Value, after: &Value, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let names: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for name in names {
                let sub = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                let none = Value::Null;
                diff_values(
                    &sub,
                    b.get(name).unwrap_or(&none),
                    a.get(name).unwrap_or(&none),
                    out,
                );
            }
        }
        (b, a) if b != a => out.push(format!("{path}: {b} -> {a}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(lr: f64) -> KeySpec {
        KeySpec {
            stage: "mlp".into(),
            fingerprint: "f1".into(),
            params: json!({"lr": lr, "epochs": 5}),
            inputs: BTreeMap::new(),
        }
    }

    #[test]
    fn key_depends_on_every_part_and_only_on_content() {
        assert_eq!(spec(0.1).key(), spec(0.1).key());
        assert_ne!(spec(0.1).key(), spec(0.2).key());
        let mut other_code = spec(0.1);
        other_code.fingerprint = "f2".into();
        assert_ne!(other_code.key(), spec(0.1).key());
        let mut reordered = spec(0.1);
        reordered.params = serde_json::from_str(r#"{"epochs": 5, "lr": 0.1}"#).unwrap();
        assert_eq!(reordered.key(), spec(0.1).key());
        assert!(Key::parse(spec(0.1).key().as_str()).is_some());
        assert!(Key::parse("../etc").is_none());
    }

    #[test]
    fn differences_name_the_param_and_the_code() {
        let mut after = spec(0.2);
        after.fingerprint = "f2".into();
        let why = after.differences(&spec(0.1));
        assert_eq!(
            why,
            vec![
                "code of stage mlp changed".to_string(),
                "param lr: 0.1 -> 0.2".to_string()
            ]
        );
    }
}
