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
    #[error("invalid option for SAE {sae:?}: {reason}")]
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
    #[error(
        "input stream {stream}: row {row} holds a non-finite value ({value}) at column {column}"
    )]
    NonFiniteRow {
        stream: usize,
        row: usize,
        column: usize,
        value: f32,
    },
    #[error("SAE {sae:?} diverged at step {step}: loss {loss} (first loss {first})")]
    Diverged {
        sae: String,
        step: u64,
        loss: f64,
        first: f64,
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

/// The result type of the training crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
