use std::path::PathBuf;

/// Everything that can go wrong while building tables, plots, the report or a query.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// Inputs that do not fit together (lengths, widths, labels).
    #[error("bad analysis input: {0}")]
    Input(String),
    #[error("polars failed while {context}: {source}")]
    Polars {
        context: String,
        #[source]
        source: polars::error::PolarsError,
    },
    /// A SQL query that polars rejected, with the tables it could have used.
    #[error("query failed: {message}\nthe tables (column: type):\n{tables}")]
    Query { message: String, tables: String },
    #[error("cannot write or read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plot {path} failed: {message}")]
    Plot { path: PathBuf, message: String },
    #[error(transparent)]
    Sae(#[from] sae::SaeError),
    #[error(transparent)]
    Mlp(#[from] mlp::MlpError),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Activations(#[from] activations::ActivationsError),
}

impl AnalysisError {
    pub(crate) fn polars(
        context: impl Into<String>,
    ) -> impl FnOnce(polars::error::PolarsError) -> Self {
        let context = context.into();
        move |source| AnalysisError::Polars { context, source }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| AnalysisError::Io { path, source }
    }
}
