//! The real MNIST files, obtained through the fetch chain (`testkit`).

use mnist::{fetch, load_verified, normalise, sha256, FetchConfig, FetchSource, MnistFile, Pins};
use testkit::mnist_dir as genuine_mnist_dir;

/// The published SHA256SUMS of the uncompressed files, kept beside the tests.
const SHA256SUMS: &str = include_str!("SHA256SUMS");

#[test]
fn pins_and_files_match_the_published_sha256sums() {
    let pins = Pins::canonical();
    for file in MnistFile::ALL {
        let line = SHA256SUMS
            .lines()
            .find(|l| l.ends_with(&format!("  {}", file.canonical_name())))
            .unwrap_or_else(|| panic!("SHA256SUMS lacks {}", file.canonical_name()));
        assert_eq!(&line[..64], hex::encode(pins.digest(file)));
        // The bytes themselves, hashed here rather than by the crate's verifier.
        let dir = genuine_mnist_dir();
        let raw = dir.join(file.canonical_name());
        let bytes = if raw.is_file() {
            std::fs::read(raw).unwrap()
        } else {
            let gz = std::fs::File::open(dir.join(file.gz_name())).unwrap();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut bytes).unwrap();
            bytes
        };
        assert_eq!(&line[..64], hex::encode(sha256(&bytes)));
    }
}

#[test]
fn genuine_files_verify_and_hold_the_known_facts() {
    let mnist = load_verified(&genuine_mnist_dir(), &Pins::canonical()).unwrap();
    for (split, count) in [(&mnist.train, 60000), (&mnist.test, 10000)] {
        assert_eq!(
            (split.images.count, split.images.rows, split.images.cols),
            (count, 28, 28)
        );
        assert_eq!(split.images.pixels.len(), count * 784);
        assert_eq!(split.len(), count);
    }
    assert_eq!(mnist.train.labels.labels[0], 5);
    assert_eq!(mnist.test.labels.labels[0], 7);

    let histogram = |labels: &[u8]| {
        let mut counts = [0usize; 10];
        labels.iter().for_each(|&l| counts[l as usize] += 1);
        counts
    };
    assert_eq!(
        histogram(&mnist.train.labels.labels),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        histogram(&mnist.test.labels.labels),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );

    // The notebook's constants are the train set's own mean and std, so the
    // normalised train pixels must come out near 0 and 1.
    let normalised = normalise(&mnist.train.images.pixels);
    let n = normalised.len() as f64;
    let mean = normalised.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = normalised
        .iter()
        .map(|&x| (x as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!(mean.abs() < 1e-3, "mean {mean}");
    assert!((var.sqrt() - 1.0).abs() < 1e-3, "std {}", var.sqrt());
}

#[test]
fn fetch_from_the_genuine_dir_then_from_the_cached_copy() {
    let out = tempfile::tempdir().unwrap();
    let cfg = FetchConfig {
        dir: Some(genuine_mnist_dir()),
        mirrors: Vec::new(),
        npm_package: None,
        ..FetchConfig::default()
    };
    let report = fetch(&cfg, out.path()).unwrap();
    assert_eq!(report.source, FetchSource::ExplicitDir(genuine_mnist_dir()));
    let pins = Pins::canonical();
    for (file, path) in MnistFile::ALL.iter().zip(&report.files) {
        assert_eq!(path, &out.path().join(file.canonical_name()));
        assert_eq!(&sha256(&std::fs::read(path).unwrap()), pins.digest(*file));
    }

    let again = tempfile::tempdir().unwrap();
    let cached_cfg = FetchConfig {
        dir: None,
        cached_copies: vec![out.path().join("absent"), out.path().to_path_buf()],
        mirrors: Vec::new(),
        npm_package: None,
        ..FetchConfig::default()
    };
    let report = fetch(&cached_cfg, again.path()).unwrap();
    assert_eq!(
        report.source,
        FetchSource::CachedCopy(out.path().to_path_buf())
    );
    assert_eq!(report.failed_before.len(), 1);
    assert_eq!(
        load_verified(again.path(), &pins)
            .unwrap()
            .test
            .labels
            .labels[..3],
        [7, 2, 1]
    );
}
