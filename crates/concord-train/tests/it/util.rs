//! Shared helpers: seeded synthetic activations and the committed reference files.

use std::path::PathBuf;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// `tests/reference/`, where the PyTorch script and its outputs live.
pub fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("reference")
}

/// Synthetic activations `(rows, d)`: sparse non-negative combinations of `2 d` random unit
/// directions (each active with probability 0.1), plus an offset of 0.5 and a little noise.
pub fn synthetic(seed: u64, rows: usize, d: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n_dirs = 2 * d;
    let mut dirs: Vec<f32> = (0..n_dirs * d)
        .map(|_| rng.sample(StandardNormal))
        .collect();
    for row in dirs.chunks_exact_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    let mut out = vec![0.5f32; rows * d];
    for r in 0..rows {
        let x = &mut out[r * d..(r + 1) * d];
        for dir in dirs.chunks_exact(d) {
            if rng.random::<f32>() < 0.1 {
                let m = rng.random::<f32>() * 2.0;
                x.iter_mut().zip(dir).for_each(|(a, b)| *a += m * b);
            }
        }
        for v in x.iter_mut() {
            *v += 0.05 * rng.sample::<f32, _>(StandardNormal);
        }
    }
    out
}

/// Reads named f32 / i64 tensors of a safetensors file as f64 vectors with their shapes.
pub fn read_safetensors(path: &std::path::Path) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
                safetensors::Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, view.shape().to_vec(), values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A fresh temporary folder.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The `step` of every line of an SAE folder's `curve.jsonl`.
pub fn curve_steps(sae_dir: &std::path::Path) -> Vec<u64> {
    let curve = std::fs::read_to_string(sae_dir.join("curve.jsonl")).unwrap();
    curve
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}
