//! The pipeline's stages as the runner sees them: params, inputs, fingerprint,
//! and a `run` that calls the stage crate. No stage logic lives here beyond
//! reading inputs and writing the artifact's files.

pub mod extract;
pub mod mlp;
pub mod mnist;

use std::path::PathBuf;

use artifacts::Stage;

use crate::config::Config;

/// What every stage may need from the command line.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// `--mnist-dir`, `SAELAB_MNIST_DIR` or `mnist.dir`, in that order.
    pub mnist_dir: Option<PathBuf>,
    pub store_root: PathBuf,
}

/// Every stage the config asks for, upstream first.
pub fn build(config: &Config, ctx: &Context) -> Vec<Box<dyn Stage>> {
    vec![
        Box::new(mnist::MnistStage {
            dir: ctx.mnist_dir.clone(),
            store_root: ctx.store_root.clone(),
        }),
        Box::new(mlp::MlpStage {
            cfg: config.mlp.clone(),
        }),
        Box::new(extract::ExtractStage {
            cfg: config.extract.clone(),
        }),
    ]
}

/// Writes `value` as pretty JSON into `dir/name`.
pub fn write_json(
    dir: &std::path::Path,
    name: &str,
    value: &impl serde::Serialize,
) -> Result<(), artifacts::StageError> {
    std::fs::write(dir.join(name), serde_json::to_vec_pretty(value)?)?;
    Ok(())
}
