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
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::GptNeox => "gpt_neox",
            Architecture::Bert => "bert",
        }
    }

    /// Causal language models predict the next token; BERT is an encoder.
    pub fn is_causal(self) -> bool {
        !matches!(self, Architecture::Bert)
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
    /// `gelu` (exact, erf) or `gelu_new`/`gelu_pytorch_tanh` (tanh approximation); Llama uses SiLU.
    pub gelu_tanh: bool,
    pub type_vocab: usize,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Reads a Hugging Face `config.json`.
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
            other => {
                return Err(Error::UnsupportedArchitecture {
                    path: path.to_owned(),
                    arch: other.to_owned(),
                });
            }
        };
        let rope = j.get("rope_parameters").or_else(|| j.get("rope_scaling"));
        let rope_get = |key: &str| rope.and_then(|r| r.get(key)).and_then(Json::as_f64);
        let n_heads = usize_of("num_attention_heads")?;
        let d_model = usize_of("hidden_size")?;
        if n_heads == 0 || !d_model.is_multiple_of(n_heads) {
            return Err(missing("num_attention_heads"));
        }
        let act = j.get("hidden_act").and_then(Json::as_str).unwrap_or("gelu");
        let cfg = ModelConfig {
            arch,
            n_layers: usize_of("num_hidden_layers")?,
            d_model,
            d_mlp: usize_of("intermediate_size")?,
            n_heads,
            n_kv_heads: usize_of("num_key_value_heads").unwrap_or(n_heads),
            vocab: usize_of("vocab_size")?,
            max_positions: usize_of("max_position_embeddings").unwrap_or(2048),
            norm_eps: match arch {
                Architecture::Llama => f64_or("rms_norm_eps", 1e-6),
                Architecture::GptNeox => f64_or("layer_norm_eps", 1e-5),
                Architecture::Bert => f64_or("layer_norm_eps", 1e-12),
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
            gelu_tanh: matches!(act, "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast"),
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
