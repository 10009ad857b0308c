//! Times writing an MNIST-sized store (60000 + 10000 rows, layers 4x128 + 10) and
//! measures peak RSS while iterating one layer through the memory-mapped reader.
//!
//! cargo run --release -p activations --example store_bench [-- DIR]
//! (DIR defaults to a fresh temporary directory, removed afterwards)

use std::path::Path;
use std::time::Instant;

use activations::{
    write_split, ActivationStore, BatchConfig, BatchIter, LayerValues, Residency, ShardConfig,
    ShardMeta, VerifyMode,
};

const LAYERS: [(&str, usize); 5] = [
    ("fc1.pre", 128),
    ("fc1.post", 128),
    ("fc2.pre", 128),
    ("fc2.post", 128),
    ("logits", 10),
];

fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn memory(label: &str) {
    println!(
        "{label:<44} VmHWM {:>7.1} MB  RssAnon {:>6.1} MB  RssFile {:>6.1} MB",
        status_kib("VmHWM:") as f64 / 1024.0,
        status_kib("RssAnon:") as f64 / 1024.0,
        status_kib("RssFile:") as f64 / 1024.0,
    );
}

fn write_store(dir: &Path) -> Vec<activations::ShardInfo> {
    let meta = ShardMeta {
        mlp_key: "bench".into(),
        dataset_digest: "bench".into(),
    };
    let cfg = ShardConfig::default();
    let mut shards = Vec::new();
    let mut seconds = 0.0;
    let mut bytes = 0u64;
    for (split, rows) in [("train", 60_000usize), ("test", 10_000)] {
        let data: Vec<Vec<f32>> = LAYERS
            .iter()
            .enumerate()
            .map(|(layer, &(_, width))| {
                (0..rows * width)
                    .map(|i| ((i * 31 + layer * 7) % 1000) as f32 * 0.01)
                    .collect()
            })
            .collect();
        let layers: Vec<LayerValues<'_>> = LAYERS
            .iter()
            .zip(&data)
            .map(|(&(name, width), data)| LayerValues { name, width, data })
            .collect();
        let labels: Vec<u8> = (0..rows).map(|r| (r % 10) as u8).collect();
        let index: Vec<u32> = (0..rows as u32).collect();
        let start = Instant::now();
        let written = write_split(dir, split, &layers, &labels, &index, &cfg, &meta).unwrap();
        seconds += start.elapsed().as_secs_f64();
        bytes += written.iter().map(|s| s.size_bytes).sum::<u64>();
        shards.extend(written);
    }
    println!(
        "write_split train+test: {} shards, {:.1} MB in {:.3} s ({:.0} MB/s, incl. sha256 + fsync, {} rayon threads)",
        shards.len(),
        bytes as f64 / 1e6,
        seconds,
        bytes as f64 / 1e6 / seconds,
        rayon::current_num_threads()
    );
    shards
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, dir] = args.as_slice() {
        if mode == "--read" {
            return read_store(Path::new(dir));
        }
    }
    let temp;
    let dir = match args.get(1) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            temp = tempfile::tempdir().unwrap();
            temp.path().to_path_buf()
        }
    };
    let shards = write_store(&dir);
    for verify in [VerifyMode::Sizes, VerifyMode::Digests] {
        let start = Instant::now();
        ActivationStore::open(&dir, &shards, verify).unwrap();
        println!("open {verify:?}: {:.3} s", start.elapsed().as_secs_f64());
    }
    std::fs::write(
        dir.join("shards.json"),
        serde_json::to_vec(&shards).unwrap(),
    )
    .unwrap();
    // A fresh process, so the writer's buffers do not colour the reader's RSS.
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--read")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
}

fn read_store(dir: &Path) {
    memory("reader process start");
    let shards: Vec<activations::ShardInfo> =
        serde_json::from_slice(&std::fs::read(dir.join("shards.json")).unwrap()).unwrap();
    let store = ActivationStore::open(dir, &shards, VerifyMode::Sizes).unwrap();
    let view = store.layer("train", "fc2.pre").unwrap();
    println!(
        "layer train/fc2.pre: {} x {} = {:.1} MB; whole store {:.1} MB",
        view.rows(),
        view.width(),
        (view.rows() * view.width() * 4) as f64 / 1e6,
        shards.iter().map(|s| s.size_bytes).sum::<u64>() as f64 / 1e6
    );
    memory("after open");
    // Release-behind first: afterwards the kept passes map every page anyway.
    for (label, cfg) in [
        (
            "sequential epoch, batch 256, release behind",
            BatchConfig {
                residency: Residency::ReleaseBehind,
                ..BatchConfig::sequential(256)
            },
        ),
        ("sequential epoch, batch 256", BatchConfig::sequential(256)),
        ("shuffled epoch, batch 256", BatchConfig::shuffled(256, 1)),
    ] {
        let batches = BatchIter::new(&view, &cfg).unwrap();
        let start = Instant::now();
        let mut checksum = 0f64;
        for batch in batches.epoch(0) {
            checksum += batch.x.iter().map(|&v| v as f64).sum::<f64>();
        }
        println!(
            "{label}: {:.3} s (checksum {checksum:.1})",
            start.elapsed().as_secs_f64()
        );
        memory(label);
    }
}
