//! Goldens made by numpy and scipy (`tests/goldens/make_goldens.py`).

use std::path::Path;

use concord_align::corr::{CoStats, SparseBatch, StudyVariant, pearson, study_variant};
use concord_align::nulls::expected_max_cos;
use concord_align::{Dict, MatchOptions, ScanOptions, match_dicts, scan};
use serde_json::Value;

fn goldens() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/goldens.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn close(got: f64, want: f64, rel: f64, what: &str) {
    assert!(
        (got - want).abs() <= rel * want.abs().max(1.0),
        "{what}: {got} vs {want}"
    );
}

#[test]
fn mmcs_and_matching_equal_numpy_and_scipy() {
    for case in goldens()["matching"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (n_a, n_b, d) = (
            case["n_a"].as_u64().unwrap() as usize,
            case["n_b"].as_u64().unwrap() as usize,
            case["d"].as_u64().unwrap() as usize,
        );
        let a = Dict::from_rows("a", &floats(&case["a"]), n_a, d).unwrap();
        let b = Dict::from_rows("b", &floats(&case["b"]), n_b, d).unwrap();
        let s = scan(
            &a,
            &b,
            &ScanOptions {
                top_k: 3,
                ..ScanOptions::default()
            },
        )
        .unwrap();
        close(
            s.mmcs_a_to_b(),
            case["mmcs_a_to_b"].as_f64().unwrap(),
            1e-6,
            name,
        );
        close(
            s.mmcs_b_to_a(),
            case["mmcs_b_to_a"].as_f64().unwrap(),
            1e-6,
            name,
        );
        let want = case["objective"].as_f64().unwrap();
        for opts in [
            MatchOptions::default(),
            MatchOptions {
                dense_limit: 0,
                tied_dense_limit: 0,
                top_k: 1,
                ..MatchOptions::default()
            },
        ] {
            let m = match_dicts(&a, &b, None, &opts).unwrap();
            assert!(m.optimal, "{name}");
            close(m.objective, want, 1e-6, name);
        }
        // The optimum is unique for these random inputs, so the pairs agree too.
        let m = match_dicts(&a, &b, None, &MatchOptions::default()).unwrap();
        let got: Vec<[u32; 2]> = m.pairs.iter().map(|p| [p.a, p.b]).collect();
        let mut want_pairs: Vec<[u32; 2]> = case["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| [p[0].as_u64().unwrap() as u32, p[1].as_u64().unwrap() as u32])
            .collect();
        want_pairs.sort();
        assert_eq!(got, want_pairs, "{name}");
    }
}

#[test]
fn expected_max_cos_equals_scipy_quadrature() {
    for c in goldens()["expected_max_cos"].as_array().unwrap() {
        let (d, n) = (
            c["d"].as_u64().unwrap() as usize,
            c["n"].as_u64().unwrap() as usize,
        );
        close(
            expected_max_cos(d, n),
            c["value"].as_f64().unwrap(),
            1e-6,
            &format!("d {d} n {n}"),
        );
    }
}

#[test]
fn correlations_equal_numpy() {
    let g = &goldens()["correlation"];
    let (t, n_a, n_b) = (
        g["tokens"].as_u64().unwrap() as usize,
        g["n_a"].as_u64().unwrap() as usize,
        g["n_b"].as_u64().unwrap() as usize,
    );
    let (a, b) = (floats(&g["a"]), floats(&g["b"]));
    let prompts: Vec<(usize, usize)> = g["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_u64().unwrap() as usize,
                p[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let batch = |xs: &[f32], n: usize, s: usize, e: usize| {
        SparseBatch::from_dense(&xs[s * n..e * n], e - s, n)
    };
    // Streamed in uneven batches: the result must not depend on the batching.
    let cuts = [(0, 7), (7, 100), (100, 101), (101, t)];
    let pairs: Vec<(SparseBatch, SparseBatch)> = cuts
        .iter()
        .map(|&(s, e)| (batch(&a, n_a, s, e), batch(&b, n_b, s, e)))
        .collect();
    let stats = CoStats::from_batches(n_a, n_b, pairs.iter().map(|(x, y)| (x, y))).unwrap();
    let p = pearson(&stats);
    close(
        p.a_to_b,
        g["pearson_a_to_b"].as_f64().unwrap(),
        1e-6,
        "pearson a to b",
    );
    close(
        p.b_to_a,
        g["pearson_b_to_a"].as_f64().unwrap(),
        1e-6,
        "pearson b to a",
    );
    assert_eq!((p.dead_a, p.dead_b), (1, 1));
    let per_prompt: Vec<(SparseBatch, SparseBatch)> = prompts
        .iter()
        .map(|&(s, e)| (batch(&a, n_a, s, e), batch(&b, n_b, s, e)))
        .collect();
    for (variant, key) in [
        (StudyVariant::ZScore, "study_zscore"),
        (StudyVariant::Uncentred, "study_uncentred"),
    ] {
        let s = study_variant(n_a, n_b, per_prompt.iter().map(|(x, y)| (x, y)), variant).unwrap();
        close(s.value, g[key].as_f64().unwrap(), 1e-6, key);
        assert_eq!(s.prompts, 2);
        assert!(s.label.starts_with("study-faithful"));
    }
}
