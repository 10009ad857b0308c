//! Computes each stage's code fingerprint from the sources that make its
//! artifact, so any code change invalidates exactly the stages it touches.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Stage -> the sources (crate folders or files, relative to `crates/`) its output depends on.
const STAGES: &[(&str, &[&str])] = &[
    ("MNIST", &["mnist", "xtask/src/stages/mnist.rs"]),
    ("MLP", &["mlp", "xtask/src/stages/mlp.rs"]),
    (
        "EXTRACT",
        &[
            "activations",
            "mlp/src/model.rs",
            "mlp/src/weights.rs",
            "xtask/src/stages/extract.rs",
        ],
    ),
    // config.rs turns `[sae]` into each point's SaeConfig (the key holds the
    // user's values, so the code that maps them must be in the fingerprint).
    (
        "SAE",
        &[
            "sae",
            "xtask/src/stages/sae.rs",
            "xtask/src/sweep.rs",
            "xtask/src/config.rs",
        ],
    ),
    ("ANALYSIS", &["analysis", "xtask/src/stages/analysis.rs"]),
];

fn main() {
    // Read at run time: `env!` would bake in the checkout this script was first
    // compiled for, and a target dir shared between clones reuses the script.
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let crates = Path::new(&manifest_dir).join("..");
    for (stage, sources) in STAGES {
        let mut files = Vec::new();
        for source in *sources {
            let path = crates.join(source);
            println!("cargo:rerun-if-changed={}", path.display());
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
            let rel = file.strip_prefix(&crates).unwrap_or(&file);
            hasher.update(rel.to_string_lossy().as_bytes());
            let bytes = std::fs::read(&file).unwrap_or_else(|e| {
                panic!(
                    "stage {stage}'s fingerprint needs {}, which cannot be read: {e}",
                    file.display()
                )
            });
            hasher.update(bytes);
        }
        println!(
            "cargo:rustc-env=SAELAB_FP_{stage}={}",
            hex::encode(&hasher.finalize()[..8])
        );
    }
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
