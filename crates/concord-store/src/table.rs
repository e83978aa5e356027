//! Small columnar tables as parquet: the alignment's per-feature match table, and a generic
//! [`Table`] that the report can reuse for `results.parquet`. Written atomically, read back
//! whole (these tables are small).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int64Array, RecordBatch,
    StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use concord_core::fsutil;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::{Error, Result};

/// One column of a [`Table`]. `OptF64` is the one nullable type (a metric that does not
/// apply to a row).
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    U32(Vec<u32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    OptF64(Vec<Option<f64>>),
    Bool(Vec<bool>),
    Str(Vec<String>),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::U32(v) => v.len(),
            Column::U64(v) => v.len(),
            Column::I64(v) => v.len(),
            Column::F32(v) => v.len(),
            Column::F64(v) => v.len(),
            Column::OptF64(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::Str(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn field(&self, name: &str) -> Field {
        let (ty, nullable) = match self {
            Column::U32(_) => (DataType::UInt32, false),
            Column::U64(_) => (DataType::UInt64, false),
            Column::I64(_) => (DataType::Int64, false),
            Column::F32(_) => (DataType::Float32, false),
            Column::F64(_) => (DataType::Float64, false),
            Column::OptF64(_) => (DataType::Float64, true),
            Column::Bool(_) => (DataType::Boolean, false),
            Column::Str(_) => (DataType::Utf8, false),
        };
        Field::new(name, ty, nullable)
    }

    fn to_array(&self) -> ArrayRef {
        match self {
            Column::U32(v) => Arc::new(UInt32Array::from(v.clone())),
            Column::U64(v) => Arc::new(UInt64Array::from(v.clone())),
            Column::I64(v) => Arc::new(Int64Array::from(v.clone())),
            Column::F32(v) => Arc::new(Float32Array::from(v.clone())),
            Column::F64(v) => Arc::new(Float64Array::from(v.clone())),
            Column::OptF64(v) => Arc::new(Float64Array::from(v.clone())),
            Column::Bool(v) => Arc::new(BooleanArray::from(v.clone())),
            Column::Str(v) => Arc::new(StringArray::from(v.clone())),
        }
    }

    /// Appends the values of `array` (of this column's type) to this column.
    fn extend(&mut self, array: &dyn Array) -> Option<()> {
        let any = array.as_any();
        match self {
            Column::U32(v) => v.extend(any.downcast_ref::<UInt32Array>()?.values()),
            Column::U64(v) => v.extend(any.downcast_ref::<UInt64Array>()?.values()),
            Column::I64(v) => v.extend(any.downcast_ref::<Int64Array>()?.values()),
            Column::F32(v) => v.extend(any.downcast_ref::<Float32Array>()?.values()),
            Column::F64(v) => v.extend(any.downcast_ref::<Float64Array>()?.values()),
            Column::OptF64(v) => v.extend(any.downcast_ref::<Float64Array>()?.iter()),
            Column::Bool(v) => v.extend(
                any.downcast_ref::<BooleanArray>()?
                    .iter()
                    .map(|b| b.unwrap_or(false)),
            ),
            Column::Str(v) => v.extend(
                any.downcast_ref::<StringArray>()?
                    .iter()
                    .map(|s| s.unwrap_or_default().to_owned()),
            ),
        }
        Some(())
    }

    fn empty_like(field: &Field) -> Option<Column> {
        Some(match (field.data_type(), field.is_nullable()) {
            (DataType::UInt32, _) => Column::U32(Vec::new()),
            (DataType::UInt64, _) => Column::U64(Vec::new()),
            (DataType::Int64, _) => Column::I64(Vec::new()),
            (DataType::Float32, _) => Column::F32(Vec::new()),
            (DataType::Float64, false) => Column::F64(Vec::new()),
            (DataType::Float64, true) => Column::OptF64(Vec::new()),
            (DataType::Boolean, _) => Column::Bool(Vec::new()),
            (DataType::Utf8, _) => Column::Str(Vec::new()),
            _ => return None,
        })
    }
}

/// Named columns of equal length, plus file-level key-value metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<(String, Column)>,
    /// Stored as the Arrow schema's metadata (pyarrow: `schema.metadata`).
    pub metadata: BTreeMap<String, String>,
}

impl Table {
    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// Number of rows (0 without columns).
    pub fn rows(&self) -> usize {
        self.columns.first().map_or(0, |(_, c)| c.len())
    }

    /// Writes the table to `path` atomically (zstd-compressed parquet, one row group).
    pub fn write(&self, path: &Path) -> Result<()> {
        let rows = self.rows();
        for (name, col) in &self.columns {
            if col.len() != rows {
                return Err(Error::ColumnLength {
                    path: path.to_owned(),
                    column: name.clone(),
                    expected: rows,
                    got: col.len(),
                });
            }
        }
        let metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        let schema = Arc::new(Schema::new_with_metadata(
            self.columns
                .iter()
                .map(|(n, c)| c.field(n))
                .collect::<Vec<_>>(),
            metadata,
        ));
        let batch = RecordBatch::try_new(
            schema.clone(),
            self.columns.iter().map(|(_, c)| c.to_array()).collect(),
        )
        .map_err(|e| Error::arrow(path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        let mut failure = None;
        fsutil::write_atomic(path, |out| {
            let result = (|| {
                let mut w = ArrowWriter::try_new(out, schema.clone(), Some(props))?;
                w.write(&batch)?;
                w.close().map(drop)
            })();
            result.map_err(|e| {
                let msg = e.to_string();
                failure = Some(e);
                std::io::Error::other(msg)
            })
        })
        .map_err(|e| match failure.take() {
            Some(pe) => Error::parquet(path, pe),
            None => Error::Core(e),
        })
    }

    /// Reads a table written by [`Table::write`] (or any parquet file whose columns have the
    /// types of [`Column`]).
    pub fn read(path: &Path) -> Result<Table> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(path, e))?;
        let schema = builder.schema().clone();
        let mut columns = Vec::with_capacity(schema.fields().len());
        for f in schema.fields() {
            let col = Column::empty_like(f).ok_or_else(|| Error::Schema {
                path: path.to_owned(),
                reason: format!(
                    "column {:?} has unsupported type {}",
                    f.name(),
                    f.data_type()
                ),
            })?;
            columns.push((f.name().clone(), col));
        }
        for batch in builder.build().map_err(|e| Error::parquet(path, e))? {
            let batch = batch.map_err(|e| Error::arrow(path, e))?;
            for ((name, col), array) in columns.iter_mut().zip(batch.columns()) {
                col.extend(array.as_ref()).ok_or_else(|| Error::Schema {
                    path: path.to_owned(),
                    reason: format!("column {name:?} changed type"),
                })?;
            }
        }
        let metadata = schema
            .metadata()
            .iter()
            .filter(|(k, _)| !k.starts_with("ARROW:"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Table { columns, metadata })
    }
}

/// The alignment's per-feature match table: feature `a[i]` of the first SAE matched to
/// feature `b[i]` of the second with cosine `cos[i]`, and optionally both features'
/// activation frequencies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MatchTable {
    pub a: Vec<u32>,
    pub b: Vec<u32>,
    pub cos: Vec<f32>,
    pub freq_a: Option<Vec<f32>>,
    pub freq_b: Option<Vec<f32>>,
    /// File-level metadata (which SAEs, which method, ...).
    pub metadata: BTreeMap<String, String>,
}

impl MatchTable {
    /// Writes columns `a` u32, `b` u32, `cos` f32, then `freq_a`, `freq_b` f32 when present.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut columns = vec![
            ("a".to_owned(), Column::U32(self.a.clone())),
            ("b".to_owned(), Column::U32(self.b.clone())),
            ("cos".to_owned(), Column::F32(self.cos.clone())),
        ];
        if let Some(f) = &self.freq_a {
            columns.push(("freq_a".to_owned(), Column::F32(f.clone())));
        }
        if let Some(f) = &self.freq_b {
            columns.push(("freq_b".to_owned(), Column::F32(f.clone())));
        }
        Table {
            columns,
            metadata: self.metadata.clone(),
        }
        .write(path)
    }

    /// Reads a match table.
    pub fn read(path: &Path) -> Result<MatchTable> {
        let mut table = Table::read(path)?;
        let mut take = |name: &str, required: bool| -> Result<Option<Column>> {
            match table.columns.iter().position(|(n, _)| n == name) {
                Some(i) => Ok(Some(table.columns.remove(i).1)),
                None if required => Err(Error::Schema {
                    path: path.to_owned(),
                    reason: format!("no column {name:?}"),
                }),
                None => Ok(None),
            }
        };
        let wrong = |name: &str| Error::Schema {
            path: path.to_owned(),
            reason: format!("column {name:?} has the wrong type"),
        };
        let u32s = |c: Option<Column>, name: &str| match c {
            Some(Column::U32(v)) => Ok(v),
            _ => Err(wrong(name)),
        };
        let f32s = |c: Option<Column>, name: &str| match c {
            None => Ok(None),
            Some(Column::F32(v)) => Ok(Some(v)),
            _ => Err(wrong(name)),
        };
        let a = u32s(take("a", true)?, "a")?;
        let b = u32s(take("b", true)?, "b")?;
        let cos = f32s(take("cos", true)?, "cos")?.unwrap_or_default();
        let freq_a = f32s(take("freq_a", false)?, "freq_a")?;
        let freq_b = f32s(take("freq_b", false)?, "freq_b")?;
        Ok(MatchTable {
            a,
            b,
            cos,
            freq_a,
            freq_b,
            metadata: table.metadata,
        })
    }
}
