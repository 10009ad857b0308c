//! The store and the runner with toy stages: what reruns, what a killed or
//! concurrent writer leaves behind, and what gc removes.
//!
//! Over 600 lines: the toy stages and the child-process helpers serve every
//! case here.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use artifacts::{
    Check, GcOptions, Graph, Key, KeySpec, Outcome, RunOptions, Stage, StageError, StageInputs,
    Store, Verify,
};
use serde_json::{json, Value};

/// A stage that writes `out.txt` = its param plus the sum of its inputs' values,
/// and counts how often it ran.
struct Toy {
    name: &'static str,
    param: i64,
    inputs: Vec<&'static str>,
    fail: bool,
    runs: Mutex<u32>,
}

fn toy(name: &'static str, param: i64, inputs: &[&'static str]) -> Toy {
    Toy {
        name,
        param,
        inputs: inputs.to_vec(),
        fail: false,
        runs: Mutex::new(0),
    }
}

impl Stage for Toy {
    fn name(&self) -> &str {
        self.name
    }
    fn kind(&self) -> &str {
        self.name
    }
    fn fingerprint(&self) -> String {
        "toy-v1".into()
    }
    fn params(&self) -> Value {
        json!({ "param": self.param })
    }
    fn inputs(&self) -> Vec<(String, String)> {
        self.inputs
            .iter()
            .map(|i| (i.to_string(), i.to_string()))
            .collect()
    }
    fn run(&self, inputs: &StageInputs, out: &Path) -> Result<Value, StageError> {
        *self.runs.lock().unwrap() += 1;
        if self.fail {
            return Err(format!("{} refuses", self.name).into());
        }
        let mut total = self.param;
        for i in &self.inputs {
            total += fs::read_to_string(inputs.dir(i).join("out.txt"))?
                .trim()
                .parse::<i64>()?;
        }
        fs::write(out.join("out.txt"), total.to_string())?;
        Ok(json!({ "headline": total }))
    }
}

fn runs(stage: &Toy) -> u32 {
    *stage.runs.lock().unwrap()
}

fn run_all(store: &Store, stages: &[&dyn Stage]) -> Vec<Outcome> {
    Graph::new(stages)
        .unwrap()
        .run(store, &RunOptions::default(), &|_| {})
        .unwrap()
}

fn ran(outcomes: &[Outcome]) -> Vec<&str> {
    outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Ran { .. }))
        .map(|o| o.name())
        .collect()
}

#[test]
fn a_param_change_reruns_exactly_the_stages_downstream() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, b, c, d) = (
        toy("a", 1, &[]),
        toy("b", 10, &["a"]),
        toy("c", 100, &["b"]),
        toy("d", 1000, &["a"]),
    );
    assert_eq!(
        ran(&run_all(&store, &[&a, &b, &c, &d])),
        vec!["a", "b", "d", "c"]
    );
    assert!(
        ran(&run_all(&store, &[&a, &b, &c, &d])).is_empty(),
        "a second run must be all cached"
    );

    let b2 = toy("b", 20, &["a"]);
    let plan = Graph::new(&[&a, &b2, &c, &d]).unwrap().plan(&store);
    let states: Vec<String> = plan.iter().map(|p| p.state.label()).collect();
    assert_eq!(states[0], "fresh");
    assert_eq!(states[1], "stale: param param: 10 -> 20");
    assert!(
        states[3].starts_with("stale: input b changed"),
        "{}",
        states[3]
    );
    let outcomes = run_all(&store, &[&a, &b2, &c, &d]);
    assert_eq!(ran(&outcomes), vec!["b", "c"]);
    let c_out = outcomes
        .iter()
        .find(|o| o.name() == "c")
        .unwrap()
        .manifest()
        .unwrap();
    assert_eq!(c_out.headline(), "121");
    assert_eq!((runs(&a), runs(&c), runs(&d)), (1, 2, 1));
}

#[test]
fn targets_run_only_what_they_need_and_force_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, b, c) = (toy("a", 1, &[]), toy("b", 2, &["a"]), toy("c", 3, &["b"]));
    let graph = Graph::new(&[&a, &b, &c]).unwrap();
    let only_b = RunOptions {
        targets: ["b".to_string()].into(),
        ..Default::default()
    };
    assert_eq!(
        ran(&graph.run(&store, &only_b, &|_| {}).unwrap()),
        vec!["a", "b"]
    );
    let force_b = RunOptions {
        force: ["b".to_string()].into(),
        ..Default::default()
    };
    assert_eq!(
        ran(&graph.run(&store, &force_b, &|_| {}).unwrap()),
        vec!["b", "c"]
    );
}

/// A deferred stage and what reads it are built after every other stage,
/// the rest in graph order.
#[test]
fn deferred_stages_and_their_readers_are_built_last() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, b, c, d) = (
        toy("a", 1, &[]),
        toy("b", 2, &["a"]),
        toy("c", 3, &["a"]),
        toy("d", 4, &["a"]),
    );
    let graph = Graph::new(&[&a, &b, &c, &d]).unwrap();
    let defer_b = RunOptions {
        defer: ["b".to_string()].into(),
        ..Default::default()
    };
    assert_eq!(
        ran(&graph.run(&store, &defer_b, &|_| {}).unwrap()),
        vec!["a", "c", "d", "b"]
    );
    let (e, f, g) = (toy("e", 5, &[]), toy("f", 6, &["e"]), toy("g", 7, &[]));
    let graph = Graph::new(&[&e, &f, &g]).unwrap();
    let defer_e = RunOptions {
        defer: ["e".to_string()].into(),
        ..Default::default()
    };
    assert_eq!(
        ran(&graph.run(&store, &defer_e, &|_| {}).unwrap()),
        vec!["g", "e", "f"]
    );
}

#[test]
fn a_failed_stage_skips_its_dependants_only_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut b = toy("b", 2, &["a"]);
    b.fail = true;
    let (a, c, d) = (toy("a", 1, &[]), toy("c", 3, &["b"]), toy("d", 4, &["a"]));
    let outcomes = run_all(&store, &[&a, &b, &c, &d]);
    assert!(matches!(&outcomes[1], Outcome::Failed { error, .. } if error == "b refuses"));
    assert!(matches!(&outcomes[3], Outcome::Skipped { name, .. } if name == "c"));
    assert_eq!(ran(&outcomes), vec!["a", "d"]);
    assert!(
        fs::read_dir(dir.path().join("b")).unwrap().next().is_none(),
        "no staging left behind"
    );
}

#[test]
fn a_damaged_artifact_is_stale_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = toy("a", 1, &[]);
    run_all(&store, &[&a]);
    let key = Graph::new(&[&a]).unwrap().plan(&store)[0].key.clone();
    fs::write(store.artifact_dir("a", &key).join("out.txt"), "12345").unwrap();
    let plan = Graph::new(&[&a]).unwrap().plan(&store);
    assert!(
        plan[0]
            .state
            .label()
            .contains("out.txt has 5 bytes, manifest says 1"),
        "{}",
        plan[0].state.label()
    );
    assert_eq!(ran(&run_all(&store, &[&a])), vec!["a"]);
    fs::remove_file(store.artifact_dir("a", &key).join("manifest.json")).unwrap();
    assert!(
        matches!(store.check("a", &key), Check::Invalid(why) if why.contains("no manifest.json"))
    );
    assert_eq!(ran(&run_all(&store, &[&a])), vec!["a"]);
    assert_eq!(
        fs::read_to_string(store.artifact_dir("a", &key).join("out.txt")).unwrap(),
        "1"
    );
}

fn key_of(stages: &[&dyn Stage], store: &Store, name: &str) -> Key {
    let plan = Graph::new(stages).unwrap().plan(store);
    plan.into_iter().find(|p| p.name == name).unwrap().key
}

fn states(stages: &[&dyn Stage], store: &Store) -> Vec<String> {
    let plan = Graph::new(stages).unwrap().plan(store);
    plan.iter().map(|p| p.state.label()).collect()
}

/// Overwrites one byte in place: same size, so only a digest can tell.
fn flip_byte(path: &Path, at: usize, to: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at] = to;
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_same_size_corruption_makes_the_artifact_and_everything_built_from_it_stale() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, b, c, d) = (
        toy("a", 1, &[]),
        toy("b", 2, &["a"]),
        toy("c", 3, &["b"]),
        toy("d", 4, &[]),
    );
    let stages: [&dyn Stage; 4] = [&a, &b, &c, &d];
    run_all(&store, &stages);
    let a_file = store
        .artifact_dir("a", &key_of(&stages, &store, "a"))
        .join("out.txt");
    flip_byte(&a_file, 0, b'7');
    let labels = states(&stages, &store);
    assert_eq!(
        labels[0],
        "stale: file out.txt changed since it was built: its SHA-256 no longer matches the manifest"
    );
    // Upstream first: a, then d and b, then c.
    assert_eq!(
        labels[1..],
        [
            "fresh",
            "stale: built from a, which is corrupt",
            "stale: built from b, which is corrupt",
        ]
    );
    // Fresh stays fresh; the corrupt one and its dependants are rebuilt, from good bytes.
    let outcomes = run_all(&store, &stages);
    assert_eq!(ran(&outcomes), vec!["a", "b", "c"]);
    assert_eq!(fs::read_to_string(&a_file).unwrap(), "1");
    assert_eq!(outcomes[3].manifest().unwrap().headline(), "6");
    assert!(states(&stages, &store).iter().all(|s| s == "fresh"));
    assert!(ran(&run_all(&store, &stages)).is_empty());
}

#[test]
fn a_run_marks_the_dependants_of_a_corrupt_artifact_until_they_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = toy("a", 1, &[]);
    let mut b = toy("b", 2, &["a"]);
    let stages: [&dyn Stage; 2] = [&a, &b];
    run_all(&store, &stages);
    flip_byte(
        &store
            .artifact_dir("a", &key_of(&stages, &store, "a"))
            .join("out.txt"),
        0,
        b'5',
    );
    // The rebuild of b fails after a is repaired: b must stay stale, not
    // become fresh again because a now matches.
    b.fail = true;
    let outcomes = run_all(&store, &[&a, &b]);
    assert_eq!(ran(&outcomes), vec!["a"]);
    b.fail = false;
    assert_eq!(
        states(&[&a, &b], &store)[1],
        "stale: built from a, which is corrupt"
    );
    assert_eq!(ran(&run_all(&store, &[&a, &b])), vec!["b"]);
    assert_eq!(states(&[&a, &b], &store), ["fresh", "fresh"]);
}

/// Rewrites the store's stat stamps of an artifact to the files' current stat,
/// as if the bytes had rotted on disk without anyone writing them.
fn restamp_as_if_untouched(store: &Store, kind: &str, key: &Key) {
    use std::os::unix::fs::MetadataExt;
    let stamp_file = store.root().join(".stamps").join(format!("{kind}-{key}"));
    let mut stamps: Vec<Value> = serde_json::from_slice(&fs::read(&stamp_file).unwrap()).unwrap();
    for stamp in &mut stamps {
        let path = store
            .artifact_dir(kind, key)
            .join(stamp["path"].as_str().unwrap());
        let meta = fs::metadata(path).unwrap();
        stamp["ctime_ns"] = json!(meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128);
        stamp["mtime_ns"] = json!(meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128);
        stamp["inode"] = json!(meta.ino());
    }
    fs::write(stamp_file, serde_json::to_vec(&stamps).unwrap()).unwrap();
}

#[test]
fn rot_under_an_unchanged_stat_is_found_by_digests_and_by_a_stage_that_fails_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, b) = (toy("a", 1, &[]), toy("b", 2, &["a"]));
    run_all(&store, &[&a]);
    let key = key_of(&[&a], &store, "a");
    let file = store.artifact_dir("a", &key).join("out.txt");
    flip_byte(&file, 0, b'x');
    restamp_as_if_untouched(&store, "a", &key);
    assert!(
        matches!(store.check("a", &key), Check::Fresh(_)),
        "the stamp is trusted"
    );
    assert!(
        matches!(store.check_with("a", &key, Verify::Digests), Check::Invalid(why) if why.contains("out.txt changed since it was built")),
    );
    // b cannot parse "x": the failure re-hashes its input, names it, and marks it.
    let outcomes = run_all(&store, &[&a, &b]);
    let Outcome::Failed { error, .. } = &outcomes[1] else {
        panic!("{outcomes:?}")
    };
    assert!(
        error.contains("its input a (")
            && error.contains("is corrupt: ")
            && error.contains("the next run rebuilds it"),
        "{error}"
    );
    assert!(states(&[&a], &store)[0].contains("out.txt changed since it was built"));
    assert_eq!(ran(&run_all(&store, &[&a, &b])), vec!["a", "b"]);
}

#[test]
fn an_invalidated_artifact_is_stale_with_the_reason_until_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = toy("a", 1, &[]);
    run_all(&store, &[&a]);
    let key = key_of(&[&a], &store, "a");
    store
        .invalidate("a", &key, "verify found it corrupt")
        .unwrap();
    assert_eq!(states(&[&a], &store), ["stale: verify found it corrupt"]);
    assert_eq!(ran(&run_all(&store, &[&a])), vec!["a"]);
    assert_eq!(states(&[&a], &store), ["fresh"]);
}

/// Replaces the first `from` in `a`'s manifest by `to` (same length, valid JSON).
fn edit_manifest(store: &Store, key: &Key, from: &str, to: &str) {
    let path = store.artifact_dir("a", key).join(artifacts::MANIFEST);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} not in {text}");
    let edited = text.replacen(from, to, 1);
    assert_eq!(edited.len(), text.len());
    serde_json::from_str::<Value>(&edited).unwrap();
    fs::write(&path, edited).unwrap();
}

#[test]
fn a_manifest_edited_while_valid_json_is_corrupt_and_so_is_what_was_built_from_it() {
    // Each edit keeps the JSON valid and every listed file intact: only the
    // manifest's own digest and its key's re-derivation can tell.
    let digest_of_out = |store: &Store, key: &Key| {
        let m = match store.check("a", key) {
            Check::Fresh(m) => m,
            other => panic!("{other:?}"),
        };
        m.file("out.txt").unwrap().sha256.clone()
    };
    let cases: [(&str, &dyn Fn(&Store, &Key) -> (String, String)); 6] = [
        ("a param", &|_, _| {
            ("\"param\": 1".into(), "\"param\": 7".into())
        }),
        ("a metric", &|_, _| {
            ("\"headline\": 1".into(), "\"headline\": 9".into())
        }),
        ("the fingerprint", &|_, _| {
            ("toy-v1".into(), "toy-v2".into())
        }),
        ("the build time", &|_, _| {
            (
                "\"created_unix_s\": 1".into(),
                "\"created_unix_s\": 2".into(),
            )
        }),
        ("a file's digest", &|store, key| {
            let d = digest_of_out(store, key);
            let flipped = format!("{}{}", if d.starts_with('0') { "1" } else { "0" }, &d[1..]);
            (d, flipped)
        }),
        ("the digest itself", &|store, key| {
            let m = match store.check("a", key) {
                Check::Fresh(m) => m,
                other => panic!("{other:?}"),
            };
            let d = m.digest.clone();
            let flipped = format!("{}{}", if d.starts_with('0') { "1" } else { "0" }, &d[1..]);
            (d, flipped)
        }),
    ];
    for (what, edit) in cases {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (toy("a", 1, &[]), toy("b", 2, &["a"]));
        let stages: [&dyn Stage; 2] = [&a, &b];
        run_all(&store, &stages);
        let key = key_of(&stages, &store, "a");
        let (from, to) = edit(&store, &key);
        edit_manifest(&store, &key, &from, &to);
        for verify in [Verify::Stamps, Verify::Digests] {
            match store.check_with("a", &key, verify) {
                Check::Invalid(why) => assert!(why.contains("manifest.json"), "{what}: {why}"),
                other => panic!("{what}: an edited manifest checked as {other:?}"),
            }
        }
        let labels = states(&stages, &store);
        assert!(
            labels[0].starts_with("stale: manifest.json"),
            "{what}: {labels:?}"
        );
        assert_eq!(labels[1], "stale: built from a, which is corrupt", "{what}");
        // Rebuilt from scratch: the true param and headline again.
        assert_eq!(ran(&run_all(&store, &stages)), vec!["a", "b"], "{what}");
        match store.check("a", &key) {
            Check::Fresh(m) => {
                assert_eq!(m.params["param"], 1, "{what}");
                assert_eq!(m.headline(), "1", "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn a_manifest_whose_params_were_rewritten_with_its_digest_still_fails_its_key() {
    // Someone who recomputes the digest after editing a param is still caught:
    // the params no longer hash to the folder's key.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = toy("a", 1, &[]);
    run_all(&store, &[&a]);
    let key = key_of(&[&a], &store, "a");
    let path = store.artifact_dir("a", &key).join(artifacts::MANIFEST);
    let mut manifest: artifacts::Manifest =
        serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    manifest.params = json!({ "param": 7 });
    manifest.digest = manifest.content_digest();
    fs::write(&path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    match store.check_with("a", &key, Verify::Digests) {
        Check::Invalid(why) => assert_eq!(
            why,
            format!(
                "manifest.json's stage, fingerprint, params and inputs hash to key {}, not to its folder's",
                manifest.spec().key()
            )
        ),
        other => panic!("{other:?}"),
    }
    // A manifest from before digests existed is rebuilt, not trusted.
    manifest.params = json!({ "param": 1 });
    manifest.digest.clear();
    fs::write(&path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    assert_eq!(
        states(&[&a], &store),
        ["stale: manifest.json carries no digest of itself (written by an older saelab)"]
    );
}

fn gc_options(dry_run: bool) -> GcOptions {
    GcOptions {
        keep_newer_than_s: None,
        dry_run,
    }
}

/// Two builds of stage `a`; what a config of the second reaches, and the
/// keys of the first (unreached) and the second.
fn two_builds_keeping_the_second(store: &Store) -> (BTreeSet<(String, Key)>, Key, Key) {
    let (a1, a2) = (toy("a", 1, &[]), toy("a", 2, &[]));
    run_all(store, &[&a1]);
    run_all(store, &[&a2]);
    let keep: BTreeSet<_> = Graph::new(&[&a2])
        .unwrap()
        .plan(store)
        .into_iter()
        .map(|p| (p.kind, p.key))
        .collect();
    (keep, key_of(&[&a1], store, "a"), key_of(&[&a2], store, "a"))
}

#[test]
fn gc_removes_what_no_config_reaches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (keep, old, _) = two_builds_keeping_the_second(&store);
    // Built just now: a 7-day age limit keeps it.
    let recent = store
        .gc(
            &keep,
            GcOptions {
                keep_newer_than_s: Some(7 * 86400),
                dry_run: false,
            },
        )
        .unwrap();
    assert_eq!(
        (
            recent.removed.len(),
            recent.kept_recent,
            recent.kept_reached
        ),
        (0, 1, 1)
    );
    let dry = store.gc(&keep, gc_options(true)).unwrap();
    assert_eq!(dry.removed, vec![store.artifact_dir("a", &old)]);
    assert_eq!(
        dry.removed_bytes,
        fs::metadata(store.artifact_dir("a", &old).join("manifest.json"))
            .unwrap()
            .len()
            + 1
    );
    assert!(
        store.artifact_dir("a", &old).exists(),
        "a dry run removes nothing"
    );
    // A running process holds it: gc keeps it and says so.
    let held = store.hold("a", &old);
    let busy = store.gc(&keep, gc_options(false)).unwrap();
    assert_eq!(
        (busy.removed.len(), busy.kept_in_use.clone()),
        (0, vec![store.artifact_dir("a", &old)])
    );
    drop(held);
    store.gc(&keep, gc_options(false)).unwrap();
    assert!(!store.artifact_dir("a", &old).exists());
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn gc_removes_lock_files_whose_artifact_is_gone_unless_held() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (keep, old, new) = two_builds_keeping_the_second(&store);
    let locks = dir.path().join(".locks");
    let lock_files = || {
        let mut names: Vec<String> = fs::read_dir(&locks)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let of = |key: &Key, ext: &str| format!("a-{key}.{ext}");
    // Held by a running process for an artifact never built: kept.
    let ghost = Key::parse("0123456789abcdef").unwrap();
    let held = store.hold("a", &ghost);
    let _ = store.hold("a", &old);
    let _ = store.hold("a", &new);
    assert!(lock_files().contains(&of(&old, "use")));
    let dry = store.gc(&keep, gc_options(true)).unwrap();
    assert_eq!(dry.removed_locks, 2, "{:?}", lock_files());
    assert!(
        lock_files().contains(&of(&old, "lock")),
        "a dry run removes nothing"
    );
    let report = store.gc(&keep, gc_options(false)).unwrap();
    assert_eq!(report.removed_locks, 2);
    let left = lock_files();
    assert!(
        !left.contains(&of(&old, "lock")) && !left.contains(&of(&old, "use")),
        "{left:?}"
    );
    assert!(
        left.contains(&of(&new, "lock")) && left.contains(&of(&new, "use")),
        "{left:?}"
    );
    assert!(
        left.contains(&of(&ghost, "use")),
        "a held lock stays: {left:?}"
    );
    drop(held);
    // Once let go, it is collected; and a lock taken after that still works.
    assert_eq!(store.gc(&keep, gc_options(false)).unwrap().removed_locks, 1);
    let _lock = store
        .lock("a", &ghost, || panic!("nobody holds it"))
        .unwrap();
    assert!(lock_files().contains(&of(&ghost, "lock")));
}

// ---- Processes: a writer killed mid-write, and two writers racing. ----

/// Re-runs this test binary as a child that executes one named test with `role` set.
fn spawn_child(test: &str, store: &Path, role: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("ARTIFACTS_CHILD_STORE", store)
        .env("ARTIFACTS_CHILD_ROLE", role)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn slow_spec() -> KeySpec {
    KeySpec {
        stage: "slow".into(),
        fingerprint: "v1".into(),
        params: json!({}),
        inputs: Default::default(),
    }
}

/// In a child: takes the key's lock and commits an artifact whose build writes
/// slowly and appends to `builds.log`, so the parent can count builds.
#[test]
fn child_slow_writer() {
    let (Ok(root), Ok(role)) = (
        std::env::var("ARTIFACTS_CHILD_STORE"),
        std::env::var("ARTIFACTS_CHILD_ROLE"),
    ) else {
        return;
    };
    let store = Store::open(&root).unwrap();
    let spec = slow_spec();
    let _lock = store.lock("slow", &spec.key(), || {}).unwrap();
    if let Check::Fresh(_) = store.check("slow", &spec.key()) {
        return;
    }
    store
        .commit(&spec, |out| {
            let log = Path::new(&root).join("builds.log");
            let mut line = fs::read_to_string(&log).unwrap_or_default();
            line.push_str(&role);
            line.push('\n');
            fs::write(&log, line)?;
            for i in 0..20 {
                fs::write(out.join(format!("part{i}")), vec![7u8; 1000])?;
                std::thread::sleep(Duration::from_millis(if role == "killed" {
                    200
                } else {
                    50
                }));
            }
            Ok(json!({}))
        })
        .unwrap();
}

#[test]
fn a_writer_killed_mid_write_leaves_nothing_that_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child("child_slow_writer", dir.path(), "killed");
    // Wait until it is writing, then kill it.
    let log = dir.path().join("builds.log");
    while !log.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(
        store.check("slow", &slow_spec().key()),
        Check::Missing
    ));
    // The next run redoes it, and gc clears the dead process's staging folder.
    let status = spawn_child("child_slow_writer", dir.path(), "redo")
        .wait()
        .unwrap();
    assert!(status.success());
    assert!(matches!(
        store.check("slow", &slow_spec().key()),
        Check::Fresh(_)
    ));
    let keep = [("slow".to_string(), slow_spec().key())].into();
    let leftovers = store.gc(&keep, gc_options(false)).unwrap().removed;
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    assert!(leftovers[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with(".staging-"));
}

#[test]
fn two_writers_at_once_build_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = spawn_child("child_slow_writer", dir.path(), "first");
    let mut second = spawn_child("child_slow_writer", dir.path(), "second");
    assert!(first.wait().unwrap().success());
    assert!(second.wait().unwrap().success());
    let builds = fs::read_to_string(dir.path().join("builds.log")).unwrap();
    assert_eq!(builds.lines().count(), 1, "built more than once: {builds}");
    let store = Store::open(dir.path()).unwrap();
    let Check::Fresh(m) = store.check_with("slow", &slow_spec().key(), artifacts::Verify::Digests)
    else {
        panic!("not fresh")
    };
    assert_eq!(m.files.len(), 20);
}

/// A key's build lock is re-entrant within a process (a sweep locks its
/// points before training, then each point's stage locks it again) and is
/// released when the last holder goes; `try_lock` gives up at once on a key
/// another holder has. An flock on a second open file stands for another
/// process: it conflicts with this process's lock even here.
#[test]
fn build_locks_are_reentrant_in_a_process_and_try_lock_never_waits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let key = Key::parse("0123456789abcdef").unwrap();
    let path = dir.path().join(".locks").join(format!("sae-{key}.lock"));
    let other = || fs::File::options().write(true).open(&path).unwrap();
    let first = store.try_lock("sae", &key).unwrap().expect("a free key");
    let waited = std::cell::Cell::new(false);
    let second = store.lock("sae", &key, || waited.set(true)).unwrap();
    assert!(!waited.get(), "this process already holds it");
    assert!(matches!(
        other().try_lock(),
        Err(fs::TryLockError::WouldBlock)
    ));
    drop(first);
    assert!(
        matches!(other().try_lock(), Err(fs::TryLockError::WouldBlock)),
        "held while one holder is left"
    );
    drop(second);
    let outside = other();
    outside.try_lock().expect("free once both are dropped");
    assert!(
        store.try_lock("sae", &key).unwrap().is_none(),
        "try_lock gives up on a key held elsewhere"
    );
    drop(outside);
    assert!(store.try_lock("sae", &key).unwrap().is_some());
}
