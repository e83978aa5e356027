//! GGUF files: the container (metadata and tensor table, read through a memory map) and the
//! dequantization of the tensor types we support (Q4_0, Q4_1, Q8_0, F16, BF16, F32).
//!
//! Every read is bounds-checked: a truncated or corrupt file is an [`Error::Gguf`] naming the
//! file and what was being read, never a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use tch::Tensor;

use crate::{Error, Result};

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The ggml tensor types this crate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q8_0,
    /// Any other type id: listed, but loading it is an error.
    Other(u32),
}

impl GgmlType {
    fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::Bf16,
            other => GgmlType::Other(other),
        }
    }

    /// `(elements per block, bytes per block)`.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::Bf16 => Some((1, 2)),
            GgmlType::Q4_0 => Some((32, 18)),
            GgmlType::Q4_1 => Some((32, 20)),
            GgmlType::Q8_0 => Some((32, 34)),
            GgmlType::Other(_) => None,
        }
    }

    pub fn name(self) -> String {
        match self {
            GgmlType::F32 => "F32".into(),
            GgmlType::F16 => "F16".into(),
            GgmlType::Bf16 => "BF16".into(),
            GgmlType::Q4_0 => "Q4_0".into(),
            GgmlType::Q4_1 => "Q4_1".into(),
            GgmlType::Q8_0 => "Q8_0".into(),
            GgmlType::Other(id) => {
                let known = match id {
                    6 => "Q5_0",
                    7 => "Q5_1",
                    9 => "Q8_1",
                    10 => "Q2_K",
                    11 => "Q3_K",
                    12 => "Q4_K",
                    13 => "Q5_K",
                    14 => "Q6_K",
                    15 => "Q8_K",
                    16 => "IQ2_XXS",
                    17 => "IQ2_XS",
                    18 => "IQ3_XXS",
                    19 => "IQ1_S",
                    20 => "IQ4_NL",
                    21 => "IQ3_S",
                    22 => "IQ2_S",
                    23 => "IQ4_XS",
                    24 => "I8",
                    25 => "I16",
                    26 => "I32",
                    27 => "I64",
                    28 => "F64",
                    29 => "IQ1_M",
                    34 => "TQ1_0",
                    35 => "TQ2_0",
                    _ => "an unknown type",
                };
                format!("{known} (ggml type {id}; supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0)")
            }
        }
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// The shape in PyTorch order (outermost first); GGUF stores it innermost first.
    pub shape: Vec<usize>,
    pub dtype: GgmlType,
    /// Byte offset of the data from the start of the file.
    pub start: usize,
}

impl TensorInfo {
    /// The number of values (the parser refuses shapes whose product overflows).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An open GGUF file.
#[derive(Debug)]
pub struct Gguf {
    path: PathBuf,
    mmap: Mmap,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

struct Cursor<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn err(&self, what: &str) -> Error {
        Error::Gguf {
            path: self.path.to_owned(),
            reason: format!(
                "cannot read {what} at byte {} (file has {})",
                self.pos,
                self.data.len()
            ),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| self.err(what))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        // A length can never exceed the bytes left; this also guards allocations.
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.data.len() - self.pos)
            .ok_or_else(|| self.err(what))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(what)?;
        let bytes = self.take(n, what)?;
        // Token strings may hold invalid UTF-8 in broken files; keep them readable.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, what: &str) -> Result<Value> {
        Ok(match ty {
            0 => Value::U64(u64::from(self.array::<1>(what)?[0])),
            1 => Value::I64(i64::from(self.array::<1>(what)?[0] as i8)),
            2 => Value::U64(u64::from(u16::from_le_bytes(self.array(what)?))),
            3 => Value::I64(i64::from(i16::from_le_bytes(self.array(what)?))),
            4 => Value::U64(u64::from(self.u32(what)?)),
            5 => Value::I64(i64::from(i32::from_le_bytes(self.array(what)?))),
            6 => Value::F64(f64::from(f32::from_le_bytes(self.array(what)?))),
            7 => Value::Bool(self.array::<1>(what)?[0] != 0),
            8 => Value::Str(self.string(what)?),
            9 => {
                let item_ty = self.u32(what)?;
                let n = self.len(what)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(item_ty, what)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            _ => {
                return Err(Error::Gguf {
                    path: self.path.to_owned(),
                    reason: format!("unknown metadata value type {ty} in {what}"),
                });
            }
        })
    }
}

impl Gguf {
    /// Opens and parses the header, metadata and tensor table of a GGUF file.
    pub fn open(path: &Path) -> Result<Gguf> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only; like every loader of model files we assume it is
        // not modified while mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mut c = Cursor {
            path,
            data: &mmap,
            pos: 0,
        };
        if c.take(4, "the magic")? != b"GGUF" {
            return Err(Error::Gguf {
                path: path.to_owned(),
                reason: "not a GGUF file (bad magic)".into(),
            });
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::Gguf {
                path: path.to_owned(),
                reason: format!("unsupported GGUF version {version}"),
            });
        }
        let n_tensors = c.u64("the tensor count")?;
        let n_kv = c.u64("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key {i}"))?;
            let ty = c.u32(&format!("the type of {key}"))?;
            let value = c.value(ty, &key)?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::new();
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor name {i}"))?;
            let n_dims = c.u32(&format!("the rank of {name:?}"))?;
            if n_dims > 4 {
                return Err(Error::Gguf {
                    path: path.to_owned(),
                    reason: format!("tensor {name:?} has rank {n_dims}; GGUF allows at most 4"),
                });
            }
            let mut shape = Vec::new();
            for _ in 0..n_dims {
                let d = c.u64(&format!("the shape of {name:?}"))?;
                shape.push(
                    usize::try_from(d).map_err(|_| c.err(&format!("the shape of {name:?}")))?,
                );
            }
            shape.reverse();
            // Elements and bytes (at most 4 bytes a value) must be countable: a shape whose
            // product overflows would wrap around and pass the bounds check.
            let fits = shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .and_then(|n| n.checked_mul(4));
            if fits.is_none() {
                return Err(Error::Gguf {
                    path: path.to_owned(),
                    reason: format!("tensor {name:?} has an impossible shape {shape:?}"),
                });
            }
            let dtype = GgmlType::from_id(c.u32(&format!("the type of {name:?}"))?);
            let offset = c.u64(&format!("the offset of {name:?}"))?;
            infos.push((name, shape, dtype, offset));
        }
        let align = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32)
            .max(1);
        let align = usize::try_from(align).unwrap_or(32);
        let data_start = c.pos.div_ceil(align) * align;
        let mut tensors = BTreeMap::new();
        for (name, shape, dtype, offset) in infos {
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data_start))
                .ok_or_else(|| Error::Gguf {
                    path: path.to_owned(),
                    reason: format!("tensor {name:?} has an invalid offset"),
                })?;
            tensors.insert(
                name,
                TensorInfo {
                    shape,
                    dtype,
                    start,
                },
            );
        }
        Ok(Gguf {
            path: path.to_owned(),
            mmap,
            metadata,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required unsigned metadata value.
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::Config {
                path: self.path.clone(),
                key: key.to_owned(),
            })
    }

    /// The raw bytes of one tensor, checked against the file's length.
    fn bytes(&self, name: &str, info: &TensorInfo) -> Result<&[u8]> {
        let (per_block, block_bytes) =
            info.dtype
                .block()
                .ok_or_else(|| Error::UnsupportedTensorType {
                    path: self.path.clone(),
                    name: name.to_owned(),
                    dtype: info.dtype.name(),
                })?;
        let numel = info.numel();
        if !numel.is_multiple_of(per_block) {
            return Err(Error::Gguf {
                path: self.path.clone(),
                reason: format!("tensor {name:?} has {numel} values, not a multiple of its block"),
            });
        }
        let len = numel / per_block * block_bytes;
        let end = info
            .start
            .checked_add(len)
            .filter(|&e| e <= self.mmap.len());
        let end = end.ok_or_else(|| Error::Gguf {
            path: self.path.clone(),
            reason: format!(
                "tensor {name:?} needs bytes {}..{} but the file has {}",
                info.start,
                info.start.saturating_add(len),
                self.mmap.len()
            ),
        })?;
        Ok(&self.mmap[info.start..end])
    }

    /// Dequantizes one tensor to f32, in PyTorch order (shape as [`TensorInfo::shape`]).
    pub fn dequantize(&self, name: &str) -> Result<Tensor> {
        let info = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_owned(),
        })?;
        let bytes = self.bytes(name, info)?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        Ok(dequantize(info.dtype, bytes)?.f_reshape(&shape)?)
    }
}

/// Dequantizes whole blocks of `dtype` (the caller checked the length) into a flat f32 tensor.
///
/// The arithmetic is transformers' GGUF loader's (`integrations/gguf/dequant.py`), so values are
/// identical: fp16 scales widened to f32, `Q4_0: d * (q - 8)`, `Q4_1: d * q + m`, `Q8_0: d * q`,
/// no fused multiply-add; low nibbles are elements 0..16 of a block, high nibbles 16..32. Plain
/// loops: in a release build this is far faster than libtorch's strided byte ops.
pub fn dequantize(dtype: GgmlType, bytes: &[u8]) -> Result<Tensor> {
    let half = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    let mut out: Vec<f32> = Vec::new();
    match dtype {
        GgmlType::F32 => {
            out.reserve(bytes.len() / 4);
            for b in bytes.chunks_exact(4) {
                out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            }
        }
        GgmlType::F16 => {
            out.reserve(bytes.len() / 2);
            for b in bytes.chunks_exact(2) {
                out.push(half(b, 0));
            }
        }
        GgmlType::Bf16 => {
            out.reserve(bytes.len() / 2);
            for b in bytes.chunks_exact(2) {
                out.push(bf16::from_le_bytes([b[0], b[1]]).to_f32());
            }
        }
        GgmlType::Q4_0 => {
            out.resize(bytes.len() / 18 * 32, 0.0);
            for (block, o) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
                let d = half(block, 0);
                for j in 0..16 {
                    let q = block[2 + j];
                    o[j] = d * (f32::from(q & 0x0F) - 8.0);
                    o[j + 16] = d * (f32::from(q >> 4) - 8.0);
                }
            }
        }
        GgmlType::Q4_1 => {
            out.resize(bytes.len() / 20 * 32, 0.0);
            for (block, o) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
                let (d, m) = (half(block, 0), half(block, 2));
                for j in 0..16 {
                    let q = block[4 + j];
                    o[j] = d * f32::from(q & 0x0F) + m;
                    o[j + 16] = d * f32::from(q >> 4) + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            out.resize(bytes.len() / 34 * 32, 0.0);
            for (block, o) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
                let d = half(block, 0);
                for j in 0..32 {
                    o[j] = d * f32::from(block[2 + j] as i8);
                }
            }
        }
        GgmlType::Other(_) => {}
    }
    Ok(Tensor::f_from_slice(&out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(dtype: GgmlType, bytes: &[u8]) -> Vec<f32> {
        Vec::<f32>::try_from(dequantize(dtype, bytes).unwrap()).unwrap()
    }

    #[test]
    fn dequantizes_each_block_type() {
        let d = f16::from_f32(0.5).to_le_bytes();
        let m = f16::from_f32(-1.0).to_le_bytes();
        // Byte 0x21: low nibble 1 (element 0), high nibble 2 (element 16).
        let mut q40 = d.to_vec();
        q40.extend([0x21u8; 16]);
        let v = values(GgmlType::Q4_0, &q40);
        assert_eq!(
            (v.len(), v[0], v[16]),
            (32, 0.5 * (1.0 - 8.0), 0.5 * (2.0 - 8.0))
        );
        let mut q41 = d.to_vec();
        q41.extend(m);
        q41.extend([0x21u8; 16]);
        let v = values(GgmlType::Q4_1, &[q41.clone(), q41].concat());
        assert_eq!(
            (v.len(), v[0], v[16], v[32], v[48]),
            (64, 0.5 - 1.0, 1.0 - 1.0, -0.5, 0.0)
        );
        let mut q80 = d.to_vec();
        q80.extend([0xFEu8; 32]);
        assert_eq!(values(GgmlType::Q8_0, &q80)[31], -1.0);
        assert_eq!(
            values(GgmlType::Bf16, &bf16::from_f32(3.0).to_le_bytes()),
            vec![3.0]
        );
        assert_eq!(
            values(GgmlType::F16, &f16::from_f32(-2.5).to_le_bytes()),
            vec![-2.5]
        );
        assert_eq!(values(GgmlType::F32, &1.25f32.to_le_bytes()), vec![1.25]);
    }
}
