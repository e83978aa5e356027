//! Paths and cached models shared by the test modules.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use concord_models::{LoadOptions, Model, ModelSource, resolve};

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn goldens() -> PathBuf {
    crate_dir().join("tests/goldens")
}

/// The workspace's `data` folder (setup fetched the default models there).
pub fn data_dir() -> PathBuf {
    crate_dir().join("../../data")
}

fn load(source: &ModelSource) -> Model {
    Model::load(source, LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// Loads each model once per test binary; tests sharing a model take turns (libtorch tensors
/// are `Send` but not `Sync`). Hold one guard at a time.
pub fn model(name: &str) -> MutexGuard<'static, Model> {
    type Cell = OnceLock<Mutex<Model>>;
    static SMOL: Cell = OnceLock::new();
    static MINILM: Cell = OnceLock::new();
    static NEOX: Cell = OnceLock::new();
    static NEOX_SEQ: Cell = OnceLock::new();
    static GPT2: Cell = OnceLock::new();
    let (cell, source): (&Cell, fn() -> ModelSource) = match name {
        "smollm2-135m" => (&SMOL, || resolve("smollm2-135m", &data_dir()).unwrap()),
        "minilm-l6" => (&MINILM, || resolve("minilm-l6", &data_dir()).unwrap()),
        "tiny-neox" => (&NEOX, || ModelSource::HfFolder(goldens().join("tiny-neox"))),
        "tiny-neox-seq" => (&NEOX_SEQ, || {
            ModelSource::HfFolder(goldens().join("tiny-neox-seq"))
        }),
        "tiny-gpt2" => (&GPT2, || ModelSource::HfFolder(goldens().join("tiny-gpt2"))),
        other => panic!("unknown test model {other}"),
    };
    cell.get_or_init(|| Mutex::new(load(&source())))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

pub fn tmp_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}
