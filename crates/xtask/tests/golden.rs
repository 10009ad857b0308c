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

mod support;

use std::path::Path;

use sha2::{Digest, Sha256};

/// (what, SHA-256): the MLP's weights (one epoch), fc2.pre's training rows,
/// then each zoo point's `sae_weights.safetensors` after 2 epochs, by `sae.architecture`.
const GOLDEN: &[(&str, &str)] = &[
    (
        "mlp",
        "ba471c4f149f6a587baef241394a0c5dfea0f8d62eef07cad70eeb786635500d",
    ),
    (
        "fc2.pre",
        "6d141a5397a8678c3d1d2c95756cdd77afe381387e1ce5bd8bef57d0f63a9518",
    ),
    (
        "l1",
        "1d0aa1ae5f9437d3bd9f66ba1860ed55d2b6ea4056fc60e85c52257220c237d5",
    ),
    (
        "topk",
        "ae3a8e114b18d5495df0788229fc1a3a721a8235cd25b216feda6182b2940055",
    ),
    (
        "norm_weighted_l1",
        "d36b328e4b15b1f09c972d1839dbc712acf569b0a1cf2ad483dfd024deaf29cb",
    ),
    (
        "batchtopk",
        "f4bcfea025526e19a25698afaf0a7b411b49dde59c10842e61dc396c00324812",
    ),
    (
        "matryoshka_batchtopk",
        "f5cf40f63464afb743332e8999adbf56eb2d86c126869420bc506289608bb976",
    ),
    (
        "jumprelu",
        "e8e2c030355318633f58acf49a8947f4d190d8d0a712c462f901e34d1ba85797",
    ),
    (
        "gated",
        "eadca801639c01e22f2d5788a6692ebfa5c3a1e8ca5dbb61686857c5efa61579",
    ),
    (
        "transcoder",
        "3e253a680235c2b7c86b605faf59e7a56057c626f822829ecc7705f2df0eec0d",
    ),
    (
        "skip_transcoder",
        "9970eef718f769177a16c91e0fd1f6c9ad9e5d6532f809fc2fc0c75daec32a3c",
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
    // The quick MLP (one epoch), then 2 epochs of every zoo point.
    let run = support::xtask(
        store.path(),
        &["run", "sae", "--preset", "zoo", "--set", "sae.epochs=2"],
    );
    assert!(run.ok, "{}", run.stderr);
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
            let architecture = manifest["params"]["sae"]["architecture"]
                .as_str()
                .unwrap()
                .to_string();
            (
                architecture,
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
