//! Scores from a matching, match records, feature families.

use concord_align::metrics::{SHARED_THRESHOLDS, families, match_records, summarize};
use concord_align::{Blocking, Dict, match_weights};

#[test]
fn summary_shares_are_of_the_smaller_side() {
    // 2 x 3 weights: the best matching is 0.6 + 0.9, not the greedy 0.95 + (-0.2).
    let w = [0.95f64, 0.6, 0.1, 0.9, -0.3, -0.2];
    let m = match_weights(&w, 2, 3).unwrap();
    assert_eq!(
        m.pairs.iter().map(|p| (p.a, p.b)).collect::<Vec<_>>(),
        vec![(0, 1), (1, 0)]
    );
    let s = summarize(&m, 2, 3, &SHARED_THRESHOLDS);
    assert!((s.mean_cos - 0.75).abs() < 1e-6);
    assert_eq!(s.shared["0.5"], 1.0);
    assert_eq!(s.shared["0.7"], 0.5);
    assert_eq!(s.shared["0.9"], 0.0);
    let w = [0.5f64, -0.8];
    let m = match_weights(&w, 1, 2).unwrap();
    let s = summarize(&m, 1, 2, &SHARED_THRESHOLDS);
    assert!((s.pw_mcc - 0.5).abs() < 1e-6);
    let recs = match_records(&m.pairs, Some(&[0.25]), None);
    assert_eq!(
        (recs[0].a, recs[0].b, recs[0].freq_a, recs[0].freq_b),
        (0, 0, Some(0.25), None)
    );
}

#[test]
fn families_collect_split_features() {
    // a: the x and y axes; b: two directions near x (a split), one near y, one far from both.
    let a = Dict::from_rows("a", &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], 2, 3).unwrap();
    let b = Dict::from_rows(
        "b",
        &[
            1.0, 0.2, 0.0, 1.0, -0.2, 0.0, 0.1, 1.0, 0.0, 0.0, 0.0, 1.0, 0.9, 0.0, 0.5,
        ],
        5,
        3,
    )
    .unwrap();
    for blocking in [Blocking::default(), Blocking { rows: 1, cols: 2 }] {
        let f = families(&b, &a, 0.8, 8, blocking).unwrap();
        assert!(!f.heads_are_a, "the smaller side heads the families");
        assert_eq!(f.families.len(), 2);
        let x: Vec<u32> = f.families[0].members.iter().map(|m| m.0).collect();
        assert_eq!(x, vec![0, 1, 4]);
        assert_eq!(
            f.families[1]
                .members
                .iter()
                .map(|m| m.0)
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(f.size_counts.get(&3), Some(&1));
        assert_eq!(f.size_counts.get(&1), Some(&1));
        assert_eq!(f.covered, 4);
    }
}
