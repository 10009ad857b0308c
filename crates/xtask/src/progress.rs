//! Progress for long work: an indicatif bar with rate and ETA on a terminal,
//! plain log lines (one per tenth) anywhere else.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    unit: &'static str,
    logged_tenths: AtomicU64,
}

impl Progress {
    pub fn new(label: &str, total: u64, unit: &'static str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let template = format!("{{prefix:>12}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}} {{msg}}");
            bar.set_style(ProgressStyle::with_template(&template).expect("a valid template").progress_chars("=> "));
            bar.set_prefix(label.to_string());
            bar
        });
        Progress {
            bar,
            label: label.to_string(),
            total: total.max(1),
            unit,
            logged_tenths: AtomicU64::new(0),
        }
    }

    /// Moves to `pos`; `message` is only built when something is shown.
    pub fn set(&self, pos: u64, message: impl FnOnce() -> String) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(pos);
                if pos % 16 == 0 || pos == self.total {
                    bar.set_message(message());
                }
            }
            None => {
                let tenths = pos * 10 / self.total;
                if tenths > self.logged_tenths.fetch_max(tenths, Ordering::Relaxed) {
                    eprintln!(
                        "{}: {:>3}% ({pos}/{} {}) {}",
                        self.label,
                        tenths * 10,
                        self.total,
                        self.unit,
                        message()
                    );
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `2026-12-06 13:52 UTC`: a Unix time as people read it.
pub fn iso_utc(unix_s: u64) -> String {
    chrono::DateTime::from_timestamp(unix_s as i64, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| format!("{unix_s} s after 1970"))
}

/// `word` as one shell word: as it is when it needs no quoting, else in single quotes.
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._=/,:+-@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}
