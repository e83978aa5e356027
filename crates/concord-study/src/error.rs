//! The error type of the study crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {reason}")]
    InvalidStudy { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("step {step} failed ({status}); its log: {log}")]
    StepFailed {
        step: String,
        status: String,
        log: PathBuf,
    },
    #[error("{path}: unexpected content: {reason}")]
    BadOutput { path: PathBuf, reason: String },
    #[error(transparent)]
    Core(#[from] concord_core::Error),
    #[error(transparent)]
    Report(#[from] concord_report::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
