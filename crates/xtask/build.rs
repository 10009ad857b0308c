//! Computes each stage's code fingerprint from the sources that make its
//! artifact, so any code change invalidates exactly the stages it touches.
//! The computation lives in `src/fingerprint.rs`, shared with its tests.

include!("src/fingerprint.rs");

fn main() {
    // Read at run time: `env!` would bake in the checkout this script was first
    // compiled for, and a target dir shared between clones reuses the script.
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let crates = Path::new(&manifest_dir).join("..");
    let fingerprints = stage_fingerprints(&crates).unwrap_or_else(|e| panic!("{e}"));
    for (stage, fingerprint, watched) in fingerprints {
        for path in watched {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        println!("cargo:rustc-env=SAELAB_FP_{stage}={fingerprint}");
    }
}
