//! The shard schema: row metadata, the Arrow schema of a hook's dataset, and the conversion
//! of rows between `(rows, d)` f32 buffers and Arrow record batches in the stored dtype.
//!
//! Columns, in order: `doc` u64, `pos` u32, `seq` u64, `token` u32, `byte_start` u32,
//! `byte_end` u32, `act` FixedSizeList<d> of Float32, Float16 or UInt16 (bfloat16 bit
//! patterns). Every field is non-nullable. The `act` field carries the metadata
//! `{"concord.dtype": "f32" | "f16" | "bf16"}`; for bf16 it is the only thing that says the
//! UInt16 values are bfloat16 bit patterns, since Arrow has no bfloat16 type.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float16Array, Float32Array, PrimitiveArray, RecordBatch,
    UInt16Array, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type, UInt64Type};
use concord_core::Dtype;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::{Error, Result};

/// The field-metadata key on `act` that names the stored element type.
pub const DTYPE_KEY: &str = "concord.dtype";

/// The names of the columns, in schema order.
pub const COLUMNS: [&str; 7] = [
    "doc",
    "pos",
    "seq",
    "token",
    "byte_start",
    "byte_end",
    "act",
];

/// Everything about one stored row except its activation.
///
/// `byte_start..byte_end` is the token's span in its document's UTF-8 text; inserted special
/// tokens (EOS, `[CLS]`, `[SEP]`) have an empty span (`byte_start == byte_end`, written as
/// `(0, 0)` by the packer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RowMeta {
    /// Index of the document in the corpus.
    pub doc: u64,
    /// Token index in the document's token sequence (`u32::MAX` for a window-start `[CLS]`,
    /// which belongs to no document's sequence).
    pub pos: u32,
    /// Index of the context window the token was computed in.
    pub seq: u64,
    pub token: u32,
    pub byte_start: u32,
    pub byte_end: u32,
}

/// The Arrow type of the `act` column's values for `dtype`.
fn value_type(dtype: Dtype) -> DataType {
    match dtype {
        Dtype::F32 => DataType::Float32,
        Dtype::F16 => DataType::Float16,
        Dtype::Bf16 => DataType::UInt16,
    }
}

/// The Arrow schema of a hook dataset with rows of width `d` stored as `dtype`.
pub fn schema(d: usize, dtype: Dtype) -> SchemaRef {
    let item = Arc::new(Field::new("item", value_type(dtype), false));
    let act = Field::new("act", DataType::FixedSizeList(item, d as i32), false).with_metadata(
        HashMap::from([(DTYPE_KEY.to_owned(), dtype.name().to_owned())]),
    );
    Arc::new(Schema::new(vec![
        Field::new("doc", DataType::UInt64, false),
        Field::new("pos", DataType::UInt32, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("token", DataType::UInt32, false),
        Field::new("byte_start", DataType::UInt32, false),
        Field::new("byte_end", DataType::UInt32, false),
        act,
    ]))
}

/// Checks that a shard's Arrow schema is exactly [`schema`]`(d, dtype)`, field metadata
/// included.
pub(crate) fn check_schema(path: &Path, got: &Schema, d: usize, dtype: Dtype) -> Result<()> {
    let expected = schema(d, dtype);
    if got.fields() == expected.fields() {
        return Ok(());
    }
    let describe = |s: &Schema| {
        s.fields()
            .iter()
            .map(|f| format!("{}: {} {:?}", f.name(), f.data_type(), f.metadata()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(Error::Schema {
        path: path.to_owned(),
        reason: format!(
            "got [{}], expected [{}]",
            describe(got),
            describe(&expected)
        ),
    })
}

/// Builds one record batch from `rows` and their activations `xs` `(rows, d)` (f32),
/// converting to `dtype` (round to nearest even for f16 and bf16).
pub(crate) fn encode(
    schema: &SchemaRef,
    d: usize,
    dtype: Dtype,
    rows: &[RowMeta],
    xs: &[f32],
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    debug_assert_eq!(rows.len() * d, xs.len());
    let col_u64 = |f: fn(&RowMeta) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(f)))
    };
    let col_u32 = |f: fn(&RowMeta) -> u32| -> ArrayRef {
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(f)))
    };
    let values: ArrayRef = match dtype {
        Dtype::F32 => Arc::new(Float32Array::from(xs.to_vec())),
        Dtype::F16 => {
            let mut out = vec![f16::ZERO; xs.len()];
            out.convert_from_f32_slice(xs);
            Arc::new(Float16Array::from(out))
        }
        Dtype::Bf16 => {
            let mut out = vec![bf16::ZERO; xs.len()];
            out.convert_from_f32_slice(xs);
            Arc::new(UInt16Array::from_iter_values(
                out.into_iter().map(bf16::to_bits),
            ))
        }
    };
    let item = match schema.field(6).data_type() {
        DataType::FixedSizeList(item, _) => item.clone(),
        other => unreachable!("the act column is a fixed-size list, not {other}"),
    };
    let act = FixedSizeListArray::try_new(item, d as i32, values, None)?;
    RecordBatch::try_new(
        schema.clone(),
        vec![
            col_u64(|r| r.doc),
            col_u32(|r| r.pos),
            col_u64(|r| r.seq),
            col_u32(|r| r.token),
            col_u32(|r| r.byte_start),
            col_u32(|r| r.byte_end),
            Arc::new(act),
        ],
    )
}

fn column<'a, T: Array + 'static>(
    path: &Path,
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::Schema {
            path: path.to_owned(),
            reason: format!("column {name:?} is missing or mistyped"),
        })
}

/// Appends the row metadata of `batch` to `out`. The batch must hold the metadata columns.
pub(crate) fn decode_meta(path: &Path, batch: &RecordBatch, out: &mut Vec<RowMeta>) -> Result<()> {
    let doc = column::<PrimitiveArray<UInt64Type>>(path, batch, "doc")?.values();
    let pos = column::<PrimitiveArray<UInt32Type>>(path, batch, "pos")?.values();
    let seq = column::<PrimitiveArray<UInt64Type>>(path, batch, "seq")?.values();
    let token = column::<PrimitiveArray<UInt32Type>>(path, batch, "token")?.values();
    let start = column::<PrimitiveArray<UInt32Type>>(path, batch, "byte_start")?.values();
    let end = column::<PrimitiveArray<UInt32Type>>(path, batch, "byte_end")?.values();
    out.extend((0..batch.num_rows()).map(|i| RowMeta {
        doc: doc[i],
        pos: pos[i],
        seq: seq[i],
        token: token[i],
        byte_start: start[i],
        byte_end: end[i],
    }));
    Ok(())
}

/// Appends the activations of `batch` to `out` as f32 `(rows, d)`.
pub(crate) fn decode_acts(
    path: &Path,
    batch: &RecordBatch,
    dtype: Dtype,
    out: &mut Vec<f32>,
) -> Result<()> {
    let act = column::<FixedSizeListArray>(path, batch, "act")?;
    let values = act.values();
    let start = out.len();
    out.resize(start + values.len(), 0.0);
    let dst = &mut out[start..];
    let mistyped = || Error::Schema {
        path: path.to_owned(),
        reason: format!(
            "act values are {}, expected {}",
            values.data_type(),
            value_type(dtype)
        ),
    };
    match dtype {
        Dtype::F32 => {
            let v = values
                .as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(mistyped)?;
            dst.copy_from_slice(v.values());
        }
        Dtype::F16 => {
            let v = values
                .as_any()
                .downcast_ref::<Float16Array>()
                .ok_or_else(mistyped)?;
            v.values().convert_to_f32_slice(dst);
        }
        Dtype::Bf16 => {
            let v = values
                .as_any()
                .downcast_ref::<UInt16Array>()
                .ok_or_else(mistyped)?;
            for (o, &bits) in dst.iter_mut().zip(v.values().iter()) {
                *o = f32::from_bits(u32::from(bits) << 16);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_round_trips_each_dtype() {
        let rows: Vec<RowMeta> = (0..3)
            .map(|i| RowMeta {
                doc: i,
                pos: i as u32,
                seq: 7,
                token: 10 + i as u32,
                byte_start: 0,
                byte_end: 0,
            })
            .collect();
        let xs = [1.0f32, -2.5, 0.125, 3.0, 1e-3, 65504.0];
        for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            let s = schema(2, dtype);
            let batch = encode(&s, 2, dtype, &rows, &xs).unwrap();
            let (mut meta, mut back) = (Vec::new(), Vec::new());
            decode_meta(Path::new("x"), &batch, &mut meta).unwrap();
            decode_acts(Path::new("x"), &batch, dtype, &mut back).unwrap();
            assert_eq!(meta, rows);
            for (a, b) in xs.iter().zip(&back) {
                let tol = match dtype {
                    Dtype::F32 => 0.0,
                    Dtype::F16 => 1e-3 * a.abs(),
                    Dtype::Bf16 => 4e-3 * a.abs(),
                };
                assert!((a - b).abs() <= tol, "{dtype:?}: {a} vs {b}");
            }
        }
    }
}
