//! `cargo xtask` end to end on the real MNIST files, each test in its own store.
//!
//! Over 600 lines: every case runs the binary the same way (`support`), and
//! splitting them by theme would only split that one harness.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

mod support;

use support::{command, finished, verdict, xtask, Run, NEURONS, SAE};

#[test]
fn a_second_run_is_all_cached_and_status_explains_it() {
    let store = tempfile::tempdir().unwrap();
    let first = xtask(store.path(), &["all"]);
    assert!(first.ok, "{}\n{}", first.stdout, first.stderr);
    for stage in ["mnist", "mlp", "extract", SAE, NEURONS, "analysis"] {
        assert_eq!(verdict(&first, stage), "ran");
    }
    let report = first
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .expect("the run prints the report's path");
    assert!(
        std::fs::read_to_string(report).unwrap().contains("<img"),
        "the report shows plots"
    );
    assert!(first.stdout.contains("MLP test accuracy: "));
    let second = xtask(store.path(), &["all"]);
    for stage in ["mnist", "mlp", "extract", SAE, NEURONS, "analysis"] {
        assert_eq!(verdict(&second, stage), "cached");
    }
    // `report` prints the same path the run did; `stages` lists every stage name.
    let printed = xtask(store.path(), &["report"]);
    assert!(printed.ok, "{}", printed.stderr);
    assert_eq!(printed.stdout.trim(), report);
    let listed = xtask(store.path(), &["stages"]);
    let names: Vec<&str> = listed
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["mnist", "mlp", "extract", SAE, NEURONS, "analysis"]);
    // Beside it, on stderr, both stages' peak-memory estimates (every SAE is built).
    assert!(
        listed.stderr.contains("memory estimate: SAE stage ")
            && listed.stderr.contains("memory estimate: analysis 0."),
        "{}",
        listed.stderr
    );
    // `--output` writes the file in every text format, and prints nothing else.
    for (format, expected) in [("csv", "n\n1024\n"), ("table", "1024")] {
        let file = store.path().join(format!("out.{format}"));
        let written = xtask(
            store.path(),
            &[
                "query",
                "SELECT count(*) AS n FROM features",
                "--format",
                format,
                "--output",
                file.to_str().unwrap(),
            ],
        );
        assert!(written.ok, "{}", written.stderr);
        assert_eq!(written.stdout.trim(), format!("wrote {}", file.display()));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text == expected || (format == "table" && text.contains(expected)),
            "{format}: {text:?}"
        );
    }
    // SQL over the analysis tables and the cached activations.
    let top = xtask(
        store.path(),
        &[
            "query",
            "SELECT count(*) AS n FROM features",
            "--format",
            "csv",
        ],
    );
    assert_eq!(top.stdout.trim(), "n\n1024", "{}", top.stderr);
    let acts = xtask(
        store.path(),
        &[
            "query",
            "SELECT count(*) AS n, max(label) AS top FROM act_test_fc2_pre",
            "--format",
            "csv",
        ],
    );
    assert_eq!(acts.stdout.trim(), "n,top\n10000,9", "{}", acts.stderr);
    // Rows are in dataset order: the cached labels are MNIST's, row for row.
    let order = xtask(
        store.path(),
        &[
            "query",
            "SELECT dataset_index, label FROM act_train_fc2_pre",
            "--format",
            "csv",
        ],
    );
    let rows: Vec<(usize, u8)> = order
        .stdout
        .lines()
        .skip(1)
        .map(|l| {
            let (index, label) = l.split_once(',').unwrap();
            (index.parse().unwrap(), label.parse().unwrap())
        })
        .collect();
    let mnist_labels = &testkit::mnist().train.labels.labels;
    assert_eq!(rows.len(), mnist_labels.len(), "{}", order.stderr);
    for (row, (&(index, label), &truth)) in rows.iter().zip(mnist_labels).enumerate() {
        assert_eq!((index, label), (row, truth), "row {row}");
    }
    // A bad query: polars' message first, then one short line per table.
    let bad = xtask(store.path(), &["query", "SELECT nope FROM features"]);
    let first = bad.stderr.lines().next().unwrap_or_default();
    assert!(!bad.ok && first.contains("nope"), "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("act_train_fc2_pre(dataset_index: u32, label: u8, u0..u127: f32)"),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr.len() < 3000,
        "{} bytes:\n{}",
        bad.stderr.len(),
        bad.stderr
    );
    let status = xtask(store.path(), &["status"]);
    assert!(
        status.stdout.lines().any(|l| l.starts_with("mlp ")
            && l.contains("mlp.epochs=1")
            && l.contains("fresh")
            && l.contains("test accuracy")),
        "{}",
        status.stdout
    );
    let changed = xtask(store.path(), &["status", "--set", "mlp.lr=0.01"]);
    assert!(
        changed
            .stdout
            .lines()
            .any(|l| l.starts_with("mlp ") && l.contains("stale: param mlp.lr: 0.001 -> 0.01")),
        "{}",
        changed.stdout
    );
    // Downstream stages have several reasons; the table shows the first and a count.
    let analysis_line = changed
        .stdout
        .lines()
        .find(|l| l.starts_with("analysis "))
        .unwrap();
    assert!(
        analysis_line.contains("stale: input")
            && analysis_line.contains("more)")
            && changed.stdout.lines().all(|l| l.chars().count() < 300),
        "{}",
        changed.stdout
    );
    // SAE params are the user's config keys, with the values as written.
    let coeff = xtask(store.path(), &["status", "--set", "sae.l1_coeff=[1e-4]"]);
    assert!(
        coeff
            .stdout
            .lines()
            .any(|l| l.starts_with("sae/fc2.pre/l1-0.0001/d1024/s0 ")
                && l.contains(" sae.l1_coeff=0.0001 ")),
        "{}",
        coeff.stdout
    );
    let probe = xtask(store.path(), &["status", "--set", "analysis.probe.l2=1e-3"]);
    assert!(
        probe.stdout.lines().any(|l| l.starts_with("analysis ")
            && l.contains("stale: param analysis.probe.l2: 0.0001 -> 0.001")),
        "{}",
        probe.stdout
    );
    // A single value where a sweep list is expected is a one-point list.
    let single = xtask(store.path(), &["status", "--set", "sae.l1_coeff=0.01"]);
    assert!(
        single
            .stdout
            .lines()
            .any(|l| l.starts_with("sae/fc2.pre/l1-0.01/d1024/s0 ")),
        "{}",
        single.stdout
    );
    let explain = xtask(
        store.path(),
        &["explain", "extract", "--set", "mlp.lr=0.01"],
    );
    assert!(
        explain.stdout.contains("input mlp changed"),
        "{}",
        explain.stdout
    );
}

#[test]
fn report_before_a_run_says_what_to_do_and_an_unknown_stage_lists_the_stages() {
    let store = tempfile::tempdir().unwrap();
    let report = xtask(store.path(), &["report"]);
    assert!(!report.ok);
    assert!(
        report
            .stderr
            .contains("the analysis stage for this config is missing")
            && report.stderr.contains("run `cargo xtask all`"),
        "{}",
        report.stderr
    );
    for args in [
        &["all", "--force", "nosuch"][..],
        &["run", "mlp", "--force", "nosuch"][..],
        &["run", "nosuch"][..],
    ] {
        let refused = xtask(store.path(), args);
        assert!(!refused.ok);
        assert!(
            refused
                .stderr
                .contains("there is no stage named nosuch; the stages are mnist, mlp, extract, "),
            "{args:?}: {}",
            refused.stderr
        );
        assert_eq!(
            std::fs::read_dir(store.path()).unwrap().count(),
            0,
            "{args:?} touched the store"
        );
    }
}

#[test]
fn a_param_change_reruns_exactly_what_is_downstream() {
    let store = tempfile::tempdir().unwrap();
    assert!(xtask(store.path(), &["all"]).ok);
    // A display setting of the analysis leaves the neurons' baseline as it is;
    // a probe setting rebuilds it.
    let display = xtask(
        store.path(),
        &["all", "--set", "analysis.digits_per_group=4"],
    );
    assert_eq!(
        (verdict(&display, NEURONS), verdict(&display, "analysis")),
        ("cached".into(), "ran".into())
    );
    let probes = xtask(store.path(), &["all", "--set", "analysis.probe.ks=[1, 2]"]);
    assert_eq!(
        (verdict(&probes, NEURONS), verdict(&probes, SAE)),
        ("ran".into(), "cached".into())
    );
    let lr = xtask(store.path(), &["all", "--set", "mlp.lr=0.002"]);
    assert_eq!(
        (
            verdict(&lr, "mnist"),
            verdict(&lr, "mlp"),
            verdict(&lr, "extract")
        ),
        ("cached".into(), "ran".into(), "ran".into())
    );
    let shards = xtask(
        store.path(),
        &[
            "all",
            "--set",
            "mlp.lr=0.002",
            "--set",
            "extract.rows_per_shard=30000",
        ],
    );
    assert_eq!(
        (verdict(&shards, "mlp"), verdict(&shards, "extract")),
        ("cached".into(), "ran".into())
    );
    let forced = xtask(
        store.path(),
        &["run", "mlp", "--force", "--set", "mlp.lr=0.002"],
    );
    assert_eq!(verdict(&forced, "mlp"), "ran");
    assert!(
        !forced.stdout.contains("extract"),
        "run mlp must not run extract:\n{}",
        forced.stdout
    );

    // gc keeps what the config reaches, and (by default) anything built in
    // the last 7 days; --all removes the rest: the lr=0.002 MLP, its two
    // extractions, their two SAEs, two neuron baselines and two analyses, and
    // the default run's analyses with other display and probe settings and
    // the baseline of the latter.
    let recent = xtask(store.path(), &["gc", "--dry-run"]);
    assert!(
        recent.stdout.contains("would remove 0 folder(s)")
            && recent.stdout.contains("12 built in the last 7 day(s)"),
        "{}",
        recent.stdout
    );
    let dry = xtask(store.path(), &["gc", "--all", "--dry-run"]);
    assert!(
        dry.stdout.contains("would remove 12 folder(s)"),
        "{}",
        dry.stdout
    );
    let gone = xtask(store.path(), &["gc", "--all"]);
    assert!(
        gone.stdout.contains("removed 12 folder(s)"),
        "{}",
        gone.stdout
    );
    let after = xtask(store.path(), &["all"]);
    assert_eq!(verdict(&after, "extract"), "cached");
    // `--force` without a stage rebuilds every stage.
    let everything = xtask(store.path(), &["all", "--force"]);
    for stage in ["mnist", "mlp", "extract", SAE, NEURONS, "analysis"] {
        assert_eq!(verdict(&everything, stage), "ran", "{}", everything.stdout);
    }
}

#[test]
fn bad_config_is_refused_in_one_sentence_that_names_the_key() {
    let store = tempfile::tempdir().unwrap();
    assert!(xtask(store.path(), &["all"]).ok);
    let before = std::fs::read_dir(store.path().join("mlp")).unwrap().count();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--set", "mlp.lrr=0.1"],
            "--set mlp.lrr=0.1: unknown key mlp.lrr; the keys in [mlp] are",
        ),
        (
            &["--set", "mlp.epochs=many"],
            "--set mlp.epochs=many: mlp.epochs must be an integer, got \"many\"",
        ),
        (
            &["--set", "mlp.lr=-1"],
            "mlp.lr = -1 is out of range: it must be in (0, 10]",
        ),
        (
            &["--set", "mlp.optimizer=\"rmsprop\""],
            "unknown variant `rmsprop`, expected `sgd` or `adam`",
        ),
        (
            &["--set", "extract.layers=[\"fc7\"]"],
            "extract.layers names \"fc7\", which is not a layer",
        ),
        (&["--set", "nonsense"], "--set nonsense: expected KEY=VALUE"),
        (
            &["--set", "analysis.probe.iterations=0"],
            "analysis.probe.iterations = 0 is out of range: it must be at least 1",
        ),
        (
            &["--set", "analysis.probe.tolerance=-1e-4"],
            "analysis.probe.tolerance = -0.0001 is out of range: it must be a positive number",
        ),
        (
            &["--set", "analysis.probe.momentum=0.9"],
            "unknown key analysis.probe.momentum",
        ),
        // Found from the config alone, before mnist, mlp and extract run.
        (
            &["--set", "extract.layers=[\"fc1.pre\"]"],
            "sae.layer names \"fc2.pre\", but extract.layers = [\"fc1.pre\"] does not cache it",
        ),
        (
            &["--set", "mlp.epochs=-3"],
            "mlp.epochs = -3 is out of range: it must be a whole number >= 0",
        ),
        (&["--preset", "fast"], "--preset fast: "),
        (
            &["--checkpoint-every=-1"],
            "--checkpoint-every is -1: it must be a number of seconds, 0 or more",
        ),
        // A sweep that cannot fit in memory, named before anything runs.
        (
            &["--set", "sae.d_sae=1000000000"],
            "sae.d_sae = 1000000000 needs about ",
        ),
        // Values that used to slip through.
        (
            &["--set", "sae.l1_coeff=[]"],
            "sae.l1_coeff is an empty list: a sweep axis needs at least one value",
        ),
        (
            &["--set", "sae.batch_size=100000"],
            "sae.batch_size = 100000 is more than the 60000 training rows",
        ),
        (
            &["--set", "sae.prefix_fractions=[]"],
            "sae.prefix_fractions is an empty list",
        ),
        (
            &["--set", "sae.d_sae=[1024, 1024]"],
            "sae.d_sae lists 1024 twice (entries 1 and 2)",
        ),
        (
            &[
                "--set",
                "sae.architecture=[\"transcoder\"]",
                "--set",
                "sae.transcoder_input=logits",
                "--set",
                "sae.transcoder_output=fc1.pre",
            ],
            "sae.transcoder_output = \"fc1.pre\" comes before sae.transcoder_input = \"logits\" in the network",
        ),
    ];
    for (args, message) in cases {
        let run = xtask(store.path(), &[&["all"], *args].concat());
        assert!(!run.ok, "{args:?} was accepted");
        let first = run.stderr.lines().next().unwrap_or_default();
        assert!(first.contains(message), "{args:?}: {first}");
        assert_eq!(
            run.stderr.lines().count(),
            1,
            "{args:?}: more than one line:\n{}",
            run.stderr
        );
    }
    let config = store.path().join("bad.toml");
    std::fs::write(&config, "[mlp]\nlr = 0.1\n[sea]\nd_sae = 3\n").unwrap();
    let run = xtask(store.path(), &["all", "--config", config.to_str().unwrap()]);
    assert!(
        run.stderr
            .contains("bad.toml: unknown key sea; the keys at the top level are"),
        "{}",
        run.stderr
    );
    std::fs::write(&config, "[mlp\n").unwrap();
    let run = xtask(store.path(), &["all", "--config", config.to_str().unwrap()]);
    assert!(
        run.stderr
            .contains("bad.toml: not valid TOML at line 1, column 5"),
        "{}",
        run.stderr
    );
    std::fs::write(&config, "[mlp]\nlr = 0.1\nepochs = = 3\n").unwrap();
    let run = xtask(store.path(), &["all", "--config", config.to_str().unwrap()]);
    assert!(
        run.stderr
            .contains("bad.toml: not valid TOML at line 3, column 10: ")
            && run.stderr.lines().count() == 1,
        "{}",
        run.stderr
    );
    // A named MNIST folder is used or refused on a store that has MNIST
    // cached too: one corrupt file, and nothing runs.
    let named = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(testkit::mnist_dir()).unwrap() {
        let from = entry.unwrap().path();
        std::fs::copy(&from, named.path().join(from.file_name().unwrap())).unwrap();
    }
    let labels = std::fs::read_dir(named.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("t10k-labels"))
        .unwrap();
    let mut bytes = std::fs::read(&labels).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&labels, bytes).unwrap();
    let named_dir = named.path().to_str().unwrap();
    let run = xtask(store.path(), &["all", "--mnist-dir", named_dir]);
    assert!(!run.ok, "a corrupt named MNIST folder was accepted");
    assert!(
        run.stderr.lines().count() == 1
            && run.stderr.contains("fails verification, so it is not used")
            && run.stderr.contains("t10k-labels"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_dir(store.path().join("mlp")).unwrap().count(),
        before,
        "refused runs must not touch the store"
    );
    assert_eq!(verdict(&xtask(store.path(), &["all"]), "mlp"), "cached");
}

#[test]
fn two_runs_at_once_build_each_stage_once() {
    let store = tempfile::tempdir().unwrap();
    let spawn = || {
        command(store.path(), &["all"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (
        finished(a.wait_with_output().unwrap()),
        finished(b.wait_with_output().unwrap()),
    );
    assert!(
        a.ok && b.ok,
        "{}\n{}\n{}\n{}",
        a.stdout,
        a.stderr,
        b.stdout,
        b.stderr
    );
    for stage in ["mnist", "mlp", "extract", SAE] {
        let verdicts = [verdict(&a, stage), verdict(&b, stage)];
        assert_eq!(
            verdicts.iter().filter(|v| *v == "ran").count(),
            1,
            "{stage}: {verdicts:?}"
        );
    }
}

/// Sweeps of `[0.001, 0.003]` and `[0.003, 0.01]` started together: each
/// locks its points before training, so the shared point trains in one run
/// and the other finds it built.
#[test]
fn overlapping_sweeps_at_once_train_their_shared_point_once() {
    let store = tempfile::tempdir().unwrap();
    assert!(xtask(store.path(), &["run", "extract"]).ok);
    let spawn = |coeffs: &str| {
        command(
            store.path(),
            &["run", "sae", "--set", &format!("sae.l1_coeff={coeffs}")],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (a, b) = (spawn("[0.001, 0.003]"), spawn("[0.003, 0.01]"));
    let (a, b) = (
        finished(a.wait_with_output().unwrap()),
        finished(b.wait_with_output().unwrap()),
    );
    let both = format!("{}\n{}\n{}\n{}", a.stdout, a.stderr, b.stdout, b.stderr);
    assert!(a.ok && b.ok, "{both}");
    // A point's progress lines ("<point>:  10% ...") are printed by the run that trains it.
    let trained = |run: &Run, point: &str| {
        run.stderr
            .lines()
            .any(|l| l.starts_with(&format!("{point}:")))
    };
    assert_eq!(
        [trained(&a, SAE), trained(&b, SAE)],
        if verdict(&a, SAE) == "ran" {
            [true, false]
        } else {
            [false, true]
        },
        "{both}"
    );
    let mut verdicts = [verdict(&a, SAE), verdict(&b, SAE)];
    verdicts.sort();
    assert_eq!(verdicts, ["cached", "ran"], "{both}");
    assert!(trained(&a, "sae/fc2.pre/l1-0.001/d1024/s0"), "{both}");
    assert!(trained(&b, "sae/fc2.pre/l1-0.01/d1024/s0"), "{both}");
}

#[test]
fn a_run_killed_mid_training_leaves_nothing_half_done() {
    let store = tempfile::tempdir().unwrap();
    assert!(xtask(store.path(), &["run", "mnist"]).ok);
    let mut child = command(store.path(), &["all", "--set", "mlp.epochs=20"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines() {
        if line.unwrap().starts_with("mlp:  10%") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let status = xtask(store.path(), &["status", "--set", "mlp.epochs=20"]);
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with("mlp ") && l.contains("missing")),
        "{}",
        status.stdout
    );
    let staging: Vec<_> = std::fs::read_dir(store.path().join("mlp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        staging
            .iter()
            .all(|n| n.to_string_lossy().starts_with(".staging-")),
        "{staging:?}"
    );
    let gc = xtask(store.path(), &["gc"]);
    assert!(
        gc.stdout.contains(".staging-"),
        "gc must clear the dead run's staging folder: {}",
        gc.stdout
    );
    let again = xtask(store.path(), &["run", "mlp"]);
    assert_eq!(verdict(&again, "mlp"), "ran");
}

#[test]
fn sae_sweeps_reuse_the_cached_activations_and_a_diverging_point_fails_alone() {
    let store = tempfile::tempdir().unwrap();
    assert!(xtask(store.path(), &["all"]).ok);
    // Two new points: the activations are reused, the old point is untouched.
    let sweep = xtask(
        store.path(),
        &["all", "--set", "sae.l1_coeff=[0.003, 0.01, 1e38]"],
    );
    assert!(!sweep.ok, "a diverging point must fail the run");
    assert_eq!(
        (
            verdict(&sweep, "mlp"),
            verdict(&sweep, "extract"),
            verdict(&sweep, SAE)
        ),
        ("cached".into(), "cached".into(), "cached".into())
    );
    assert_eq!(verdict(&sweep, "sae/fc2.pre/l1-0.01/d1024/s0"), "ran");
    let failed = sweep
        .stdout
        .lines()
        .find(|l| l.starts_with("sae/fc2.pre/l1-100000000000000000000000000000000000000/"))
        .unwrap_or_default();
    assert!(
        failed.contains("FAILED") && failed.contains("step") && failed.contains("loss"),
        "{}",
        sweep.stdout
    );
    // Retraining the MLP invalidates the activations and every SAE.
    let retrained = xtask(store.path(), &["all", "--set", "mlp.seed=1"]);
    assert_eq!(
        (verdict(&retrained, "extract"), verdict(&retrained, SAE)),
        ("ran".into(), "ran".into())
    );

    // The artifact holds the SAELens names and shapes, and metrics for the report.
    let status = xtask(store.path(), &["status"]);
    let line = status.stdout.lines().find(|l| l.starts_with(SAE)).unwrap();
    assert!(
        line.contains("fresh") && line.contains("CE recovered"),
        "{line}"
    );
    let dir = std::fs::read_dir(store.path().join("sae"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("sae_weights.safetensors").exists())
        .unwrap();
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap();
    let ev = metrics["test"]["explained_variance"].as_f64().unwrap();
    assert!(ev > 0.5 && ev < 1.0, "explained variance {ev}");
    let recovered = metrics["downstream"]["ce_recovered_zero"].as_f64().unwrap();
    assert!(
        recovered > 0.5 && recovered <= 1.05,
        "CE recovered {recovered}"
    );
}

/// The README's `cargo xtask query "..."` examples, as a user would paste them.
fn readme_queries() -> Vec<String> {
    let readme = std::fs::read_to_string(testkit::repo_root().join("README.md")).unwrap();
    readme
        .lines()
        .filter_map(|l| l.strip_prefix("cargo xtask query \""))
        .map(|l| l.strip_suffix('"').expect("one query per line").to_string())
        .collect()
}

#[test]
fn every_readme_query_returns_rows() {
    let queries = readme_queries();
    assert!(queries.len() >= 5, "{queries:?}");
    for sql in queries {
        let run = xtask(support::built_store(), &["query", &sql, "--format", "csv"]);
        assert!(run.ok, "{sql}: {}", run.stderr);
        assert!(
            run.stdout.trim().lines().count() >= 2,
            "{sql}: no rows:\n{}",
            run.stdout
        );
    }
}

#[test]
fn runs_lists_every_sae_in_the_store_whatever_config_built_it() {
    let store = testkit::copy_of(support::built_store());
    let wider = xtask(store.path(), &["all", "--set", "sae.d_sae=[512]"]);
    assert!(wider.ok, "{}", wider.stderr);
    // Listed from the default config, which reaches only one of them.
    let runs = xtask(store.path(), &["runs", "--format", "csv"]);
    assert!(runs.ok, "{}", runs.stderr);
    let lines: Vec<&str> = runs.stdout.trim().lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(header[..3], ["key", "built_unix_s", "l0_test"]);
    let d_sae = header.iter().position(|h| *h == "param_d_sae").unwrap();
    let column = |i: usize| -> Vec<&str> {
        lines[1..]
            .iter()
            .map(|l| l.split(',').nth(i).unwrap())
            .collect()
    };
    let mut widths = column(d_sae);
    widths.sort();
    assert_eq!(widths, ["1024", "512"], "{}", runs.stdout);
    let built: Vec<u64> = column(1).iter().map(|b| b.parse().unwrap()).collect();
    assert!(
        built.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {built:?}"
    );
    let queried = xtask(
        store.path(),
        &[
            "query",
            "SELECT count(*) AS n FROM runs WHERE dead_train >= 0",
            "--format",
            "csv",
        ],
    );
    assert_eq!(queried.stdout.trim(), "n\n2", "{}", queried.stderr);
    // The table fits a terminal: when, which, what, the params that differ
    // (none here but d_sae, which is always shown), the headline metrics.
    let table = xtask(store.path(), &["runs"]);
    let header: Vec<&str> = table
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "built",
            "key",
            "layer",
            "architecture",
            "d_sae",
            "l0_test",
            "ev_test",
            "dead_train",
            "train_seconds"
        ],
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.trim_end().ends_with("2 rows"),
        "{}",
        table.stdout
    );
    let all = xtask(store.path(), &["runs", "--all"]);
    assert!(
        all.stdout.lines().next().unwrap().contains("param_lr"),
        "{}",
        all.stdout
    );
    let lr = xtask(store.path(), &["all", "--set", "sae.lr=0.002"]);
    assert!(lr.ok, "{}", lr.stderr);
    let header = xtask(store.path(), &["runs"]).stdout;
    assert!(header.lines().next().unwrap().contains(" lr "), "{header}");
}

#[test]
fn dashboards_render_on_demand_for_named_or_queried_features() {
    let store = testkit::copy_of(support::built_store());
    let asked = xtask(
        store.path(),
        &[
            "dashboard",
            "--feature",
            "3",
            "--query",
            "SELECT feature FROM features WHERE NOT dead ORDER BY detector_f1 DESC LIMIT 2",
        ],
    );
    assert!(asked.ok, "{}", asked.stderr);
    let page = std::path::PathBuf::from(asked.stdout.trim());
    assert!(
        page.starts_with(store.path().join(".dashboards")),
        "{}",
        page.display()
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(html.matches("(picked for: asked for)").count(), 3, "{html}");
    assert!(html.contains("id=\"fc2.pre_l1-0.003_d1024_s0-feature-3\""));
    assert!(html.matches("<img ").count() >= 3 * 5);
    assert!(
        asked
            .stderr
            .contains("rebuild: cargo xtask dashboard --sae sae/fc2.pre/l1-0.003/d1024/s0 --feature 3 --feature "),
        "{}",
        asked.stderr
    );
    // Another set gets its own page: the first stays.
    let other = xtask(store.path(), &["dashboard", "--feature", "3"]);
    assert!(other.ok, "{}", other.stderr);
    let other_page = std::path::PathBuf::from(other.stdout.trim());
    assert!(other_page.ends_with("features-3.html") && other_page != page);
    assert_eq!(std::fs::read_to_string(&page).unwrap(), html);
    // A dead feature gets one sentence, not empty plots.
    let dead = xtask(
        store.path(),
        &[
            "query",
            "SELECT feature FROM features WHERE dead ORDER BY feature LIMIT 1",
            "--format",
            "csv",
        ],
    );
    let dead: usize = dead
        .stdout
        .lines()
        .nth(1)
        .expect("a dead feature")
        .parse()
        .unwrap();
    let refused = xtask(store.path(), &["dashboard", "--feature", &dead.to_string()]);
    assert!(
        !refused.ok
            && refused.stderr.contains(&format!(
                "feature {dead} never fires: 0 of 60000 train rows"
            )),
        "{}",
        refused.stderr
    );
    // Nothing stored changed: the run is still all cached and verifies.
    assert!(xtask(store.path(), &["verify"]).ok);
    for (args, message) in [
        (
            &["dashboard", "--feature", "99999"][..],
            "feature 99999 does not exist",
        ),
        (&["dashboard"][..], "name the features: --feature N"),
        (
            &["dashboard", "--feature", "1", "--sae", "sae/nope"][..],
            "--sae sae/nope: this config has no such SAE",
        ),
    ] {
        let refused = xtask(store.path(), args);
        assert!(
            !refused.ok && refused.stderr.contains(message),
            "{args:?}: {}",
            refused.stderr
        );
    }
}

#[test]
fn every_architecture_trains_into_one_report_and_saelens_loads_each_folder() {
    let store = tempfile::tempdir().unwrap();
    let mut names: Vec<&str> = sae::ArchitectureKind::ALL
        .iter()
        .map(|a| a.name())
        .collect();
    names.extend(["transcoder", "skip_transcoder"]);
    let architectures = format!("sae.architecture={names:?}");
    let run = xtask(
        store.path(),
        &[
            "all",
            "--set",
            &architectures,
            "--set",
            "sae.d_sae=[256]",
            "--set",
            "sae.k=[16]",
        ],
    );
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    for label in [
        "l1-0.003",
        "topk-k16",
        "nwl1-0.003",
        "btopk-k16",
        "mbtopk-k16",
        "jumprelu-0.1",
        "gated-0.003",
    ] {
        let stage = format!("sae/fc2.pre/{label}/d256/s0");
        assert_eq!(verdict(&run, &stage), "ran", "{stage}: {}", run.stdout);
    }
    for label in ["transcoder-l1-0.003", "skip_transcoder-l1-0.003"] {
        let stage = format!("sae/fc1.post_to_fc2.post/{label}/d256/s0");
        assert_eq!(verdict(&run, &stage), "ran", "{stage}: {}", run.stdout);
    }
    assert_eq!(verdict(&run, "analysis"), "ran");
    // The transcoders share fc2's report with the SAEs: one sweep table, one
    // family paragraph naming both kinds.
    let reports: Vec<_> = std::fs::read_dir(store.path().join("analysis"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("manifest.json").exists())
        .collect();
    assert_eq!(reports.len(), 1);
    let report_dir = reports[0].path().join("fc2_pre");
    let html = std::fs::read_to_string(report_dir.join("report.html")).unwrap();
    // The sweep table's layer column (HTML-escaped).
    for name in ["skip_transcoder", "fc1.post-&gt;fc2.post", "gated"] {
        assert!(html.contains(name), "the report lacks {name}");
    }
    assert!(
        !reports[0].path().join("fc2_post").exists(),
        "the transcoders got a report of their own"
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_saelens_store.py");
    let output = match std::process::Command::new("python3")
        .arg(&script)
        .arg(store.path())
        .output()
    {
        Ok(output) => output,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("note: skipping the SAELens check, python3 did not start: {e}");
            return;
        }
        Err(e) => panic!("python3 did not start: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.code() == Some(3) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but Python lacks sae-lens: {stdout}"
        );
        eprintln!("note: skipping the SAELens check: {stdout}");
        return;
    }
    assert!(
        output.status.success() && stdout.lines().count() == 9,
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{stdout}");
}

#[test]
fn a_bad_thread_count_is_refused_naming_where_it_came_from() {
    let store = tempfile::tempdir().unwrap();
    let cases: [(&[&str], Option<&str>, &str); 3] = [
        (
            &["--threads", "0", "stages"],
            None,
            "--threads = \"0\" is not a thread count",
        ),
        (
            &["stages"],
            Some("two"),
            "SAELAB_THREADS = \"two\" is not a thread count",
        ),
        // The flag wins over the variable.
        (
            &["--threads", "x", "stages"],
            Some("2"),
            "--threads = \"x\"",
        ),
    ];
    for (args, env, message) in cases {
        let mut cmd = command(store.path(), args);
        if let Some(value) = env {
            cmd.env("SAELAB_THREADS", value);
        }
        let run = finished(cmd.output().unwrap());
        assert!(!run.ok, "{args:?} {env:?} was accepted");
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains(message), "{args:?}: {}", run.stderr);
    }
    let mut good = command(store.path(), &["--threads", "3", "stages"]);
    good.env("SAELAB_THREADS", "1");
    let run = finished(good.output().unwrap());
    assert!(run.ok, "{}", run.stderr);
}
