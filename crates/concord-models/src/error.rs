//! The error type of the model-hooking crate.

use std::path::PathBuf;

/// Errors from resolving, loading and running models and tokenizers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    #[error("{path}: truncated or corrupt GGUF file: {reason}")]
    Gguf { path: PathBuf, reason: String },
    #[error("{path}: invalid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: tensor {name:?} has unsupported type {dtype}")]
    UnsupportedTensorType {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: missing tensor {name:?}")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor {name:?} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
        got: Vec<i64>,
    },
    #[error("{path}: missing or invalid config value {key:?}")]
    Config { path: PathBuf, key: String },
    #[error("{path}: unsupported architecture {arch:?} (supported: llama, gpt_neox, bert, gpt2)")]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    #[error("{path}: config value {key:?} = {value} is not supported (supported: {supported})")]
    UnsupportedConfig {
        path: PathBuf,
        key: String,
        value: String,
        supported: String,
    },
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("model {name:?} not found: {reason}")]
    ModelNotFound { name: String, reason: String },
    #[error("hook {hook} is out of range: the model has {n_layers} blocks")]
    LayerOutOfRange { hook: String, n_layers: usize },
    #[error("no hooks asked for")]
    NoHooks,
    #[error("splice needs a causal language model; {arch} is an encoder")]
    NotCausal { arch: &'static str },
    #[error("invalid input: {reason}")]
    InvalidInput { reason: String },
    #[error("device {name:?} is not available ({reason})")]
    Device { name: String, reason: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The result type of the model-hooking crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
