//! A reader for `torch.save` archives that hold a dict of tensors, plain or
//! `collections.OrderedDict` (what `nn.Module.state_dict()` returns).
//!
//! libtorch's unpickler turns an `OrderedDict` into `None`, so state dicts saved from a module
//! (dictionary_learning's `ae.pt`) do not load through `tch`. This module reads the zip archive
//! (stored entries, as `torch.save` writes them; ZIP64 included) and runs the few pickle opcodes
//! such a file uses (protocols 2 to 4). Tensors are rebuilt from `_rebuild_tensor_v2` (and
//! `_rebuild_parameter`) with their storage's dtype, offset, size and stride; any other object
//! is an error naming it.

use std::collections::HashMap;

use tch::{Kind, Tensor};

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
    Storage(Kind, String, i64),
    Tensor(TensorRef),
}

/// A tensor as `_rebuild_tensor_v2` describes it: a view of a storage.
#[derive(Clone, Debug)]
struct TensorRef {
    kind: Kind,
    key: String,
    numel: i64,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// Reads the tensors of a `torch.save`d dict (keys and tensors in file order), as `f32`
/// tensors on the CPU. Errors are one line naming what is wrong.
pub(crate) fn read_state_dict(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
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
            // Non-tensor entries (such as a version number) are not weights.
            continue;
        };
        let data_name = format!("{prefix}data/{}", t.key);
        let (_, data) = entries
            .iter()
            .find(|(n, _)| *n == data_name)
            .ok_or_else(|| format!("storage {data_name} of {name} is missing"))?;
        let bytes_needed = usize::try_from(t.numel)
            .ok()
            .and_then(|n| n.checked_mul(t.kind.elt_size_in_bytes()))
            .filter(|&n| n <= data.len())
            .ok_or_else(|| format!("storage {data_name} of {name} is truncated"))?;
        let storage = Tensor::f_from_data_size(&data[..bytes_needed], &[t.numel], t.kind)
            .map_err(|e| format!("{name}: {e}"))?;
        // Bounds of the view: the largest element it reaches must lie in the storage.
        let reach = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&s, &st)| {
                acc.checked_add((s - 1).max(0).checked_mul(st)?)
            });
        let empty = t.size.contains(&0);
        if t.offset < 0
            || t.size.iter().chain(&t.stride).any(|&s| s < 0)
            || (!empty && reach.is_none_or(|r| r >= t.numel))
        {
            return Err(format!("{name}: view outside its storage"));
        }
        let tensor = storage
            .f_as_strided(t.size.as_slice(), t.stride.as_slice(), t.offset)
            .and_then(|v| v.f_to_kind(Kind::Float))
            .and_then(|v| v.f_contiguous())
            .map_err(|e| format!("{name}: {e}"))?;
        out.push((name, tensor));
    }
    Ok(out)
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
            let kind = match ty.as_str() {
                "FloatStorage" => Kind::Float,
                "HalfStorage" => Kind::Half,
                "BFloat16Storage" => Kind::BFloat16,
                "DoubleStorage" => Kind::Double,
                other => return Err(format!("storage type torch.{other} is not supported")),
            };
            Ok(Value::Storage(kind, key.clone(), *numel))
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
                Value::Storage(kind, key, numel),
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
                    kind: *kind,
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
