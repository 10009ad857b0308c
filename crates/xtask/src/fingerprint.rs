// Shared by `build.rs` (which exports the fingerprints) and xtask's unit
// tests (which check that an edit changes exactly the dependent stages).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Stage -> the sources (crate folders or files, relative to `crates/`) its output depends on.
pub const STAGES: &[(&str, &[&str])] = &[
    ("MNIST", &["mnist", "xtask/src/stages/mnist.rs"]),
    ("MLP", &["mlp", "subnormals", "xtask/src/stages/mlp.rs"]),
    (
        "EXTRACT",
        &[
            "activations",
            "mlp/src/model.rs",
            "mlp/src/weights.rs",
            "xtask/src/stages/extract.rs",
        ],
    ),
    // sweep.rs turns `[sae]` into each point's SaeConfig (the key holds the
    // user's values, so the code that maps them must be in the fingerprint).
    (
        "SAE",
        &[
            "sae",
            "subnormals",
            "xtask/src/stages/sae.rs",
            "xtask/src/sweep.rs",
        ],
    ),
    (
        "ANALYSIS",
        &[
            "analysis",
            "xtask/src/stages/analysis.rs",
            "xtask/src/stages/neurons.rs",
        ],
    ),
    // The circuits stage's tables are written by the analysis crate.
    (
        "CIRCUITS",
        &["circuits", "analysis", "xtask/src/stages/circuits.rs"],
    ),
];

/// Each stage's fingerprint (first 8 bytes of a SHA-256, hex) over the
/// relative paths and contents of its sources under `crates`, and the paths
/// read. Fails, naming the file, rather than hash a source it cannot read.
pub fn stage_fingerprints(
    crates: &Path,
) -> Result<Vec<(&'static str, String, Vec<PathBuf>)>, String> {
    let mut out = Vec::new();
    for (stage, sources) in STAGES {
        let mut files = Vec::new();
        let mut watched = Vec::new();
        for source in *sources {
            let path = crates.join(source);
            watched.push(path.clone());
            if path.is_dir() {
                collect(&path.join("src"), &mut files);
                files.push(path.join("Cargo.toml"));
            } else {
                files.push(path);
            }
        }
        files.sort();
        let mut hasher = Sha256::new();
        for file in files {
            let rel = file.strip_prefix(crates).unwrap_or(&file);
            hasher.update(rel.to_string_lossy().as_bytes());
            let bytes = std::fs::read(&file).map_err(|e| {
                format!(
                    "stage {stage}'s fingerprint needs {}, which cannot be read: {e}",
                    file.display()
                )
            })?;
            hasher.update(bytes);
        }
        out.push((*stage, hex::encode(&hasher.finalize()[..8]), watched));
    }
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A copy of the sources every fingerprint reads, as a second clone would have them.
    fn clone_sources(into: &Path) {
        let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for (_, sources) in STAGES {
            for source in *sources {
                let path = crates.join(source);
                if path.is_dir() {
                    collect(&path.join("src"), &mut files);
                    files.push(path.join("Cargo.toml"));
                } else {
                    files.push(path);
                }
            }
        }
        for file in files {
            let to = into.join(file.strip_prefix(&crates).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&file, &to).unwrap();
        }
    }

    fn changed_stages(
        before: &[(&str, String, Vec<PathBuf>)],
        crates: &Path,
    ) -> BTreeSet<&'static str> {
        let after = stage_fingerprints(crates).unwrap();
        after
            .iter()
            .zip(before)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect()
    }

    #[test]
    fn an_edit_in_one_clone_changes_exactly_the_stages_that_read_it() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        clone_sources(one.path());
        clone_sources(two.path());
        let original = stage_fingerprints(one.path()).unwrap();
        assert_eq!(
            original,
            {
                let mut moved = stage_fingerprints(two.path()).unwrap();
                for (_, _, watched) in &mut moved {
                    for path in watched.iter_mut() {
                        *path = one.path().join(path.strip_prefix(two.path()).unwrap());
                    }
                }
                moved
            },
            "the same sources in another folder give the same fingerprints"
        );
        let edit = |file: &str| {
            let path = two.path().join(file);
            let mut text = std::fs::read_to_string(&path).unwrap();
            text.push_str("\n// an edit\n");
            std::fs::write(path, text).unwrap();
        };
        let cases: [(&str, &[&str]); 6] = [
            ("mlp/src/lib.rs", &["MLP"]),
            ("mlp/src/model.rs", &["EXTRACT", "MLP"]),
            ("sae/src/kernels.rs", &["EXTRACT", "MLP", "SAE"]),
            ("xtask/src/sweep.rs", &["EXTRACT", "MLP", "SAE"]),
            (
                "circuits/src/graph.rs",
                &["CIRCUITS", "EXTRACT", "MLP", "SAE"],
            ),
            (
                "analysis/Cargo.toml",
                &["ANALYSIS", "CIRCUITS", "EXTRACT", "MLP", "SAE"],
            ),
        ];
        for (file, expected) in cases {
            edit(file);
            assert_eq!(
                changed_stages(&original, two.path()),
                expected.iter().copied().collect(),
                "after editing {file} (edits accumulate)"
            );
        }
        assert_eq!(
            stage_fingerprints(one.path()).unwrap(),
            original,
            "the first clone is untouched"
        );
        std::fs::remove_file(two.path().join("xtask/src/sweep.rs")).unwrap();
        let missing = stage_fingerprints(two.path()).unwrap_err();
        assert!(
            missing.starts_with("stage SAE's fingerprint needs") && missing.contains("sweep.rs"),
            "{missing}"
        );
    }
}
