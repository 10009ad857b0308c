//! Same seed, same bits, on every machine: a short run of every zoo
//! architecture on the real pipeline, its SAEs' weights pinned by SHA-256.
//!
//! What can move the bits between CPUs is pinned down in code: subnormals
//! flushed in every trainer thread (`subnormals`), gemm's sums over more than
//! 512 terms split in fixed blocks (`mlp::model`'s fc1, `sae::kernels::matmul`)
//! rather than by the L1 cache it detects, saelab's own kernels bit-identical
//! across instruction sets, and feature halves fixed. A CPU that disagrees
//! fails here and says at which stage the bits first part.
//!
//! The values were measured on an AMD EPYC (AVX2). When a change is meant to
//! change the bits (a new default, a new init), update them and say why.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

/// (what, SHA-256): the MLP's weights, fc2.pre's training rows, then each
/// zoo point's `sae_weights.safetensors` after 2 epochs, by `sae.variant`.
const GOLDEN: &[(&str, &str)] = &[
    (
        "mlp",
        "72afec3a87e51d8086b4c03d06f08525fdd0c10e8d4dc482aa86fb81b3b946c9",
    ),
    (
        "fc2.pre",
        "07e43eb3b6e51d01497397c3507ed88817baddb2a1f4f9bdb00ef062dcaa2a73",
    ),
    (
        "l1",
        "9e5db72754faf8e6569860005ab3df5bbaa785e2a461de1ed09cc2801a68bdef",
    ),
    (
        "topk",
        "3a120411c9451360699628fe7bc250b9f48cc53053609c761b7e08e6d196df40",
    ),
    (
        "norm_weighted_l1",
        "e0ff8ae02a57ac2f58b44cc0e3e5604294cc3c673d7662db791faa5056820146",
    ),
    (
        "batchtopk",
        "208ccda4d27498e5f015bf8f2b44d6c5dd427e04a7a53ed9dbab03b8deef1fa9",
    ),
    (
        "matryoshka_batchtopk",
        "c6c099da9401f516a75ae2c1e6f611e93eec3818294966d9137263df775c90e5",
    ),
    (
        "jumprelu",
        "6f786bec3f8653b0634b3d63eee5446f755df80a4c34f56055d5b30ac05eea1f",
    ),
    (
        "gated",
        "4f871214782b861108bef60ae21fd48995eebb02eb966cb8eec5b0db9f7580c7",
    ),
    (
        "transcoder",
        "ccded2e03cdd92d9cf7713f2e468505f9eb7ce71acfa82bff1a6ed07b870e1bd",
    ),
    (
        "skip_transcoder",
        "66260214a856f5849e3eccb90abfb049fea8be62c9a7a150b1a2c99c450f094e",
    ),
];

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every artifact folder of `kind` in `store`, with its manifest.
fn folders(store: &Path, kind: &str) -> Vec<(std::path::PathBuf, serde_json::Value)> {
    std::fs::read_dir(store.join(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("manifest.json").exists())
        .map(|p| {
            let manifest =
                serde_json::from_slice(&std::fs::read(p.join("manifest.json")).unwrap()).unwrap();
            (p, manifest)
        })
        .collect()
}

#[test]
fn the_zoo_trains_to_the_pinned_bits() {
    let store = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .env("SAELAB_ARTIFACTS", store.path())
        .env("SAELAB_MNIST_DIR", testkit::mnist_dir())
        .args(["run", "sae", "--preset", "zoo", "--set", "sae.epochs=2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut measured: Vec<(String, String)> = Vec::new();
    let [(mlp, _)] = &folders(store.path(), "mlp")[..] else {
        panic!("one MLP")
    };
    measured.push((
        "mlp".into(),
        sha256(&std::fs::read(mlp.join("model.safetensors")).unwrap()),
    ));
    let [(cache, _)] = &folders(store.path(), "activations")[..] else {
        panic!("one activation cache")
    };
    let shards: Vec<activations::ShardInfo> =
        serde_json::from_slice(&std::fs::read(cache.join("shards.json")).unwrap()).unwrap();
    let acts = activations::ActivationStore::open(cache, &shards, activations::VerifyMode::Digests)
        .unwrap();
    let fc2_pre = acts.layer("train", "fc2.pre").unwrap().to_vec();
    measured.push(("fc2.pre".into(), sha256(bytemuck_bytes(&fc2_pre))));
    let mut saes: Vec<(String, String)> = folders(store.path(), "sae")
        .into_iter()
        .map(|(dir, manifest)| {
            let variant = manifest["params"]["sae"]["variant"]
                .as_str()
                .unwrap()
                .to_string();
            (
                variant,
                sha256(&std::fs::read(dir.join("sae_weights.safetensors")).unwrap()),
            )
        })
        .collect();
    assert_eq!(saes.len(), 9, "{saes:?}");
    let order = |v: &str| {
        GOLDEN
            .iter()
            .position(|(g, _)| *g == v)
            .unwrap_or(usize::MAX)
    };
    saes.sort_by_key(|(v, _)| order(v));
    measured.extend(saes);
    let table: String = measured
        .iter()
        .map(|(what, sha)| format!("    (\"{what}\", \"{sha}\"),\n"))
        .collect();
    // The first disagreement names the stage where the bits part; the table
    // is what this machine measured.
    for ((what, sha), (golden_what, golden_sha)) in measured.iter().zip(GOLDEN) {
        assert_eq!(what, golden_what);
        assert_eq!(
            sha, golden_sha,
            "{what} differs from the pinned bits: this machine measured\n{table}"
        );
    }
    assert_eq!(measured.len(), GOLDEN.len());
}

fn bytemuck_bytes(values: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte is a valid u8.
    unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
    }
}
