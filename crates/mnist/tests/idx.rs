mod common;

use std::path::{Path, PathBuf};

use common::{gzip, idx_images, idx_labels, Fixture};
use mnist::{
    normalise, parse_images, parse_labels, read_images, read_labels, write_images, write_images_as,
    write_labels, write_labels_as, Compression, Images, Labels, MEAN, STD,
};

/// Writes `bytes` to `name` in a fresh temp dir and returns both (the dir must outlive the path).
fn file_with(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// Reads `bytes` as images from a file and returns the error message, which must name the file.
fn images_error(bytes: &[u8]) -> String {
    let (_dir, path) = file_with("images-under-test", bytes);
    error_naming(read_images(&path).unwrap_err(), &path)
}

fn labels_error(bytes: &[u8]) -> String {
    let (_dir, path) = file_with("labels-under-test", bytes);
    error_naming(read_labels(&path).unwrap_err(), &path)
}

fn error_naming(error: mnist::MnistError, path: &Path) -> String {
    let message = error.to_string();
    let prefix = format!("{}: ", path.display());
    assert!(
        message.starts_with(&prefix),
        "{message:?} does not name {path:?}"
    );
    assert!(!message.contains('\n'), "{message:?} is not one line");
    message[prefix.len()..].to_string()
}

#[test]
fn raw_round_trip_writes_the_idx_layout_and_reads_it_back() {
    let fixture = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let images_path = dir.path().join("images");
    let labels_path = dir.path().join("labels");
    write_images(&images_path, &fixture.train_images).unwrap();
    write_labels(&labels_path, &fixture.train_labels).unwrap();

    let expected_images = idx_images(3, 2, 3, &fixture.train_images.pixels);
    assert_eq!(std::fs::read(&images_path).unwrap(), expected_images);
    assert_eq!(
        std::fs::read(&labels_path).unwrap(),
        idx_labels(3, &[5, 0, 9])
    );
    assert_eq!(read_images(&images_path).unwrap(), fixture.train_images);
    assert_eq!(read_labels(&labels_path).unwrap(), fixture.train_labels);
    // Only the two files: the temporary names were renamed away.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn gzip_round_trip_is_detected_by_magic_not_by_name() {
    let fixture = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    // A gzipped file without .gz, and a raw file with .gz.
    let gz_path = dir.path().join("images.idx");
    let raw_path = dir.path().join("labels.gz");
    write_images_as(&gz_path, &fixture.test_images, Compression::Gzip).unwrap();
    write_labels_as(&raw_path, &fixture.test_labels, Compression::Raw).unwrap();

    let gz_bytes = std::fs::read(&gz_path).unwrap();
    assert_eq!(&gz_bytes[..2], &[0x1f, 0x8b]);
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&gz_bytes[..]),
        &mut decoded,
    )
    .unwrap();
    assert_eq!(decoded, idx_images(2, 2, 3, &fixture.test_images.pixels));

    assert_eq!(read_images(&gz_path).unwrap(), fixture.test_images);
    assert_eq!(read_labels(&raw_path).unwrap(), fixture.test_labels);
    write_labels_as(&raw_path, &fixture.test_labels, Compression::Gzip).unwrap();
    assert_eq!(read_labels(&raw_path).unwrap(), fixture.test_labels);
}

#[test]
fn parse_from_bytes_accepts_raw_and_gzip_and_uses_the_display_name() {
    let raw = idx_images(1, 2, 2, &[1, 2, 3, 4]);
    let expected = Images {
        count: 1,
        rows: 2,
        cols: 2,
        pixels: vec![1, 2, 3, 4],
    };
    assert_eq!(parse_images(&raw, "x").unwrap(), expected);
    assert_eq!(parse_images(&gzip(&raw), "x").unwrap(), expected);
    assert_eq!(expected.image(0), &[1, 2, 3, 4]);
    assert_eq!(
        parse_labels(&gzip(&idx_labels(2, &[0, 9])), "y")
            .unwrap()
            .labels,
        vec![0, 9]
    );

    let error = parse_labels(&idx_labels(3, &[1, 2]), "train-labels-idx1-ubyte.gz").unwrap_err();
    assert_eq!(
        error.to_string(),
        "train-labels-idx1-ubyte.gz: truncated: header promises 3 label bytes, file holds 2"
    );
}

#[test]
fn empty_file_is_refused() {
    assert_eq!(
        images_error(&[]),
        "empty file, expected an IDX image header"
    );
    assert_eq!(
        labels_error(&[]),
        "empty file, expected an IDX label header"
    );
}

#[test]
fn short_header_is_refused() {
    assert_eq!(
        images_error(&[0, 0, 8, 3, 0, 0, 0]),
        "truncated: 7 bytes is shorter than the 16-byte IDX image header"
    );
}

#[test]
fn bad_magic_is_refused() {
    let mut bytes = idx_images(1, 1, 1, &[0]);
    bytes[..4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    assert_eq!(
        images_error(&bytes),
        "bad magic 0x12345678, expected 0x00000803 (IDX u8 images)"
    );
}

#[test]
fn wrong_data_type_is_refused() {
    let mut bytes = idx_images(1, 1, 1, &[0]);
    bytes[2] = 0x0d; // IDX float
    assert_eq!(
        images_error(&bytes),
        "wrong data type: magic 0x00000d03 declares type 0x0d, expected unsigned bytes (0x08)"
    );
}

#[test]
fn wrong_rank_is_refused_both_ways() {
    // A label file read as images, and an image file read as labels.
    assert_eq!(
        images_error(&idx_labels(16, &[0; 16])),
        "wrong rank: magic 0x00000801 declares rank 1, IDX u8 images files have rank 3"
    );
    assert_eq!(
        labels_error(&idx_images(1, 2, 2, &[0; 4])),
        "wrong rank: magic 0x00000803 declares rank 3, IDX u8 labels files have rank 1"
    );
}

#[test]
fn truncated_body_is_refused() {
    assert_eq!(
        images_error(&idx_images(2, 2, 2, &[7; 5])),
        "truncated: header promises 2x2x2 = 8 pixel bytes, file holds 5"
    );
    // Also when the truncation hides inside a valid gzip stream.
    assert_eq!(
        images_error(&gzip(&idx_images(60000, 28, 28, &[0; 1234]))),
        "truncated: header promises 60000x28x28 = 47040000 pixel bytes, file holds 1234"
    );
}

#[test]
fn trailing_bytes_are_refused() {
    assert_eq!(
        images_error(&idx_images(2, 2, 2, &[7; 10])),
        "trailing bytes: header promises 2x2x2 = 8 pixel bytes, file holds 10 (2 extra)"
    );
    assert_eq!(
        labels_error(&idx_labels(2, &[1, 2, 3])),
        "trailing bytes: header promises 2 label bytes, file holds 3 (1 extra)"
    );
}

#[test]
fn label_above_nine_is_refused() {
    assert_eq!(
        labels_error(&idx_labels(3, &[1, 12, 3])),
        "label 12 at index 1 is outside 0..=9"
    );
}

#[test]
fn corrupt_gzip_is_refused() {
    let gz = gzip(&idx_labels(100, &[3; 100]));
    let cut = &gz[..gz.len() / 2];
    assert!(labels_error(cut).starts_with("corrupt gzip stream: "));
    // Damage the CRC trailer so only the integrity check can notice.
    let mut bad_crc = gz.clone();
    let crc_at = bad_crc.len() - 8;
    bad_crc[crc_at] ^= 0xff;
    assert!(labels_error(&bad_crc).starts_with("corrupt gzip stream: "));
    // Just the magic and garbage.
    assert!(labels_error(&[0x1f, 0x8b, 1, 2, 3]).starts_with("corrupt gzip stream: "));
}

#[test]
fn missing_file_error_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent");
    let message = error_naming(read_images(&path).unwrap_err(), &path);
    assert!(message.starts_with("cannot read: "), "{message}");
}

#[test]
fn writing_inconsistent_data_is_refused_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out");
    let images = Images {
        count: 2,
        rows: 2,
        cols: 2,
        pixels: vec![0; 7],
    };
    assert_eq!(
        error_naming(write_images(&path, &images).unwrap_err(), &path),
        "cannot write: 2x2x2 images need 8 pixel bytes, got 7"
    );
    let labels = Labels {
        labels: vec![0, 10],
    };
    assert_eq!(
        error_naming(write_labels(&path, &labels).unwrap_err(), &path),
        "cannot write: label 10 at index 1 is outside 0..=9"
    );
    assert!(!path.exists());
}

#[test]
fn normalise_matches_the_torchvision_formula() {
    let pixels = [0u8, 1, 128, 254, 255];
    let got = normalise(&pixels);
    for (&x, &y) in pixels.iter().zip(&got) {
        let expected = (x as f64 / 255.0 - 0.1307) / 0.3081;
        assert!((y as f64 - expected).abs() < 1e-6, "{x}: {y} vs {expected}");
    }
    assert_eq!(got.len(), pixels.len());
    assert_eq!((MEAN, STD), (0.1307, 0.3081));
    assert!((got[0] - -0.424_212_9).abs() < 1e-6);
    assert!((got[4] - 2.821_486_5).abs() < 1e-6);
}
