//! `torch.save` archives of a dict of tensors, read and written in pure Rust (no libtorch): the
//! files dictionary_learning saves (`ae.pt`, a plain dict or `nn.Module.state_dict()`'s
//! `OrderedDict`).
//!
//! The reader takes the zip archive (stored entries, as `torch.save` writes them; ZIP64
//! included) and runs the few pickle opcodes such a file uses (protocols 2 to 4). Tensors are
//! rebuilt from `_rebuild_tensor_v2` (and `_rebuild_parameter`) with their storage's dtype,
//! offset, size and stride; any other object is an error naming it. The writer produces what
//! `torch.save` does for a dict of contiguous tensors (protocol 2, records aligned to 64
//! bytes), which `torch.load` reads with `weights_only=True`, its default.

use std::collections::HashMap;

/// The element type of a stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorchDtype {
    F32,
    F16,
    BF16,
    F64,
    I32,
    I64,
}

impl TorchDtype {
    fn from_storage(name: &str) -> Option<TorchDtype> {
        Some(match name {
            "FloatStorage" => TorchDtype::F32,
            "HalfStorage" => TorchDtype::F16,
            "BFloat16Storage" => TorchDtype::BF16,
            "DoubleStorage" => TorchDtype::F64,
            "IntStorage" => TorchDtype::I32,
            "LongStorage" => TorchDtype::I64,
            _ => return None,
        })
    }

    fn storage_name(self) -> &'static str {
        match self {
            TorchDtype::F32 => "FloatStorage",
            TorchDtype::F16 => "HalfStorage",
            TorchDtype::BF16 => "BFloat16Storage",
            TorchDtype::F64 => "DoubleStorage",
            TorchDtype::I32 => "IntStorage",
            TorchDtype::I64 => "LongStorage",
        }
    }

    fn size(self) -> usize {
        match self {
            TorchDtype::F16 | TorchDtype::BF16 => 2,
            TorchDtype::F32 | TorchDtype::I32 => 4,
            TorchDtype::F64 | TorchDtype::I64 => 8,
        }
    }

    fn read(self, b: &[u8]) -> f32 {
        match self {
            TorchDtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            TorchDtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            TorchDtype::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            TorchDtype::F64 => {
                f64::from_le_bytes(b[..8].try_into().expect("8 bytes by size()")) as f32
            }
            TorchDtype::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            TorchDtype::I64 => {
                i64::from_le_bytes(b[..8].try_into().expect("8 bytes by size()")) as f32
            }
        }
    }
}

/// A tensor of a state dict, contiguous in row-major order. Values are held as `f32` whatever
/// the stored type (integers such as a TopK SAE's `k` are exact below 2^24); `dtype` says how
/// the file stores it, and how [`write_state_dict`] writes it (F32 or I32).
#[derive(Clone, Debug, PartialEq)]
pub struct StateTensor {
    pub dtype: TorchDtype,
    /// The shape; `[]` for a scalar.
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl StateTensor {
    /// An F32 tensor of `shape` (its element count must be `data.len()`).
    pub fn f32(shape: &[usize], data: Vec<f32>) -> StateTensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        StateTensor {
            dtype: TorchDtype::F32,
            shape: shape.to_vec(),
            data,
        }
    }

    /// A scalar I32 tensor (what dictionary_learning's `register_buffer("k", t.tensor(k))`
    /// holds).
    pub fn scalar_i32(value: i32) -> StateTensor {
        StateTensor {
            dtype: TorchDtype::I32,
            shape: Vec::new(),
            data: vec![value as f32],
        }
    }
}

/// A pickle value, as far as state dicts need.
#[derive(Clone, Debug)]
enum Value {
    None,
    /// A bool or a float: no state dict entry this reader keeps needs their values.
    Scalar,
    Int(i64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// A storage named by a persistent id: its dtype, its key under `data/`, its element count.
    Storage(TorchDtype, String, i64),
    Tensor(TensorRef),
}

/// A tensor as `_rebuild_tensor_v2` describes it: a view of a storage.
#[derive(Clone, Debug)]
struct TensorRef {
    dtype: TorchDtype,
    key: String,
    numel: i64,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// Reads the tensors of a `torch.save`d dict (keys and tensors in file order; entries that are
/// not tensors, such as a version number, are left out). Errors are one line naming what is
/// wrong (the caller adds the file).
pub fn read_state_dict(bytes: &[u8]) -> Result<Vec<(String, StateTensor)>, String> {
    let entries = zip_entries(bytes)?;
    let (pkl_name, pkl) = entries
        .iter()
        .find(|(name, _)| name.ends_with("/data.pkl") || name.as_str() == "data.pkl")
        .ok_or("not a torch.save zip archive (no data.pkl)")?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    if let Some((_, order)) = entries
        .iter()
        .find(|(n, _)| *n == format!("{prefix}byteorder"))
        && *order != b"little"
    {
        return Err(format!(
            "byte order {:?} is not supported",
            String::from_utf8_lossy(order)
        ));
    }
    let root = unpickle(pkl)?;
    let Value::Dict(items) = root else {
        return Err("the pickled object is not a dict of tensors".into());
    };
    let mut out = Vec::with_capacity(items.len());
    for (k, v) in items {
        let Value::Str(name) = k else {
            return Err("a key of the state dict is not a string".into());
        };
        let Value::Tensor(t) = v else {
            continue;
        };
        let data_name = format!("{prefix}data/{}", t.key);
        let (_, data) = entries
            .iter()
            .find(|(n, _)| *n == data_name)
            .ok_or_else(|| format!("storage {data_name} of {name} is missing"))?;
        out.push((
            name.clone(),
            gather(&t, data).map_err(|e| format!("{name}: {e}"))?,
        ));
    }
    Ok(out)
}

/// The elements of the view `t` of `storage`, in row-major order.
fn gather(t: &TensorRef, storage: &[u8]) -> Result<StateTensor, String> {
    let esize = t.dtype.size();
    let numel = usize::try_from(t.numel).map_err(|_| "negative storage size".to_owned())?;
    if numel.checked_mul(esize).is_none_or(|n| n > storage.len()) {
        return Err("its storage is truncated".into());
    }
    if t.offset < 0 || t.size.iter().chain(&t.stride).any(|&s| s < 0) {
        return Err("view outside its storage".into());
    }
    let size: Vec<usize> = t.size.iter().map(|&s| s as usize).collect();
    let stride: Vec<usize> = t.stride.iter().map(|&s| s as usize).collect();
    let count = size
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .ok_or("tensor too large")?;
    if count > 0 {
        // The largest element the view reaches must lie in the storage.
        let reach = size
            .iter()
            .zip(&stride)
            .try_fold(t.offset as usize, |acc, (&s, &st)| {
                acc.checked_add((s - 1).checked_mul(st)?)
            });
        if reach.is_none_or(|r| r >= numel) {
            return Err("view outside its storage".into());
        }
    }
    let mut data = Vec::with_capacity(count);
    let mut index = vec![0usize; size.len()];
    for _ in 0..count {
        let at = t.offset as usize + index.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
        data.push(t.dtype.read(&storage[at * esize..(at + 1) * esize]));
        // Advance the multi-index, last dimension fastest.
        for d in (0..size.len()).rev() {
            index[d] += 1;
            if index[d] < size[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(StateTensor {
        dtype: t.dtype,
        shape: size,
        data,
    })
}

/// The stored entries of a zip archive, by name.
fn zip_entries(bytes: &[u8]) -> Result<Vec<(String, &[u8])>, String> {
    let bad = || "not a zip archive (torch.save's format)".to_owned();
    let u16_at = |at: usize| -> Result<u64, String> {
        let b = bytes.get(at..at + 2).ok_or_else(bad)?;
        Ok(u64::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let u32_at = |at: usize| -> Result<u64, String> {
        let b = bytes.get(at..at + 4).ok_or_else(bad)?;
        Ok(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
    };
    let u64_at = |at: usize| -> Result<u64, String> {
        let b = bytes.get(at..at + 8).ok_or_else(bad)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| bad())?))
    };
    // The end-of-central-directory record: within the last 64 KiB + 22 bytes.
    let lo = bytes.len().saturating_sub(22 + 0xFFFF);
    let eocd = (lo..bytes.len().saturating_sub(21))
        .rev()
        .find(|&i| bytes[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or_else(bad)?;
    let mut count = u16_at(eocd + 10)?;
    let mut cd = u32_at(eocd + 16)?;
    // ZIP64: the locator sits just before the record and points at the ZIP64 record.
    if eocd >= 20 && bytes[eocd - 20..eocd - 16] == [0x50, 0x4b, 0x06, 0x07] {
        let z = usize::try_from(u64_at(eocd - 12)?).map_err(|_| bad())?;
        if bytes.get(z..z + 4) != Some(&[0x50, 0x4b, 0x06, 0x06][..]) {
            return Err(bad());
        }
        count = u64_at(z + 32)?;
        cd = u64_at(z + 48)?;
    }
    let mut at = usize::try_from(cd).map_err(|_| bad())?;
    let mut out = Vec::new();
    for _ in 0..count {
        if bytes.get(at..at + 4) != Some(&[0x50, 0x4b, 0x01, 0x02][..]) {
            return Err(bad());
        }
        let method = u16_at(at + 10)?;
        let mut size = u32_at(at + 20)?;
        let (name_len, extra_len, comment_len) = (
            u16_at(at + 28)? as usize,
            u16_at(at + 30)? as usize,
            u16_at(at + 32)? as usize,
        );
        let mut local = u32_at(at + 42)?;
        let name = bytes.get(at + 46..at + 46 + name_len).ok_or_else(bad)?;
        let name = String::from_utf8_lossy(name).into_owned();
        // ZIP64 extra field: the 64-bit values of the fields set to 0xFFFFFFFF, in order.
        let mut e = at + 46 + name_len;
        let extra_end = e + extra_len;
        while e + 4 <= extra_end {
            let (id, len) = (u16_at(e)?, u16_at(e + 2)? as usize);
            if id == 1 {
                let mut f = e + 4;
                let uncompressed = u32_at(at + 24)?;
                if uncompressed == 0xFFFF_FFFF {
                    f += 8;
                }
                if size == 0xFFFF_FFFF {
                    size = u64_at(f)?;
                    f += 8;
                }
                if local == 0xFFFF_FFFF {
                    local = u64_at(f)?;
                }
            }
            e += 4 + len;
        }
        if method != 0 {
            return Err(format!(
                "{name} is compressed (method {method}); torch.save stores entries"
            ));
        }
        let local = usize::try_from(local).map_err(|_| bad())?;
        if bytes.get(local..local + 4) != Some(&[0x50, 0x4b, 0x03, 0x04][..]) {
            return Err(bad());
        }
        let start = local + 30 + u16_at(local + 26)? as usize + u16_at(local + 28)? as usize;
        let end = start + usize::try_from(size).map_err(|_| bad())?;
        out.push((name, bytes.get(start..end).ok_or_else(bad)?));
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

/// Runs the pickle `data`; returns the object it builds.
fn unpickle(data: &[u8]) -> Result<Value, String> {
    let mut at = 0usize;
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u64, Value> = HashMap::new();
    let truncated = || "the pickle is truncated".to_owned();
    let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
        let s = data.get(*at..*at + n).ok_or_else(truncated)?;
        *at += n;
        Ok(s)
    };
    let pop = |stack: &mut Vec<Value>| {
        stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".to_owned())
    };
    let pop_mark = |stack: &mut Vec<Value>, marks: &mut Vec<usize>| -> Result<Vec<Value>, String> {
        let m = marks.pop().ok_or("pickle MARK missing")?;
        if m > stack.len() {
            return Err("pickle MARK missing".into());
        }
        Ok(stack.split_off(m))
    };
    loop {
        let op = *take(&mut at, 1)?.first().ok_or_else(truncated)?;
        match op {
            0x80 => {
                take(&mut at, 1)?;
            }
            0x95 => {
                take(&mut at, 8)?;
            }
            b'.' => return pop(&mut stack),
            b'(' => marks.push(stack.len()),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Scalar),
            0x89 => stack.push(Value::Scalar),
            b'K' => stack.push(Value::Int(i64::from(take(&mut at, 1)?[0]))),
            b'M' => {
                let b = take(&mut at, 2)?;
                stack.push(Value::Int(i64::from(u16::from_le_bytes([b[0], b[1]]))));
            }
            b'J' => {
                let b = take(&mut at, 4)?;
                stack.push(Value::Int(i64::from(i32::from_le_bytes([
                    b[0], b[1], b[2], b[3],
                ]))));
            }
            0x8a => {
                let n = take(&mut at, 1)?[0] as usize;
                let b = take(&mut at, n)?;
                if n > 8 {
                    return Err("pickle integer too large".into());
                }
                let mut v = [if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    0xFF
                } else {
                    0
                }; 8];
                v[..n].copy_from_slice(b);
                stack.push(Value::Int(i64::from_le_bytes(v)));
            }
            b'G' => {
                take(&mut at, 8)?;
                stack.push(Value::Scalar);
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => {
                        let b = take(&mut at, 4)?;
                        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
                    }
                    0x8c => take(&mut at, 1)?[0] as usize,
                    _ => {
                        let b = take(&mut at, 8)?;
                        usize::try_from(u64::from_le_bytes(b.try_into().map_err(|_| truncated())?))
                            .map_err(|_| truncated())?
                    }
                };
                let s = take(&mut at, n)?;
                stack.push(Value::Str(String::from_utf8_lossy(s).into_owned()));
            }
            b'c' => {
                let line = |at: &mut usize| -> Result<String, String> {
                    let rest = data.get(*at..).ok_or_else(truncated)?;
                    let n = rest
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or_else(truncated)?;
                    *at += n + 1;
                    Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
                };
                let module = line(&mut at)?;
                let name = line(&mut at)?;
                stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(m, n)),
                    _ => return Err("pickle STACK_GLOBAL without names".into()),
                }
            }
            b'q' | b'r' | 0x94 => {
                let key = match op {
                    b'q' => u64::from(take(&mut at, 1)?[0]),
                    b'r' => {
                        let b = take(&mut at, 4)?;
                        u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    }
                    _ => memo.len() as u64,
                };
                let top = stack.last().ok_or("pickle stack underflow")?.clone();
                memo.insert(key, top);
            }
            b'h' | b'j' => {
                let key = if op == b'h' {
                    u64::from(take(&mut at, 1)?[0])
                } else {
                    let b = take(&mut at, 4)?;
                    u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                };
                let v = memo.get(&key).ok_or("pickle memo key missing")?.clone();
                stack.push(v);
            }
            b't' => {
                let items = pop_mark(&mut stack, &mut marks)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if stack.len() < n {
                    return Err("pickle stack underflow".into());
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = pop_mark(&mut stack, &mut marks)?;
                stack.push(Value::List(items));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                if let Some(Value::List(l)) = stack.last_mut() {
                    l.push(v);
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack, &mut marks)?;
                if let Some(Value::List(l)) = stack.last_mut() {
                    l.extend(items);
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => return Err("pickle SETITEM on a non-dict".into()),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack, &mut marks)?;
                let Some(Value::Dict(d)) = stack.last_mut() else {
                    return Err("pickle SETITEMS on a non-dict".into());
                };
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
            }
            b'b' => {
                // BUILD: an object's state, such as a state dict's `_metadata`; not weights.
                pop(&mut stack)?;
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(storage(pid)?);
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let f = pop(&mut stack)?;
                stack.push(reduce(f, args)?);
            }
            other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
        }
    }
}

/// A storage from its persistent id `('storage', torch.<Type>Storage, key, location, numel)`.
fn storage(pid: Value) -> Result<Value, String> {
    let Value::Tuple(items) = pid else {
        return Err("unsupported persistent id".into());
    };
    match items.as_slice() {
        [
            Value::Str(tag),
            Value::Global(_, ty),
            Value::Str(key),
            _,
            Value::Int(numel),
        ] if tag == "storage" => {
            let dtype = TorchDtype::from_storage(ty)
                .ok_or_else(|| format!("storage type torch.{ty} is not supported"))?;
            Ok(Value::Storage(dtype, key.clone(), *numel))
        }
        _ => Err("unsupported persistent id".into()),
    }
}

/// Calls the global `f` on `args`, for the globals a state dict uses.
fn reduce(f: Value, args: Value) -> Result<Value, String> {
    let Value::Global(module, name) = f else {
        return Err("pickle REDUCE of a non-global".into());
    };
    let Value::Tuple(args) = args else {
        return Err(format!("{module}.{name} called without a tuple"));
    };
    let ints = |v: &Value| -> Option<Vec<i64>> {
        match v {
            Value::Tuple(xs) => xs
                .iter()
                .map(|x| match x {
                    Value::Int(i) => Some(*i),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => match args.as_slice() {
            [
                Value::Storage(dtype, key, numel),
                Value::Int(offset),
                size,
                stride,
                ..,
            ] => {
                let (Some(size), Some(stride)) = (ints(size), ints(stride)) else {
                    return Err("tensor with a malformed size or stride".into());
                };
                if size.len() != stride.len() {
                    return Err("tensor with a malformed size or stride".into());
                }
                Ok(Value::Tensor(TensorRef {
                    dtype: *dtype,
                    key: key.clone(),
                    numel: *numel,
                    offset: *offset,
                    size,
                    stride,
                }))
            }
            _ => Err("tensor with unsupported arguments".into()),
        },
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => args
            .into_iter()
            .next()
            .ok_or_else(|| "parameter without data".into()),
        _ => Err(format!("unsupported object {module}.{name}")),
    }
}

/// The bytes of `torch.save(d)` for the dict `d` of `tensors` (in this order), as PyTorch
/// writes it: a zip archive of stored entries under `archive/` (`data.pkl`, `byteorder`, one
/// record per tensor under `data/`, `version`), each record's bytes aligned to 64. I32
/// tensors are written as `torch.int32`, every other dtype as `torch.float32`. Errors when the
/// archive would need ZIP64 (4 GiB).
pub fn write_state_dict(tensors: &[(&str, &StateTensor)]) -> Result<Vec<u8>, String> {
    let mut pkl = vec![0x80, 2, b'}', b'('];
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, (name, t)) in tensors.iter().enumerate() {
        let dtype = if t.dtype == TorchDtype::I32 {
            TorchDtype::I32
        } else {
            TorchDtype::F32
        };
        pickle_str(&mut pkl, name);
        pkl.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        // The persistent id of the storage: ('storage', torch.FloatStorage, key, 'cpu', numel).
        pkl.push(b'(');
        pickle_str(&mut pkl, "storage");
        pkl.extend_from_slice(format!("ctorch\n{}\n", dtype.storage_name()).as_bytes());
        pickle_str(&mut pkl, &i.to_string());
        pickle_str(&mut pkl, "cpu");
        pickle_int(&mut pkl, t.data.len() as i64);
        pkl.extend_from_slice(b"tQ");
        pickle_int(&mut pkl, 0);
        // Size and contiguous strides.
        let mut strides = vec![1i64; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * t.shape[d + 1] as i64;
        }
        for dims in [t.shape.iter().map(|&s| s as i64).collect(), strides] {
            pkl.push(b'(');
            for v in dims {
                pickle_int(&mut pkl, v);
            }
            pkl.push(b't');
        }
        // requires_grad = False, backward hooks = OrderedDict().
        pkl.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
        let bytes: Vec<u8> = match dtype {
            TorchDtype::I32 => t
                .data
                .iter()
                .flat_map(|&v| (v as i32).to_le_bytes())
                .collect(),
            _ => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        records.push((format!("archive/data/{i}"), bytes));
    }
    pkl.extend_from_slice(b"u.");
    let mut entries: Vec<(String, Vec<u8>)> = vec![
        ("archive/data.pkl".into(), pkl),
        ("archive/.format_version".into(), b"1".to_vec()),
        ("archive/.storage_alignment".into(), b"64".to_vec()),
        ("archive/byteorder".into(), b"little".to_vec()),
    ];
    entries.extend(records);
    entries.push(("archive/version".into(), b"3\n".to_vec()));
    zip_stored(&entries)
}

/// A pickle BINUNICODE string.
fn pickle_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A pickle integer: BININT when it fits 32 bits, else LONG1.
fn pickle_int(out: &mut Vec<u8>, v: i64) {
    if let Ok(v) = i32::try_from(v) {
        out.push(b'J');
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        out.extend_from_slice(&[0x8a, 8]);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A zip archive of stored (uncompressed) entries, each entry's data aligned to 64 bytes by
/// padding its local header's extra field (as PyTorch's writer does).
fn zip_stored(entries: &[(String, Vec<u8>)]) -> Result<Vec<u8>, String> {
    let too_big = || "the archive would exceed 4 GiB (ZIP64 is not written)".to_owned();
    let u32_of = |n: usize| u32::try_from(n).map_err(|_| too_big());
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = u32_of(out.len())?;
        let crc = crc32(data);
        let size = u32_of(data.len())?;
        let start = out.len() + 30 + name.len();
        let mut pad = (64 - start % 64) % 64;
        if pad > 0 && pad < 4 {
            pad += 64;
        }
        let mut local = Vec::with_capacity(30 + name.len() + pad);
        local.extend_from_slice(&[0x50, 0x4b, 0x03, 0x04]);
        local.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method, time, date
        local.extend_from_slice(&crc.to_le_bytes());
        local.extend_from_slice(&size.to_le_bytes());
        local.extend_from_slice(&size.to_le_bytes());
        local.extend_from_slice(&(name.len() as u16).to_le_bytes());
        local.extend_from_slice(&(pad as u16).to_le_bytes());
        local.extend_from_slice(name.as_bytes());
        if pad > 0 {
            // An extra field of PyTorch's id "FB" that only pads.
            local.extend_from_slice(b"FB");
            local.extend_from_slice(&((pad - 4) as u16).to_le_bytes());
            local.resize(local.len() + pad - 4, 0);
        }
        out.extend_from_slice(&local);
        out.extend_from_slice(data);
        central.extend_from_slice(&[0x50, 0x4b, 0x01, 0x02]);
        central.extend_from_slice(&[0; 12]); // made by, needed, flags, method, time, date
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 12]); // extra, comment, disk, internal and external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = u32_of(out.len())?;
    let cd_size = u32_of(central.len())?;
    let count = u16::try_from(entries.len()).map_err(|_| "too many tensors".to_owned())?;
    out.extend_from_slice(&central);
    out.extend_from_slice(&[0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    Ok(out)
}

/// CRC-32 (IEEE), which zip readers (PyTorch's miniz among them) check.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_a_known_string() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn written_state_dicts_read_back() {
        let w = StateTensor::f32(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = StateTensor::f32(&[3], vec![-1.0, 0.5, 0.25]);
        let k = StateTensor::scalar_i32(7);
        let bytes = write_state_dict(&[("encoder.weight", &w), ("b", &b), ("k", &k)]).unwrap();
        let back = read_state_dict(&bytes).unwrap();
        let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["encoder.weight", "b", "k"]);
        assert_eq!(back[0].1, w);
        assert_eq!(back[1].1, b);
        assert_eq!(back[2].1, k);
    }

    #[test]
    fn strided_views_are_gathered_in_row_major_order() {
        // A transposed (2, 3) view of a (3, 2) storage.
        let t = TensorRef {
            dtype: TorchDtype::F32,
            key: "0".into(),
            numel: 6,
            offset: 0,
            size: vec![2, 3],
            stride: vec![1, 2],
        };
        let storage: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let got = gather(&t, &storage).unwrap();
        assert_eq!(got.data, [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
        let outside = TensorRef { offset: 1, ..t };
        assert!(gather(&outside, &storage).unwrap_err().contains("outside"));
    }

    #[test]
    fn bad_archives_are_named() {
        assert!(read_state_dict(b"not a zip").unwrap_err().contains("zip"));
    }
}
