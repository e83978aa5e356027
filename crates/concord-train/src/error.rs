//! The error type of the training crate.

use std::path::PathBuf;

/// Errors from configuring, training, checkpointing, evaluating and importing SAEs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown SAE architecture {name:?} (expected one of {expected})")]
    UnknownArchitecture {
        name: String,
        expected: &'static str,
    },
    /// `sae` is empty for options of no one SAE (the device, the evaluation set).
    #[error("{}{reason}", spec_prefix(sae))]
    InvalidSpec { sae: String, reason: String },
    #[error("input stream {stream} has {got} values, not a multiple of d_in = {d_in}")]
    RaggedBatch {
        stream: usize,
        got: usize,
        d_in: usize,
    },
    #[error("input stream {stream} has width {got} but SAE {sae:?} expects d_in = {expected}")]
    WidthMismatch {
        stream: usize,
        sae: String,
        expected: usize,
        got: usize,
    },
    #[error("input stream {stream} was not given in this step, but SAE {sae:?} reads it")]
    MissingStream { stream: usize, sae: String },
    /// `row` counts the rows of this step's batch of `stream`.
    #[error(
        "input stream {stream}: row {row} of the batch holds a non-finite value ({value}) at column {column}"
    )]
    NonFiniteRow {
        stream: usize,
        row: usize,
        column: usize,
        value: f32,
    },
    /// `row` counts the rows given to [`crate::evaluate`], over all its batches.
    #[error("evaluation row {row} holds a non-finite value ({value}) at column {column}")]
    NonFiniteEvalRow { row: u64, column: usize, value: f32 },
    /// `loss` exceeded the divergence factor times the larger of the first loss and `scale`,
    /// the first batch's mean square value.
    #[error(
        "SAE {sae:?} diverged at step {step}: loss {loss} (first loss {first}, first batch's mean square {scale})"
    )]
    Diverged {
        sae: String,
        step: u64,
        loss: f64,
        first: f64,
        scale: f64,
    },
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Import { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Core(#[from] concord_core::Error),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

fn spec_prefix(sae: &str) -> String {
    if sae.is_empty() {
        "invalid option: ".into()
    } else {
        format!("invalid option for SAE {sae:?}: ")
    }
}

/// The result type of the training crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
