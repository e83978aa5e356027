//! Llama (SmolLM2): RMSNorm, rotary embeddings, grouped-query attention, SwiGLU MLP, optionally
//! tied embeddings. Parameter names as transformers' `LlamaForCausalLM`.

use concord_core::HookKind;
use tch::{Kind, Tensor};

use super::{AttnCtx, HookCtx, linear, merge_heads, split_heads};
use crate::config::ModelConfig;
use crate::weights::Weights;
use crate::{Result, kernels};

#[derive(Debug)]
pub(crate) struct Block {
    input_layernorm: Tensor,
    /// `q_proj`, `k_proj`, `v_proj` stacked: `(d_model + 2 * kv_dim, d_model)`, one product.
    qkv: Tensor,
    o_proj: Tensor,
    post_attention_layernorm: Tensor,
    /// `gate_proj` and `up_proj` stacked: `(2 * d_mlp, d_model)`.
    gate_up: Tensor,
    down_proj: Tensor,
}

#[derive(Debug)]
pub(crate) struct Llama {
    cfg: ModelConfig,
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: Tensor,
    lm_head: Tensor,
}

impl Llama {
    pub fn load(
        cfg: &ModelConfig,
        w: &mut Weights,
        kind: Kind,
        device: tch::Device,
    ) -> Result<Llama> {
        let d = cfg.d_model as i64;
        let kv = (cfg.n_kv_heads * cfg.head_dim()) as i64;
        let m = cfg.d_mlp as i64;
        let prep = |t: Tensor| super::prep(&t, kind, device);
        let embed = w.take("model.embed_tokens.weight", &[cfg.vocab as i64, d])?;
        let lm_head = super::output_head(w, "lm_head.weight", &embed, cfg.tie_embeddings)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let p = |n: &str| format!("model.layers.{l}.{n}.weight");
            let q = w.take(&p("self_attn.q_proj"), &[d, d])?;
            let k = w.take(&p("self_attn.k_proj"), &[kv, d])?;
            let v = w.take(&p("self_attn.v_proj"), &[kv, d])?;
            let gate = w.take(&p("mlp.gate_proj"), &[m, d])?;
            let up = w.take(&p("mlp.up_proj"), &[m, d])?;
            layers.push(Block {
                input_layernorm: prep(w.take(&p("input_layernorm"), &[d])?)?,
                qkv: prep(Tensor::f_cat(&[q, k, v], 0)?)?,
                o_proj: prep(w.take(&p("self_attn.o_proj"), &[d, d])?)?,
                post_attention_layernorm: prep(w.take(&p("post_attention_layernorm"), &[d])?)?,
                gate_up: prep(Tensor::f_cat(&[gate, up], 0)?)?,
                down_proj: prep(w.take(&p("mlp.down_proj"), &[d, m])?)?,
            });
        }
        Ok(Llama {
            cfg: cfg.clone(),
            embed_tokens: prep(embed)?,
            layers,
            norm: prep(w.take("model.norm.weight", &[d])?)?,
            lm_head: prep(lm_head)?,
        })
    }

    /// A second handle on the same weights (shallow clones: no copy).
    pub fn replica(&self) -> Llama {
        Llama {
            cfg: self.cfg.clone(),
            embed_tokens: self.embed_tokens.shallow_clone(),
            layers: self
                .layers
                .iter()
                .map(|b| Block {
                    input_layernorm: b.input_layernorm.shallow_clone(),
                    qkv: b.qkv.shallow_clone(),
                    o_proj: b.o_proj.shallow_clone(),
                    post_attention_layernorm: b.post_attention_layernorm.shallow_clone(),
                    gate_up: b.gate_up.shallow_clone(),
                    down_proj: b.down_proj.shallow_clone(),
                })
                .collect(),
            norm: self.norm.shallow_clone(),
            lm_head: self.lm_head.shallow_clone(),
        }
    }

    /// `ids`: `(batch, seq)` i64; returns `(batch, seq, d_model)`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(Tensor::f_embedding(
            &self.embed_tokens,
            ids,
            -1,
            false,
            false,
        )?)
    }

    /// RMSNorm as transformers computes it: in f32, cast back, then scaled.
    fn rms_norm(&self, xs: &Tensor, w: &Tensor) -> Result<Tensor> {
        if let Some(out) = kernels::rms_norm(xs, w, self.cfg.norm_eps)? {
            return Ok(out);
        }
        let kind = xs.kind();
        let x = xs.f_to_kind(Kind::Float)?;
        let var = x
            .f_pow_tensor_scalar(2)?
            .f_mean_dim(-1, true, Kind::Float)?;
        let x = x.f_mul(&var.f_add_scalar(self.cfg.norm_eps)?.f_rsqrt()?)?;
        // `weight * x` as transformers writes it; the product commutes exactly, in place.
        Ok(x.f_to_kind(kind)?.f_mul_(w)?)
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
        let (d, kv) = (cfg.d_model as i64, (cfg.n_kv_heads * cfg.head_dim()) as i64);
        let h = self.rms_norm(xs, &b.input_layernorm)?;
        let qkv = linear(&h, &b.qkv, None)?;
        let (bs, s, _) = qkv.size3()?;
        let (heads, kv_heads, hd) = (
            cfg.n_heads as i64,
            cfg.n_kv_heads as i64,
            cfg.head_dim() as i64,
        );
        // Rotate q and k together; the fused kernel writes them heads first,
        // (batch, heads + kv_heads, seq, head_dim), each head contiguous for attention.
        let fused = match (&attn.cos, &attn.sin) {
            (Some(cos), Some(sin)) => {
                kernels::rope(&qkv, (heads + kv_heads) as usize, hd as usize, cos, sin)?
            }
            _ => None,
        };
        let (q, k) = match fused {
            Some(qk) => (qk.f_narrow(1, 0, heads)?, qk.f_narrow(1, heads, kv_heads)?),
            None => {
                let qk = attn.rope(&qkv.f_narrow(-1, 0, d + kv)?.f_view([
                    bs,
                    s,
                    heads + kv_heads,
                    hd,
                ])?)?;
                (
                    qk.f_narrow(2, 0, heads)?.f_transpose(1, 2)?,
                    qk.f_narrow(2, heads, kv_heads)?.f_transpose(1, 2)?,
                )
            }
        };
        let v = split_heads(&qkv.f_narrow(-1, d + kv, kv)?, kv_heads)?;
        let a = attn.attend(&q, &k, &v, cfg.n_kv_heads != cfg.n_heads)?;
        let attn_out = linear(&merge_heads(&a)?, &b.o_proj, None)?;
        let attn_out = hooks.point(l, HookKind::AttnOut, attn_out)?;
        let w = &b.post_attention_layernorm;
        let (xs, h) = match kernels::add_rms_norm(xs, &attn_out, w, cfg.norm_eps)? {
            Some(fused) => fused,
            None => {
                let xs = xs.f_add(&attn_out)?;
                let h = self.rms_norm(&xs, w)?;
                (xs, h)
            }
        };
        let gu = linear(&h, &b.gate_up, None)?;
        let m = cfg.d_mlp as i64;
        let act = match kernels::silu_mul(&gu)? {
            Some(act) => act,
            None => gu
                .f_narrow(-1, 0, m)?
                .f_silu()?
                .f_mul_(&gu.f_narrow(-1, m, m)?)?,
        };
        let act = hooks.point(l, HookKind::MlpPost, act)?;
        let mlp_out = linear(&act, &b.down_proj, None)?;
        let mlp_out = hooks.point(l, HookKind::MlpOut, mlp_out)?;
        Ok(xs.f_add(&mlp_out)?)
    }

    /// Final norm and unembedding: `(batch, seq, d_model)` -> `(batch, seq, vocab)`.
    pub fn logits(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.rms_norm(xs, &self.norm)?;
        linear(&h, &self.lm_head, None)
    }

    pub fn rotary_dim(&self) -> i64 {
        self.cfg.head_dim() as i64
    }
}
