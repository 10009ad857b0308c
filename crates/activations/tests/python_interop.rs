//! Shards must load in Python's `safetensors.numpy` with the values the Rust side wrote.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::build_store;

fn python_has_safetensors() -> bool {
    Command::new("python3")
        .args(["-c", "import numpy, safetensors.numpy"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ci_is_set() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn run_check(dir: &Path) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_shards.py");
    Command::new("python3")
        .arg(script)
        .arg(dir)
        .args(["train=103", "test=40"])
        .output()
        .expect("python3 runs")
}

#[test]
fn python_safetensors_reads_every_shard_with_the_written_values() {
    if !python_has_safetensors() {
        assert!(
            !ci_is_set(),
            "CI is set but python3 lacks numpy or safetensors; run `pip install safetensors numpy`"
        );
        eprintln!("skipping: python3 with numpy and safetensors is not available (pip install safetensors numpy)");
        return;
    }
    let s = build_store(&[("train", 103), ("test", 40)], 25);
    let out = run_check(s.dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("OK 7 shards (test=40, train=103)"),
        "check_shards.py failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The script must notice one changed value.
    let path = s.path(2);
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + header_len + 1] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let out = run_check(s.dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "corruption went unnoticed: {stdout}");
    assert!(
        stdout.contains("train-00002.safetensors: values of fc1.pre differ"),
        "{stdout}"
    );
}
