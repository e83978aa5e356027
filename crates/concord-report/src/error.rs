//! The error type of the report crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("figure {figure:?}: {reason}")]
    Plot { figure: String, reason: String },
    #[error("figure {figure:?}: no data to plot")]
    Empty { figure: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot write parquet: {reason}")]
    Parquet { path: PathBuf, reason: String },
    #[error(transparent)]
    Core(#[from] concord_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
