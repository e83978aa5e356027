//! Checkpoints: a folder with `trainer.json` (options, step, per-SAE scalars and curves) and
//! one `sae-NNNN.safetensors` per SAE (parameters, Adam moments, dead-feature counters, and a
//! JumpReLU SAE's `log_threshold` with its moments).
//!
//! Tensors are stored bit for bit (f32 and i64), and Adam's step count is the trainer's step,
//! so a resumed run repeats exactly the operations of an uninterrupted one.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::math::{Moments, Params};
use crate::spec::{Arch, TrainOptions};
use crate::trainer::{Slot, SlotMeta, Trainer, validate};
use crate::{Error, Result};

const META_FILE: &str = "trainer.json";
const FORMAT: u32 = 1;
const NAMES: [&str; 4] = ["w_enc", "b_enc", "w_dec", "b_dec"];

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    format: u32,
    step: u64,
    opts: TrainOptions,
    saes: Vec<SlotMeta>,
}

fn tensor_file(i: usize) -> String {
    format!("sae-{i:04}.safetensors")
}

fn bytes_of(t: &Tensor) -> Result<(Dtype, Vec<usize>, Vec<u8>)> {
    let t = t.f_to_device(Device::Cpu)?.f_contiguous()?;
    let shape: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
    let flat = t.f_view([-1])?;
    Ok(match t.kind() {
        Kind::Int64 => {
            let v: Vec<i64> = Vec::try_from(&flat)?;
            (
                Dtype::I64,
                shape,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        }
        _ => {
            let v: Vec<f32> = Vec::try_from(&flat.f_to_kind(Kind::Float)?)?;
            (
                Dtype::F32,
                shape,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        }
    })
}

pub(crate) fn write(trainer: &Trainer, dir: &Path) -> Result<()> {
    let meta = Meta {
        format: FORMAT,
        step: trainer.step,
        opts: trainer.opts.clone(),
        saes: trainer.slots.iter().map(|s| s.meta.clone()).collect(),
    };
    let meta_bytes = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Checkpoint {
        path: dir.join(META_FILE),
        reason: e.to_string(),
    })?;
    let mut files: Vec<(String, Vec<u8>)> = vec![(META_FILE.into(), meta_bytes)];
    for (i, slot) in trainer.slots.iter().enumerate() {
        let mut named: Vec<(String, &Tensor)> = Vec::new();
        for (j, name) in NAMES.iter().enumerate() {
            named.push((name.to_string(), slot.params.as_array()[j]));
            named.push((format!("adam_m.{name}"), &slot.mom.m[j]));
            named.push((format!("adam_v.{name}"), &slot.mom.v[j]));
        }
        if let (Some(th), Some((m, v))) = (&slot.params.log_threshold, &slot.mom.threshold) {
            named.push(("log_threshold".into(), th));
            named.push(("adam_m.log_threshold".into(), m));
            named.push(("adam_v.log_threshold".into(), v));
        }
        named.push(("since_fired".into(), &slot.since_fired));
        let raw = named
            .iter()
            .map(|(n, t)| Ok((n.clone(), bytes_of(t)?)))
            .collect::<Result<Vec<_>>>()?;
        let views = raw
            .iter()
            .map(|(n, (dtype, shape, bytes))| {
                let view = TensorView::new(*dtype, shape.clone(), bytes)
                    .expect("shape and byte length agree by construction");
                (n.as_str(), view)
            })
            .collect::<Vec<_>>();
        let bytes =
            safetensors::serialize(views, None::<HashMap<String, String>>).map_err(|e| {
                Error::Checkpoint {
                    path: dir.join(tensor_file(i)),
                    reason: e.to_string(),
                }
            })?;
        files.push((tensor_file(i), bytes));
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| Error::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    concord_core::sae::write_dir_atomic(dir, &refs)?;
    Ok(())
}

pub(crate) fn read(dir: &Path, opts: Option<TrainOptions>) -> Result<Trainer> {
    let meta_path = dir.join(META_FILE);
    let meta: Meta = concord_core::fsutil::read_json(&meta_path)?;
    if meta.format != FORMAT {
        return Err(Error::Checkpoint {
            path: meta_path,
            reason: format!(
                "checkpoint format {} is not the supported {FORMAT}",
                meta.format
            ),
        });
    }
    let opts = opts.unwrap_or(meta.opts);
    let device = opts.tch_device()?;
    let specs: Vec<_> = meta.saes.iter().map(|m| m.spec.clone()).collect();
    validate(&specs, &opts)?;
    let mut slots = Vec::with_capacity(meta.saes.len());
    for (i, sm) in meta.saes.into_iter().enumerate() {
        let path = dir.join(tensor_file(i));
        let bytes = fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::Checkpoint {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let (d_in, d_sae) = (sm.spec.d_in as i64, sm.spec.d_sae as i64);
        let shapes: [Vec<i64>; 4] = [
            vec![d_in, d_sae],
            vec![d_sae],
            vec![d_sae, d_in],
            vec![d_in],
        ];
        let get = |name: &str, shape: &[i64]| -> Result<Tensor> {
            let view = st.tensor(name).map_err(|_| Error::Checkpoint {
                path: path.clone(),
                reason: format!("missing tensor {name:?}"),
            })?;
            let got: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
            if got != shape {
                return Err(Error::Checkpoint {
                    path: path.clone(),
                    reason: format!("tensor {name:?} has shape {got:?}, expected {shape:?}"),
                });
            }
            let data = view.data();
            let t = match view.dtype() {
                Dtype::F32 => {
                    let v: Vec<f32> = data
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    Tensor::f_from_slice(&v)?
                }
                Dtype::I64 => {
                    let v: Vec<i64> = data
                        .chunks_exact(8)
                        .map(|c| {
                            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect();
                    Tensor::f_from_slice(&v)?
                }
                other => {
                    return Err(Error::Checkpoint {
                        path: path.clone(),
                        reason: format!("tensor {name:?} has dtype {other:?}"),
                    });
                }
            };
            Ok(t.f_view(shape)?.f_to_device(device)?)
        };
        let load = |prefix: &str| -> Result<[Tensor; 4]> {
            Ok([
                get(&format!("{prefix}{}", NAMES[0]), &shapes[0])?,
                get(&format!("{prefix}{}", NAMES[1]), &shapes[1])?,
                get(&format!("{prefix}{}", NAMES[2]), &shapes[2])?,
                get(&format!("{prefix}{}", NAMES[3]), &shapes[3])?,
            ])
        };
        let [w_enc, b_enc, w_dec, b_dec] = load("")?;
        // JumpReLU's thresholds and their Adam moments.
        let (log_threshold, threshold_moments) = if sm.spec.arch == Arch::JumpRelu {
            let th = get("log_threshold", &[d_sae])?;
            let m = get("adam_m.log_threshold", &[d_sae])?;
            let v = get("adam_v.log_threshold", &[d_sae])?;
            (Some(th), Some((m, v)))
        } else {
            (None, None)
        };
        let mom = Moments {
            m: load("adam_m.")?,
            v: load("adam_v.")?,
            threshold: threshold_moments,
        };
        let since_fired = get("since_fired", &[d_sae])?;
        slots.push(Slot {
            meta: sm,
            params: Params {
                w_enc,
                b_enc,
                w_dec,
                b_dec,
                log_threshold,
            },
            mom,
            since_fired,
        });
    }
    Ok(Trainer {
        opts,
        device,
        step: meta.step,
        slots,
    })
}
