//! Null baselines: random dictionaries (isotropic, and the study's biased `rand_like`), the
//! analytic expectation of the max cosine of random unit vectors, intervals over seeds.

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Dict, Result};

pub use crate::synth::random_dict as isotropic;

/// The study's `rand_like` baseline: entries uniform in `[0, 1)`, rows then normalised,
/// `(n, d)`. All its rows crowd around the all-ones direction, so it is a *biased* null,
/// kept only as a labelled study-faithful variant.
pub fn rand_like(n: usize, d: usize, seed: u64) -> Result<Dict> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let xs: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>()).collect();
    Dict::from_rows("rand_like dictionary", &xs, n, d)
}

/// A seed for stream `stream` of seed `seed` (SplitMix64 of both), so that nulls drawn with
/// small seeds do not repeat dictionaries generated elsewhere from the same small seeds.
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed
        .wrapping_add(stream.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(0x632b_e59b_d9b4_e019);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seeded permutation of `0..n`.
pub fn permutation(n: usize, seed: u64) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    p.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    p
}

/// `E[max_{j <= n} <x, y_j>]` for a fixed unit `x` and `n` independent uniform unit vectors
/// `y_j` in `d >= 2` dimensions: the expected MMCS of any dictionary against an isotropic
/// random one with `n` rows.
///
/// With `t = cos θ`, `θ` has density `∝ sin^(d-2) θ` on `[0, π]`, and
/// `E[max] = 1 - ∫_{-1}^{1} F(t)^n dt = 1 - ∫_0^π G(θ)^n sin θ dθ` with
/// `G(θ) = P(Θ >= θ)`. Both integrals are taken by the trapezoid rule on a uniform grid of
/// 2^18 steps in `θ` (fine enough for `d` up to about 10^6); `G^n` is formed as
/// `exp(n ln(1 - T))` from the lower tail `T` to keep precision when `G` is close to 1.
pub fn expected_max_cos(d: usize, n: usize) -> f64 {
    if n == 0 || d < 2 {
        return f64::NAN;
    }
    const STEPS: usize = 1 << 18;
    let h = std::f64::consts::PI / STEPS as f64;
    let power = (d - 2) as f64;
    let dens = |k: usize| -> f64 {
        let s = (k as f64 * h).sin();
        if power == 0.0 {
            1.0
        } else if s <= 0.0 {
            0.0
        } else {
            (power * s.ln()).exp()
        }
    };
    // Lower tail T(θ_k) = ∫_0^θ_k density, unnormalised.
    let mut tail = vec![0.0f64; STEPS + 1];
    let mut prev = dens(0);
    for k in 1..=STEPS {
        let cur = dens(k);
        tail[k] = tail[k - 1] + 0.5 * h * (prev + cur);
        prev = cur;
    }
    let z = tail[STEPS];
    let nf = n as f64;
    let integrand = |k: usize| -> f64 {
        let t = (tail[k] / z).min(1.0);
        let g_n = if t >= 1.0 {
            0.0
        } else {
            (nf * (-t).ln_1p()).exp()
        };
        g_n * (k as f64 * h).sin()
    };
    let mut integral = 0.0;
    let mut prev = integrand(0);
    for k in 1..=STEPS {
        let cur = integrand(k);
        integral += 0.5 * h * (prev + cur);
        prev = cur;
    }
    1.0 - integral
}

/// A score over several seeds: mean and a 95 % interval (the 2.5 % and 97.5 % quantiles of
/// the values, linearly interpolated).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub values: Vec<f64>,
}

/// The [`Interval`] of `values` (in seed order; empty gives NaNs).
pub fn interval(values: Vec<f64>) -> Interval {
    let q = concord_core::outputs::Interval::quantiles(&values);
    Interval {
        mean: q.mean,
        lo: q.lo,
        hi: q.hi,
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_max_cos_is_exact_in_three_dimensions() {
        // In d = 3 the cosine is uniform on [-1, 1]: E[max of n] = (n - 1) / (n + 1).
        for n in [1usize, 2, 10, 1000] {
            let want = (n as f64 - 1.0) / (n as f64 + 1.0);
            let got = expected_max_cos(3, n);
            assert!((got - want).abs() < 1e-8, "n = {n}: {got} vs {want}");
        }
    }

    #[test]
    fn interval_quantiles() {
        let iv = interval(vec![3.0, 1.0, 2.0]);
        assert_eq!(iv.mean, 2.0);
        assert!((iv.lo - 1.05).abs() < 1e-12 && (iv.hi - 2.95).abs() < 1e-12);
        assert_eq!(permutation(5, 1).len(), 5);
    }
}
