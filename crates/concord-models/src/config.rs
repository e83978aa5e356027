//! Model hyper-parameters read from a Hugging Face `config.json` or from GGUF metadata.

use std::path::Path;

use serde_json::Value as Json;

use crate::gguf::{Gguf, Value};
use crate::{Error, Result};

/// The architectures this crate runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    GptNeox,
    Bert,
    Gpt2,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::GptNeox => "gpt_neox",
            Architecture::Bert => "bert",
            Architecture::Gpt2 => "gpt2",
        }
    }

    /// Causal language models predict the next token; BERT is an encoder.
    pub fn is_causal(self) -> bool {
        !matches!(self, Architecture::Bert)
    }

    /// Positions are learned embeddings (BERT, GPT-2): the model has none past
    /// `max_positions`, where rotary models can go on (if unreliably).
    pub fn has_learned_positions(self) -> bool {
        matches!(self, Architecture::Bert | Architecture::Gpt2)
    }
}

/// Everything the forward passes need to know about a model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_mlp: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    /// Fraction of each head's dimensions that are rotated (GPT-NeoX `rotary_pct`).
    pub rotary_pct: f64,
    /// GPT-NeoX: attention and MLP read the same residual (`use_parallel_residual`).
    pub parallel_residual: bool,
    pub tie_embeddings: bool,
    /// `gelu` (exact, erf) or `gelu_new`/`gelu_pytorch_tanh`/`gelu_fast` (tanh approximation);
    /// Llama uses SiLU.
    pub gelu_tanh: bool,
    pub type_vocab: usize,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Reads a Hugging Face `config.json`. GPT-2's spells the shape keys its own way (`n_embd`,
    /// `n_head`, `n_layer`, `n_positions`, `n_inner`, `activation_function`,
    /// `layer_norm_epsilon`); a GPT-2 option that changes the forward and that this crate does
    /// not implement is an error, not a silent difference.
    pub fn from_hf_json(path: &Path) -> Result<ModelConfig> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let j: Json = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            path: path.to_owned(),
            source,
        })?;
        let missing = |key: &str| Error::Config {
            path: path.to_owned(),
            key: key.to_owned(),
        };
        let usize_of = |key: &str| -> Result<usize> {
            j.get(key)
                .and_then(Json::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| missing(key))
        };
        let f64_or = |key: &str, default: f64| j.get(key).and_then(Json::as_f64).unwrap_or(default);
        let bool_or =
            |key: &str, default: bool| j.get(key).and_then(Json::as_bool).unwrap_or(default);
        let model_type = j.get("model_type").and_then(Json::as_str).unwrap_or("");
        let arch = match model_type {
            "llama" | "mistral" => Architecture::Llama,
            "gpt_neox" => Architecture::GptNeox,
            "bert" => Architecture::Bert,
            "gpt2" => Architecture::Gpt2,
            other => {
                return Err(Error::UnsupportedArchitecture {
                    path: path.to_owned(),
                    arch: other.to_owned(),
                });
            }
        };
        let rope = j.get("rope_parameters").or_else(|| j.get("rope_scaling"));
        let rope_get = |key: &str| rope.and_then(|r| r.get(key)).and_then(Json::as_f64);
        let gpt2 = arch == Architecture::Gpt2;
        let key = |hf: &'static str, gpt2_key: &'static str| if gpt2 { gpt2_key } else { hf };
        let n_heads_key = key("num_attention_heads", "n_head");
        let n_heads = usize_of(n_heads_key)?;
        let d_model = usize_of(key("hidden_size", "n_embd"))?;
        if n_heads == 0 || !d_model.is_multiple_of(n_heads) {
            return Err(missing(n_heads_key));
        }
        let (d_mlp, max_positions, gelu_tanh) = if gpt2 {
            check_gpt2_attention(path, &j)?;
            let d_mlp = match j.get("n_inner") {
                None | Some(Json::Null) => 4 * d_model,
                Some(_) => usize_of("n_inner")?,
            };
            (d_mlp, usize_of("n_positions")?, gpt2_gelu_tanh(path, &j)?)
        } else {
            let act = j.get("hidden_act").and_then(Json::as_str).unwrap_or("gelu");
            (
                usize_of("intermediate_size")?,
                usize_of("max_position_embeddings").unwrap_or(2048),
                matches!(act, "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast"),
            )
        };
        let cfg = ModelConfig {
            arch,
            n_layers: usize_of(key("num_hidden_layers", "n_layer"))?,
            d_model,
            d_mlp,
            n_heads,
            n_kv_heads: usize_of("num_key_value_heads").unwrap_or(n_heads),
            vocab: usize_of("vocab_size")?,
            max_positions,
            norm_eps: match arch {
                Architecture::Llama => f64_or("rms_norm_eps", 1e-6),
                Architecture::GptNeox => f64_or("layer_norm_eps", 1e-5),
                Architecture::Bert => f64_or("layer_norm_eps", 1e-12),
                Architecture::Gpt2 => f64_or("layer_norm_epsilon", 1e-5),
            },
            rope_theta: rope_get("rope_theta")
                .or_else(|| j.get("rope_theta").and_then(Json::as_f64))
                .or_else(|| j.get("rotary_emb_base").and_then(Json::as_f64))
                .unwrap_or(10000.0),
            rotary_pct: rope_get("partial_rotary_factor")
                .or_else(|| j.get("rotary_pct").and_then(Json::as_f64))
                .or_else(|| j.get("partial_rotary_factor").and_then(Json::as_f64))
                .unwrap_or(if arch == Architecture::GptNeox {
                    0.25
                } else {
                    1.0
                }),
            parallel_residual: bool_or("use_parallel_residual", true),
            tie_embeddings: bool_or("tie_word_embeddings", arch != Architecture::GptNeox),
            gelu_tanh,
            type_vocab: usize_of("type_vocab_size").unwrap_or(2),
        };
        Ok(cfg)
    }

    /// Reads the hyper-parameters of a `llama` GGUF file.
    pub fn from_gguf(g: &Gguf) -> Result<ModelConfig> {
        let arch = g
            .get("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or("");
        if arch != "llama" {
            return Err(Error::UnsupportedArchitecture {
                path: g.path().to_owned(),
                arch: arch.to_owned(),
            });
        }
        let u = |key: &str| g.u64(&format!("llama.{key}")).map(|v| v as usize);
        let f = |key: &str| g.get(&format!("llama.{key}")).and_then(Value::as_f64);
        let n_heads = u("attention.head_count")?;
        let d_model = u("embedding_length")?;
        if n_heads == 0 || !d_model.is_multiple_of(n_heads) {
            return Err(Error::Config {
                path: g.path().to_owned(),
                key: "llama.attention.head_count".into(),
            });
        }
        let vocab = match u("vocab_size") {
            Ok(v) => v,
            Err(_) => g
                .get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(<[Value]>::len)
                .ok_or_else(|| Error::Config {
                    path: g.path().to_owned(),
                    key: "llama.vocab_size".into(),
                })?,
        };
        Ok(ModelConfig {
            arch: Architecture::Llama,
            n_layers: u("block_count")?,
            d_model,
            d_mlp: u("feed_forward_length")?,
            n_heads,
            n_kv_heads: u("attention.head_count_kv").unwrap_or(n_heads),
            vocab,
            max_positions: u("context_length").unwrap_or(2048),
            // transformers reads the f32 from the file and widens it.
            norm_eps: f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: f("rope.freq_base").unwrap_or(10000.0),
            rotary_pct: 1.0,
            parallel_residual: false,
            tie_embeddings: !g.tensors.contains_key("output.weight"),
            gelu_tanh: false,
            type_vocab: 0,
        })
    }
}

/// GPT-2's `activation_function` (absent: transformers' default `gelu_new`): whether it is the
/// tanh approximation. `gelu_new`, `gelu_pytorch_tanh` and `gelu_fast` are the same formula;
/// `gelu` is the exact one; anything else is refused.
fn gpt2_gelu_tanh(path: &Path, j: &Json) -> Result<bool> {
    let Some(act) = j.get("activation_function") else {
        return Ok(true);
    };
    match act.as_str() {
        Some("gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") => Ok(true),
        Some("gelu") => Ok(false),
        _ => Err(Error::UnsupportedConfig {
            path: path.to_owned(),
            key: "activation_function".into(),
            value: act.to_string(),
            supported: "\"gelu_new\", \"gelu_pytorch_tanh\", \"gelu_fast\" or \"gelu\"".into(),
        }),
    }
}

/// Refuses the GPT-2 attention variants this crate does not run: attention is always scaled by
/// `1 / sqrt(head_dim)` (`scale_attn_weights`), never also by the inverse layer index, and
/// computed by the fused kernel (no `reorder_and_upcast_attn`).
fn check_gpt2_attention(path: &Path, j: &Json) -> Result<()> {
    for (key, supported) in [
        ("scale_attn_weights", true),
        ("scale_attn_by_inverse_layer_idx", false),
        ("reorder_and_upcast_attn", false),
    ] {
        let value = j.get(key).and_then(Json::as_bool).unwrap_or(supported);
        if value != supported {
            return Err(Error::UnsupportedConfig {
                path: path.to_owned(),
                key: key.into(),
                value: value.to_string(),
                supported: supported.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny GPT-2 golden's config with `edit` applied, read back.
    fn gpt2_config(edit: impl FnOnce(&mut serde_json::Map<String, Json>)) -> Result<ModelConfig> {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/tiny-gpt2");
        let bytes = std::fs::read(golden.join("config.json")).unwrap();
        let mut j: Json = serde_json::from_slice(&bytes).unwrap();
        edit(j.as_object_mut().unwrap());
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.json");
        std::fs::write(&path, serde_json::to_vec(&j).unwrap()).unwrap();
        ModelConfig::from_hf_json(&path)
    }

    #[test]
    fn reads_gpt2_keys() {
        let cfg = gpt2_config(|_| {}).unwrap();
        assert_eq!(cfg.arch, Architecture::Gpt2);
        assert_eq!(
            (
                cfg.n_layers,
                cfg.d_model,
                cfg.d_mlp,
                cfg.n_heads,
                cfg.n_kv_heads
            ),
            (3, 32, 64, 4, 4)
        );
        assert_eq!((cfg.vocab, cfg.max_positions), (384, 128));
        assert_eq!(cfg.norm_eps, 1e-5);
        assert!(cfg.gelu_tanh && cfg.tie_embeddings);
        // `n_inner: null` (transformers' default) means 4 * n_embd.
        let cfg = gpt2_config(|j| {
            j.insert("n_inner".into(), Json::Null);
        })
        .unwrap();
        assert_eq!(cfg.d_mlp, 128);
        let cfg = gpt2_config(|j| {
            j.insert("activation_function".into(), "gelu".into());
        })
        .unwrap();
        assert!(!cfg.gelu_tanh);
    }

    #[test]
    fn refuses_gpt2_options_it_does_not_run() {
        let check = |key: &str, value: Json| {
            let err = gpt2_config(|j| {
                j.insert(key.into(), value.clone());
            })
            .unwrap_err();
            assert!(
                matches!(&err, Error::UnsupportedConfig { key: k, .. } if k == key),
                "{err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains("config.json") && msg.contains(key) && msg.contains("not supported"),
                "{msg}"
            );
        };
        check("activation_function", "relu".into());
        check("activation_function", Json::Null);
        check("scale_attn_weights", false.into());
        check("scale_attn_by_inverse_layer_idx", true.into());
        check("reorder_and_upcast_attn", true.into());
    }
}
