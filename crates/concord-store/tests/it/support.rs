//! Shared helpers: specs, deterministic synthetic windows, writing whole datasets.

use std::path::{Path, PathBuf};

use concord_store::{Dtype, HookName, HookWriter, ManifestSpec, Packing, RowMeta, StoreManifest};

/// A spec for a synthetic model.
pub fn spec(
    hook: &str,
    d: usize,
    dtype: Dtype,
    context_len: usize,
    packing: Packing,
    rows_per_shard: u64,
) -> ManifestSpec {
    ManifestSpec {
        model: "synthetic".into(),
        hook: hook.parse::<HookName>().unwrap(),
        d,
        dtype,
        tokenizer: "synthetic-tok".into(),
        tokenizer_sha256: "00".repeat(32),
        corpus_sha256: "11".repeat(32),
        context_len,
        packing,
        rows_per_shard,
        settings: serde_json::json!({"tokens": 1000, "compute_dtype": "f32"}),
    }
}

/// Number of rows of window `seq`: the context length when packed, 1..=context_len otherwise.
pub fn window_len(seq: u64, context_len: usize, packing: Packing) -> usize {
    match packing {
        Packing::Packed => context_len,
        Packing::PerDocument => 1 + (seq as usize * 5 + 2) % context_len,
    }
}

/// The value of activation `j` of row `pos` of window `seq`: multiples of 1/8 in [-4, 4),
/// exact in f16 and bf16, different per hook `salt`.
pub fn value(seq: u64, pos: u32, j: usize, salt: u64) -> f32 {
    ((seq * 31 + u64::from(pos) * 7 + j as u64 * 3 + salt * 11) % 64) as f32 / 8.0 - 4.0
}

/// Window `seq` of a synthetic harvest: rows and activations `(rows, d)`.
pub fn window(
    seq: u64,
    context_len: usize,
    packing: Packing,
    d: usize,
    salt: u64,
) -> (Vec<RowMeta>, Vec<f32>) {
    let n = window_len(seq, context_len, packing);
    let rows: Vec<RowMeta> = (0..n as u32)
        .map(|pos| RowMeta {
            doc: seq / 2,
            pos,
            seq,
            token: (seq as u32 * 13 + pos * 3) % 50_000,
            byte_start: pos * 4,
            byte_end: if pos == 0 { 0 } else { pos * 4 + 3 },
        })
        .collect();
    let xs = rows
        .iter()
        .flat_map(|r| (0..d).map(move |j| value(seq, r.pos, j, salt)))
        .collect();
    (rows, xs)
}

/// Writes `windows` synthetic windows with one [`HookWriter`] and finishes.
pub fn write(dir: &Path, spec: &ManifestSpec, windows: u64, salt: u64) -> StoreManifest {
    let mut w = HookWriter::open(dir, spec).unwrap();
    for seq in w.next_seq()..windows {
        let (rows, xs) = window(seq, spec.context_len, spec.packing, spec.d, salt);
        w.push_window(&rows, &xs).unwrap();
    }
    w.finish().unwrap()
}

/// A fresh temporary folder.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The sorted file names in `dir`.
pub fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_owned()
}
