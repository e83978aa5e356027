//! `results.parquet`: one row per compared pair and point of training, with every metric and
//! its null; `saes.parquet`: one row per SAE and point of training, with its held-out numbers.
//!
//! `results.parquet`'s columns are `question`, `comparison`, `a`, `b` (strings), `tokens_a`,
//! `tokens_b` (int64: the training tokens of the two SAEs compared, a snapshot's or the final
//! SAE's), then one nullable float64 column per metric name that any row carries, in sorted
//! order, so the file is self-describing and a new metric needs no schema change.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;

use crate::{Error, Result};

/// One compared pair.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResultRow {
    /// The study question the pair answers (`size`, `seed`, `data`, `layer`, `model`, ...).
    pub question: String,
    /// A short description of what differs between the two SAEs.
    pub comparison: String,
    /// Identifiers of the two SAEs.
    pub a: String,
    pub b: String,
    /// Training tokens of the two SAEs as compared (a snapshot's, or the final SAE's).
    pub tokens_a: Option<u64>,
    pub tokens_b: Option<u64>,
    /// Metric name to value (e.g. `mmcs_decoder_a_to_b`, `null_isotropic_mean`).
    pub metrics: BTreeMap<String, f64>,
}

/// One SAE at one point of its training (`saes.parquet`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SaeRow {
    /// The SAE's folder, relative to the run folder.
    pub name: String,
    pub model: String,
    pub hook: String,
    pub layer: u64,
    pub arch: String,
    pub ratio: u64,
    pub init_seed: u64,
    /// The data-order seed, or `same` (the study's confound).
    pub data_seed: String,
    /// `first` or `second` for SAEs trained on one half of the text.
    pub half: Option<String>,
    pub training_tokens: u64,
    /// Held-out numbers.
    pub fvu: f64,
    pub l0: f64,
    pub dead_fraction: f64,
    pub dense_fraction: f64,
}

fn strings<T>(rows: &[T], f: impl Fn(&T) -> Option<&str>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<StringArray>())
}

fn ints<T>(rows: &[T], f: impl Fn(&T) -> Option<u64>) -> ArrayRef {
    Arc::new(
        rows.iter()
            .map(|r| f(r).map(|v| v as i64))
            .collect::<Int64Array>(),
    )
}

fn floats<T>(rows: &[T], f: impl Fn(&T) -> Option<f64>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<Float64Array>())
}

/// Writes the SAE rows as parquet at `path`, atomically.
pub fn write_saes_parquet(path: &Path, rows: &[SaeRow]) -> Result<()> {
    let field = |name: &str, t: DataType, nullable: bool| Field::new(name, t, nullable);
    let fields = vec![
        field("name", DataType::Utf8, false),
        field("model", DataType::Utf8, false),
        field("hook", DataType::Utf8, false),
        field("layer", DataType::Int64, false),
        field("arch", DataType::Utf8, false),
        field("ratio", DataType::Int64, false),
        field("init_seed", DataType::Int64, false),
        field("data_seed", DataType::Utf8, false),
        field("half", DataType::Utf8, true),
        field("training_tokens", DataType::Int64, false),
        field("fvu", DataType::Float64, false),
        field("l0", DataType::Float64, false),
        field("dead_fraction", DataType::Float64, false),
        field("dense_fraction", DataType::Float64, false),
    ];
    let columns = vec![
        strings(rows, |r| Some(&r.name)),
        strings(rows, |r| Some(&r.model)),
        strings(rows, |r| Some(&r.hook)),
        ints(rows, |r| Some(r.layer)),
        strings(rows, |r| Some(&r.arch)),
        ints(rows, |r| Some(r.ratio)),
        ints(rows, |r| Some(r.init_seed)),
        strings(rows, |r| Some(&r.data_seed)),
        strings(rows, |r| r.half.as_deref()),
        ints(rows, |r| Some(r.training_tokens)),
        floats(rows, |r| Some(r.fvu)),
        floats(rows, |r| Some(r.l0)),
        floats(rows, |r| Some(r.dead_fraction)),
        floats(rows, |r| Some(r.dense_fraction)),
    ];
    write_batch(path, fields, columns)
}

/// Writes the rows as parquet at `path`, atomically.
pub fn write_parquet(path: &Path, rows: &[ResultRow]) -> Result<()> {
    let names: BTreeSet<&str> = rows
        .iter()
        .flat_map(|r| r.metrics.keys().map(String::as_str))
        .collect();
    let mut fields = vec![
        Field::new("question", DataType::Utf8, false),
        Field::new("comparison", DataType::Utf8, false),
        Field::new("a", DataType::Utf8, false),
        Field::new("b", DataType::Utf8, false),
        Field::new("tokens_a", DataType::Int64, true),
        Field::new("tokens_b", DataType::Int64, true),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        strings(rows, |r| Some(&r.question)),
        strings(rows, |r| Some(&r.comparison)),
        strings(rows, |r| Some(&r.a)),
        strings(rows, |r| Some(&r.b)),
        ints(rows, |r| r.tokens_a),
        ints(rows, |r| r.tokens_b),
    ];
    for name in names {
        fields.push(Field::new(name, DataType::Float64, true));
        columns.push(floats(rows, |r| r.metrics.get(name).copied()));
    }
    write_batch(path, fields, columns)
}

/// Writes one record batch of `fields` and `columns` as parquet at `path`, atomically.
fn write_batch(path: &Path, fields: Vec<Field>, columns: Vec<ArrayRef>) -> Result<()> {
    let perr = |reason: String| Error::Parquet {
        path: path.to_owned(),
        reason,
    };
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| perr(e.to_string()))?;
    let tmp = concord_core::fsutil::temp_path(path);
    let write = || -> Result<(), String> {
        let file = File::create(&tmp).map_err(|e| e.to_string())?;
        let mut writer = ArrowWriter::try_new(file, schema, None).map_err(|e| e.to_string())?;
        writer.write(&batch).map_err(|e| e.to_string())?;
        writer.close().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        perr(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    #[test]
    fn rows_round_trip_with_union_of_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.parquet");
        let rows = vec![
            ResultRow {
                question: "size".into(),
                comparison: "1:1 vs 1:2".into(),
                a: "x".into(),
                b: "y".into(),
                tokens_a: Some(10),
                tokens_b: Some(20),
                metrics: [("mmcs".to_owned(), 0.5)].into(),
            },
            ResultRow {
                question: "seed".into(),
                comparison: "s0 vs s1".into(),
                a: "x".into(),
                b: "z".into(),
                tokens_a: None,
                tokens_b: None,
                metrics: [("shared_0.7".to_owned(), 0.25)].into(),
            },
        ];
        write_parquet(&path, &rows).unwrap();
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 2);
        let schema = reader.metadata().file_metadata().schema_descr();
        let names: Vec<String> = (0..schema.num_columns())
            .map(|i| schema.column(i).name().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "question",
                "comparison",
                "a",
                "b",
                "tokens_a",
                "tokens_b",
                "mmcs",
                "shared_0.7"
            ]
        );
    }
}
