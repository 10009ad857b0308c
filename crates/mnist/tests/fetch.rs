//! The fetch chain against fixture directories and a loopback HTTP server.

mod common;

use std::path::Path;

use common::{mirror_routes, Fixture, Reply, TestServer};
use mnist::{
    fetch, load_verified, Compression, FetchConfig, FetchReport, FetchSource, MnistError, MnistFile,
};

/// A config with no default mirrors and no npm, pinned to the fixture.
fn offline_config(fixture: &Fixture) -> FetchConfig {
    FetchConfig {
        mirrors: Vec::new(),
        npm_package: None,
        pins: fixture.pins(),
        http_timeout: std::time::Duration::from_secs(10),
        ..FetchConfig::default()
    }
}

/// Asserts `out` holds exactly the four raw fixture files and loads back as the fixture.
fn assert_fixture_written(report: &FetchReport, fixture: &Fixture, out: &Path) {
    let names: Vec<_> = MnistFile::ALL
        .iter()
        .map(|f| out.join(f.canonical_name()))
        .collect();
    assert_eq!(report.files, names);
    for file in MnistFile::ALL {
        assert_eq!(
            std::fs::read(out.join(file.canonical_name())).unwrap(),
            fixture.raw(file)
        );
    }
    assert_eq!(
        std::fs::read_dir(out).unwrap().count(),
        4,
        "stray temporary files"
    );
    let mnist = load_verified(out, &fixture.pins()).unwrap();
    assert_eq!(mnist.train.images, fixture.train_images);
    assert_eq!(mnist.test.labels, fixture.test_labels);
}

fn fetch_error(cfg: &FetchConfig) -> String {
    let out = tempfile::tempdir().unwrap();
    let error = fetch(cfg, out.path()).unwrap_err();
    assert!(matches!(error, MnistError::FetchFailed { .. }), "{error:?}");
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "wrote despite failing"
    );
    let message = error.to_string();
    assert!(!message.contains('\n'), "{message:?} is not one line");
    assert!(
        message.contains("SAELAB_MNIST_DIR") && message.contains("--mnist-dir DIR"),
        "{message}"
    );
    message
}

#[test]
fn explicit_dir_with_raw_files() {
    let fixture = Fixture::new();
    let (dir, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fixture.write_dir(dir.path(), Compression::Raw);
    let cfg = FetchConfig {
        dir: Some(dir.path().to_path_buf()),
        ..offline_config(&fixture)
    };
    let report = fetch(&cfg, out.path()).unwrap();
    assert_eq!(
        report.source,
        FetchSource::ExplicitDir(dir.path().to_path_buf())
    );
    assert!(report.failed_before.is_empty());
    assert_fixture_written(&report, &fixture, out.path());
}

#[test]
fn explicit_dir_with_gz_files_writes_them_uncompressed() {
    let fixture = Fixture::new();
    let (dir, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fixture.write_dir(dir.path(), Compression::Gzip);
    let cfg = FetchConfig {
        dir: Some(dir.path().to_path_buf()),
        ..offline_config(&fixture)
    };
    let report = fetch(&cfg, out.path()).unwrap();
    assert_eq!(
        report.source,
        FetchSource::ExplicitDir(dir.path().to_path_buf())
    );
    assert_fixture_written(&report, &fixture, out.path());
}

#[test]
fn explicit_dir_with_a_corrupt_file_names_that_file() {
    let fixture = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    fixture.write_dir(dir.path(), Compression::Gzip);
    let corrupt = dir.path().join(MnistFile::TestImages.gz_name());
    let gz = fixture.gz(MnistFile::TestImages);
    std::fs::write(&corrupt, &gz[..gz.len() - 5]).unwrap();

    let direct = load_verified(dir.path(), &fixture.pins())
        .unwrap_err()
        .to_string();
    assert!(
        direct.starts_with(&format!("{}: corrupt gzip stream: ", corrupt.display())),
        "{direct}"
    );

    let cfg = FetchConfig {
        dir: Some(dir.path().to_path_buf()),
        ..offline_config(&fixture)
    };
    let message = fetch(&cfg, tempfile::tempdir().unwrap().path())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(&format!(
            "fails verification, so it is not used: {}: corrupt gzip stream",
            corrupt.display()
        )),
        "{message}"
    );
}

#[test]
fn explicit_dir_with_other_content_fails_the_checksum() {
    let fixture = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    fixture.write_dir(dir.path(), Compression::Raw);
    let mut other = fixture.raw(MnistFile::TrainLabels);
    *other.last_mut().unwrap() = 1; // still a valid label file
    let path = dir.path().join(MnistFile::TrainLabels.canonical_name());
    std::fs::write(&path, &other).unwrap();
    let message = load_verified(dir.path(), &fixture.pins())
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        format!(
            "{}: checksum mismatch: SHA-256 of the uncompressed bytes is {}, pinned {}",
            path.display(),
            hex::encode(mnist::sha256(&other)),
            hex::encode(fixture.pins().train_labels)
        )
    );
}

#[test]
fn explicit_dir_that_fails_is_refused_not_replaced() {
    let fixture = Fixture::new();
    let (named, cache, out) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    // A cached copy is there, but the user named another directory: that one
    // is used or refused, with every file's reason.
    fixture.write_dir(cache.path(), Compression::Raw);
    fixture.write_dir(named.path(), Compression::Raw);
    std::fs::remove_file(named.path().join("t10k-labels-idx1-ubyte")).unwrap();
    let mut bad = fixture.raw(MnistFile::TrainImages);
    bad[20] ^= 1;
    std::fs::write(named.path().join("train-images-idx3-ubyte"), bad).unwrap();
    let cfg = FetchConfig {
        dir: Some(named.path().to_path_buf()),
        cached_copies: vec![cache.path().to_path_buf()],
        ..offline_config(&fixture)
    };
    let error = fetch(&cfg, out.path()).unwrap_err();
    assert!(
        matches!(error, MnistError::ExplicitDirRefused { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    let dir = named.path().display().to_string();
    assert!(!message.contains('\n'), "{message:?}");
    assert!(
        message.starts_with(&format!("{dir}: the MNIST directory you named")),
        "{message}"
    );
    assert!(
        message.contains(&format!("{dir}/train-images-idx3-ubyte: checksum mismatch")),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "{dir}: neither t10k-labels-idx1-ubyte nor t10k-labels-idx1-ubyte.gz is there"
        )),
        "{message}"
    );
    assert!(!message.contains("train-labels"), "{message}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn shared_cache_fetches_once_for_parallel_callers() {
    let fixture = Fixture::new();
    let server = TestServer::start(mirror_routes(&fixture, "/m/"), 4);
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("mnist");
    let cfg = FetchConfig {
        mirrors: vec![format!("{}/m/", server.base)],
        ..offline_config(&fixture)
    };
    let sources: Vec<FetchSource> = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| mnist::fetch_into_shared_cache(&cfg, &cache).unwrap()))
            .collect();
        callers
            .into_iter()
            .map(|c| c.join().unwrap().source)
            .collect()
    });
    // One caller downloaded the four files; the others found them verified.
    assert_eq!(server.finish().len(), 4);
    let downloaded = sources
        .iter()
        .filter(|s| matches!(s, FetchSource::Mirror(_)))
        .count();
    assert_eq!(downloaded, 1, "{sources:?}");
    assert!(sources.iter().all(
        |s| matches!(s, FetchSource::Mirror(_)) || *s == FetchSource::CachedCopy(cache.clone())
    ));
    let mnist = load_verified(&cache, &fixture.pins()).unwrap();
    assert_eq!(mnist.train.images, fixture.train_images);
}

#[test]
fn mirror_download_succeeds() {
    let fixture = Fixture::new();
    let server = TestServer::start(mirror_routes(&fixture, "/good/"), 4);
    let mirror = format!("{}/good/", server.base);
    let out = tempfile::tempdir().unwrap();
    let cfg = FetchConfig {
        mirrors: vec![mirror.clone()],
        ..offline_config(&fixture)
    };
    let report = fetch(&cfg, out.path()).unwrap();
    assert_eq!(report.source, FetchSource::Mirror(mirror));
    assert_fixture_written(&report, &fixture, out.path());
    let expected: Vec<_> = MnistFile::ALL
        .iter()
        .map(|f| format!("/good/{}", f.gz_name()))
        .collect();
    assert_eq!(server.finish(), expected);
}

#[test]
fn mirror_serving_other_bytes_fails_the_checksum() {
    let fixture = Fixture::new();
    let mut other = Fixture::new();
    other.train_images.pixels[0] ^= 1;
    let server = TestServer::start(mirror_routes(&other, "/m/"), 4);
    let url = format!("{}/m/train-images-idx3-ubyte.gz", server.base);
    let cfg = FetchConfig {
        mirrors: vec![format!("{}/m", server.base)],
        ..offline_config(&fixture)
    };
    let message = fetch_error(&cfg);
    assert!(
        message.contains(&format!(
            "[1] mirror {}/m ({url}: checksum mismatch: SHA-256",
            server.base
        )),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "pinned {}",
            hex::encode(fixture.pins().train_images)
        )),
        "{message}"
    );
    // The first bad file ends the source: nothing more is downloaded from it.
    assert_eq!(
        server.finish(),
        vec!["/m/train-images-idx3-ubyte.gz".to_string()]
    );
}

#[test]
fn mirror_closing_early_fails_with_the_url() {
    let fixture = Fixture::new();
    let mut routes = mirror_routes(&fixture, "/m/");
    let body = fixture.gz(MnistFile::TrainImages);
    let sent = body.len() / 2;
    routes[0].1 = Reply::CutShort { body, sent };
    let server = TestServer::start(routes, 4);
    let url = format!("{}/m/train-images-idx3-ubyte.gz", server.base);
    let cfg = FetchConfig {
        mirrors: vec![format!("{}/m/", server.base)],
        ..offline_config(&fixture)
    };
    let message = fetch_error(&cfg);
    assert!(
        message.contains(&format!(
            "(GET {url}: reading the body failed after {sent} bytes: "
        )),
        "{message}"
    );
    server.finish();
}

#[test]
fn mirror_404_falls_through_to_the_next_mirror() {
    let fixture = Fixture::new();
    let server = TestServer::start(mirror_routes(&fixture, "/good/"), 5);
    let (missing, good) = (
        format!("{}/missing/", server.base),
        format!("{}/good/", server.base),
    );
    let out = tempfile::tempdir().unwrap();
    let cfg = FetchConfig {
        mirrors: vec![missing.clone(), good.clone()],
        ..offline_config(&fixture)
    };
    let report = fetch(&cfg, out.path()).unwrap();
    assert_eq!(report.source, FetchSource::Mirror(good));
    assert_eq!(report.failed_before.len(), 1);
    assert_eq!(
        report.failed_before[0].to_string(),
        format!("mirror {missing} (GET {missing}train-images-idx3-ubyte.gz: HTTP 404 Not Found)")
    );
    assert_fixture_written(&report, &fixture, out.path());
    let served = server.finish();
    assert_eq!(served.len(), 5);
    assert_eq!(served[0], "/missing/train-images-idx3-ubyte.gz");
}

#[test]
fn all_sources_failing_lists_each_one() {
    let fixture = Fixture::new();
    let server = TestServer::start(Vec::new(), 1);
    let missing = format!("{}/missing/", server.base);
    // A port that was just free: connecting to it is refused.
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/gone/", listener.local_addr().unwrap())
    };
    let scratch = tempfile::tempdir().unwrap();
    let absent_cache = scratch.path().join("no-such-cache");
    let cfg = FetchConfig {
        cached_copies: vec![absent_cache.clone()],
        mirrors: vec![missing.clone(), refused.clone()],
        ..offline_config(&fixture)
    };
    let message = fetch_error(&cfg);
    let expected_parts = [
        format!("could not obtain the four verified MNIST files; tried [1] cached copy {0} ({0}: cannot list directory: ", absent_cache.display()),
        format!("[2] mirror {missing} (GET {missing}train-images-idx3-ubyte.gz: HTTP 404 Not Found); "),
        format!("[3] mirror {refused} (GET {refused}train-images-idx3-ubyte.gz: Connection Failed: "),
        " (not configured: explicit directory, npm); point saelab at a directory holding them (canonical names, raw or .gz) with `--mnist-dir DIR` or SAELAB_MNIST_DIR=DIR".to_string(),
    ];
    let mut rest = message.as_str();
    for part in &expected_parts {
        let at = rest
            .find(part.as_str())
            .unwrap_or_else(|| panic!("{part:?} missing from {message:?}"));
        rest = &rest[at + part.len()..];
    }
    assert!(rest.is_empty(), "{message}");
    assert_eq!(
        server.finish(),
        vec!["/missing/train-images-idx3-ubyte.gz".to_string()]
    );
}

#[test]
fn load_verified_refuses_images_and_labels_of_different_counts() {
    let mut fixture = Fixture::new();
    fixture.train_labels.labels.pop();
    let dir = tempfile::tempdir().unwrap();
    fixture.write_dir(dir.path(), Compression::Gzip);
    let message = load_verified(dir.path(), &fixture.pins())
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        format!(
            "{}: holds 3 images but {} holds 2 labels",
            dir.path().join("train-images-idx3-ubyte.gz").display(),
            dir.path().join("train-labels-idx1-ubyte.gz").display()
        )
    );
}
