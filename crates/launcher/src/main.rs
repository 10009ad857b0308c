//! `cargo xtask`'s first step. It owns one thing: getting the optimised
//! `xtask` binary built and running it with the user's arguments. Cargo's own
//! progress (the bar, `Compiling ...`) is shown whenever something compiles, so
//! a first build is never a silent terminal; a warm run prints nothing of
//! cargo's, so `cargo xtask all` stays one line per stage. It has no
//! dependencies, so that it builds in about a second before anything else.

use std::io::{IsTerminal, Read, Write};
use std::process::{Command, ExitCode, Stdio};

/// Words of cargo's stderr that mean it is doing more than finding everything fresh.
const WORK: [&str; 8] = [
    "Compiling",
    "Building",
    "Blocking",
    "Downloading",
    "Downloaded",
    "Updating",
    "warning",
    "error",
];

/// What `cargo run` sets for the launcher itself. Left in place they would reach
/// the nested build, where build scripts that watch them (ring watches
/// `CARGO_MANIFEST_DIR`) would rerun and rebuild half the tree on every call.
fn set_by_cargo_run(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
        ]
        .contains(&name)
}

fn main() -> ExitCode {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_run) {
            // SAFETY: nothing else runs yet; no thread reads the environment.
            unsafe { std::env::remove_var(&name) };
        }
    }
    let terminal = std::io::stderr().is_terminal();
    let mut build = Command::new(&cargo);
    build.args([
        "build",
        "--release",
        "-p",
        "xtask",
        "--message-format=json-render-diagnostics",
    ]);
    if terminal {
        // Cargo's stderr is our pipe, so it must be told to draw its bar and colours anyway.
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse::<u32>().ok())
            .unwrap_or(80);
        build.args([
            "--color=always",
            "--config",
            "term.progress.when=\"always\"",
            "--config",
            &format!("term.progress.width={width}"),
        ]);
    }
    let mut child = match build
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("error: cannot run {}: {e}", cargo.to_string_lossy());
            return ExitCode::FAILURE;
        }
    };
    let stderr = child.stderr.take().expect("piped");
    let relay = std::thread::spawn(move || relay_progress(stderr));
    let mut messages = String::new();
    let _ = child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut messages);
    let status = child.wait();
    let _ = relay.join();
    match status {
        Ok(status) if status.success() => {}
        Ok(_) => return ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: waiting for cargo failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    let Some(binary) = messages.lines().find_map(xtask_executable) else {
        eprintln!("error: cargo built xtask but named no executable for it");
        return ExitCode::FAILURE;
    };
    let mut xtask = Command::new(&binary);
    xtask.args(std::env::args_os().skip(1));
    become_child(xtask, &binary)
}

/// Forwards cargo's stderr as it comes, except a lone `Finished` line: that
/// is held back, and dropped if cargo did nothing else.
fn relay_progress(mut from: impl Read) {
    let mut to = std::io::stderr();
    let mut held = Vec::new();
    let mut working = false;
    let mut chunk = [0u8; 4096];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if working {
            let _ = to.write_all(&chunk[..n]);
            continue;
        }
        held.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&held);
        if WORK.iter().any(|word| text.contains(word)) {
            working = true;
            let _ = to.write_all(&held);
            held.clear();
        }
    }
    let text = String::from_utf8_lossy(&held);
    let quiet = text
        .lines()
        .all(|line| line.trim().is_empty() || line.contains("Finished"));
    if !quiet {
        let _ = to.write_all(&held);
    }
    let _ = to.flush();
}

/// The `executable` of the xtask binary in one of cargo's JSON messages.
fn xtask_executable(message: &str) -> Option<String> {
    if !message.contains("\"reason\":\"compiler-artifact\"")
        || !message.contains("\"kind\":[\"bin\"]")
        || !message.contains("\"name\":\"xtask\"")
    {
        return None;
    }
    let start = message.find("\"executable\":\"")? + "\"executable\":\"".len();
    let mut path = String::new();
    let mut chars = message[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(path),
            '\\' => path.push(chars.next()?),
            c => path.push(c),
        }
    }
    None
}

#[cfg(unix)]
fn become_child(mut command: Command, binary: &str) -> ExitCode {
    use std::os::unix::process::CommandExt;
    // Replacing this process gives xtask the terminal's signals (Ctrl-C) directly.
    let e = command.exec();
    eprintln!("error: cannot run {binary}: {e}");
    ExitCode::FAILURE
}

#[cfg(not(unix))]
fn become_child(mut command: Command, binary: &str) -> ExitCode {
    match command.status() {
        Ok(status) => ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: cannot run {binary}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::xtask_executable;

    #[test]
    fn finds_the_xtask_binary_among_cargo_messages() {
        let bin = r#"{"reason":"compiler-artifact","package_id":"path+file:///r/crates/xtask#0.1.0","target":{"kind":["bin"],"crate_types":["bin"],"name":"xtask","src_path":"/r/crates/xtask/src/main.rs"},"executable":"/t/release/x\"task","fresh":true}"#;
        assert_eq!(xtask_executable(bin).as_deref(), Some("/t/release/x\"task"));
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"sae"},"executable":null,"fresh":true}"#;
        assert_eq!(xtask_executable(lib), None);
        let other_bin = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"launcher"},"executable":"/t/release/launcher"}"#;
        assert_eq!(xtask_executable(other_bin), None);
        assert_eq!(
            xtask_executable(r#"{"reason":"build-finished","success":true}"#),
            None
        );
    }
}
