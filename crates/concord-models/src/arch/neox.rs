//! GPT-NeoX (Pythia): LayerNorms, fused per-head QKV, partial rotary embeddings (`rotary_pct`),
//! parallel or sequential residual, GELU MLP. Parameter names as transformers'
//! `GPTNeoXForCausalLM`.

use concord_core::HookKind;
use tch::{Kind, Tensor};

use super::{AttnCtx, HookCtx, Lin, Norm, gelu_mlp, layer_norm, linear, merge_heads, replica_lin};
use crate::Result;
use crate::config::ModelConfig;
use crate::weights::Weights;

#[derive(Debug)]
pub(crate) struct Block {
    input_layernorm: Norm,
    post_attention_layernorm: Norm,
    /// `(3 * d_model, d_model)`, rows grouped per head as `[q, k, v]`.
    query_key_value: Lin,
    dense: Lin,
    dense_h_to_4h: Lin,
    dense_4h_to_h: Lin,
}

#[derive(Debug)]
pub(crate) struct Neox {
    cfg: ModelConfig,
    embed_in: Tensor,
    layers: Vec<Block>,
    final_layer_norm: Norm,
    embed_out: Tensor,
}

impl Neox {
    pub fn load(
        cfg: &ModelConfig,
        w: &mut Weights,
        kind: Kind,
        device: tch::Device,
    ) -> Result<Neox> {
        let d = cfg.d_model as i64;
        let m = cfg.d_mlp as i64;
        let prep = |t: Tensor| super::prep(&t, kind, device);
        let mut lin = |name: String, out: i64, inp: i64| -> Result<Lin> {
            Ok((
                prep(w.take(&format!("{name}.weight"), &[out, inp])?)?,
                prep(w.take(&format!("{name}.bias"), &[out])?)?,
            ))
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let p = |n: &str| format!("gpt_neox.layers.{l}.{n}");
            layers.push(Block {
                input_layernorm: Norm {
                    weight: Tensor::new(),
                    bias: Tensor::new(),
                },
                post_attention_layernorm: Norm {
                    weight: Tensor::new(),
                    bias: Tensor::new(),
                },
                query_key_value: lin(p("attention.query_key_value"), 3 * d, d)?,
                dense: lin(p("attention.dense"), d, d)?,
                dense_h_to_4h: lin(p("mlp.dense_h_to_4h"), m, d)?,
                dense_4h_to_h: lin(p("mlp.dense_4h_to_h"), d, m)?,
            });
        }
        let mut norm = |name: String| -> Result<Norm> {
            Ok(Norm {
                weight: prep(w.take(&format!("{name}.weight"), &[d])?)?,
                bias: prep(w.take(&format!("{name}.bias"), &[d])?)?,
            })
        };
        for (l, block) in layers.iter_mut().enumerate() {
            block.input_layernorm = norm(format!("gpt_neox.layers.{l}.input_layernorm"))?;
            block.post_attention_layernorm =
                norm(format!("gpt_neox.layers.{l}.post_attention_layernorm"))?;
        }
        let final_layer_norm = norm("gpt_neox.final_layer_norm".into())?;
        let embed_in = w.take("gpt_neox.embed_in.weight", &[cfg.vocab as i64, d])?;
        let embed_out = super::output_head(w, "embed_out.weight", &embed_in, cfg.tie_embeddings)?;
        Ok(Neox {
            cfg: cfg.clone(),
            embed_in: prep(embed_in)?,
            layers,
            final_layer_norm,
            embed_out: prep(embed_out)?,
        })
    }

    /// A second handle on the same weights (shallow clones: no copy).
    pub fn replica(&self) -> Neox {
        let lin = replica_lin;
        Neox {
            cfg: self.cfg.clone(),
            embed_in: self.embed_in.shallow_clone(),
            layers: self
                .layers
                .iter()
                .map(|b| Block {
                    input_layernorm: b.input_layernorm.replica(),
                    post_attention_layernorm: b.post_attention_layernorm.replica(),
                    query_key_value: lin(&b.query_key_value),
                    dense: lin(&b.dense),
                    dense_h_to_4h: lin(&b.dense_h_to_4h),
                    dense_4h_to_h: lin(&b.dense_4h_to_h),
                })
                .collect(),
            final_layer_norm: self.final_layer_norm.replica(),
            embed_out: self.embed_out.shallow_clone(),
        }
    }

    /// `ids`: `(batch, seq)` i64; returns `(batch, seq, d_model)`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(Tensor::f_embedding(&self.embed_in, ids, -1, false, false)?)
    }

    fn mlp(&self, l: usize, xs: &Tensor, hooks: &mut HookCtx<'_>) -> Result<Tensor> {
        let b = &self.layers[l];
        let (fc, proj) = (&b.dense_h_to_4h, &b.dense_4h_to_h);
        gelu_mlp(l, xs, (fc, proj), self.cfg.gelu_tanh, hooks)
    }

    /// One block. `xs`: `(batch, seq, d_model)` -> `(batch, seq, d_model)`.
    pub fn block(
        &self,
        l: usize,
        xs: &Tensor,
        attn: &AttnCtx,
        hooks: &mut HookCtx<'_>,
    ) -> Result<Tensor> {
        let b = &self.layers[l];
        let cfg = &self.cfg;
        let eps = cfg.norm_eps;
        let h = layer_norm(xs, &b.input_layernorm.weight, &b.input_layernorm.bias, eps)?;
        let qkv = linear(&h, &b.query_key_value.0, Some(&b.query_key_value.1))?;
        let (bs, s, _) = qkv.size3()?;
        let hd = cfg.head_dim() as i64;
        // (batch, seq, heads, 3 * head_dim): per head [q, k, v]; rotated, then heads first.
        let qkv = qkv.f_view([bs, s, cfg.n_heads as i64, 3 * hd])?;
        let q = attn.rope(&qkv.f_narrow(-1, 0, hd)?)?.f_transpose(1, 2)?;
        let k = attn.rope(&qkv.f_narrow(-1, hd, hd)?)?.f_transpose(1, 2)?;
        let v = qkv.f_narrow(-1, 2 * hd, hd)?.f_transpose(1, 2)?;
        let a = attn.attend(&q, &k, &v, false)?;
        let attn_out = linear(&merge_heads(&a)?, &b.dense.0, Some(&b.dense.1))?;
        let attn_out = hooks.point(l, HookKind::AttnOut, attn_out)?;
        let post = &b.post_attention_layernorm;
        if cfg.parallel_residual {
            let mlp_out = self.mlp(l, &layer_norm(xs, &post.weight, &post.bias, eps)?, hooks)?;
            Ok(mlp_out.f_add(&attn_out)?.f_add(xs)?)
        } else {
            let a = attn_out.f_add(xs)?;
            let mlp_out = self.mlp(l, &layer_norm(&a, &post.weight, &post.bias, eps)?, hooks)?;
            Ok(mlp_out.f_add(&a)?)
        }
    }

    /// Final LayerNorm and unembedding: `(batch, seq, d_model)` -> `(batch, seq, vocab)`.
    pub fn logits(&self, xs: &Tensor) -> Result<Tensor> {
        let n = &self.final_layer_norm;
        let h = layer_norm(xs, &n.weight, &n.bias, self.cfg.norm_eps)?;
        linear(&h, &self.embed_out, None)
    }

    pub fn rotary_dim(&self) -> i64 {
        (self.cfg.head_dim() as f64 * self.cfg.rotary_pct) as i64
    }
}
