//! The alignment crate's integration tests, one module per area.

mod compare;
mod corr;
mod goldens;
mod matching;
mod metrics;
mod mmcs;
mod nulls;

use concord_align::Dict;
use concord_align::synth::random_dict;

/// A random unit-row dictionary `(n, d)`.
pub fn dict(n: usize, d: usize, seed: u64) -> Dict {
    random_dict(n, d, seed).unwrap()
}

/// The dense cosine matrix in `f64`, `(n_a, n_b)`.
pub fn cos64(a: &Dict, b: &Dict) -> Vec<f64> {
    let mut out = Vec::with_capacity(a.n * b.n);
    for i in 0..a.n {
        for j in 0..b.n {
            out.push(
                a.row(i)
                    .iter()
                    .zip(b.row(j))
                    .map(|(x, y)| f64::from(*x) * f64::from(*y))
                    .sum(),
            );
        }
    }
    out
}
