//! The store as a hostile but realistic user meets it: bytes flipped in place,
//! bookkeeping that cannot be written, a run stopped by a signal, and gc
//! beside a run. Every damage is done to a copy of one store built once.
//!
//! Over 600 lines: every case shares that store and the signal helpers;
//! split, each file would rebuild the store.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{built_store, command, under_address_limit, verdict, xtask, Run, NEURONS, SAE};

/// The one artifact folder of `kind` in `store`.
fn artifact(store: &Path, kind: &str) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(store.join(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(dirs.len(), 1, "{kind}: {dirs:?}");
    dirs[0].clone()
}

/// Byte range of tensor `name`'s data in a safetensors file.
fn tensor_bytes(path: &Path, name: &str) -> std::ops::Range<usize> {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let offsets = &header[name]["data_offsets"];
    let start = 8 + header_len + offsets[0].as_u64().unwrap() as usize;
    start..8 + header_len + offsets[1].as_u64().unwrap() as usize
}

/// Rewrites one byte in place (same size: only a digest can tell).
fn rewrite_byte(path: &Path, at: usize, change: impl Fn(u8) -> u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] = change(bytes[at]);
    std::fs::write(path, bytes).unwrap();
}

/// The `state` cell of `stage`'s row in `status`.
fn state(status: &Run, stage: &str) -> String {
    let line = status
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{stage} ")))
        .unwrap_or_else(|| panic!("no row for {stage}:\n{}", status.stdout));
    let key_end = line.find(char::is_whitespace).unwrap();
    let rest = line[key_end..].trim_start();
    let after_key = rest[rest.find(char::is_whitespace).unwrap()..].trim_start();
    // No non-default params in these rows' cells under the quick settings
    // that matter here: the state is what follows the params column.
    after_key
        .split("  ")
        .map(str::trim)
        .find(|cell| {
            cell.starts_with("fresh") || cell.starts_with("stale") || cell.starts_with("missing")
        })
        .unwrap_or_else(|| panic!("no state in {line}"))
        .to_string()
}

#[test]
fn a_flipped_label_byte_is_found_named_and_rebuilt_with_everything_built_from_it() {
    let store = testkit::copy_of(built_store());
    let store = store.path();
    let shard = artifact(store, "activations").join("train-00001.safetensors");
    let labels = tensor_bytes(&shard, "labels");
    rewrite_byte(&shard, labels.start + 5, |label| (label + 1) % 10);

    let status = xtask(store, &["status"]);
    assert_eq!(state(&status, "mnist"), "fresh");
    assert_eq!(state(&status, "mlp"), "fresh");
    assert!(
        state(&status, "extract")
            .starts_with("stale: file train-00001.safetensors changed since it was built"),
        "{}",
        status.stdout
    );
    for downstream in [SAE, NEURONS, "analysis"] {
        assert_eq!(
            state(&status, downstream),
            "stale: built from extract, which is corrupt"
        );
    }
    let verify = xtask(store, &["verify"]);
    assert!(!verify.ok, "verify must fail on a corrupt store");
    assert!(
        verify.stdout.contains(&format!(
            "CORRUPT activations/{}: file train-00001.safetensors changed since it was built",
            artifact(store, "activations")
                .file_name()
                .unwrap()
                .to_string_lossy()
        )) && verify.stdout.contains(": 1 corrupt"),
        "{}",
        verify.stdout
    );

    let repaired = xtask(store, &["all"]);
    assert!(repaired.ok, "{}\n{}", repaired.stdout, repaired.stderr);
    for (stage, expected) in [
        ("mnist", "cached"),
        ("mlp", "cached"),
        ("extract", "ran"),
        (SAE, "ran"),
        (NEURONS, "ran"),
        ("analysis", "ran"),
    ] {
        assert_eq!(verdict(&repaired, stage), expected, "{stage}");
    }
    // The served labels are MNIST's again, class by class.
    let counts = xtask(
        store,
        &[
            "query",
            "SELECT label, count(*) AS n FROM act_train_fc2_pre GROUP BY label ORDER BY label",
            "--format",
            "csv",
        ],
    );
    let mut truth = [0usize; 10];
    for &label in &testkit::mnist().train.labels.labels {
        truth[label as usize] += 1;
    }
    let expected: String = std::iter::once("label,n".to_string())
        .chain(truth.iter().enumerate().map(|(l, n)| format!("{l},{n}")))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(counts.stdout.trim(), expected);
    let clean = xtask(store, &["verify"]);
    assert!(
        clean.ok && clean.stdout.contains(": 0 corrupt"),
        "{}",
        clean.stdout
    );
}

#[test]
fn a_flipped_weight_or_a_garbage_cfg_makes_the_sae_and_its_analysis_stale() {
    let store = testkit::copy_of(built_store());
    let store = store.path();
    let sae_dir = artifact(store, "sae");
    let weights = sae_dir.join("sae_weights.safetensors");
    // The exponent byte of W_enc[0] (little-endian f32): the kind of flip that
    // used to make a later stage blame its own code.
    rewrite_byte(&weights, tensor_bytes(&weights, "W_enc").start + 3, |b| {
        b ^ 0x40
    });
    let status = xtask(store, &["status"]);
    assert!(
        state(&status, SAE)
            .starts_with("stale: file sae_weights.safetensors changed since it was built"),
        "{}",
        status.stdout
    );
    assert_eq!(
        state(&status, "analysis"),
        format!("stale: built from {SAE}, which is corrupt")
    );
    let repaired = xtask(store, &["all"]);
    assert_eq!(
        [SAE, "analysis", "extract"].map(|s| verdict(&repaired, s)),
        ["ran", "ran", "cached"]
    );

    let cfg = sae_dir.join("saelab_config.json");
    let garbage = "x".repeat(std::fs::metadata(&cfg).unwrap().len() as usize);
    std::fs::write(&cfg, garbage).unwrap();
    let status = xtask(store, &["status"]);
    assert!(
        state(&status, SAE)
            .starts_with("stale: file saelab_config.json changed since it was built"),
        "{}",
        status.stdout
    );
    assert_eq!(verdict(&xtask(store, &["all"]), SAE), "ran");

    // A flipped byte in the cached MNIST files: everything is rebuilt from good bytes.
    let images = artifact(store, "mnist").join("train-images-idx3-ubyte.gz");
    let images = if images.exists() {
        images
    } else {
        artifact(store, "mnist").join("train-images-idx3-ubyte")
    };
    let len = std::fs::metadata(&images).unwrap().len() as usize;
    rewrite_byte(&images, len / 2, |b| b.wrapping_add(1));
    let status = xtask(store, &["status"]);
    assert!(
        state(&status, "mnist").contains("changed since it was built"),
        "{}",
        status.stdout
    );
    assert_eq!(
        state(&status, "mlp"),
        "stale: built from mnist, which is corrupt"
    );
    let rebuilt = xtask(store, &["all"]);
    assert!(rebuilt.ok, "{}\n{}", rebuilt.stdout, rebuilt.stderr);
    assert_eq!(verdict(&rebuilt, "mnist"), "ran");
    assert_eq!(verdict(&rebuilt, "analysis"), "ran");
}

#[test]
fn a_manifest_that_lies_in_valid_json_is_served_by_nothing_and_rebuilt() {
    // The two lies found by hand: a param and the headline, one character each.
    for (what, from, to) in [
        ("a param", "\"l1_coeff\": 0.003", "\"l1_coeff\": 0.013"),
        ("the headline", "\"headline\": \"L0 ", "\"headline\": \"L1 "),
    ] {
        let store = testkit::copy_of(built_store());
        let store = store.path();
        let manifest = artifact(store, "sae").join("manifest.json");
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert!(text.contains(from), "{what}: {from} not in {text}");
        std::fs::write(&manifest, text.replacen(from, to, 1)).unwrap();
        let status = xtask(store, &["status"]);
        assert!(
            state(&status, SAE).starts_with("stale: manifest.json"),
            "{what}: {}",
            status.stdout
        );
        assert_eq!(
            state(&status, "analysis"),
            format!("stale: built from {SAE}, which is corrupt"),
            "{what}"
        );
        let verify = xtask(store, &["verify", "--all"]);
        assert!(
            verify.stdout.contains("manifest.json") || verify.stderr.contains("manifest.json"),
            "{what}: verify did not name the manifest:\n{}\n{}",
            verify.stdout,
            verify.stderr
        );
        let runs = xtask(store, &["runs", "--format", "csv"]);
        assert!(
            !runs.stdout.contains("0.013"),
            "{what}: runs served the lie:\n{}",
            runs.stdout
        );
        let repaired = xtask(store, &["all"]);
        assert_eq!(
            [SAE, "analysis"].map(|s| verdict(&repaired, s)),
            ["ran", "ran"],
            "{what}"
        );
        let rebuilt = std::fs::read_to_string(&manifest).unwrap();
        assert!(!rebuilt.contains(to), "{what}");
    }
}

#[test]
fn a_store_whose_bookkeeping_cannot_be_written_still_serves_cached_results() {
    let store = testkit::copy_of(built_store());
    let store = store.path();
    // Plain files where the store keeps its own notes: every write there fails
    // (as on a read-only mount), whoever runs the test.
    for notes in [".latest", ".locks", ".stamps", ".invalid"] {
        let path = store.join(notes);
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        }
        std::fs::write(&path, "").unwrap();
    }
    let cached = xtask(store, &["all"]);
    assert!(cached.ok, "{}\n{}", cached.stdout, cached.stderr);
    for stage in ["mnist", "mlp", "extract", SAE, NEURONS, "analysis"] {
        assert_eq!(verdict(&cached, stage), "cached");
    }
    let status = xtask(store, &["status"]);
    assert_eq!(state(&status, "analysis"), "fresh");
    assert!(xtask(store, &["explain", "mlp"]).stdout.contains("fresh"));
    let query = xtask(
        store,
        &[
            "query",
            "SELECT count(*) AS n FROM features",
            "--format",
            "csv",
        ],
    );
    assert_eq!(query.stdout.trim(), "n\n1024");
    assert!(xtask(store, &["verify"]).ok);
}

/// The SHA-256 of each SAE's weights in `store`, by key.
fn sae_digests(store: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir(store.join("sae"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("manifest.json").is_file())
        .map(|e| {
            let bytes = std::fs::read(e.path().join("sae_weights.safetensors")).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
            )
        })
        .collect()
}

#[test]
fn an_interrupted_sweep_keeps_its_finished_points_resumes_the_rest_and_gives_the_same_bits() {
    // Two small points finish early; the wide one is still training when
    // the run is stopped, with its state kept after each epoch.
    let sweep = [
        "--set",
        "sae.d_sae=[64, 128, 8192]",
        "--set",
        "sae.epochs=6",
        "--checkpoint-every",
        "0",
    ];
    let store = testkit::copy_of(built_store());
    let store = store.path();
    let mut args = vec!["all"];
    args.extend(sweep);
    // A committed point's kept copy is gone: none is left from building the store.
    assert!(
        !store.join(".finished").exists()
            || std::fs::read_dir(store.join(".finished")).unwrap().count() == 0
    );
    let mut child = command(store, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = until_sae_runs(&mut child);
    let finished = store.join(".finished");
    let count = || {
        std::fs::read_dir(&finished)
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0)
    };
    let checkpoints = store.join(".checkpoints");
    // The wide point's kept state (the small ones' go once they finish).
    let wide_state = || {
        std::fs::read_dir(&checkpoints).ok().and_then(|d| {
            d.flatten()
                // A slot of a key's folder, renamed into place whole.
                .flat_map(|e| ["a", "b"].map(|slot| e.path().join(slot).join("state.json")))
                .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("\"d_sae\":8192")))
        })
    };
    let started = Instant::now();
    while count() < 2 || wide_state().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the small points never finished, or the wide one kept no state"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let mut said = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut said).unwrap();
    assert!(
        said.contains("every SAE point that finished training (the next run uses it"),
        "{said}"
    );
    assert!(said.contains("/d8192/s0 after epoch "), "{said}");
    assert_eq!(count(), 2, "the wide point had not finished");
    // A kept copy whose bytes changed is not used: that point trains again.
    let kept: Vec<std::path::PathBuf> = std::fs::read_dir(&finished)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let d64 = kept
        .iter()
        .find(|dir| {
            let cfg = std::fs::read_to_string(dir.join("cfg.json")).unwrap();
            cfg.contains("\"d_sae\": 64,")
        })
        .expect("the d64 point was kept");
    let weights = d64.join("sae_weights.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    // The rerun reads the other back and trains the two others.
    let rerun = xtask(store, &args);
    assert!(rerun.ok, "{}", rerun.stderr);
    let d64_line = rerun.stdout.lines().find(|l| l.contains("/d64/")).unwrap();
    assert!(
        d64_line.contains(" ran ") && !d64_line.contains("kept from"),
        "{d64_line}"
    );
    for small in ["d128"] {
        let line = rerun
            .stdout
            .lines()
            .find(|l| l.starts_with("sae/") && l.contains(&format!("/{small}/")))
            .unwrap();
        assert!(line.contains("(kept from an interrupted run)"), "{line}");
    }
    let wide = rerun
        .stdout
        .lines()
        .find(|l| l.contains("/d8192/"))
        .unwrap();
    assert!(
        wide.contains(" ran ") && wide.contains("(resumed after epoch "),
        "{wide}"
    );
    // The same bits as a run never interrupted.
    let clean = testkit::copy_of(built_store());
    assert!(xtask(clean.path(), &args).ok);
    let (resumed, uninterrupted) = (sae_digests(store), sae_digests(clean.path()));
    assert_eq!(resumed.len(), 4, "{resumed:?}");
    assert_eq!(resumed, uninterrupted);
    // Once committed, the kept copies and states are gone.
    assert_eq!(count(), 0);
    assert!(wide_state().is_none());
}

/// Reads a spawned run's stderr until its SAE stage starts; the rest stays readable.
fn until_sae_runs(child: &mut std::process::Child) -> BufReader<std::process::ChildStderr> {
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        if line.starts_with("sae/") && line.contains("running") {
            break;
        }
        line.clear();
    }
    stderr
}

#[test]
fn sigterm_stops_the_run_at_once_says_what_it_cut_short_and_leaves_no_staging() {
    let store = testkit::copy_of(built_store());
    let store = store.path();
    let mut child = command(store, &["all", "--set", "sae.epochs=60"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = until_sae_runs(&mut child);
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let stopped_in = sent.elapsed();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(
        stopped_in < Duration::from_secs(2),
        "took {stopped_in:?} to stop"
    );
    assert!(
        rest.contains(&format!(
            "interrupted while building {SAE}: removed 1 staging folder(s). Kept: every artifact already built"
        )),
        "{rest}"
    );
    let left: Vec<_> = std::fs::read_dir(store.join("sae"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".staging-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The quick settings as a config file, for tests that need one of their own.
const QUICK_CONFIG: &str =
    "[mlp]\nepochs = 1\n[sae]\nepochs = 1\n[analysis]\ndashboards_per_criterion = 1\n\
     [analysis.probe]\nks = [1, 4]\niterations = 20\n";

/// The binary with `config` and no quick overrides (the config file holds them).
fn with_config(store: &Path, config: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.env("SAELAB_ARTIFACTS", store)
        .env("SAELAB_MNIST_DIR", testkit::mnist_dir())
        .arg("--config")
        .arg(config)
        .args(args);
    cmd
}

fn ok(mut cmd: std::process::Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn gc_keeps_the_file_default_every_preset_recent_work_and_what_a_run_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (store, config) = (dir.path().join("store"), dir.path().join("saelab.toml"));
    std::fs::write(
        &config,
        format!("{QUICK_CONFIG}[presets.wide.sae]\nd_sae = [512]\n"),
    )
    .unwrap();
    ok(with_config(&store, &config, &["all"]));
    ok(with_config(&store, &config, &["--preset", "wide", "all"]));
    ok(with_config(
        &store,
        &config,
        &["--set", "sae.seed=[1]", "all"],
    ));
    let one_off = |kind: &str| {
        let plan = ok(with_config(
            &store,
            &config,
            &["--set", "sae.seed=[1]", "status"],
        ));
        let row = plan
            .lines()
            .find(|l| l.starts_with(kind))
            .unwrap()
            .to_string();
        store
            .join(kind.split('/').next().unwrap())
            .join(row.split_whitespace().nth(1).unwrap())
    };
    let (sae, analysis) = (one_off("sae/"), one_off("analysis"));
    // An on-demand dashboard of the one-off SAE: it goes with its SAE.
    ok(with_config(
        &store,
        &config,
        &["--set", "sae.seed=[1]", "dashboard", "--feature", "0"],
    ));
    let dashboards = store.join(".dashboards").join(sae.file_name().unwrap());
    assert!(dashboards.is_dir());
    // A circuit drawn from it (`cargo xtask circuit` names the folder by its two transcoders' keys).
    let key = sae.file_name().unwrap().to_str().unwrap();
    let drawn = store.join(".circuits").join(format!("{key}-{key}"));
    std::fs::create_dir_all(&drawn).unwrap();
    std::fs::write(drawn.join("image-00000.json"), "{}").unwrap();

    // Built today: the default age limit keeps everything.
    let gc = ok(with_config(&store, &config, &["gc"]));
    assert!(gc.starts_with("removed 0 folder(s)"), "{gc}");
    // A preset's point of view still protects the file's default and every preset.
    let dry = ok(with_config(
        &store,
        &config,
        &["--preset", "wide", "gc", "--all", "--dry-run"],
    ));
    let mut doomed: Vec<&str> = dry
        .lines()
        .filter_map(|l| l.strip_prefix("would remove "))
        .filter(|l| l.starts_with('/'))
        .collect();
    doomed.sort();
    let mut expected = [
        analysis.to_str().unwrap(),
        sae.to_str().unwrap(),
        dashboards.to_str().unwrap(),
        drawn.to_str().unwrap(),
    ];
    expected.sort();
    assert_eq!(doomed, expected, "{dry}");
    assert!(dry.contains("would remove 4 folder(s)"), "{dry}");
    assert!(
        sae.exists() && dashboards.exists() && drawn.exists(),
        "a dry run removes nothing"
    );

    // A run that holds the one-off MLP and activations: gc keeps them and the run finishes.
    let mut run = with_config(
        &store,
        &config,
        &["--set", "mlp.seed=7", "--set", "sae.epochs=20", "all"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let _stderr = until_sae_runs(&mut run);
    let gc = ok(with_config(&store, &config, &["gc", "--all"]));
    assert!(
        gc.contains("(a running saelab holds it)") && gc.contains("/mlp/"),
        "{gc}"
    );
    let finished = run.wait_with_output().unwrap();
    assert!(
        finished.status.success(),
        "{}",
        String::from_utf8_lossy(&finished.stdout)
    );
    let report = String::from_utf8_lossy(&finished.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("report: ").map(PathBuf::from))
        .unwrap();
    assert!(report.is_file(), "the run's report survived gc");
    assert!(
        !sae.exists() && !analysis.exists() && !dashboards.exists() && !drawn.exists(),
        "the one-off sweep point went, with its dashboards and drawn circuits"
    );
    // The file's default and the preset are still all cached.
    for args in [&["all"][..], &["--preset", "wide", "all"]] {
        let again = ok(with_config(&store, &config, args));
        assert!(!again.contains(" ran "), "{args:?}: {again}");
    }
}

#[test]
fn a_read_only_command_holds_what_it_reads_against_gc() {
    let dir = tempfile::tempdir().unwrap();
    let (store, config) = (dir.path().join("store"), dir.path().join("saelab.toml"));
    std::fs::write(&config, QUICK_CONFIG).unwrap();
    // A one-off point the config file does not reach: gc --all removes it unless held.
    let one_off = ["--set", "sae.seed=[1]"];
    ok(with_config(
        &store,
        &config,
        &[&one_off[..], &["all"]].concat(),
    ));
    // The query blocks writing its result into a FIFO until it is read:
    // meanwhile it has read the analysis tables and holds them.
    let fifo = dir.path().join("result.csv");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let query = [
        "query",
        "SELECT count(*) AS n FROM sweep",
        "--format",
        "csv",
        "--output",
        fifo.to_str().unwrap(),
    ];
    let mut reader = with_config(&store, &config, &[&one_off[..], &query[..]].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dry = ok(with_config(&store, &config, &["gc", "--all", "--dry-run"]));
        if dry.contains("/analysis/") && dry.contains("(a running saelab holds it)") {
            break;
        }
        if Instant::now() > deadline {
            // Not left blocked on the FIFO.
            let _ = reader.kill();
            panic!("the query never held the analysis:\n{dry}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let gc = with_config(&store, &config, &["gc", "--all"])
        .output()
        .unwrap();
    // Whatever gc did, the reader is let go before anything is asserted.
    let result = std::fs::read_to_string(&fifo).unwrap();
    let finished = reader.wait_with_output().unwrap();
    let gc = String::from_utf8_lossy(&gc.stdout);
    let kept: Vec<&str> = gc
        .lines()
        .filter(|l| l.ends_with("(a running saelab holds it)"))
        .collect();
    assert!(
        kept.iter().any(|l| l.contains("/analysis/")),
        "gc removed what the query held:\n{gc}"
    );
    assert!(result.starts_with('n'), "{result}");
    assert!(
        finished.status.success(),
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );
}

#[test]
fn a_sweep_too_large_is_refused_first_and_an_allocation_that_fails_anyway_names_its_stage() {
    let store = testkit::copy_of(built_store());
    let store = store.path();
    // `args` under an address-space limit of `kib` KiB.
    let limited = |args: &[&str], kib: u64, check: Option<&str>| {
        let mut cmd = under_address_limit(&command(store, args), kib);
        if let Some(check) = check {
            cmd.env("SAELAB_MEMORY_CHECK", check);
        }
        cmd.output().unwrap()
    };
    // 4 million features: about 2 GB per weight matrix. Under a 4 GB
    // address-space limit, the estimate refuses it before anything runs.
    let wide = ["run", "sae", "--set", "sae.d_sae=[4000000]"];
    let refused = limited(&wide, 4_000_000, None);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("sae.d_sae = 4000000 needs about ")
            && said.contains("the address-space limit (ulimit -v)"),
        "{said}"
    );
    assert!(
        !said.contains("running"),
        "refused before any stage: {said}"
    );
    // With the check off, the allocation fails: one line names the stage,
    // and its staging folder is gone.
    let failed = limited(&wide, 4_000_000, Some("off"));
    let said = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(137), "{said}");
    assert!(
        said.contains(
            "out of memory while building sae/fc2.pre/l1-0.003/d4000000/s0: an allocation of "
        ) && said.contains("removed 1 staging folder(s)"),
        "{said}"
    );
    let staging = |kind: &str| -> Vec<String> {
        std::fs::read_dir(store.join(kind))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".staging"))
            .collect()
    };
    assert!(staging("sae").is_empty(), "{:?}", staging("sae"));
    // The analysis checks its own estimate (from the SAE's live features
    // and L0) before it loads anything: about 0.4 GB, over a 0.33 GB limit.
    let analysis = ["run", "analysis", "--force", "--threads", "1"];
    let refused = limited(&analysis, 330_000, None);
    let said = String::from_utf8_lossy(&refused.stdout);
    assert!(
        said.contains(&format!(
            "sae.d_sae = 1024 (point {SAE}): the analysis needs about "
        )) && said.contains("the address-space limit (ulimit -v) of 0.34 GB"),
        "{said}{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(staging("analysis").is_empty(), "{:?}", staging("analysis"));
}
