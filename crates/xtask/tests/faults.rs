//! The fault-injection suite: every way the store was once seen to fail,
//! thrown at copies of one small store, with a table of what held. Its own
//! test target without libtest's harness, so the table always prints; it
//! exits non-zero if any case failed. The cases' own tests (store.rs,
//! cli.rs) look closer; this is the one list.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{built_store, command, under_address_limit, xtask, Run, SAE};

type Outcome = Result<(), String>;

/// `condition`, or a failure that says what was seen.
fn held(condition: bool, seen: impl FnOnce() -> String) -> Outcome {
    if condition {
        Ok(())
    } else {
        Err(seen())
    }
}

fn said(run: &Run) -> String {
    format!("{}{}", run.stdout, run.stderr)
}

/// The first file under `store/kind`'s artifact whose name ends with `suffix`.
fn file_of(store: &Path, kind: &str, suffix: &str) -> PathBuf {
    fn walk(dir: &Path, suffix: &str) -> Option<PathBuf> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect();
        entries.sort();
        entries.iter().find_map(|p| {
            if p.is_dir() {
                walk(p, suffix)
            } else {
                p.to_string_lossy().ends_with(suffix).then(|| p.clone())
            }
        })
    }
    walk(&store.join(kind), suffix).unwrap_or_else(|| panic!("no {suffix} under {kind}"))
}

fn flip_byte(path: &Path, at_end: bool) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = if at_end {
        bytes.len() - 1
    } else {
        bytes.len() / 2
    };
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// `verify --all` fails and names `file`; then running `stage` rebuilds it
/// to the bytes it had.
fn caught_and_rebuilt(
    store: &Path,
    stage: &str,
    file: &Path,
    damage: impl FnOnce(&Path),
) -> Outcome {
    let before = std::fs::read(file).unwrap();
    damage(file);
    let verify = xtask(store, &["verify", "--all"]);
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    held(!verify.ok && said(&verify).contains(&name), || {
        format!("verify did not name {name}: {}", said(&verify))
    })?;
    let rebuilt = xtask(store, &["run", stage]);
    held(rebuilt.ok, || {
        format!("run {stage} failed: {}", said(&rebuilt))
    })?;
    held(std::fs::read(file).ok() == Some(before), || {
        format!("{name} was not rebuilt to its bytes")
    })
}

type Case = Box<dyn Fn(&Path) -> Outcome>;

/// [`caught_and_rebuilt`] for the first file under `kind` ending in `suffix`.
fn damaged(
    stage: &'static str,
    kind: &'static str,
    suffix: &'static str,
    damage: fn(&Path),
) -> Case {
    Box::new(move |s| caught_and_rebuilt(s, stage, &file_of(s, kind, suffix), damage))
}

fn flip_last_byte(path: &Path) {
    flip_byte(path, true)
}

fn flip_middle_byte(path: &Path) {
    flip_byte(path, false)
}

fn cut_in_half(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

fn huge_header(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[..8].copy_from_slice(&(i64::MAX as u64).to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// `args` are refused with a message containing `expected`, and nothing runs.
fn refused(store: &Path, args: &[&str], expected: &str) -> Outcome {
    let run = xtask(store, args);
    held(
        !run.ok && run.stderr.contains(expected) && !run.stderr.contains(" running ("),
        || format!("expected a refusal saying {expected:?}: {}", said(&run)),
    )
}

fn manifest_lie(store: &Path, from: &str, to: &str) -> Outcome {
    let manifest = file_of(store, "sae", "manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    held(text.contains(from), || {
        format!("{from} is not in the manifest")
    })?;
    std::fs::write(&manifest, text.replacen(from, to, 1)).unwrap();
    let verify = xtask(store, &["verify", "--all"]);
    held(
        !verify.ok && said(&verify).contains("manifest.json"),
        || format!("verify served it: {}", said(&verify)),
    )?;
    let runs = xtask(store, &["runs", "--format", "csv"]);
    held(!runs.stdout.contains(to.trim_matches('"')), || {
        format!("runs served the lie: {}", runs.stdout)
    })
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
}

/// SIGTERM mid-training once a state is kept; the rerun resumes it and ends
/// with the bits of a run never stopped.
fn resumed_to_the_same_bits(store: &Path) -> Outcome {
    let args = [
        "run",
        "sae",
        "--set",
        "sae.d_sae=[256]",
        "--set",
        "sae.epochs=6",
        "--checkpoint-every",
        "0",
    ];
    let mut child = command(store, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let checkpoints = store.join(".checkpoints");
    let started = Instant::now();
    // A slot of a key's folder, renamed into place whole.
    let kept = || {
        std::fs::read_dir(&checkpoints).is_ok_and(|d| {
            d.flatten()
                .any(|e| ["a", "b"].iter().any(|slot| e.path().join(slot).is_dir()))
        })
    };
    while !kept() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            return Err("no training state was kept within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    held(kill.success(), || "kill failed".into())?;
    let mut stderr = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        stderr.push_str(&line.unwrap_or_default());
        stderr.push('\n');
    }
    let code = child.wait().unwrap().code();
    held(
        code == Some(130) && stderr.contains("/d256/s0 after epoch "),
        || format!("exit {code:?}: {stderr}"),
    )?;
    let rerun = xtask(store, &args);
    held(
        rerun.ok && rerun.stdout.contains("(resumed after epoch "),
        || said(&rerun),
    )?;
    let resumed = sae_weights(store, "256");
    let clean = testkit::copy_of(built_store());
    let whole = xtask(clean.path(), &args);
    held(whole.ok, || said(&whole))?;
    let uninterrupted = sae_weights(clean.path(), "256");
    held(resumed == uninterrupted, || {
        format!("resumed {resumed:?} against {uninterrupted:?}")
    })
}

/// The SHA-256 of the weights of the store's SAE of width `d_sae`.
fn sae_weights(store: &Path, d_sae: &str) -> Option<String> {
    std::fs::read_dir(store.join("sae"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("manifest.json").is_file())
        .find(|p| {
            std::fs::read_to_string(p.join("cfg.json"))
                .is_ok_and(|t| t.contains(&format!("\"d_sae\": {d_sae},")))
        })
        .map(|p| sha256(&p.join("sae_weights.safetensors")))
}

fn main() {
    let started = Instant::now();
    let cases: Vec<(&str, Case)> = vec![
        (
            "a flipped byte in an activation shard",
            damaged("extract", "activations", ".safetensors", flip_last_byte),
        ),
        (
            "a flipped byte in SAE weights",
            damaged("sae", "sae", "sae_weights.safetensors", flip_last_byte),
        ),
        (
            "a flipped byte in cfg.json",
            damaged("sae", "sae", "cfg.json", flip_middle_byte),
        ),
        (
            "a flipped byte in a parquet table",
            damaged("analysis", "analysis", "features.parquet", flip_middle_byte),
        ),
        (
            "a truncated activation shard",
            damaged("extract", "activations", ".safetensors", cut_in_half),
        ),
        (
            "a shard header length of 2^63-1",
            damaged("extract", "activations", ".safetensors", huge_header),
        ),
        (
            "a manifest's param changed, JSON still valid",
            Box::new(|s| manifest_lie(s, "\"l1_coeff\": 0.003", "\"l1_coeff\": 0.013")),
        ),
        (
            "a manifest's headline metric changed, JSON still valid",
            Box::new(|s| manifest_lie(s, "\"headline\": \"L0 ", "\"headline\": \"L7 ")),
        ),
        (
            "an empty sweep axis",
            Box::new(|s| {
                refused(
                    s,
                    &["all", "--set", "sae.l1_coeff=[]"],
                    "sae.l1_coeff is an empty list",
                )
            }),
        ),
        (
            "a batch larger than the training rows",
            Box::new(|s| {
                refused(
                    s,
                    &["all", "--set", "sae.batch_size=100000"],
                    "sae.batch_size = 100000 is more than the 60000 training rows",
                )
            }),
        ),
        (
            "a transcoder backwards through the network",
            Box::new(|s| {
                refused(
                    s,
                    &[
                        "all",
                        "--set",
                        "sae.architecture=[\"transcoder\"]",
                        "--set",
                        "sae.transcoder_input=logits",
                        "--set",
                        "sae.transcoder_output=fc1.pre",
                    ],
                    "sae.transcoder_input",
                )
            }),
        ),
        (
            "a TOML syntax error",
            Box::new(|s| {
                let config = s.join("broken.toml");
                std::fs::write(&config, "[sae]\nd_sae = [1024\n").unwrap();
                refused(
                    s,
                    &["all", "--config", config.to_str().unwrap()],
                    "not valid TOML at line 3, column 1",
                )
            }),
        ),
        (
            "a sweep too large for memory",
            Box::new(|s| {
                refused(
                    s,
                    &["all", "--set", "sae.d_sae=1000000000"],
                    "sae.d_sae = 1000000000 needs about ",
                )
            }),
        ),
        (
            "an analysis too large for memory (ulimit -v)",
            Box::new(|s| {
                let cmd = command(s, &["run", "analysis", "--force", "--threads", "1"]);
                let out = under_address_limit(&cmd, 330_000).output().unwrap();
                let said = String::from_utf8_lossy(&out.stdout).into_owned();
                let expected = format!("sae.d_sae = 1024 (point {SAE}): the analysis needs about ");
                held(!out.status.success() && said.contains(&expected), || said)
            }),
        ),
        (
            "an allocation that fails anyway (check off, ulimit -v)",
            Box::new(|s| {
                let mut cmd = under_address_limit(
                    &command(s, &["run", "sae", "--set", "sae.d_sae=[4000000]"]),
                    4_000_000,
                );
                let out = cmd.env("SAELAB_MEMORY_CHECK", "off").output().unwrap();
                let said = String::from_utf8_lossy(&out.stderr).into_owned();
                let staging = std::fs::read_dir(s.join("sae"))
                    .unwrap()
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(".staging"));
                held(
                    out.status.code() == Some(137)
                        && said.contains("out of memory while building sae/")
                        && !staging,
                    || said,
                )
            }),
        ),
        (
            "a corrupt --mnist-dir on a store with MNIST cached",
            Box::new(|s| {
                let dir = s.join("bad-mnist");
                std::fs::create_dir_all(&dir).unwrap();
                for entry in std::fs::read_dir(testkit::mnist_dir()).unwrap().flatten() {
                    std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
                }
                // An MNIST file, whatever else the folder holds (a SHA256SUMS).
                let labels = std::fs::read_dir(&dir)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.to_string_lossy().contains("t10k-labels"))
                    .unwrap();
                flip_byte(&labels, false);
                refused(
                    s,
                    &["all", "--mnist-dir", dir.to_str().unwrap()],
                    &labels.file_name().unwrap().to_string_lossy(),
                )
            }),
        ),
        (
            "query reading a file of the system",
            Box::new(|s| {
                let run = xtask(s, &["query", "SELECT * FROM read_csv('/etc/passwd')"]);
                held(!run.ok && !said(&run).contains("root:"), || said(&run))
            }),
        ),
        (
            "query writing a file",
            Box::new(|s| {
                let target = s.join("copied.csv");
                let sql = format!("COPY (SELECT 1) TO '{}'", target.display());
                let run = xtask(s, &["query", &sql]);
                held(!run.ok && !target.exists(), || said(&run))
            }),
        ),
        (
            "SIGTERM mid-training, then a rerun",
            Box::new(resumed_to_the_same_bits),
        ),
    ];
    let base = built_store();
    let mut rows = Vec::new();
    for (name, case) in &cases {
        let store = testkit::copy_of(base);
        let t = Instant::now();
        let outcome = case(store.path());
        rows.push((*name, outcome, t.elapsed().as_secs_f64()));
    }
    let width = rows.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0);
    println!("\n{:<width$}  {:<6}  {:>6}", "case", "result", "s");
    for (name, outcome, seconds) in &rows {
        let verdict = if outcome.is_ok() { "held" } else { "FAILED" };
        println!("{name:<width$}  {verdict:<6}  {seconds:>6.1}");
    }
    let failed: Vec<_> = rows.iter().filter(|(_, o, _)| o.is_err()).collect();
    for (name, outcome, _) in &failed {
        println!("\n{name}: {}", outcome.as_ref().unwrap_err());
    }
    println!(
        "\n{} of {} held in {:.0} s (the store built once, then a copy per case)",
        rows.len() - failed.len(),
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
