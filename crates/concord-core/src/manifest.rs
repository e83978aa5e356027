//! The manifest of one hook's dataset in an activation store (`OUT/<hook>/manifest.json`).
//!
//! The store crate writes and checks it; other crates read it to learn a dataset's width,
//! dtype and provenance without opening parquet.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{HookName, Result, fsutil};

/// The file name of a hook dataset's manifest.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The element type activations are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    pub fn size_bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" => Ok(Dtype::F16),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            _ => Err(format!("unknown dtype {s:?} (expected f32, f16 or bf16)")),
        }
    }
}

/// How documents were cut into context windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Packing {
    /// Documents joined by a separator token and cut into full windows (the study's way).
    Packed,
    /// Each document tokenized on its own and truncated to the context length.
    PerDocument,
}

/// One finished shard of a hook dataset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name inside the hook's folder, such as `part-00000.parquet`.
    pub file: String,
    pub rows: u64,
    pub sha256: String,
    /// The `seq` of the shard's first context window; shards hold whole windows, numbered
    /// consecutively from 0 across the dataset.
    #[serde(default)]
    pub first_seq: u64,
    /// Number of context windows in the shard (one parquet row group each).
    #[serde(default)]
    pub windows: u64,
}

/// The manifest of one hook's dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreManifest {
    pub format_version: u32,
    /// The model's name as the user gave it (built-in name, folder, GGUF path or hub id).
    pub model: String,
    pub hook: HookName,
    /// Width of one activation row.
    pub d: usize,
    pub dtype: Dtype,
    /// Tokenizer identity: a name and the sha256 of its serialised form.
    pub tokenizer: String,
    pub tokenizer_sha256: String,
    /// The corpus file's sha256 (of its bytes as read).
    pub corpus_sha256: String,
    pub context_len: usize,
    pub packing: Packing,
    pub rows_per_shard: u64,
    /// Every setting that determines the rows (corpus, bounds, dtypes, the model's digest in
    /// `settings`, ...) as one hash; a run with another hash never appends to this dataset.
    pub settings_hash: String,
    /// The caller's further settings that determine the rows (bounds, compute dtype, model
    /// file digest, ...), as given; part of `settings_hash`.
    #[serde(default)]
    pub settings: serde_json::Value,
    pub shards: Vec<ShardInfo>,
    /// True once the harvest ended normally; a resumed run appends shards until then.
    pub complete: bool,
}

impl StoreManifest {
    pub const FORMAT_VERSION: u32 = 1;

    /// Total number of rows over all shards.
    pub fn rows(&self) -> u64 {
        self.shards.iter().map(|s| s.rows).sum()
    }

    /// Total number of context windows over all shards.
    pub fn windows(&self) -> u64 {
        self.shards.iter().map(|s| s.windows).sum()
    }

    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        fsutil::read_json(&dir.join(MANIFEST_FILE))
    }

    /// Writes `dir/manifest.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fsutil::write_json_atomic(&dir.join(MANIFEST_FILE), self)
    }
}
