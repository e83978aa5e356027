//! Round trips in every dtype, the exact schema, random access by range and window.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field};
use concord_store::schema::{COLUMNS, DTYPE_KEY, schema};
use concord_store::{Dataset, Dtype, HookWriter, Packing, RowMeta, StoreManifest};
use half::{bf16, f16};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::support::{self, spec, window};

/// Every row of a synthetic dataset of `windows` windows, in stored order.
fn expected(
    windows: u64,
    context_len: usize,
    packing: Packing,
    d: usize,
    salt: u64,
) -> (Vec<RowMeta>, Vec<f32>) {
    let (mut rows, mut xs) = (Vec::new(), Vec::new());
    for seq in 0..windows {
        let (r, x) = window(seq, context_len, packing, d, salt);
        rows.extend(r);
        xs.extend(x);
    }
    (rows, xs)
}

#[test]
fn every_dtype_round_trips_exactly_representable_values() {
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        for packing in [Packing::Packed, Packing::PerDocument] {
            let dir = support::tmp();
            let ds_dir = dir.path().join("blocks.2.hook_mlp_out");
            let s = spec("blocks.2.hook_mlp_out", 3, dtype, 4, packing, 8);
            let m = support::write(&ds_dir, &s, 7, 0);
            assert!(m.complete);
            let ds = Dataset::open(&ds_dir).unwrap();
            let (rows, xs) = expected(7, 4, packing, 3, 0);
            assert_eq!(ds.rows(), rows.len() as u64);
            assert_eq!(ds.windows(), 7);
            let mut got_rows = Vec::new();
            let mut got_xs = Vec::new();
            for b in ds.stream(5).unwrap() {
                let b = b.unwrap();
                assert!(b.len() <= 5 && b.d == 3);
                got_rows.extend(b.rows);
                got_xs.extend(b.xs);
            }
            assert_eq!(got_rows, rows, "{dtype:?} {packing:?}");
            assert_eq!(got_xs, xs, "{dtype:?} {packing:?}");
            // Random access across shard boundaries, and single windows.
            let n = rows.len() as u64;
            for (a, b) in [(0, n), (3, 11), (7, 8), (n - 1, n), (5, 5)] {
                let got = ds.read_rows(a..b).unwrap();
                assert_eq!(got.rows, rows[a as usize..b as usize]);
                assert_eq!(got.xs, xs[a as usize * 3..b as usize * 3]);
                assert_eq!(ds.read_meta(a..b).unwrap(), got.rows);
            }
            for seq in 0..7 {
                let (r, x) = window(seq, 4, packing, 3, 0);
                let got = ds.read_window(seq).unwrap();
                assert_eq!((got.rows, got.xs), (r, x));
            }
            assert!(ds.read_rows(0..n + 1).is_err());
            assert!(ds.read_meta(n..n + 1).is_err());
        }
    }
}

#[test]
fn conversion_rounds_like_half() {
    let values: Vec<f32> = (0..64)
        .map(|i| ((i as f32) * 0.731).sin() * 10f32.powi(i % 7 - 3))
        .collect();
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        let dir = support::tmp();
        let s = spec(
            "blocks.0.hook_resid_post",
            16,
            dtype,
            4,
            Packing::Packed,
            1000,
        );
        let mut w = HookWriter::open(dir.path(), &s).unwrap();
        let rows = window(0, 4, Packing::Packed, 16, 0).0;
        w.push_window(&rows, &values).unwrap();
        w.finish().unwrap();
        let got = Dataset::open(dir.path())
            .unwrap()
            .read_window(0)
            .unwrap()
            .xs;
        let want: Vec<f32> = values
            .iter()
            .map(|&v| match dtype {
                Dtype::F32 => v,
                Dtype::F16 => f16::from_f32(v).to_f32(),
                Dtype::Bf16 => bf16::from_f32(v).to_f32(),
            })
            .collect();
        assert_eq!(got, want, "{dtype:?}");
    }
}

#[test]
fn shards_have_the_exact_schema_and_one_row_group_per_window() {
    let cases = [
        (Dtype::F32, DataType::Float32, "f32"),
        (Dtype::F16, DataType::Float16, "f16"),
        (Dtype::Bf16, DataType::UInt16, "bf16"),
    ];
    for (dtype, value_type, name) in cases {
        let dir = support::tmp();
        let m = support::write(
            dir.path(),
            &spec("blocks.1.hook_resid_pre", 5, dtype, 4, Packing::Packed, 8),
            3,
            0,
        );
        assert_eq!(m.shards.len(), 2);
        let file = File::open(dir.path().join(&m.shards[0].file)).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let got = builder.schema();
        let names: Vec<&str> = got.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, COLUMNS);
        let types: Vec<DataType> = got.fields().iter().map(|f| f.data_type().clone()).collect();
        let item = Arc::new(Field::new("item", value_type, false));
        assert_eq!(
            types,
            [
                DataType::UInt64,
                DataType::UInt32,
                DataType::UInt64,
                DataType::UInt32,
                DataType::UInt32,
                DataType::UInt32,
                DataType::FixedSizeList(item, 5),
            ]
        );
        assert!(got.fields().iter().all(|f| !f.is_nullable()));
        assert_eq!(
            got.field(6).metadata(),
            &HashMap::from([(DTYPE_KEY.to_owned(), name.to_owned())])
        );
        assert!(got.fields()[..6].iter().all(|f| f.metadata().is_empty()));
        assert_eq!(got.fields(), schema(5, dtype).fields());
        // Whole windows: one row group each, two per shard of 8 rows.
        let groups: Vec<i64> = builder
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        assert_eq!(groups, [4, 4]);
    }
}

#[test]
fn manifest_lists_what_the_issue_asks_for() {
    let dir = support::tmp();
    let s = spec(
        "blocks.3.hook_attn_out",
        6,
        Dtype::Bf16,
        4,
        Packing::Packed,
        8,
    );
    let m = support::write(dir.path(), &s, 5, 0);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("manifest.json")).unwrap())
            .unwrap();
    for key in [
        "model",
        "hook",
        "d",
        "dtype",
        "tokenizer",
        "tokenizer_sha256",
        "corpus_sha256",
        "context_len",
        "packing",
        "rows_per_shard",
        "settings_hash",
        "settings",
        "shards",
        "complete",
    ] {
        assert!(json.get(key).is_some(), "manifest lacks {key}: {json}");
    }
    assert_eq!(json["hook"], "blocks.3.hook_attn_out");
    assert_eq!(json["dtype"], "bf16");
    assert_eq!(json["packing"], "packed");
    assert_eq!(json["shards"][0]["file"], "part-00000.parquet");
    assert_eq!(json["settings_hash"], s.settings_hash());
    let back = StoreManifest::read(dir.path()).unwrap();
    assert_eq!(back, m);
    assert_eq!((m.rows(), m.windows()), (20, 5));
    let shards: Vec<(u64, u64, u64)> = m
        .shards
        .iter()
        .map(|s| (s.first_seq, s.windows, s.rows))
        .collect();
    assert_eq!(shards, [(0, 2, 8), (2, 2, 8), (4, 1, 4)]);
    for s in &m.shards {
        let sha = concord_core::fsutil::sha256_file(&dir.path().join(&s.file)).unwrap();
        assert_eq!(sha, s.sha256);
    }
    assert_eq!(
        support::files(dir.path()),
        [
            "manifest.json",
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet"
        ]
    );
}

#[test]
fn an_empty_dataset_opens_and_yields_nothing() {
    let dir = support::tmp();
    let m = support::write(
        dir.path(),
        &spec(
            "blocks.0.hook_mlp_out",
            2,
            Dtype::F32,
            4,
            Packing::Packed,
            8,
        ),
        0,
        0,
    );
    assert!(m.shards.is_empty() && m.complete);
    let ds = Dataset::open(dir.path()).unwrap();
    assert_eq!(ds.rows(), 0);
    assert_eq!(ds.stream(4).unwrap().count(), 0);
}
