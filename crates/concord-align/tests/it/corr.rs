//! Streamed correlation against a dense computation, and token alignment by byte spans.

use concord_align::corr::{
    CoStats, Span, SpanRule, SparseBatch, align_spans, correlate, pearson, permutation_null,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sparse nonnegative activations `(tokens, n)` with about `density` of entries active.
fn acts(tokens: usize, n: usize, density: f64, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..tokens * n)
        .map(|_| {
            if rng.random::<f64>() < density {
                rng.random::<f32>() + 0.1
            } else {
                0.0
            }
        })
        .collect()
}

/// Dense centred Pearson, `mean_i max_j rho_ij` over live features.
fn naive(a: &[f32], b: &[f32], t: usize, n_a: usize, n_b: usize) -> (f64, f64) {
    let col = |x: &[f32], n: usize, j: usize| -> Vec<f64> {
        (0..t).map(|s| f64::from(x[s * n + j])).collect()
    };
    let stats = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / t as f64;
        let sd = (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / t as f64).sqrt();
        (m, sd)
    };
    let rho = |x: &[f64], y: &[f64]| {
        let ((mx, sx), (my, sy)) = (stats(x), stats(y));
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - mx) * (q - my))
            .sum::<f64>()
            / t as f64
            / (sx * sy)
    };
    let ca: Vec<Vec<f64>> = (0..n_a)
        .map(|j| col(a, n_a, j))
        .filter(|v| stats(v).1 > 0.0)
        .collect();
    let cb: Vec<Vec<f64>> = (0..n_b)
        .map(|j| col(b, n_b, j))
        .filter(|v| stats(v).1 > 0.0)
        .collect();
    let best = |xs: &[Vec<f64>], ys: &[Vec<f64>]| {
        xs.iter()
            .map(|x| {
                ys.iter()
                    .map(|y| rho(x, y))
                    .fold(f64::NEG_INFINITY, f64::max)
            })
            .sum::<f64>()
            / xs.len() as f64
    };
    (best(&ca, &cb), best(&cb, &ca))
}

#[test]
fn streamed_pearson_equals_dense_including_never_coactive_pairs() {
    let (t, n_a, n_b) = (300, 25, 40);
    let mut a = acts(t, n_a, 0.08, 1);
    let b = acts(t, n_b, 0.05, 2);
    // A feature of a that copies a feature of b: its best match is exact.
    for s in 0..t {
        a[s * n_a] = b[s * n_b + 3];
    }
    let (want_ab, want_ba) = naive(&a, &b, t, n_a, n_b);
    let batches: Vec<(SparseBatch, SparseBatch)> = (0..t)
        .step_by(64)
        .map(|s| {
            let e = (s + 64).min(t);
            (
                SparseBatch::from_dense(&a[s * n_a..e * n_a], e - s, n_a),
                SparseBatch::from_dense(&b[s * n_b..e * n_b], e - s, n_b),
            )
        })
        .collect();
    let got = correlate(n_a, n_b, batches.iter().map(|(x, y)| (x, y))).unwrap();
    // The sparse accumulator (used for large SAEs) gives the same sums.
    let mut sparse = CoStats::new_sparse(n_a, n_b);
    for (x, y) in &batches {
        sparse.add(x, y).unwrap();
    }
    let dense = CoStats::from_batches(n_a, n_b, batches.iter().map(|(x, y)| (x, y))).unwrap();
    let (rs, rd) = (sparse.cross_rows(), dense.cross_rows());
    assert_eq!(rs.len(), rd.len());
    for (x, y) in rs.iter().zip(rd.iter()) {
        assert_eq!(x.len(), y.len());
        assert!(
            x.iter()
                .zip(y)
                .all(|(p, q)| p.0 == q.0 && (p.1 - q.1).abs() < 1e-9)
        );
    }
    assert!((pearson(&sparse).a_to_b - got.a_to_b).abs() < 1e-12);
    assert!(
        (got.a_to_b - want_ab).abs() < 1e-7,
        "{} vs {want_ab}",
        got.a_to_b
    );
    assert!(
        (got.b_to_a - want_ba).abs() < 1e-7,
        "{} vs {want_ba}",
        got.b_to_a
    );
    assert_eq!(got.best_a[0].map(|(j, _)| j), Some(3));
    assert!((got.best_a[0].unwrap().1 - 1.0).abs() < 1e-6);
    assert_eq!(got.tokens, t as u64);

    let (ab, ba) = permutation_null(n_a, n_b, &batches, &[1, 2, 3]).unwrap();
    assert_eq!(ab.values.len(), 3);
    assert!(ab.mean < got.a_to_b, "the null must lose the planted copy");
    assert!(ba.lo <= ba.hi);
}

#[test]
fn bad_batches_are_errors() {
    let a = SparseBatch::from_dense(&[1.0, 0.0, 0.0, 2.0], 2, 2);
    let b = SparseBatch::from_dense(&[1.0], 1, 1);
    let mut s = CoStats::new(2, 1);
    assert!(
        s.add(&a, &b)
            .unwrap_err()
            .to_string()
            .contains("2 tokens for a but 1")
    );
    let b = SparseBatch::from_dense(&[1.0, 1.0], 2, 1);
    let mut s = CoStats::new(1, 1);
    assert!(
        s.add(&a, &b)
            .unwrap_err()
            .to_string()
            .contains("feature 1 out of range")
    );
    let mut s = CoStats::new(2, 1);
    s.add(&a, &b).unwrap();
    // b's only feature is constant: dead for Pearson.
    assert_eq!(pearson(&s).dead_b, 1);
}

fn span(doc: u32, start: u32, end: u32) -> Span {
    Span { doc, start, end }
}

#[test]
fn spans_pair_by_shared_end_or_containing_token() {
    // Text "hello world" tokenised two ways; doc 1 starts again at 0. a has an empty BOS span.
    let a = [
        span(0, 0, 0),
        span(0, 0, 5),
        span(0, 5, 11),
        span(1, 0, 2),
        span(1, 2, 4),
    ];
    let b = [
        span(0, 0, 3),
        span(0, 3, 5),
        span(0, 5, 8),
        span(0, 8, 11),
        span(1, 0, 4),
    ];
    assert_eq!(
        align_spans(&a, &b, SpanRule::SameEnd).unwrap(),
        vec![(1, 1), (2, 3), (4, 4)]
    );
    assert_eq!(
        align_spans(&a, &b, SpanRule::ContainsLastByte).unwrap(),
        vec![(1, 1), (2, 3), (3, 4), (4, 4)]
    );
    let unordered = [span(0, 5, 11), span(0, 0, 5)];
    assert!(
        align_spans(&unordered, &b, SpanRule::SameEnd)
            .unwrap_err()
            .to_string()
            .contains("stream order")
    );
    // Selecting the paired tokens gives two batches of equal length.
    let acts_a = SparseBatch::from_dense(&[1.0, 2.0, 3.0, 4.0, 5.0], 5, 1);
    let pairs = align_spans(&a, &b, SpanRule::SameEnd).unwrap();
    let rows: Vec<u32> = pairs.iter().map(|p| p.0).collect();
    assert_eq!(acts_a.select(&rows).values, vec![2.0, 3.0, 5.0]);
}
