//! Loading parameters by their upstream checkpoint names: the `*.safetensors` files of a Hugging
//! Face folder as they are, or a GGUF file dequantized and renamed to the transformers names
//! (with llama.cpp's Q/K row permutation undone, as transformers' GGUF loader does).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};
use tch::{Kind, Tensor};

use crate::config::ModelConfig;
use crate::gguf::Gguf;
use crate::{Error, Result};

/// Parameters by name, f32 on the CPU, with the file they came from for error messages.
#[derive(Debug)]
pub struct Weights {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
}

/// The `*.safetensors` files of a folder, sorted by name.
pub(crate) fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    Ok(files)
}

impl Weights {
    /// Removes and returns a parameter, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| Error::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            })?;
        if t.size() != shape {
            return Err(Error::ShapeMismatch {
                path: self.path.clone(),
                name: name.to_owned(),
                expected: shape.to_vec(),
                got: t.size(),
            });
        }
        Ok(t)
    }

    /// Whether a parameter is present.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Reads every `*.safetensors` file of a folder (sorted by name). Float tensors (F32, F16,
    /// BF16) become f32; integer buffers such as `position_ids` are skipped.
    pub fn from_hf_folder(dir: &Path) -> Result<Weights> {
        let files = safetensors_files(dir)?;
        if files.is_empty() {
            return Err(Error::MissingTensor {
                path: dir.to_owned(),
                name: "*.safetensors".into(),
            });
        }
        let mut tensors = BTreeMap::new();
        for path in &files {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: read-only map of a checkpoint nobody writes while we load it.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::Safetensors {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            for (name, view) in st.tensors() {
                let kind = match view.dtype() {
                    StDtype::F32 => Kind::Float,
                    StDtype::F16 => Kind::Half,
                    StDtype::BF16 => Kind::BFloat16,
                    _ => continue,
                };
                let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
                let t =
                    Tensor::f_from_data_size(view.data(), &shape, kind)?.f_to_kind(Kind::Float)?;
                tensors.insert(name, t);
            }
        }
        Ok(Weights {
            path: dir.to_owned(),
            tensors,
        })
    }

    /// Dequantizes a `llama` GGUF file into transformers' parameter names.
    pub fn from_gguf(g: &Gguf, cfg: &ModelConfig) -> Result<Weights> {
        let mut tensors = BTreeMap::new();
        for name in g.tensors.keys() {
            let Some(hf) = gguf_to_hf(name) else { continue };
            let mut t = g.dequantize(name)?;
            if hf.ends_with("self_attn.q_proj.weight") {
                t = unpermute(&t, cfg.n_heads)?;
            } else if hf.ends_with("self_attn.k_proj.weight") {
                t = unpermute(&t, cfg.n_kv_heads)?;
            }
            tensors.insert(hf, t);
        }
        Ok(Weights {
            path: g.path().to_owned(),
            tensors,
        })
    }
}

/// llama.cpp's converter stores Q and K rows interleaved for its rope kernel
/// (`reshape(heads, 2, rows / heads / 2, cols).swapaxes(1, 2)`); this is the inverse.
///
/// `w`: `(rows, cols)`; returns `(rows, cols)`.
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.size2()?;
    let heads = heads as i64;
    Ok(w.f_reshape([heads, rows / heads / 2, 2, cols])?
        .f_transpose(1, 2)?
        .f_reshape([rows, cols])?
        .f_contiguous()?)
}

/// The transformers name of a llama.cpp tensor name (`blk.3.attn_q.weight` ->
/// `model.layers.3.self_attn.q_proj.weight`); `None` for tensors transformers drops.
fn gguf_to_hf(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, suffix) = rest.split_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_llama_cpp_names() {
        let check = |a: &str, b: Option<&str>| assert_eq!(gguf_to_hf(a).as_deref(), b, "{a}");
        check(
            "blk.12.attn_q.weight",
            Some("model.layers.12.self_attn.q_proj.weight"),
        );
        check(
            "blk.0.ffn_norm.weight",
            Some("model.layers.0.post_attention_layernorm.weight"),
        );
        check("output_norm.weight", Some("model.norm.weight"));
        check("rope_freqs.weight", None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // Forward permute as llama.cpp's convert script writes it, then undo it.
        let (heads, rows, cols) = (3i64, 12i64, 5i64);
        let w = Tensor::arange(rows * cols, (Kind::Float, tch::Device::Cpu)).reshape([rows, cols]);
        let permuted = w
            .reshape([heads, 2, rows / heads / 2, cols])
            .transpose(1, 2)
            .reshape([rows, cols]);
        let back = unpermute(&permuted, heads as usize).unwrap();
        assert!(back.equal(&w));
    }
}
