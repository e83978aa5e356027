//! The error type of the store crate.

use std::path::PathBuf;

/// Errors from writing and reading activation stores, corpora and tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: parquet error: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: arrow error: {source}")]
    Arrow {
        path: PathBuf,
        source: arrow::error::ArrowError,
    },
    #[error(transparent)]
    Core(#[from] concord_core::Error),

    // Writing a hook's dataset.
    #[error(
        "{dir}: the dataset there was made with other settings ({differences}); \
         use another output folder or remove that one"
    )]
    SettingsMismatch { dir: PathBuf, differences: String },
    #[error(
        "{out}: the store already holds {hook} from another harvest ({differences}); the hooks \
         of one store share their rows: use another output folder"
    )]
    OtherHarvest {
        out: PathBuf,
        hook: String,
        differences: String,
    },
    #[error(
        "{dir}: the folder holds files but no manifest.json ({example}); refusing to write there"
    )]
    NotADataset { dir: PathBuf, example: String },
    #[error("{dir}: another harvest (process {pid}) is writing this dataset")]
    Locked { dir: PathBuf, pid: u32 },
    #[error("{dir}: the dataset is complete; nothing more can be written to it")]
    AlreadyComplete { dir: PathBuf },
    #[error("{dir}: window {seq}: {reason}")]
    BadWindow {
        dir: PathBuf,
        seq: u64,
        reason: String,
    },
    #[error("invalid store settings: {reason}")]
    InvalidSpec { reason: String },

    // Reading a hook's dataset.
    #[error("{dir}: no manifest.json (not a hook dataset; expected STORE/<hook name>/)")]
    MissingManifest { dir: PathBuf },
    #[error(
        "{dir}: the dataset is incomplete ({shards} shards, {rows} rows so far); finish the harvest first"
    )]
    Incomplete {
        dir: PathBuf,
        shards: usize,
        rows: u64,
    },
    #[error("{path}: shard listed in the manifest is missing")]
    MissingShard { path: PathBuf },
    #[error("{path}: corrupt or truncated shard: {reason}")]
    CorruptShard { path: PathBuf, reason: String },
    #[error("{path}: sha256 is {got}, the manifest says {expected}")]
    ShaMismatch {
        path: PathBuf,
        expected: String,
        got: String,
    },
    #[error("{path}: unexpected schema: {reason}")]
    Schema { path: PathBuf, reason: String },
    #[error("{dir}: rows {start}..{end} are out of range (the dataset has {rows} rows)")]
    RowRange {
        dir: PathBuf,
        start: u64,
        end: u64,
        rows: u64,
    },
    #[error("{a} and {b} cannot be read in lockstep: {reason}")]
    Lockstep {
        a: PathBuf,
        b: PathBuf,
        reason: String,
    },
    #[error("invalid read settings: {reason}")]
    InvalidRead { reason: String },

    // Corpora.
    #[error("{path}: unknown corpus format (expected .txt, .jsonl or .parquet)")]
    CorpusFormat { path: PathBuf },
    #[error("{path}: line {line}: invalid UTF-8")]
    InvalidUtf8 { path: PathBuf, line: u64 },
    #[error("{path}: line {line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error("{path}: row {row}: {reason}")]
    BadRow {
        path: PathBuf,
        row: u64,
        reason: String,
    },
    #[error("{path}: the corpus holds no documents")]
    EmptyCorpus { path: PathBuf },
    #[error("{dir}: the folder holds no .txt, .jsonl or .parquet files")]
    NoCorpusFiles { dir: PathBuf },
    #[error("{dir}: a corpus folder holds files of one format, but it has {first} and {other}")]
    MixedCorpus {
        dir: PathBuf,
        first: PathBuf,
        other: PathBuf,
    },

    // Tables.
    #[error("{path}: table column {column:?} has {got} rows, expected {expected}")]
    ColumnLength {
        path: PathBuf,
        column: String,
        expected: usize,
        got: usize,
    },
}

/// The result type of the store crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parquet(path: impl Into<PathBuf>, source: parquet::errors::ParquetError) -> Self {
        Error::Parquet {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn arrow(path: impl Into<PathBuf>, source: arrow::error::ArrowError) -> Self {
        Error::Arrow {
            path: path.into(),
            source,
        }
    }
}
