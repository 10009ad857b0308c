//! Sparse autoencoders trained on cached activations.
//!
//! This crate owns the SAE architectures (L1, TopK with AuxK, decoder-norm-weighted
//! L1, BatchTopK, Matryoshka BatchTopK, JumpReLU, Gated), transcoders and skip
//! transcoders with any of them (the decoder predicts another layer), their initialisation, the trainer in two interchangeable paths (a
//! reference on candle autograd that also runs on GPUs, and a fused sparse CPU
//! path), dead-feature tracking and resampling, sweeps, metrics and
//! checkpoints (folders SAELens loads: `sae_weights.safetensors`, SAELens'
//! `cfg.json`, and `saelab_config.json`). It must not read IDX or
//! parquet files nor depend on the mnist/mlp/activations crates: callers hand
//! it training data as row-major `&[f32]` `[rows, d_in]` (a transcoder also
//! its target `[rows, d_out]`, `TrainData`), and get the loss
//! curve back as data. Invariant: the same config and seed give a
//! bit-identical SAE on the fast path.
//!
//! Where an architecture lives: `src/arch/<name>.rs`, one file each, behind
//! [`ArchitectureSpec`] (its settings, validation, label, sweep axes, paper
//! init, SAELens layout, and the [`Activation`], [`Penalty`], AuxK and prefixes
//! it combines); `src/arch/mod.rs` lists them once. The one way to train is
//! [`train_sweep`] (a single SAE is [`SweepPoint::single`]).
//!
//! Threads: a fast-path sweep trains one point on each thread of the rayon
//! pool (its size: `RAYON_NUM_THREADS`, or the pool the caller installs), and
//! a thread with no point left becomes a spinning helper that takes half of
//! each step of a thread still training (a single run: from its first step);
//! any number of threads gives the same bits. The reference path leaves
//! threading to candle. `evaluate`/`encode`/`reconstruct`
//! use the rayon pool. Every fast-path thread and every encoding chunk runs
//! with subnormals flushed to zero (`subnormals::flushed`).

mod arch;
mod checkpoint;
mod config;
mod crew;
mod dormant;
mod duo;
mod error;
mod fast;
mod hooks;
mod kernels;
mod latents;
mod model;
mod reference;
mod resume;
mod run;
mod sweep;
pub mod synthetic;
mod train;
mod trainer;

// Every architecture and the mechanisms they combine (`arch/mod.rs` lists them).
pub use arch::*;
pub use checkpoint::{
    load, save, Origin, TrainingRecord, CONFIG_FILE, RECORD_FILE, SAELENS_CONFIG_FILE, WEIGHTS_FILE,
};
pub use config::{
    AdamConfig, DecoderBiasInit, EncoderInit, LrSchedule, NormalizeActivations, Reduction,
    ResampleConfig, ResampleSchedule, SaeConfig, Transcoder,
};
pub use error::SaeError;
/// Fixed-block gemm, shared with the analysis's probes: the same bits on every machine.
pub use kernels::{matmul, MatRef, Scalar};
pub use latents::{LatentHistory, LatentSnapshot, PROBE_ROWS};
pub use model::{
    column_mean, decode_row, encode, encode_sparse, evaluate, evaluate_on, explained_variance,
    reconstruct, EvalMetrics, Sae, SparseCodes,
};
pub use resume::{Checkpoints, ResumePoint, RESUME_BUFFERS_FILE, RESUME_STATE_FILE};
pub use sweep::{ScheduledPoint, SweepScheduler};
pub use train::{
    train_sweep, train_sweep_resuming, train_sweep_telling, CurvePoint, ProgressEvent,
    ProgressKind, ResampleEvent, SweepPoint, TrainData, TrainPath, Trained, PROGRESS_EVERY_STEPS,
};
// Test hooks (gradients at one batch, per-step losses) for this crate's tests
// and the real-data comparison in xtask: not part of the API.
#[doc(hidden)]
pub use hooks::{
    checked_steps_on, gradients, gradients_on, loss_trajectory, loss_trajectory_on, CheckedStep,
    Trajectory,
};
#[doc(hidden)]
pub use trainer::{Gradients, TrainerState};
