//! Match tables and generic tables.

use std::collections::BTreeMap;

use concord_store::{Column, MatchTable, Table};

use crate::support;

#[test]
fn match_table_round_trips_with_and_without_frequencies() {
    let dir = support::tmp();
    let mut t = MatchTable {
        a: vec![0, 1, 2],
        b: vec![5, 3, 9],
        cos: vec![0.9, 0.5, -0.1],
        freq_a: None,
        freq_b: None,
        metadata: BTreeMap::from([("method".into(), "hungarian".into())]),
    };
    let path = dir.path().join("matches.parquet");
    t.write(&path).unwrap();
    assert_eq!(MatchTable::read(&path).unwrap(), t);
    let cols: Vec<String> = Table::read(&path)
        .unwrap()
        .columns
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(cols, ["a", "b", "cos"]);
    t.freq_a = Some(vec![0.1, 0.2, 0.0]);
    t.freq_b = Some(vec![1e-5, 0.5, 0.25]);
    t.write(&path).unwrap();
    assert_eq!(MatchTable::read(&path).unwrap(), t);
    assert_eq!(support::files(dir.path()), ["matches.parquet"]);
}

#[test]
fn generic_table_round_trips_every_column_type() {
    let dir = support::tmp();
    let t = Table {
        columns: vec![
            ("u32".into(), Column::U32(vec![1, 2])),
            ("u64".into(), Column::U64(vec![3, u64::MAX])),
            ("i64".into(), Column::I64(vec![-1, 7])),
            ("f32".into(), Column::F32(vec![0.5, -0.25])),
            ("f64".into(), Column::F64(vec![1e-300, 2.0])),
            ("opt".into(), Column::OptF64(vec![None, Some(0.3)])),
            ("flag".into(), Column::Bool(vec![true, false])),
            ("name".into(), Column::Str(vec!["a".into(), "é".into()])),
        ],
        metadata: BTreeMap::from([("study".into(), "quick".into())]),
    };
    let path = dir.path().join("results.parquet");
    t.write(&path).unwrap();
    let back = Table::read(&path).unwrap();
    assert_eq!(back.columns, t.columns);
    assert_eq!(
        back.metadata.get("study").map(String::as_str),
        Some("quick")
    );
    assert_eq!(back.rows(), 2);
    assert!(back.column("opt").is_some());
}

#[test]
fn ragged_table_is_refused_and_writes_nothing() {
    let dir = support::tmp();
    let t = Table {
        columns: vec![
            ("a".into(), Column::U32(vec![1, 2])),
            ("b".into(), Column::F32(vec![1.0])),
        ],
        metadata: BTreeMap::new(),
    };
    let err = t.write(&dir.path().join("x.parquet")).unwrap_err();
    assert!(
        err.to_string().contains("\"b\" has 1 rows, expected 2"),
        "{err}"
    );
    assert!(support::files(dir.path()).is_empty());
}
