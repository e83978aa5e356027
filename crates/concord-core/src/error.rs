//! The error type of the vocabulary crate.

use std::path::PathBuf;

/// Errors from parsing names and reading or writing the shared file formats.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{dir}: another process ({pid}) is writing here")]
    Locked { dir: PathBuf, pid: u32 },
    #[error("invalid hook name {name:?}: {reason}")]
    InvalidHook { name: String, reason: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: invalid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: missing tensor {name:?}")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor {name:?} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{path}: tensor {name:?} has dtype {dtype}, expected F32, F16 or BF16")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: tensor {name:?} holds a non-finite value at index {index}")]
    NonFinite {
        path: PathBuf,
        name: String,
        index: usize,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The result type of the vocabulary crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
