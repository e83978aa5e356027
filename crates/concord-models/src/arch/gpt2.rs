//! GPT-2: learned absolute position embeddings, pre-LN blocks, fused QKV (`[q, k, v]` along the
//! last dimension, not per head), GELU MLP, unembedding tied to the token embeddings. Parameter
//! names as transformers' `GPT2Model` (a `transformer.` prefix, as in `GPT2LMHeadModel`
//! checkpoints, is accepted).
//!
//! GPT-2 stores its projections as `Conv1D` weights, `(in, out)`, the transpose of
//! `nn.Linear`'s. They are transposed once at load into contiguous `(out, in)` matrices, so a
//! block runs the same `linear` products as the other architectures and the checkpoint names
//! still need no rename table.

use concord_core::HookKind;
use tch::{Kind, Tensor};

use super::{
    AttnCtx, HookCtx, Lin, Norm, gelu_mlp, layer_norm, linear, merge_heads, replica_lin,
    split_heads,
};
use crate::Result;
use crate::config::ModelConfig;
use crate::weights::Weights;

#[derive(Debug)]
pub(crate) struct Block {
    ln_1: Norm,
    /// `attn.c_attn` transposed: `(3 * d_model, d_model)`, rows `[q; k; v]`, each `d_model`
    /// rows holding the heads in order.
    c_attn: Lin,
    /// `attn.c_proj` transposed: `(d_model, d_model)`.
    attn_c_proj: Lin,
    ln_2: Norm,
    /// `mlp.c_fc` transposed: `(d_mlp, d_model)`.
    c_fc: Lin,
    /// `mlp.c_proj` transposed: `(d_model, d_mlp)`.
    mlp_c_proj: Lin,
}

#[derive(Debug)]
pub(crate) struct Gpt2 {
    cfg: ModelConfig,
    wte: Tensor,
    /// `(max_positions, d_model)`.
    wpe: Tensor,
    h: Vec<Block>,
    ln_f: Norm,
    lm_head: Tensor,
}

/// Reads a parameter by its checkpoint name (the prefix already applied), checking its shape.
type Raw<'a> = dyn FnMut(&str, &[i64]) -> Result<Tensor> + 'a;

impl Gpt2 {
    pub fn load(
        cfg: &ModelConfig,
        w: &mut Weights,
        kind: Kind,
        device: tch::Device,
    ) -> Result<Gpt2> {
        let d = cfg.d_model as i64;
        let m = cfg.d_mlp as i64;
        let prefix = if w.has("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let prep = |t: Tensor| super::prep(&t, kind, device);
        let mut raw = |name: &str, shape: &[i64]| w.take(&format!("{prefix}{name}"), shape);
        let norm = |name: &str, raw: &mut Raw<'_>| -> Result<Norm> {
            Ok(Norm {
                weight: prep(raw(&format!("{name}.weight"), &[d])?)?,
                bias: prep(raw(&format!("{name}.bias"), &[d])?)?,
            })
        };
        // Conv1D: the weight is stored `(in, out)`; `prep` makes the transpose contiguous.
        let conv1d = |name: &str, inp: i64, out: i64, raw: &mut Raw<'_>| -> Result<Lin> {
            Ok((
                prep(raw(&format!("{name}.weight"), &[inp, out])?.f_transpose(0, 1)?)?,
                prep(raw(&format!("{name}.bias"), &[out])?)?,
            ))
        };
        let wte = raw("wte.weight", &[cfg.vocab as i64, d])?;
        let wpe = prep(raw("wpe.weight", &[cfg.max_positions as i64, d])?)?;
        let mut h = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let p = |n: &str| format!("h.{l}.{n}");
            h.push(Block {
                ln_1: norm(&p("ln_1"), &mut raw)?,
                c_attn: conv1d(&p("attn.c_attn"), d, 3 * d, &mut raw)?,
                attn_c_proj: conv1d(&p("attn.c_proj"), d, d, &mut raw)?,
                ln_2: norm(&p("ln_2"), &mut raw)?,
                c_fc: conv1d(&p("mlp.c_fc"), d, m, &mut raw)?,
                mlp_c_proj: conv1d(&p("mlp.c_proj"), m, d, &mut raw)?,
            });
        }
        let ln_f = norm("ln_f", &mut raw)?;
        // `GPT2LMHeadModel` ties `lm_head` to `wte` and does not save it; an untied head sits
        // outside the `transformer.` prefix.
        let lm_head = super::output_head(w, "lm_head.weight", &wte, cfg.tie_embeddings)?;
        Ok(Gpt2 {
            cfg: cfg.clone(),
            wte: prep(wte)?,
            wpe,
            h,
            ln_f,
            lm_head: prep(lm_head)?,
        })
    }

    /// A second handle on the same weights (shallow clones: no copy).
    pub fn replica(&self) -> Gpt2 {
        let lin = replica_lin;
        Gpt2 {
            cfg: self.cfg.clone(),
            wte: self.wte.shallow_clone(),
            wpe: self.wpe.shallow_clone(),
            h: self
                .h
                .iter()
                .map(|b| Block {
                    ln_1: b.ln_1.replica(),
                    c_attn: lin(&b.c_attn),
                    attn_c_proj: lin(&b.attn_c_proj),
                    ln_2: b.ln_2.replica(),
                    c_fc: lin(&b.c_fc),
                    mlp_c_proj: lin(&b.mlp_c_proj),
                })
                .collect(),
            ln_f: self.ln_f.replica(),
            lm_head: self.lm_head.shallow_clone(),
        }
    }

    /// Token plus learned position embeddings, positions `0..seq` (what transformers uses when
    /// no `position_ids` are given, padding or not). The caller checks `seq <= max_positions`.
    /// `ids`: `(batch, seq)` i64; returns `(batch, seq, d_model)`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, s) = ids.size2()?;
        let tokens = Tensor::f_embedding(&self.wte, ids, -1, false, false)?;
        Ok(tokens.f_add(&self.wpe.f_narrow(0, 0, s)?)?)
    }

    fn mlp(&self, l: usize, xs: &Tensor, hooks: &mut HookCtx<'_>) -> Result<Tensor> {
        let b = &self.h[l];
        gelu_mlp(l, xs, (&b.c_fc, &b.mlp_c_proj), self.cfg.gelu_tanh, hooks)
    }

    /// One pre-LN block. `xs`: `(batch, seq, d_model)` -> `(batch, seq, d_model)`.
    pub fn block(
        &self,
        l: usize,
        xs: &Tensor,
        attn: &AttnCtx,
        hooks: &mut HookCtx<'_>,
    ) -> Result<Tensor> {
        let b = &self.h[l];
        let cfg = &self.cfg;
        let (d, heads, eps) = (cfg.d_model as i64, cfg.n_heads as i64, cfg.norm_eps);
        let h = layer_norm(xs, &b.ln_1.weight, &b.ln_1.bias, eps)?;
        let qkv = linear(&h, &b.c_attn.0, Some(&b.c_attn.1))?;
        // `c_attn(x).split(d_model, dim=2)`: q, k and v side by side, each split into heads.
        let q = split_heads(&qkv.f_narrow(-1, 0, d)?, heads)?;
        let k = split_heads(&qkv.f_narrow(-1, d, d)?, heads)?;
        let v = split_heads(&qkv.f_narrow(-1, 2 * d, d)?, heads)?;
        // The kernel's default scale is 1 / sqrt(head_dim), GPT-2's `scale_attn_weights`; the
        // config loader refuses the other scalings.
        let a = attn.attend(&q, &k, &v, false)?;
        let attn_out = linear(&merge_heads(&a)?, &b.attn_c_proj.0, Some(&b.attn_c_proj.1))?;
        let attn_out = hooks.point(l, HookKind::AttnOut, attn_out)?;
        let xs = attn_out.f_add(xs)?;
        let h = layer_norm(&xs, &b.ln_2.weight, &b.ln_2.bias, eps)?;
        let mlp_out = self.mlp(l, &h, hooks)?;
        Ok(mlp_out.f_add(&xs)?)
    }

    /// Final LayerNorm and unembedding: `(batch, seq, d_model)` -> `(batch, seq, vocab)`.
    pub fn logits(&self, xs: &Tensor) -> Result<Tensor> {
        let n = &self.ln_f;
        let h = layer_norm(xs, &n.weight, &n.bias, self.cfg.norm_eps)?;
        linear(&h, &self.lm_head, None)
    }
}
