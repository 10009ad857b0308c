//! The one helper module of xtask's tests: the binary with a store of its own,
//! quick settings, and a store built once per test binary to copy and damage.

#![allow(dead_code)] // each test binary uses its own part

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The default config's one SAE.
pub const SAE: &str = "sae/fc2.pre/l1-0.003/d1024/s0";
/// The neuron baseline its analysis compares it with.
pub const NEURONS: &str = "neurons/fc2.pre";

pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// `xtask` with a store in `store`, one MLP and one SAE epoch unless `args` set others.
pub fn command(store: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.env("SAELAB_ARTIFACTS", store)
        .env("SAELAB_MNIST_DIR", testkit::mnist_dir())
        .args(args);
    let quick = [
        "mlp.epochs=1",
        "sae.epochs=1",
        "analysis.probe.ks=[1, 4]",
        "analysis.probe.iterations=20",
        "analysis.dashboards_per_criterion=1",
    ];
    for fast in quick {
        let key = fast.split('=').next().unwrap();
        if !args.iter().any(|a| a.starts_with(key)) {
            cmd.args(["--set", fast]);
        }
    }
    cmd
}

/// `cmd` run by a shell under an address-space limit of `kib` KiB (`ulimit -v`).
pub fn under_address_limit(cmd: &Command, kib: u64) -> Command {
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(format!("ulimit -v {kib} && exec \"$@\""))
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            shell.env(key, value);
        }
    }
    shell
}

pub fn xtask(store: &Path, args: &[&str]) -> Run {
    finished(command(store, args).output().unwrap())
}

pub fn finished(out: Output) -> Run {
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// The word after the stage name on the stage's result line: ran, cached, FAILED...
pub fn verdict(run: &Run, stage: &str) -> String {
    run.stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix(stage)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|rest| rest.split_whitespace().next())
        })
        .unwrap_or_else(|| panic!("no line for {stage} in:\n{}\n{}", run.stdout, run.stderr))
        .to_string()
}

/// A store `cargo xtask all` built once (quick settings) for this test
/// binary; tests damage copies of it ([`testkit::copy_of`]), never it.
pub fn built_store() -> &'static Path {
    static STORE: OnceLock<tempfile::TempDir> = OnceLock::new();
    STORE
        .get_or_init(|| {
            let store = tempfile::tempdir().unwrap();
            let run = xtask(store.path(), &["all"]);
            assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
            store
        })
        .path()
}
