//! Streamed correlation against a dense computation, and token alignment by byte spans.

use concord_align::corr::{
    CoStats, Span, SpanRule, SparseBatch, align_spans, correlate, pearson, permutation_null,
};
use proptest::prelude::*;
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

/// Dense `(t, n_a)` and `(t, n_b)` activations as sparse batches of `step` tokens.
fn batches_of(
    a: &[f32],
    b: &[f32],
    (t, n_a, n_b): (usize, usize, usize),
    step: usize,
) -> Vec<(SparseBatch, SparseBatch)> {
    (0..t)
        .step_by(step)
        .map(|s| {
            let e = (s + step).min(t);
            (
                SparseBatch::from_dense(&a[s * n_a..e * n_a], e - s, n_a),
                SparseBatch::from_dense(&b[s * n_b..e * n_b], e - s, n_b),
            )
        })
        .collect()
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
    let batches = batches_of(&a, &b, (t, n_a, n_b), 64);
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

/// A random activation pair with the awkward cases: empty tokens, features never active,
/// constant features (dead for Pearson), negative values; row-major `(t, n_a)`, `(t, n_b)`.
fn awkward(t: usize, n_a: usize, n_b: usize, density: f64, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut side = |n: usize| {
        let mut x = vec![0.0f32; t * n];
        // Per feature: 0 normal, 1 never active, 2 constant on every token.
        let kind: Vec<u8> = (0..n)
            .map(|_| match rng.random_range(0..10) {
                0 => 1,
                1 => 2,
                _ => 0,
            })
            .collect();
        for s in 0..t {
            let empty = rng.random::<f64>() < 0.2;
            for j in 0..n {
                x[s * n + j] = match kind[j] {
                    1 => 0.0,
                    2 => 0.75,
                    _ if !empty && rng.random::<f64>() < density => {
                        let v = rng.random::<f32>() + 0.05;
                        if rng.random::<f64>() < 0.1 { -v } else { v }
                    }
                    _ => 0.0,
                };
            }
        }
        x
    };
    let a = side(n_a);
    let b = side(n_b);
    (a, b)
}

/// Exact `S = AᵀB` in `f64`, summed in token order.
fn naive_sums(a: &[f32], b: &[f32], t: usize, n_a: usize, n_b: usize) -> Vec<f64> {
    let mut s = vec![0.0f64; n_a * n_b];
    for r in 0..t {
        for i in 0..n_a {
            let x = a[r * n_a + i];
            if x == 0.0 {
                continue;
            }
            for j in 0..n_b {
                let y = b[r * n_b + j];
                if y != 0.0 {
                    s[i * n_b + j] += f64::from(x) * f64::from(y);
                }
            }
        }
    }
    s
}

/// Centred Pearson of every pair by the definition (means subtracted first), `(n_x, n_y)`,
/// with `None` for constant features (dead).
fn naive_rho(x: &[f32], y: &[f32], t: usize, n_x: usize, n_y: usize) -> Vec<Option<f64>> {
    let centred = |z: &[f32], n: usize, j: usize| -> Option<(Vec<f64>, f64)> {
        let col: Vec<f64> = (0..t).map(|s| f64::from(z[s * n + j])).collect();
        if col.iter().all(|&v| v == col[0]) {
            return None;
        }
        let m = col.iter().sum::<f64>() / t as f64;
        let c: Vec<f64> = col.iter().map(|v| v - m).collect();
        let sd = (c.iter().map(|v| v * v).sum::<f64>() / t as f64).sqrt();
        Some((c, sd))
    };
    let xs: Vec<_> = (0..n_x).map(|j| centred(x, n_x, j)).collect();
    let ys: Vec<_> = (0..n_y).map(|j| centred(y, n_y, j)).collect();
    let mut out = Vec::with_capacity(n_x * n_y);
    for p in &xs {
        for q in &ys {
            out.push(match (p, q) {
                (Some((cp, sp)), Some((cq, sq))) => {
                    Some(cp.iter().zip(cq).map(|(u, v)| u * v).sum::<f64>() / t as f64 / (sp * sq))
                }
                _ => None,
            });
        }
    }
    out
}

/// Checks one direction: every live row's best is a true maximum of the naive `rho` row and
/// the mean of maxima agrees; dead rows and rows with no live column have no best.
fn check_direction(
    best: &[Option<(u32, f32)>],
    mean: f64,
    rho: &[Option<f64>],
    n_y: usize,
) -> Result<(), TestCaseError> {
    let mut maxima = Vec::new();
    for (i, got) in best.iter().enumerate() {
        let row = &rho[i * n_y..(i + 1) * n_y];
        let want = row
            .iter()
            .flatten()
            .copied()
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
        match (got, want) {
            (None, None) => {}
            (Some((j, r)), Some(w)) => {
                let at = row[*j as usize];
                prop_assert!(at.is_some(), "row {i}: best column {j} is dead");
                prop_assert!((at.unwrap() - w).abs() < 1e-9, "row {i}: {at:?} vs max {w}");
                prop_assert!((f64::from(*r) - w).abs() < 1e-6, "row {i}: {r} vs {w}");
                maxima.push(w);
            }
            _ => prop_assert!(false, "row {i}: got {got:?}, want {want:?}"),
        }
    }
    if maxima.is_empty() {
        prop_assert!(mean.is_nan());
    } else {
        let want = maxima.iter().sum::<f64>() / maxima.len() as f64;
        prop_assert!((mean - want).abs() < 1e-7, "mean {mean} vs {want}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The streamed, buffered, tiled accumulation equals the naive dense computation: the
    /// sums exactly (same products, same token order), the Pearson summary up to rounding,
    /// whatever the shapes, the batching, the pending-buffer limit and the stored format.
    /// Wide `b` makes tiles of a few rows of `a`, so several tiles and rayon folds meet.
    #[test]
    fn streamed_correlation_equals_naive(
        seed in 0u64..1_000_000,
        wide in any::<bool>(),
        n_a in 0usize..24,
        n_b_small in 1usize..24,
        t in 0usize..70,
        density in 0.02f64..0.4,
        sparse in any::<bool>(),
        limit in prop_oneof![Just(Some(0usize)), Just(Some(2_000)), Just(None)],
    ) {
        // Around 65,536 features: 16-bit and 32-bit pending entries of `b`.
        let n_b = if wide { 65_530 + n_b_small } else { n_b_small };
        let t = if wide { t.min(12) } else { t };
        let (a, b) = awkward(t, n_a, n_b, if wide { density / 50.0 } else { density }, seed);
        // Uneven batches, some empty.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let mut cuts = vec![0];
        while *cuts.last().unwrap() < t {
            let last = *cuts.last().unwrap();
            cuts.push((last + rng.random_range(0..=t / 3 + 1)).min(t));
        }
        let batches: Vec<(SparseBatch, SparseBatch)> = cuts
            .windows(2)
            .map(|w| {
                let (s, e) = (w[0], w[1]);
                (
                    SparseBatch::from_dense(&a[s * n_a..e * n_a], e - s, n_a),
                    SparseBatch::from_dense(&b[s * n_b..e * n_b], e - s, n_b),
                )
            })
            .collect();
        let stats = if sparse {
            CoStats::new_sparse(n_a, n_b)
        } else {
            CoStats::new(n_a, n_b)
        };
        let mut stats = match limit {
            Some(bytes) => stats.with_pending_limit(bytes),
            None => stats,
        };
        for (x, y) in &batches {
            stats.add(x, y).unwrap();
        }
        prop_assert_eq!(stats.tokens, t as u64);

        let want = naive_sums(&a, &b, t, n_a, n_b);
        let rows = stats.cross_rows();
        prop_assert_eq!(rows.len(), n_a);
        let mut got = vec![0.0f64; n_a * n_b];
        for (i, row) in rows.iter().enumerate() {
            prop_assert!(row.windows(2).all(|w| w[0].0 < w[1].0), "row {} unsorted", i);
            for &(j, s) in row {
                prop_assert!(s != 0.0);
                got[i * n_b + j as usize] = s;
            }
        }
        prop_assert!(got == want, "sums differ from the naive product");

        let p = pearson(&stats);
        let rho_ab = naive_rho(&a, &b, t, n_a, n_b);
        let rho_ba = naive_rho(&b, &a, t, n_b, n_a);
        let live = |x: &[f32], n: usize| {
            (0..n)
                .filter(|&j| (0..t).any(|s| x[s * n + j] != x[j]))
                .count()
        };
        prop_assert_eq!(p.alive_a, live(&a, n_a));
        prop_assert_eq!(p.alive_b, live(&b, n_b));
        prop_assert_eq!(p.dead_a + p.alive_a, n_a);
        check_direction(&p.best_a, p.a_to_b, &rho_ab, n_b)?;
        check_direction(&p.best_b, p.b_to_a, &rho_ba, n_a)?;
    }
}

/// Widths whose tile of sums is not a power of two of rows (1,500 features of `b`: 87 rows of
/// 1 MiB, tiles of 64): the sums still equal the naive product, with several tiles of `a`.
#[test]
fn tiles_of_any_width_cover_every_feature() {
    let (t, n_a, n_b) = (40, 150, 1500);
    let (a, b) = awkward(t, n_a, n_b, 0.05, 7);
    let batches = batches_of(&a, &b, (t, n_a, n_b), 16);
    let stats = CoStats::from_batches(n_a, n_b, batches.iter().map(|(x, y)| (x, y))).unwrap();
    let mut got = vec![0.0f64; n_a * n_b];
    for (i, row) in stats.cross_rows().iter().enumerate() {
        for &(j, s) in row {
            got[i * n_b + j as usize] = s;
        }
    }
    assert!(got == naive_sums(&a, &b, t, n_a, n_b));
}

/// A pending token's number shares 32 bits with its row in the tile, so with one feature of
/// `b` (tiles of 2^17 rows of `a`) the buffer numbers at most 32,768 tokens: batches that
/// cross that are taken in pieces, flushing between them, and the sums stay exact.
#[test]
fn batches_longer_than_the_pending_numbering_are_split() {
    let (n_a, n_b) = (1 << 17, 1);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut batch = |tokens: usize| {
        let (mut a, mut b) = (SparseBatch::default(), SparseBatch::default());
        a.indptr.push(0);
        b.indptr.push(0);
        for _ in 0..tokens {
            let i = rng.random_range(0..n_a as u32 / 2);
            a.indices.extend([i, i + n_a as u32 / 2]);
            a.values
                .extend([rng.random::<f32>() + 0.1, -rng.random::<f32>()]);
            if rng.random::<f64>() < 0.5 {
                b.indices.push(0);
                b.values.push(rng.random::<f32>() + 0.5);
            }
            a.indptr.push(a.indices.len());
            b.indptr.push(b.indices.len());
        }
        (a, b)
    };
    let batches = [batch(20_000), batch(50_000), batch(3)];
    let mut want = vec![0.0f64; n_a];
    for (a, b) in &batches {
        for t in 0..a.tokens() {
            for (i, x) in a.row(t) {
                for (_, y) in b.row(t) {
                    want[i as usize] += f64::from(x) * f64::from(y);
                }
            }
        }
    }
    let stats = CoStats::from_batches(n_a, n_b, batches.iter().map(|(x, y)| (x, y))).unwrap();
    assert_eq!(stats.tokens, 70_003);
    let mut got = vec![0.0f64; n_a];
    for (i, row) in stats.cross_rows().iter().enumerate() {
        for &(_, s) in row {
            got[i] = s;
        }
    }
    assert!(got == want, "sums differ from the naive product");
    assert!(want.iter().filter(|s| **s != 0.0).count() > 10_000);
}
