//! `results.parquet`: one row per compared pair, with every metric and its null.
//!
//! The columns are `question`, `comparison`, `a`, `b` (strings) and one nullable float64
//! column per metric name that any row carries, in sorted order, so the file is
//! self-describing and a new metric needs no schema change.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
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
    /// Metric name to value (e.g. `mmcs_decoder_a_to_b`, `null_isotropic_mean`).
    pub metrics: BTreeMap<String, f64>,
}

/// Writes the rows as parquet at `path`, atomically.
pub fn write_parquet(path: &Path, rows: &[ResultRow]) -> Result<()> {
    let perr = |reason: String| Error::Parquet {
        path: path.to_owned(),
        reason,
    };
    let names: BTreeSet<&str> = rows
        .iter()
        .flat_map(|r| r.metrics.keys().map(String::as_str))
        .collect();
    let mut fields = vec![
        Field::new("question", DataType::Utf8, false),
        Field::new("comparison", DataType::Utf8, false),
        Field::new("a", DataType::Utf8, false),
        Field::new("b", DataType::Utf8, false),
    ];
    let strings = |f: fn(&ResultRow) -> &str| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
    };
    let mut columns: Vec<ArrayRef> = vec![
        strings(|r| &r.question),
        strings(|r| &r.comparison),
        strings(|r| &r.a),
        strings(|r| &r.b),
    ];
    for name in names {
        fields.push(Field::new(name, DataType::Float64, true));
        columns.push(Arc::new(
            rows.iter()
                .map(|r| r.metrics.get(name).copied())
                .collect::<Float64Array>(),
        ));
    }
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
                metrics: [("mmcs".to_owned(), 0.5)].into(),
            },
            ResultRow {
                question: "seed".into(),
                comparison: "s0 vs s1".into(),
                a: "x".into(),
                b: "z".into(),
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
            ["question", "comparison", "a", "b", "mmcs", "shared_0.7"]
        );
    }
}
