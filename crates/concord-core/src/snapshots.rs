//! Where a training run keeps snapshots of its SAEs, shared by `train` and the study planner.
//!
//! A run of `total` steps saves every SAE after `total / 2^j` steps (`j = n - 1, ..., 1`) as
//! `<out>/snapshots/<step>/<name>/`, a whole SAE folder; the final SAE is `<out>/<name>/`. The
//! study aligns seed pairs at every snapshot to show how consistency moves with training tokens.

use std::path::{Path, PathBuf};

/// The folder under a train output that holds its snapshots.
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// The steps at which a run of `total` steps keeps snapshots when `n` points (the final SAE
/// included) are asked for: `total / 2^j` for `j` in `1..n`, rounded down, without zeros or
/// repeats, in increasing order. `n` of 0 or 1 keeps none.
pub fn snapshot_steps(total: u64, n: u32) -> Vec<u64> {
    let mut steps: Vec<u64> = (1..n.min(64))
        .map(|j| total >> j)
        .filter(|&s| s > 0 && s < total)
        .collect();
    steps.sort_unstable();
    steps.dedup();
    steps
}

/// The folder of SAE `name`'s snapshot after `step` steps of the run written to `out`.
pub fn snapshot_dir(out: &Path, step: u64, name: &str) -> PathBuf {
    out.join(SNAPSHOTS_DIR).join(step.to_string()).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_halve_from_the_total() {
        assert_eq!(snapshot_steps(1000, 5), vec![62, 125, 250, 500]);
        assert_eq!(snapshot_steps(1000, 1), Vec::<u64>::new());
        assert_eq!(snapshot_steps(1000, 0), Vec::<u64>::new());
        // Short runs: no zero step, no repeats.
        assert_eq!(snapshot_steps(3, 6), vec![1]);
        assert_eq!(snapshot_steps(1, 4), Vec::<u64>::new());
        assert_eq!(
            snapshot_dir(Path::new("o"), 62, "h-x"),
            Path::new("o/snapshots/62/h-x")
        );
    }
}
