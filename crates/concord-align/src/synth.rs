//! A seeded generator of "SAE-like" dictionary pairs for tests and benchmarks.
//!
//! Two unit-row dictionaries where a share of `b`'s rows are noisy copies of `a`'s rows, some
//! of them in clusters around one `a` row (as features split when a dictionary grows), and
//! the rest isotropic random. `b`'s rows are shuffled so that the matching is not the
//! identity.

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::{Dict, Result};

/// The shape of an SAE-like pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaeLike {
    /// Share of `b`'s rows that copy a row of `a`.
    pub shared: f64,
    /// Share of the copies that sit in clusters (split features).
    pub split: f64,
    /// Rows per cluster.
    pub cluster: usize,
    /// Typical norm of the noise added to a copied unit row (each row draws uniformly from
    /// `[0.5, 1.5]` times this), so copies have cosines around `1 / sqrt(1 + noise^2)`.
    pub noise: f32,
}

impl Default for SaeLike {
    fn default() -> Self {
        SaeLike {
            shared: 0.6,
            split: 0.2,
            cluster: 3,
            noise: 0.6,
        }
    }
}

fn unit_gaussian(rng: &mut ChaCha8Rng, d: usize, out: &mut Vec<f32>) {
    let start = out.len();
    out.extend((0..d).map(|_| rng.sample::<f32, _>(StandardNormal)));
    normalise(&mut out[start..]);
}

fn normalise(row: &mut [f32]) {
    let norm = row
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for v in row {
            *v = (f64::from(*v) / norm) as f32;
        }
    }
}

/// An isotropic random dictionary `(n, d)` with unit rows.
pub fn random_dict(n: usize, d: usize, seed: u64) -> Result<Dict> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = Vec::with_capacity(n * d);
    for _ in 0..n {
        unit_gaussian(&mut rng, d, &mut rows);
    }
    Dict::from_unit_rows("random dictionary", rows, n, d)
}

/// An SAE-like pair `a` `(n_a, d)`, `b` `(n_b, d)`.
pub fn sae_like_pair(
    n_a: usize,
    n_b: usize,
    d: usize,
    shape: &SaeLike,
    seed: u64,
) -> Result<(Dict, Dict)> {
    let a = random_dict(n_a, d, seed)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let copies = ((shape.shared.clamp(0.0, 1.0) * n_b as f64).round() as usize).min(n_b);
    let cluster = shape.cluster.max(1);
    let clustered = ((shape.split.clamp(0.0, 1.0) * copies as f64).round() as usize).min(copies);
    let n_clusters = clustered / cluster;
    let singles = copies - n_clusters * cluster;
    let mut sources: Vec<u32> = (0..n_a as u32).collect();
    sources.shuffle(&mut rng);
    let mut rows = Vec::with_capacity(n_b * d);
    let noisy_copy = |rng: &mut ChaCha8Rng, src: usize, rows: &mut Vec<f32>| {
        let scale = shape.noise * rng.random_range(0.5f32..1.5) / (d as f32).sqrt();
        let start = rows.len();
        rows.extend(
            a.row(src)
                .iter()
                .map(|&x| x + scale * rng.sample::<f32, _>(StandardNormal)),
        );
        normalise(&mut rows[start..]);
    };
    let mut next = 0usize;
    for _ in 0..n_clusters {
        let src = sources[next % n_a] as usize;
        next += 1;
        for _ in 0..cluster {
            noisy_copy(&mut rng, src, &mut rows);
        }
    }
    for _ in 0..singles {
        let src = sources[next % n_a] as usize;
        next += 1;
        noisy_copy(&mut rng, src, &mut rows);
    }
    while rows.len() < n_b * d {
        unit_gaussian(&mut rng, d, &mut rows);
    }
    let mut order: Vec<u32> = (0..n_b as u32).collect();
    order.shuffle(&mut rng);
    let unshuffled = Dict::from_unit_rows("sae-like b", rows, n_b, d)?;
    Ok((a, unshuffled.gather(&order)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_seeded_and_unit() {
        let (a, b) = sae_like_pair(20, 30, 16, &SaeLike::default(), 7).unwrap();
        let (a2, b2) = sae_like_pair(20, 30, 16, &SaeLike::default(), 7).unwrap();
        assert_eq!((&a, &b), (&a2, &b2));
        for i in 0..30 {
            let n: f32 = b.row(i).iter().map(|v| v * v).sum();
            assert!((n - 1.0).abs() < 1e-5);
        }
        let (a3, _) = sae_like_pair(20, 30, 16, &SaeLike::default(), 8).unwrap();
        assert_ne!(a, a3);
    }
}
