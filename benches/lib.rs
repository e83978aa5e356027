//! Shared helpers of the criterion benchmarks: sizes from the environment, result records
//! for `cargo xtask bench`, and input files for the Python peers.
//!
//! Records are JSON lines `{"group", "case", "impl", "seconds", "peer", "note"}` appended to
//! `$CONCORD_BENCH_RESULTS/<file>` (default `target/bench-results`), which `cargo xtask bench`
//! renders into `docs/BENCHMARKS.md` next to the peers' records.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A size knob: `name` from the environment, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where records and peer inputs go.
pub fn results_dir() -> PathBuf {
    let dir = std::env::var_os("CONCORD_BENCH_RESULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results")
        });
    let _ = fs::create_dir_all(&dir);
    dir
}

/// Appends one of our (non-peer) records to `file` in the results folder.
/// Records of benchmarks that criterion's filter skipped (no times) are not written.
pub fn record(file: &str, group: &str, case: &str, implementation: &str, seconds: f64, note: &str) {
    if !seconds.is_finite() {
        return;
    }
    let line = serde_json::json!({
        "group": group, "case": case, "impl": implementation,
        "seconds": seconds, "peer": false, "note": note,
    });
    let path = results_dir().join(file);
    match OpenOptions::new().create(true).append(true).open(&path) {
        Ok(mut f) => {
            let _ = writeln!(f, "{line}");
        }
        Err(e) => eprintln!("bench: cannot append to {}: {e}", path.display()),
    }
    eprintln!("bench: {group} / {case} / {implementation}: {seconds:.4} s {note}");
}

/// Writes a row-major `(n, d)` f32 matrix as raw little-endian bytes for the Python peers
/// (`numpy.fromfile(path, dtype="<f4").reshape(n, d)`).
pub fn write_f32(name: &str, xs: &[f32]) -> PathBuf {
    let dir = results_dir().join("align-data");
    let _ = fs::create_dir_all(&dir);
    let path = dir.join(name);
    let bytes: Vec<u8> = xs.iter().flat_map(|v| v.to_le_bytes()).collect();
    if let Err(e) = fs::write(&path, bytes) {
        eprintln!("bench: cannot write {}: {e}", path.display());
    }
    path
}

/// Times `f` once per call of criterion's `iter_custom` and keeps the per-iteration times,
/// so the same measurements feed criterion's report and our records.
#[derive(Debug, Default)]
pub struct Times(pub Vec<Duration>);

impl Times {
    /// Runs `f` `iters` times, remembers the mean, returns the total.
    pub fn run<T>(&mut self, iters: u64, mut f: impl FnMut() -> T) -> Duration {
        let t = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(f());
        }
        let total = t.elapsed();
        self.0.push(total / iters.max(1) as u32);
        total
    }

    /// The median per-iteration time in seconds.
    pub fn median(&self) -> f64 {
        let mut v: Vec<f64> = self.0.iter().map(Duration::as_secs_f64).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
}
