//! Nulls: the analytic max cosine against random dictionaries, the biased baseline.

use concord_align::nulls::{expected_max_cos, interval, isotropic, rand_like};
use concord_align::{ScanOptions, scan};

#[test]
fn analytic_max_cos_matches_random_dictionaries() {
    let (d, n_b) = (32, 200);
    let a = isotropic(2000, d, 1).unwrap();
    let values: Vec<f64> = (0..3)
        .map(|s| {
            scan(
                &a,
                &isotropic(n_b, d, 10 + s).unwrap(),
                &ScanOptions::default(),
            )
            .unwrap()
            .mmcs_a_to_b()
        })
        .collect();
    let iv = interval(values);
    let want = expected_max_cos(d, n_b);
    assert!((iv.mean - want).abs() < 0.01, "{} vs {want}", iv.mean);
    assert!(iv.lo <= iv.mean && iv.mean <= iv.hi);
}

#[test]
fn rand_like_is_biased_upwards() {
    // All-positive rows crowd around (1, ..., 1): their MMCS against each other is far above
    // the isotropic value.
    let (d, n) = (64, 300);
    let a = rand_like(n, d, 1).unwrap();
    let b = rand_like(n, d, 2).unwrap();
    let biased = scan(&a, &b, &ScanOptions::default()).unwrap().mmcs_a_to_b();
    assert!(biased > 0.8 && expected_max_cos(d, n) < 0.5, "{biased}");
    assert!(a.rows.iter().all(|&x| x >= 0.0));
}
