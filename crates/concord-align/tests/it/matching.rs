//! Exact matching: brute force, dense against sparse, certificates.

use concord_align::synth::{SaeLike, sae_like_pair};
use concord_align::{Blocking, Dict, MatchOptions, Method, match_dicts, match_weights};
use proptest::prelude::*;

use crate::{cos64, dict};

/// The best total over all injective maps of the smaller side, by brute force.
fn brute_force(w: &[f64], n_a: usize, n_b: usize) -> f64 {
    fn go(w: &[f64], n_a: usize, n_b: usize, t: bool, i: usize, used: &mut Vec<bool>) -> f64 {
        let rows = if t { n_b } else { n_a };
        let cols = if t { n_a } else { n_b };
        if i == rows {
            return 0.0;
        }
        let mut best = f64::NEG_INFINITY;
        for j in 0..cols {
            if !used[j] {
                used[j] = true;
                let x = if t { w[j * n_b + i] } else { w[i * n_b + j] };
                best = best.max(x + go(w, n_a, n_b, t, i + 1, used));
                used[j] = false;
            }
        }
        best
    }
    let t = n_a > n_b;
    go(w, n_a, n_b, t, 0, &mut vec![false; n_a.max(n_b)])
}

fn sparse_opts(k: usize) -> MatchOptions {
    MatchOptions {
        dense_limit: 0,
        tied_dense_limit: 0,
        top_k: k,
        add_per_row: 2,
        blocking: Blocking { rows: 4, cols: 8 },
        ..MatchOptions::default()
    }
}

fn assert_valid(m: &concord_align::Matching, n_a: usize, n_b: usize) {
    assert_eq!(m.pairs.len(), n_a.min(n_b));
    let mut seen_a = vec![false; n_a];
    let mut seen_b = vec![false; n_b];
    for p in &m.pairs {
        assert!(
            !seen_a[p.a as usize] && !seen_b[p.b as usize],
            "not one-to-one"
        );
        seen_a[p.a as usize] = true;
        seen_b[p.b as usize] = true;
    }
}

#[test]
fn brute_force_on_tiny_shapes_with_negative_weights() {
    for (n_a, n_b, seed) in [(4, 4, 1), (5, 3, 2), (2, 6, 3), (6, 6, 4), (1, 5, 5)] {
        let (a, b) = (dict(n_a, 3, seed), dict(n_b, 3, seed + 100));
        let w = cos64(&a, &b);
        assert!(w.iter().any(|&x| x < 0.0));
        let want = brute_force(&w, n_a, n_b);
        let dense = match_weights(&w, n_a, n_b).unwrap();
        assert_valid(&dense, n_a, n_b);
        assert!(
            (dense.certificate.primal - want).abs() < 1e-9,
            "{n_a}x{n_b}"
        );
        assert!(dense.optimal);
        let sparse = match_dicts(&a, &b, None, &sparse_opts(1)).unwrap();
        assert_valid(&sparse, n_a, n_b);
        assert_eq!(sparse.method, Method::Sparse);
        assert!(sparse.optimal, "{:?}", sparse.certificate);
        assert!(
            (sparse.objective - want).abs() < 1e-5,
            "{} vs {want}",
            sparse.objective
        );
    }
}

#[test]
fn ties_and_duplicates_still_match_one_to_one() {
    // Three identical rows in a against two identical rows in b: every matching ties.
    let a = Dict::from_rows("a", &[1.0, 0.0, 1.0, 0.0, 1.0, 0.0], 3, 2).unwrap();
    let b = Dict::from_rows("b", &[1.0, 0.0, 1.0, 0.0], 2, 2).unwrap();
    for opts in [MatchOptions::default(), sparse_opts(1)] {
        let m = match_dicts(&a, &b, None, &opts).unwrap();
        assert_valid(&m, 3, 2);
        assert!((m.objective - 2.0).abs() < 1e-6 && m.optimal);
    }
    let w = [0.5f64; 12];
    let m = match_weights(&w, 3, 4).unwrap();
    assert_valid(&m, 3, 4);
    assert_eq!(m.objective, 1.5);
}

#[test]
fn sparse_needs_pricing_on_sae_like_pairs_and_agrees_with_dense() {
    let mut rounds = 0;
    for (n_a, n_b) in [(120, 120), (150, 90), (70, 200)] {
        let (a, b) = sae_like_pair(n_a, n_b, 16, &SaeLike::default(), 3).unwrap();
        let dense = match_dicts(&a, &b, None, &MatchOptions::default()).unwrap();
        assert_eq!(dense.method, Method::Dense);
        let w = cos64(&a, &b);
        let exact = match_weights(&w, n_a, n_b).unwrap();
        assert!((dense.objective - exact.objective).abs() < 1e-4);
        let sparse = match_dicts(&a, &b, None, &sparse_opts(1)).unwrap();
        assert_valid(&sparse, n_a, n_b);
        assert!(sparse.optimal, "{:?}", sparse.certificate);
        rounds += sparse.certificate.rounds;
        let rel = (sparse.objective - dense.objective).abs() / dense.objective.abs();
        assert!(rel < 1e-6, "{} vs {}", sparse.objective, dense.objective);
        assert!(sparse.certificate.gap_bound < 1e-6);
    }
    assert!(
        rounds > 0,
        "top-2 candidates alone should not have sufficed"
    );
}

#[test]
fn a_capped_certificate_is_not_called_optimal() {
    let (a, b) = sae_like_pair(100, 100, 16, &SaeLike::default(), 9).unwrap();
    let m = match_dicts(
        &a,
        &b,
        None,
        &MatchOptions {
            max_rounds: 0,
            ..sparse_opts(1)
        },
    )
    .unwrap();
    assert!(!m.optimal);
    assert!(m.certificate.gap_bound > 0.0);
}

#[test]
fn zero_rows_and_repeated_rows_match_completely_and_optimally() {
    // Half of b's rows are zero and a third of a's repeat one direction: the candidate lists
    // are arbitrary among equals, so above the dense limit the matcher solves these densely.
    let (n, d) = (90, 6);
    let base = dict(n, d, 21);
    let mut zeroed = base.rows.clone();
    for i in (0..n).step_by(2) {
        zeroed[i * d..(i + 1) * d].fill(0.0);
    }
    let b = Dict::from_rows("b", &zeroed, n, d).unwrap();
    let mut repeated = dict(n, d, 22).rows;
    let first: Vec<f32> = repeated[..d].to_vec();
    for i in (0..n).step_by(3) {
        repeated[i * d..(i + 1) * d].copy_from_slice(&first);
    }
    let a = Dict::from_rows("a", &repeated, n, d).unwrap();
    for (a, b) in [(&a, &b), (&b, &a), (&base, &b), (&a, &base)] {
        let exact = match_weights(&cos64(a, b), n, n).unwrap();
        let opts = MatchOptions {
            dense_limit: 0,
            ..MatchOptions::default()
        };
        let m = match_dicts(a, b, None, &opts).unwrap();
        assert_valid(&m, n, n);
        assert!(m.optimal && m.method == Method::Dense);
        assert!(
            (m.objective - exact.objective).abs() < 1e-5,
            "{} vs {}",
            m.objective,
            exact.objective
        );
    }
    // A sparse solve that cannot be certified falls back to the dense solver.
    let (a, b) = sae_like_pair(100, 100, 16, &SaeLike::default(), 9).unwrap();
    let capped = MatchOptions {
        max_rounds: 0,
        tied_dense_limit: 1 << 20,
        ..sparse_opts(1)
    };
    let m = match_dicts(&a, &b, None, &capped).unwrap();
    assert!(m.optimal && m.method == Method::Dense);
}

#[test]
fn bad_weights_are_errors() {
    assert!(
        match_weights(&[1.0f64, f64::NAN], 1, 2)
            .unwrap_err()
            .to_string()
            .contains("non-finite")
    );
    assert!(match_weights(&[1.0f64; 3], 2, 2).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10))]
    #[test]
    fn sparse_equals_dense(n_a in 1usize..30, n_b in 1usize..30, d in 2usize..6, k in 1usize..3,
                           seed in 0u64..10_000) {
        let (a, b) = (dict(n_a, d, seed), dict(n_b, d, seed + 7));
        let w = cos64(&a, &b);
        let dense = match_weights(&w, n_a, n_b).unwrap();
        let sparse = match_dicts(&a, &b, None, &sparse_opts(k)).unwrap();
        assert_valid(&sparse, n_a, n_b);
        prop_assert!(sparse.optimal);
        prop_assert!((sparse.objective - dense.objective).abs() <= 1e-5 * (1.0 + dense.objective.abs()));
    }

    #[test]
    fn dense_equals_brute_force(n_a in 1usize..6, n_b in 1usize..6, seed in 0u64..10_000) {
        let (a, b) = (dict(n_a, 4, seed), dict(n_b, 4, seed + 1));
        let w = cos64(&a, &b);
        let m = match_weights(&w, n_a, n_b).unwrap();
        prop_assert!((m.objective - brute_force(&w, n_a, n_b)).abs() < 1e-6);
    }
}
