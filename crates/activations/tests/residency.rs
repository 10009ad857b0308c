//! `Residency::ReleaseBehind` keeps a one-pass scan's resident set near one shard.
//! Its own test binary, so no other test's mappings move this process's RSS.
#![cfg(target_os = "linux")]

mod support;

use activations::{ActivationStore, BatchConfig, BatchIter, Residency, VerifyMode};
use support::{build_store, value};

const ROWS: usize = 500_000;
const ROWS_PER_SHARD: usize = 50_000;
const WIDTH: usize = 8; // `fc1.pre` in the support store: 16 MB, 1.6 MB per shard

fn rss_file_bytes() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssFile:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssFile in /proc/self/status");
    kib * 1024.0
}

/// One epoch: (sum of all values, largest growth of RssFile seen during it).
fn scan(iter: &BatchIter<'_>) -> (f64, f64) {
    let before = rss_file_bytes();
    let mut growth: f64 = 0.0;
    let mut sum = 0f64;
    for batch in iter.epoch(0) {
        sum += batch.x.iter().map(|&v| v as f64).sum::<f64>();
        growth = growth.max(rss_file_bytes() - before);
    }
    (sum, growth)
}

#[test]
fn release_behind_keeps_a_sequential_scan_near_one_shard() {
    let s = build_store(&[("train", ROWS)], ROWS_PER_SHARD);
    let store = ActivationStore::open(s.dir.path(), &s.shards, VerifyMode::Sizes).unwrap();
    let view = store.layer("train", "fc1.pre").unwrap();
    assert_eq!(view.width(), WIDTH);
    let layer_bytes = (ROWS * WIDTH * 4) as f64;
    let shard_bytes = (ROWS_PER_SHARD * WIDTH * 4) as f64;
    let expected: f64 = (0..ROWS)
        .flat_map(|r| (0..WIDTH).map(move |u| value("train", r, u, 0) as f64))
        .sum();

    let release = BatchConfig {
        residency: Residency::ReleaseBehind,
        ..BatchConfig::sequential(4096)
    };
    let (sum, growth) = scan(&BatchIter::new(&view, &release).unwrap());
    assert_eq!(sum, expected);
    assert!(
        growth < 2.5 * shard_bytes,
        "released scan grew RssFile by {growth} bytes (shard {shard_bytes})"
    );

    // The same pages, kept: RSS grows to the whole layer, so the measure is real.
    let (sum, growth) = scan(&BatchIter::new(&view, &BatchConfig::sequential(4096)).unwrap());
    assert_eq!(sum, expected);
    assert!(
        growth > 0.9 * layer_bytes,
        "kept scan grew RssFile by only {growth} bytes (layer {layer_bytes})"
    );

    // Released pages read back unchanged, through the same borrowed slices.
    for chunk in view.chunks() {
        chunk.release();
    }
    assert_eq!(view.row(123_457)[3], value("train", 123_457, 3, 0));
}
