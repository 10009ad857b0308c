mod support;

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;

use activations::{
    ActivationStore, ActivationsError, BatchConfig, BatchIter, LastBatch, LayerValues, Order,
    ShardConfig, ShardInfo, VerifyMode,
};
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use support::{build_store, dataset_index, label, meta, value, Synthetic, LAYERS};

const TRAIN_ROWS: usize = 103;
const TEST_ROWS: usize = 40;
const ROWS_PER_SHARD: usize = 25;

fn standard() -> Synthetic {
    build_store(
        &[("train", TRAIN_ROWS), ("test", TEST_ROWS)],
        ROWS_PER_SHARD,
    )
}

fn open(
    s: &Synthetic,
    shards: &[ShardInfo],
    verify: VerifyMode,
) -> Result<ActivationStore, ActivationsError> {
    ActivationStore::open(s.dir.path(), shards, verify)
}

/// Asserts the refusal is one sentence naming the shard file and saying `phrase`.
fn assert_refused(result: Result<ActivationStore, ActivationsError>, file: &str, phrase: &str) {
    let message = result.expect_err("the store should be refused").to_string();
    assert!(
        message.contains(file),
        "message does not name {file}: {message}"
    );
    assert!(
        message.contains(phrase),
        "message lacks `{phrase}`: {message}"
    );
    assert!(!message.contains('\n'), "message spans lines: {message}");
}

#[test]
fn writer_reports_row_ranges_sizes_and_digests_of_each_file() {
    let s = standard();
    let ranges: Vec<(&str, &str, usize, usize)> = s
        .shards
        .iter()
        .map(|i| (i.file.as_str(), i.split.as_str(), i.row_start, i.row_end))
        .collect();
    assert_eq!(
        ranges,
        [
            ("train-00000.safetensors", "train", 0, 25),
            ("train-00001.safetensors", "train", 25, 50),
            ("train-00002.safetensors", "train", 50, 75),
            ("train-00003.safetensors", "train", 75, 100),
            ("train-00004.safetensors", "train", 100, 103),
            ("test-00000.safetensors", "test", 0, 25),
            ("test-00001.safetensors", "test", 25, 40),
        ]
    );
    for (n, info) in s.shards.iter().enumerate() {
        let bytes = std::fs::read(s.path(n)).unwrap();
        assert_eq!(info.size_bytes, bytes.len() as u64);
        assert_eq!(info.sha256, hex::encode(Sha256::digest(&bytes)));
        let widths: Vec<(&str, usize)> = info
            .layers
            .iter()
            .map(|l| (l.name.as_str(), l.width))
            .collect();
        assert_eq!(widths, LAYERS);
    }
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".safetensors") || n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn shards_parse_with_safetensors_and_every_tensor_is_aligned() {
    let s = standard();
    for (n, info) in s.shards.iter().enumerate() {
        let bytes = std::fs::read(s.path(n)).unwrap();
        let (header_len, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let data_start = 8 + header_len;
        assert_eq!(data_start % 8, 0);
        let tensors = metadata.tensors();
        let rows = info.rows();
        for (layer, (name, width)) in LAYERS.iter().enumerate() {
            let t = tensors[*name];
            assert_eq!(t.dtype, Dtype::F32);
            assert_eq!(t.shape, vec![rows, *width]);
            let start = data_start + t.data_offsets.0;
            assert_eq!(
                start % 4,
                0,
                "{name} in {} starts at byte {start}",
                info.file
            );
            let first = f32::from_le_bytes(bytes[start..start + 4].try_into().unwrap());
            assert_eq!(first, value(&info.split, info.row_start, 0, layer));
        }
        assert_eq!(tensors["index"].dtype, Dtype::U32);
        assert_eq!((data_start + tensors["index"].data_offsets.0) % 4, 0);
        assert_eq!(tensors["labels"].dtype, Dtype::U8);
        assert_eq!(tensors["labels"].shape, vec![rows]);
        let meta = metadata.metadata().as_ref().unwrap();
        assert_eq!(meta["split"], info.split);
        assert_eq!(meta["row_start"], info.row_start.to_string());
        assert_eq!(meta["row_end"], info.row_end.to_string());
        assert_eq!(meta["layers"], "fc1.pre,fc2.post,logits");
        assert_eq!(meta["mlp_key"], "mlp-test-key");
        assert_eq!(meta["dataset_digest"], "dataset-test-digest");
    }
}

#[test]
fn same_inputs_give_byte_identical_shards() {
    let a = standard();
    let b = standard();
    let digests = |s: &Synthetic| {
        s.shards
            .iter()
            .map(|i| i.sha256.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(digests(&a), digests(&b));
}

#[test]
fn round_trip_values_labels_and_indices_across_shard_boundaries() {
    let s = standard();
    let store = open(&s, &s.shards, VerifyMode::Digests).unwrap();
    assert_eq!(store.splits(), ["test", "train"]);
    assert_eq!(store.layer_names(), ["fc1.pre", "fc2.post", "logits"]);
    assert_eq!(store.widths(), LAYERS);
    assert_eq!(store.meta(), &meta());
    for (split, rows) in [("train", TRAIN_ROWS), ("test", TEST_ROWS)] {
        assert_eq!(store.rows(split).unwrap(), rows);
        for (layer, &(name, width)) in LAYERS.iter().enumerate() {
            let view = store.layer(split, name).unwrap();
            assert_eq!((view.rows(), view.width()), (rows, width));
            let expected: Vec<f32> = (0..rows * width)
                .map(|i| value(split, i / width, i % width, layer))
                .collect();
            assert_eq!(view.to_vec(), expected);
            for row in 0..rows {
                assert_eq!(view.row(row), &expected[row * width..(row + 1) * width]);
                assert_eq!(view.label(row), label(row));
                assert_eq!(view.dataset_index(row), dataset_index(row));
            }
            assert_eq!(view.labels(), (0..rows).map(label).collect::<Vec<_>>());
            assert_eq!(
                view.indices(),
                (0..rows).map(dataset_index).collect::<Vec<_>>()
            );
            let shard_lengths: Vec<usize> = view.shards().map(|x| x.len() / width).collect();
            let mut want = vec![ROWS_PER_SHARD; rows / ROWS_PER_SHARD];
            if rows % ROWS_PER_SHARD != 0 {
                want.push(rows % ROWS_PER_SHARD);
            }
            assert_eq!(shard_lengths, want);
        }
    }
}

#[test]
fn shard_slices_point_into_the_map_without_copying() {
    let s = standard();
    let store = open(&s, &s.shards, VerifyMode::Sizes).unwrap();
    let view = store.layer("train", "fc2.post").unwrap();
    let again = store.layer("train", "fc2.post").unwrap();
    for (a, b) in view.shards().zip(again.shards()) {
        assert_eq!(a.as_ptr(), b.as_ptr());
    }
    assert_eq!(view.row(30).as_ptr(), view.chunks()[1].x[5 * 5..].as_ptr());
}

fn collect_epoch(batches: &BatchIter<'_>, epoch: u64) -> (Vec<f32>, Vec<u8>, Vec<u32>, Vec<bool>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for batch in batches.epoch(epoch) {
        assert_eq!(batch.x.len(), batch.len() * batch.width);
        out.0.extend_from_slice(&batch.x);
        out.1.extend_from_slice(&batch.labels);
        out.2.extend_from_slice(&batch.indices);
        out.3.push(batch.is_borrowed());
    }
    out
}

#[test]
fn sequential_batches_follow_dataset_order_and_borrow_inside_a_shard() {
    let s = standard();
    let store = open(&s, &s.shards, VerifyMode::Sizes).unwrap();
    let view = store.layer("train", "fc1.pre").unwrap();
    let batches = BatchIter::new(&view, &BatchConfig::sequential(10)).unwrap();
    assert_eq!(batches.batches_per_epoch(), 11);
    let (x, labels, indices, borrowed) = collect_epoch(&batches, 0);
    assert_eq!(x, view.to_vec());
    assert_eq!(labels, view.labels());
    assert_eq!(
        indices,
        (0..TRAIN_ROWS).map(dataset_index).collect::<Vec<_>>()
    );
    // Only batches 20..30 and 70..80 straddle a shard start (25, 50, 75, 100).
    let straddles = [
        false, false, true, false, false, false, false, true, false, false, false,
    ];
    assert_eq!(borrowed, straddles.map(|s| !s));
    let sizes: Vec<usize> = batches.epoch(3).map(|b| b.len()).collect();
    assert_eq!(sizes, [10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 3]);

    let drop_last = BatchConfig {
        last_batch: LastBatch::Drop,
        ..BatchConfig::sequential(10)
    };
    let sizes: Vec<usize> = BatchIter::new(&view, &drop_last)
        .unwrap()
        .epoch(0)
        .map(|b| b.len())
        .collect();
    assert_eq!(sizes, [10; 10]);
}

#[test]
fn shuffled_batches_cover_every_row_once_and_repeat_per_seed_and_epoch() {
    let s = standard();
    let store = open(&s, &s.shards, VerifyMode::Sizes).unwrap();
    let view = store.layer("train", "logits").unwrap();
    let cfg = BatchConfig::shuffled(16, 7);
    let batches = BatchIter::new(&view, &cfg).unwrap();
    let (x0, labels0, order0, _) = collect_epoch(&batches, 0);
    let (_, _, order1, _) = collect_epoch(&batches, 1);
    for order in [&order0, &order1] {
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            (0..TRAIN_ROWS).map(dataset_index).collect::<Vec<_>>()
        );
    }
    assert_ne!(order0, order1);
    assert_ne!(
        order0,
        (0..TRAIN_ROWS).map(dataset_index).collect::<Vec<_>>()
    );
    // Each row's values and label travel with its index.
    for (k, &index) in order0.iter().enumerate() {
        let row = (index as usize - 1) / 3;
        assert_eq!(
            &x0[k * 3..k * 3 + 3],
            (0..3)
                .map(|u| value("train", row, u, 2))
                .collect::<Vec<_>>()
        );
        assert_eq!(labels0[k], label(row));
    }
    let same_seed = BatchIter::new(&view, &cfg).unwrap();
    assert_eq!(collect_epoch(&same_seed, 0).2, order0);
    assert_eq!(collect_epoch(&same_seed, 1).2, order1);
    let other_seed = BatchIter::new(&view, &BatchConfig::shuffled(16, 8)).unwrap();
    assert_ne!(collect_epoch(&other_seed, 0).2, order0);
}

#[test]
fn subset_iteration_keeps_the_subset_order_or_permutes_it() {
    let s = standard();
    let store = open(&s, &s.shards, VerifyMode::Sizes).unwrap();
    let view = store.layer("test", "fc2.post").unwrap();
    let subset = vec![5u32, 6, 7, 39, 26, 24, 25];
    let cfg = BatchConfig {
        rows: Some(subset.clone()),
        ..BatchConfig::sequential(3)
    };
    let batches = BatchIter::new(&view, &cfg).unwrap();
    assert_eq!(batches.rows_per_epoch(), 7);
    let (x, _, indices, borrowed) = collect_epoch(&batches, 0);
    assert_eq!(
        indices,
        subset
            .iter()
            .map(|&r| dataset_index(r as usize))
            .collect::<Vec<_>>()
    );
    let expected: Vec<f32> = subset
        .iter()
        .flat_map(|&r| (0..5).map(move |u| value("test", r as usize, u, 1)))
        .collect();
    assert_eq!(x, expected);
    assert_eq!(borrowed, [true, false, true]);

    let shuffled = BatchIter::new(
        &view,
        &BatchConfig {
            order: Order::Shuffled { seed: 1 },
            ..cfg
        },
    )
    .unwrap();
    let (_, _, mut indices, _) = collect_epoch(&shuffled, 4);
    indices.sort();
    let mut want: Vec<u32> = subset.iter().map(|&r| dataset_index(r as usize)).collect();
    want.sort();
    assert_eq!(indices, want);
}

#[test]
fn bad_batch_configs_are_refused() {
    let s = standard();
    let store = open(&s, &s.shards, VerifyMode::Sizes).unwrap();
    let view = store.layer("test", "logits").unwrap();
    let refuse = |cfg: BatchConfig, phrase: &str| {
        let message = BatchIter::new(&view, &cfg).unwrap_err().to_string();
        assert!(message.contains(phrase), "{message}");
    };
    refuse(BatchConfig::sequential(0), "batch_size");
    let with_rows = |rows: Vec<u32>| BatchConfig {
        rows: Some(rows),
        ..BatchConfig::sequential(4)
    };
    refuse(with_rows(vec![1, 40]), "subset row 40 is out of range");
    refuse(
        with_rows(vec![3, 2, 3]),
        "subset row 3 appears more than once",
    );
    refuse(with_rows(vec![]), "empty");
}

#[cfg(feature = "candle")]
#[test]
fn batch_becomes_a_candle_tensor() {
    let s = standard();
    let store = open(&s, &s.shards, VerifyMode::Sizes).unwrap();
    let view = store.layer("train", "fc1.pre").unwrap();
    let batch = BatchIter::new(&view, &BatchConfig::sequential(4))
        .unwrap()
        .epoch(0)
        .nth(1)
        .unwrap();
    let tensor = batch.to_tensor(&candle_core::Device::Cpu).unwrap();
    assert_eq!(tensor.dims(), [4, 8]);
    let rows: Vec<Vec<f32>> = tensor.to_vec2().unwrap();
    assert_eq!(
        rows[2],
        (0..8).map(|u| value("train", 6, u, 0)).collect::<Vec<_>>()
    );
}

#[test]
fn unknown_layer_or_split_lists_what_exists() {
    let s = standard();
    let store = open(&s, &s.shards, VerifyMode::Sizes).unwrap();
    let message = store.layer("train", "fc3.pre").unwrap_err().to_string();
    assert_eq!(
        message,
        "unknown layer `fc3.pre`; the store holds: fc1.pre, fc2.post, logits"
    );
    let message = store.layer("valid", "logits").unwrap_err().to_string();
    assert_eq!(
        message,
        "unknown split `valid`; the store holds: test, train"
    );
}

#[test]
fn writer_refuses_inconsistent_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![0f32; 12];
    let write = |split: &str, layers: &[LayerValues<'_>], labels: &[u8], rows_per_shard: usize| {
        let index: Vec<u32> = (0..labels.len() as u32).collect();
        let cfg = ShardConfig { rows_per_shard };
        activations::write_split(dir.path(), split, layers, labels, &index, &cfg, &meta())
            .unwrap_err()
            .to_string()
    };
    let layer = |name, width| LayerValues {
        name,
        width,
        data: &data,
    };
    let message = write("train", &[layer("fc1.pre", 5)], &[0; 3], 2);
    assert_eq!(
        message,
        "layer `fc1.pre` has 12 values but 3 rows x width 5 need 15"
    );
    assert!(write("train", &[layer("labels", 4)], &[0; 3], 2).contains("`labels` is not allowed"));
    assert!(
        write("train", &[layer("a", 4), layer("a", 4)], &[0; 3], 2).contains("`a` is given twice")
    );
    assert!(write("train-x", &[layer("a", 4)], &[0; 3], 2).contains("split name `train-x`"));
    assert!(write("train", &[layer("a", 4)], &[0; 3], 0).contains("rows_per_shard"));
}

// ---- damaged stores: every refusal names the shard file ----

#[test]
fn truncated_shard_is_refused_by_size_before_mapping() {
    let s = standard();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(s.path(2))
        .unwrap();
    file.set_len(s.shards[2].size_bytes - 10).unwrap();
    assert_refused(
        open(&s, &s.shards, VerifyMode::Sizes),
        "train-00002.safetensors",
        "bytes long but",
    );
}

#[test]
fn truncated_shard_with_matching_manifest_is_refused_by_its_header() {
    let s = standard();
    let mut shards = s.shards.clone();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(s.path(1))
        .unwrap();
    shards[1].size_bytes -= 64;
    file.set_len(shards[1].size_bytes).unwrap();
    assert_refused(
        open(&s, &shards, VerifyMode::Sizes),
        "train-00001.safetensors",
        "its header describes",
    );
}

#[test]
fn appended_bytes_are_refused() {
    let s = standard();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(s.path(4))
        .unwrap();
    file.write_all(b"extra").unwrap();
    assert_refused(
        open(&s, &s.shards, VerifyMode::Sizes),
        "train-00004.safetensors",
        "bytes long but",
    );
}

#[test]
fn corrupted_header_is_refused() {
    let s = standard();
    let mut bytes = std::fs::read(s.path(5)).unwrap();
    bytes[8..20].copy_from_slice(b"#garbage#!!!");
    std::fs::write(s.path(5), &bytes).unwrap();
    assert_refused(
        open(&s, &s.shards, VerifyMode::Sizes),
        "test-00000.safetensors",
        "not a valid safetensors header",
    );

    let s = standard();
    let mut bytes = std::fs::read(s.path(6)).unwrap();
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(s.path(6), &bytes).unwrap();
    assert_refused(
        open(&s, &s.shards, VerifyMode::Sizes),
        "test-00001.safetensors",
        "header length field",
    );
}

/// Rewrites shard `n` through the safetensors crate with `change(name, dtype, shape)`
/// applied to each tensor, keeping its metadata, and updates the manifest size.
fn rewrite_shard(
    s: &Synthetic,
    n: usize,
    change: impl Fn(&str, &mut Dtype, &mut Vec<usize>),
) -> Vec<ShardInfo> {
    struct Raw(Dtype, Vec<usize>, Vec<u8>);
    impl safetensors::View for &Raw {
        fn dtype(&self) -> Dtype {
            self.0
        }
        fn shape(&self) -> &[usize] {
            &self.1
        }
        fn data(&self) -> Cow<'_, [u8]> {
            Cow::Borrowed(&self.2)
        }
        fn data_len(&self) -> usize {
            self.2.len()
        }
    }
    let bytes = std::fs::read(s.path(n)).unwrap();
    let parsed = SafeTensors::deserialize(&bytes).unwrap();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let raws: Vec<(String, Raw)> = parsed
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let (mut dtype, mut shape) = (view.dtype(), view.shape().to_vec());
            change(&name, &mut dtype, &mut shape);
            let raw = Raw(dtype, shape, view.data().to_vec());
            (name, raw)
        })
        .collect();
    let meta: HashMap<String, String> = metadata.metadata().clone().unwrap();
    let out =
        safetensors::serialize(raws.iter().map(|(n, r)| (n.as_str(), r)), Some(meta)).unwrap();
    std::fs::write(s.path(n), &out).unwrap();
    let mut shards = s.shards.clone();
    shards[n].size_bytes = out.len() as u64;
    shards[n].sha256 = hex::encode(Sha256::digest(&out));
    shards
}

#[test]
fn wrong_dtype_is_refused() {
    let s = standard();
    let shards = rewrite_shard(&s, 3, |name, dtype, _| {
        if name == "fc2.post" {
            *dtype = Dtype::I32;
        }
    });
    assert_refused(
        open(&s, &shards, VerifyMode::Digests),
        "train-00003.safetensors",
        "`fc2.post` has dtype I32 but F32",
    );
}

#[test]
fn wrong_shape_is_refused() {
    let s = standard();
    let shards = rewrite_shard(&s, 0, |name, _, shape| {
        if name == "logits" {
            *shape = vec![shape[0] * shape[1] / 5, 5];
        }
    });
    assert_refused(
        open(&s, &shards, VerifyMode::Digests),
        "train-00000.safetensors",
        "`logits` has shape [15, 5] but [25, 3]",
    );
    let s = standard();
    let shards = rewrite_shard(&s, 0, |name, _, shape| {
        if name == "labels" {
            *shape = vec![shape[0], 1];
        }
    });
    assert_refused(
        open(&s, &shards, VerifyMode::Sizes),
        "train-00000.safetensors",
        "`labels` has shape [25, 1] but [25]",
    );
}

#[test]
fn reordered_safetensors_file_with_same_content_is_accepted() {
    // safetensors' own writer orders tensors differently; the reader only needs the header.
    let s = standard();
    let shards = rewrite_shard(&s, 1, |_, _, _| {});
    let store = open(&s, &shards, VerifyMode::Digests).unwrap();
    let view = store.layer("train", "fc2.post").unwrap();
    assert_eq!(
        view.row(30),
        (0..5).map(|u| value("train", 30, u, 1)).collect::<Vec<_>>()
    );
    assert_eq!(view.label(30), label(30));
}

#[test]
fn digest_mismatch_is_refused_only_under_digests() {
    let s = standard();
    let mut bytes = std::fs::read(s.path(4)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(s.path(4), &bytes).unwrap();
    assert!(open(&s, &s.shards, VerifyMode::Sizes).is_ok());
    assert_refused(
        open(&s, &s.shards, VerifyMode::Digests),
        "train-00004.safetensors",
        "its SHA-256 is",
    );
}

#[test]
fn missing_shard_file_is_refused() {
    let s = standard();
    std::fs::remove_file(s.path(6)).unwrap();
    assert_refused(
        open(&s, &s.shards, VerifyMode::Sizes),
        "test-00001.safetensors",
        "does not exist",
    );
}

#[test]
fn gaps_and_mismatched_manifests_are_refused() {
    let s = standard();
    let mut gap = s.shards.clone();
    gap.remove(2);
    assert_refused(
        open(&s, &gap, VerifyMode::Sizes),
        "train-00003.safetensors",
        "starts at row 75 but the previous shard of split `train`, train-00001.safetensors, ends at row 50",
    );

    let mut renamed = s.shards.clone();
    renamed[5].split = "valid".into();
    renamed[6].split = "valid".into();
    assert_refused(
        open(&s, &renamed, VerifyMode::Sizes),
        "test-0000",
        "`split` is `test` but `valid`",
    );

    let mut escaping = s.shards.clone();
    escaping[0].file = "../train-00000.safetensors".into();
    assert_refused(
        open(&s, &escaping, VerifyMode::Sizes),
        "train-00000.safetensors",
        "not a plain",
    );

    let mut wider = s.shards.clone();
    for info in &mut wider {
        info.layers[2].width = 4;
    }
    assert_refused(
        open(&s, &wider, VerifyMode::Sizes),
        "-0000",
        "`logits` has shape",
    );
}

#[test]
fn open_dir_names_a_missing_or_damaged_shard_list() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join(activations::SHARD_LIST_FILE);
    let missing = activations::ActivationStore::open_dir(dir.path(), VerifyMode::Sizes)
        .unwrap_err()
        .to_string();
    assert!(missing.contains(&list.display().to_string()), "{missing}");
    for damage in ["not json", "[{\"split\": 3}]"] {
        std::fs::write(&list, damage).unwrap();
        let message = activations::ActivationStore::open_dir(dir.path(), VerifyMode::Sizes)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with(&format!(
                "{}: not a shard list saelab wrote: ",
                list.display()
            )),
            "{damage}: {message}"
        );
    }
}
