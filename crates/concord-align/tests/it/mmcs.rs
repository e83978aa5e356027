//! The fused pass against a naive computation.

use concord_align::{Blocking, Dict, ScanOptions, scan, similarity_matrix};
use proptest::prelude::*;

use crate::{cos64, dict};

fn check(a: &Dict, b: &Dict, k: usize, blocking: Blocking) {
    let s = scan(a, b, &ScanOptions { top_k: k, blocking }).unwrap();
    let c = cos64(a, b);
    for i in 0..a.n {
        let row = &c[i * b.n..(i + 1) * b.n];
        let best = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!((f64::from(s.row_max[i]) - best).abs() < 1e-5, "row {i}");
        assert!((row[s.row_arg[i] as usize] - best).abs() < 1e-5);
        if k > 0 {
            let mut sorted: Vec<f64> = row.to_vec();
            sorted.sort_by(|x, y| y.total_cmp(x));
            let top: Vec<(u32, f32)> = s.row_top.as_ref().unwrap().get(i).collect();
            assert_eq!(top.len(), k.min(b.n));
            for (r, (j, v)) in top.iter().enumerate() {
                assert!((f64::from(*v) - sorted[r]).abs() < 1e-5);
                assert!((row[*j as usize] - sorted[r]).abs() < 1e-5);
            }
        }
    }
    for j in 0..b.n {
        let best = (0..a.n)
            .map(|i| c[i * b.n + j])
            .fold(f64::NEG_INFINITY, f64::max);
        assert!((f64::from(s.col_max[j]) - best).abs() < 1e-5, "col {j}");
        if k > 0 {
            let top: Vec<(u32, f32)> = s.col_top.as_ref().unwrap().get(j).collect();
            assert_eq!(top.len(), k.min(a.n));
            assert!((f64::from(top[0].1) - best).abs() < 1e-5);
        }
    }
    let want_ab = (0..a.n).map(|i| f64::from(s.row_max[i])).sum::<f64>() / a.n as f64;
    assert!((s.mmcs_a_to_b() - want_ab).abs() < 1e-12);
}

#[test]
fn square_tall_wide_and_odd_blocks() {
    let small = Blocking { rows: 3, cols: 5 };
    for (n_a, n_b, d) in [(17, 17, 6), (40, 9, 3), (7, 33, 12), (1, 1, 4)] {
        let (a, b) = (dict(n_a, d, 1), dict(n_b, d, 2));
        check(&a, &b, 0, Blocking::default());
        check(&a, &b, 4, small);
        check(&a, &b, 2, Blocking { rows: 64, cols: 1 });
    }
}

#[test]
fn ties_go_to_the_smaller_index() {
    // Rows 1 and 3 of b are the same direction: the argmax must be 1, whatever the blocks.
    let b = Dict::from_rows("b", &[0.0, 1.0, 1.0, 0.0, 0.6, 0.8, 1.0, 0.0], 4, 2).unwrap();
    let a = Dict::from_rows("a", &[1.0, 0.0, 0.0, -1.0], 2, 2).unwrap();
    for blocking in [
        Blocking::default(),
        Blocking { rows: 1, cols: 1 },
        Blocking { rows: 2, cols: 3 },
    ] {
        let s = scan(&a, &b, &ScanOptions { top_k: 2, blocking }).unwrap();
        assert_eq!(s.row_arg[0], 1);
        assert_eq!(
            s.row_top
                .as_ref()
                .unwrap()
                .get(0)
                .map(|e| e.0)
                .collect::<Vec<_>>(),
            vec![1, 3]
        );
        // Negative similarities: row 1 of a is (0, -1); its best is b_1 or b_3 at 0.
        assert_eq!(s.row_max[1], 0.0);
    }
}

#[test]
fn similarity_matrix_is_the_product() {
    let (a, b) = (dict(300, 7, 3), dict(11, 7, 4));
    let m = similarity_matrix(&a, &b).unwrap();
    let c = cos64(&a, &b);
    assert!(
        m.iter()
            .zip(&c)
            .all(|(x, y)| (f64::from(*x) - y).abs() < 1e-5)
    );
    let wrong = dict(3, 8, 5);
    assert!(
        scan(&a, &wrong, &ScanOptions::default())
            .unwrap_err()
            .to_string()
            .contains("dimension")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn scan_equals_naive(n_a in 1usize..40, n_b in 1usize..40, d in 1usize..10, k in 0usize..5,
                         br in 1usize..9, bc in 1usize..9, seed in 0u64..1000) {
        check(&dict(n_a, d, seed), &dict(n_b, d, seed + 1), k, Blocking { rows: br, cols: bc });
    }
}
