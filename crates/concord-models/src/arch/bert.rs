//! BERT (all-MiniLM-L6-v2): absolute position embeddings, token type 0 everywhere, post-LN
//! encoder blocks, GELU MLP. Parameter names as transformers' `BertModel` (a `bert.` prefix,
//! as in `BertForMaskedLM` checkpoints, is accepted).

use concord_core::HookKind;
use tch::{Kind, Tensor};

use super::{
    AttnCtx, HookCtx, Lin, add_layer_norm, gelu, layer_norm, linear, merge_heads, replica_lin,
    split_heads,
};
use crate::Result;
use crate::config::ModelConfig;
use crate::weights::Weights;

#[derive(Debug)]
pub(crate) struct Block {
    /// `attention.self.{query,key,value}` stacked: `(3 * d_model, d_model)`.
    qkv: Lin,
    attention_output_dense: Lin,
    attention_output_layer_norm: Lin,
    intermediate_dense: Lin,
    output_dense: Lin,
    output_layer_norm: Lin,
}

#[derive(Debug)]
pub(crate) struct Bert {
    cfg: ModelConfig,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embeddings_layer_norm: Lin,
    layers: Vec<Block>,
}

impl Bert {
    pub fn load(
        cfg: &ModelConfig,
        w: &mut Weights,
        kind: Kind,
        device: tch::Device,
    ) -> Result<Bert> {
        let d = cfg.d_model as i64;
        let m = cfg.d_mlp as i64;
        let prefix = if w.has("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let prep = |t: Tensor| super::prep(&t, kind, device);
        let mut raw = |name: &str, shape: &[i64]| w.take(&format!("{prefix}{name}"), shape);
        let lin = |name: &str,
                   out: i64,
                   inp: i64,
                   raw: &mut dyn FnMut(&str, &[i64]) -> Result<Tensor>|
         -> Result<Lin> {
            let shape: Vec<i64> = if inp == 0 { vec![out] } else { vec![out, inp] };
            Ok((
                prep(raw(&format!("{name}.weight"), &shape)?)?,
                prep(raw(&format!("{name}.bias"), &[out])?)?,
            ))
        };
        let word_embeddings = prep(raw(
            "embeddings.word_embeddings.weight",
            &[cfg.vocab as i64, d],
        )?)?;
        let position_embeddings = prep(raw(
            "embeddings.position_embeddings.weight",
            &[cfg.max_positions as i64, d],
        )?)?;
        let token_type_embeddings = prep(raw(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab as i64, d],
        )?)?;
        let embeddings_layer_norm = lin("embeddings.LayerNorm", d, 0, &mut raw)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let p = |n: &str| format!("encoder.layer.{l}.{n}");
            let mut part = |n: &str| -> Result<Lin> {
                Ok((
                    raw(&p(&format!("{n}.weight")), &[d, d])?,
                    raw(&p(&format!("{n}.bias")), &[d])?,
                ))
            };
            let (q, k, v) = (
                part("attention.self.query")?,
                part("attention.self.key")?,
                part("attention.self.value")?,
            );
            let qkv = (
                prep(Tensor::f_cat(&[q.0, k.0, v.0], 0)?)?,
                prep(Tensor::f_cat(&[q.1, k.1, v.1], 0)?)?,
            );
            layers.push(Block {
                qkv,
                attention_output_dense: lin(&p("attention.output.dense"), d, d, &mut raw)?,
                attention_output_layer_norm: lin(&p("attention.output.LayerNorm"), d, 0, &mut raw)?,
                intermediate_dense: lin(&p("intermediate.dense"), m, d, &mut raw)?,
                output_dense: lin(&p("output.dense"), d, m, &mut raw)?,
                output_layer_norm: lin(&p("output.LayerNorm"), d, 0, &mut raw)?,
            });
        }
        Ok(Bert {
            cfg: cfg.clone(),
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embeddings_layer_norm,
            layers,
        })
    }

    /// A second handle on the same weights (shallow clones: no copy).
    pub fn replica(&self) -> Bert {
        let lin = replica_lin;
        Bert {
            cfg: self.cfg.clone(),
            word_embeddings: self.word_embeddings.shallow_clone(),
            position_embeddings: self.position_embeddings.shallow_clone(),
            token_type_embeddings: self.token_type_embeddings.shallow_clone(),
            embeddings_layer_norm: lin(&self.embeddings_layer_norm),
            layers: self
                .layers
                .iter()
                .map(|b| Block {
                    qkv: lin(&b.qkv),
                    attention_output_dense: lin(&b.attention_output_dense),
                    attention_output_layer_norm: lin(&b.attention_output_layer_norm),
                    intermediate_dense: lin(&b.intermediate_dense),
                    output_dense: lin(&b.output_dense),
                    output_layer_norm: lin(&b.output_layer_norm),
                })
                .collect(),
        }
    }

    /// Word + token type 0 + absolute position embeddings, then LayerNorm.
    /// `ids`: `(batch, seq)` i64; returns `(batch, seq, d_model)`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, s) = ids.size2()?;
        let words = Tensor::f_embedding(&self.word_embeddings, ids, -1, false, false)?;
        let types = self.token_type_embeddings.f_narrow(0, 0, 1)?;
        let pos = self.position_embeddings.f_narrow(0, 0, s)?;
        let e = words.f_add(&types)?.f_add(&pos)?;
        let n = &self.embeddings_layer_norm;
        layer_norm(&e, &n.0, &n.1, self.cfg.norm_eps)
    }

    /// One post-LN block. `xs`: `(batch, seq, d_model)` -> `(batch, seq, d_model)`.
    pub fn block(
        &self,
        l: usize,
        xs: &Tensor,
        attn: &AttnCtx,
        hooks: &mut HookCtx<'_>,
    ) -> Result<Tensor> {
        let b = &self.layers[l];
        let cfg = &self.cfg;
        let (d, heads, eps) = (cfg.d_model as i64, cfg.n_heads as i64, cfg.norm_eps);
        let qkv = linear(xs, &b.qkv.0, Some(&b.qkv.1))?;
        let q = split_heads(&qkv.f_narrow(-1, 0, d)?, heads)?;
        let k = split_heads(&qkv.f_narrow(-1, d, d)?, heads)?;
        let v = split_heads(&qkv.f_narrow(-1, 2 * d, d)?, heads)?;
        let a = attn.attend(&q, &k, &v, false)?;
        let attn_out = linear(
            &merge_heads(&a)?,
            &b.attention_output_dense.0,
            Some(&b.attention_output_dense.1),
        )?;
        let attn_out = hooks.point(l, HookKind::AttnOut, attn_out)?;
        let n = &b.attention_output_layer_norm;
        let h = add_layer_norm(&attn_out, xs, &n.0, &n.1, eps)?;
        let act = gelu(
            linear(&h, &b.intermediate_dense.0, Some(&b.intermediate_dense.1))?,
            cfg.gelu_tanh,
        )?;
        let act = hooks.point(l, HookKind::MlpPost, act)?;
        let mlp_out = linear(&act, &b.output_dense.0, Some(&b.output_dense.1))?;
        let mlp_out = hooks.point(l, HookKind::MlpOut, mlp_out)?;
        let n = &b.output_layer_norm;
        add_layer_norm(&mlp_out, &h, &n.0, &n.1, eps)
    }
}
