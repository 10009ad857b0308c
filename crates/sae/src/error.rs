use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SaeError {
    /// One sentence naming the config key and the refused value.
    #[error("{0}")]
    InvalidConfig(String),
    /// A value of `SaeConfig` out of range; `key` is its path in `SaeConfig`
    /// (e.g. `architecture.k`), so a caller can name it as its own config does.
    #[error("SAE config key `{key}` must be {rule}, got {value}.")]
    InvalidKey {
        key: String,
        rule: String,
        value: String,
    },
    #[error("SAE training of `{point}` diverged at step {step}: the loss became {loss}.")]
    Diverged {
        point: String,
        step: usize,
        loss: f32,
    },
    #[error(
        "{what} has {len} floats, which is not a non-empty whole number of rows of width {width}."
    )]
    DataShape {
        what: String,
        len: usize,
        width: usize,
    },
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("candle error in the reference SAE trainer: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The rows of `input` and `target` (each `(what, data, width)`), once both
/// are whole rows and as many.
pub(crate) fn check_paired(
    (input_what, input, d_in): (&str, &[f32], usize),
    (target_what, target, d_out): (&str, &[f32], usize),
) -> Result<usize, SaeError> {
    let rows = check_rows(input_what, input, d_in)?;
    if check_rows(target_what, target, d_out)? != rows {
        return Err(SaeError::DataShape {
            what: format!("{target_what} (expected {rows} rows like the input)"),
            len: target.len(),
            width: d_out,
        });
    }
    Ok(rows)
}

pub(crate) fn check_rows(what: &str, data: &[f32], width: usize) -> Result<usize, SaeError> {
    if width == 0 || data.is_empty() || !data.len().is_multiple_of(width) {
        return Err(SaeError::DataShape {
            what: what.to_string(),
            len: data.len(),
            width,
        });
    }
    Ok(data.len() / width)
}
