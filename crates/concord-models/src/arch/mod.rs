//! The four architectures and the pieces they share: the hook context every block reports its
//! intermediates to, rotary embeddings, attention masks and fused attention.

pub(crate) mod bert;
pub(crate) mod gpt2;
pub(crate) mod llama;
pub(crate) mod neox;

use std::collections::BTreeMap;

use concord_core::{HookKind, HookName};
use tch::{Kind, Tensor};

use crate::{Error, Result, kernels};

/// A replacement function for a splice: takes the hook's value `(batch, seq, d)` and returns a
/// tensor of the same shape.
pub type Replacement<'a> = &'a dyn Fn(&Tensor) -> Tensor;

/// Where a forward pass reports its intermediates: the hooks to capture and the one to replace.
pub(crate) struct HookCtx<'a> {
    pub capture: &'a [HookName],
    pub cache: BTreeMap<HookName, Tensor>,
    pub splice: Option<(HookName, Replacement<'a>)>,
}

impl HookCtx<'_> {
    /// Reports the value of hook point `blocks.{layer}.{kind}`; returns the value the forward
    /// continues with (the replacement if this point is spliced).
    pub fn point(&mut self, layer: usize, kind: HookKind, xs: Tensor) -> Result<Tensor> {
        let name = HookName::new(layer, kind);
        if let Some((target, f)) = self.splice
            && target == name
        {
            let ys = f(&xs);
            if ys.size() != xs.size() {
                return Err(Error::InvalidInput {
                    reason: format!(
                        "the replacement for {name} has shape {:?}, expected {:?}",
                        ys.size(),
                        xs.size()
                    ),
                });
            }
            let ys = ys.f_to_kind(xs.kind())?.f_to_device(xs.device())?;
            if self.capture.contains(&name) {
                self.cache.insert(name, ys.shallow_clone());
            }
            return Ok(ys);
        }
        if self.capture.contains(&name) {
            self.cache.insert(name, xs.shallow_clone());
        }
        Ok(xs)
    }
}

/// Per-forward attention inputs shared by every block.
pub(crate) struct AttnCtx {
    /// Boolean mask, true = may attend, broadcastable to `(batch, heads, seq, seq)`; `None` when
    /// `causal` alone is exact.
    pub mask: Option<Tensor>,
    /// Use the fused causal path (no explicit mask).
    pub causal: bool,
    /// Rotary tables `(seq, 1, rotary_dim)` in the compute dtype, for rope models; `sin` has
    /// its first half negated.
    pub cos: Option<Tensor>,
    pub sin: Option<Tensor>,
}

impl AttnCtx {
    /// Builds the masks for `attention_mask` `(batch, seq)` (1 = token, 0 = padding).
    ///
    /// Causal models: with right padding (every row is ones then zeros) the causal mask alone
    /// hides every padding key from every real query, so the fused causal kernel runs without
    /// a mask. Other layouts get an explicit `causal & key` mask; a query that could see no key
    /// (a padding position under left padding) is allowed to see itself so no row is all -inf.
    /// Encoders: a key mask, or none when nothing is padded.
    pub fn new(attention_mask: &Tensor, causal: bool) -> Result<AttnCtx> {
        let mask = attention_mask.f_ne(0)?;
        let all_ones = bool::try_from(mask.f_all()?)?;
        if all_ones {
            return Ok(AttnCtx {
                mask: None,
                causal,
                cos: None,
                sin: None,
            });
        }
        let (_, seq) = mask.size2()?;
        let keys = mask.f_unsqueeze(1)?.f_unsqueeze(1)?; // (batch, 1, 1, seq)
        if !causal {
            return Ok(AttnCtx {
                mask: Some(keys),
                causal: false,
                cos: None,
                sin: None,
            });
        }
        // Right padding: mask[:, t] >= mask[:, t + 1] everywhere.
        let m = mask.f_to_kind(Kind::Int64)?;
        let right_padded = seq < 2
            || bool::try_from(
                m.f_narrow(1, 0, seq - 1)?
                    .f_ge_tensor(&m.f_narrow(1, 1, seq - 1)?)?
                    .f_all()?,
            )?;
        if right_padded {
            return Ok(AttnCtx {
                mask: None,
                causal: true,
                cos: None,
                sin: None,
            });
        }
        let device = mask.device();
        let tril = Tensor::f_ones([seq, seq], (Kind::Bool, device))?.f_tril(0)?;
        let eye = Tensor::f_eye(seq, (Kind::Bool, device))?;
        let full = keys.f_logical_and(&tril)?.f_logical_or(&eye)?;
        Ok(AttnCtx {
            mask: Some(full),
            causal: false,
            cos: None,
            sin: None,
        })
    }

    /// Adds rotary tables for `seq` positions and `rotary_dim` rotated dimensions, computed in
    /// f32 as transformers does (`inv_freq = 1 / theta^(2i / dim)`, `emb = cat(freqs, freqs)`),
    /// then cast to `kind`. The sine table is stored with its first half negated, which folds
    /// `rotate_half`'s negation into it (a sign flip is exact).
    pub fn with_rope(
        mut self,
        seq: i64,
        rotary_dim: i64,
        theta: f64,
        kind: Kind,
        device: tch::Device,
    ) -> Result<Self> {
        let f32 = (Kind::Float, device);
        let exps = Tensor::f_arange_start_step(0, rotary_dim, 2, (Kind::Int64, device))?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(rotary_dim as f64)?;
        let inv_freq = Tensor::f_full([1], theta, f32)?
            .f_pow(&exps)?
            .f_reciprocal()?;
        let pos = Tensor::f_arange(seq, (Kind::Int64, device))?.f_to_kind(Kind::Float)?;
        let freqs = pos.f_unsqueeze(1)?.f_matmul(&inv_freq.f_unsqueeze(0)?)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        let sin = freqs.f_sin()?;
        let signed_sin = Tensor::f_cat(&[&sin.f_neg()?, &sin], -1)?;
        // (seq, 1, rotary_dim): broadcasts over (batch, seq, heads, head_dim).
        self.cos = Some(emb.f_cos()?.f_to_kind(kind)?.f_unsqueeze(1)?);
        self.sin = Some(signed_sin.f_to_kind(kind)?.f_unsqueeze(1)?);
        Ok(self)
    }

    /// Scaled dot-product attention. `q`: `(batch, heads, seq, head_dim)`, `k`, `v`:
    /// `(batch, kv_heads, seq, head_dim)`; returns `(batch, heads, seq, head_dim)`.
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, gqa: bool) -> Result<Tensor> {
        Ok(Tensor::f_scaled_dot_product_attention(
            q,
            k,
            v,
            self.mask.as_ref(),
            0.0,
            self.causal && self.mask.is_none(),
            None::<f64>,
            gqa,
        )?)
    }

    /// Applies rotary embeddings to the first `rotary_dim` dims of `xs`
    /// `(batch, seq, heads, head_dim)` (`rotate_half` convention: `x * cos + rotate_half(x) *
    /// sin`); returns a new `(batch, seq, heads, head_dim)` tensor.
    pub fn rope(&self, xs: &Tensor) -> Result<Tensor> {
        let (Some(cos), Some(sin)) = (&self.cos, &self.sin) else {
            return Ok(xs.shallow_clone());
        };
        let rd = *cos.size().last().unwrap_or(&0);
        let hd = *xs.size().last().unwrap_or(&0);
        let rot = xs.f_narrow(-1, 0, rd)?;
        let half = rd / 2;
        // [x2, x1] * [-sin, sin] = rotate_half(x) * sin; then += x * cos, in place.
        let out = Tensor::f_cat(
            &[rot.f_narrow(-1, half, half)?, rot.f_narrow(-1, 0, half)?],
            -1,
        )?
        .f_mul_(sin)?
        .f_addcmul_(&rot, cos)?;
        if rd == hd {
            return Ok(out);
        }
        let pass = xs.f_narrow(-1, rd, hd - rd)?;
        Ok(Tensor::f_cat(&[&out, &pass], -1)?)
    }
}

/// A loaded parameter in the compute dtype, on the device, contiguous.
pub(crate) fn prep(t: &Tensor, kind: Kind, device: tch::Device) -> Result<Tensor> {
    Ok(t.f_to_kind(kind)?.f_to_device(device)?.f_contiguous()?)
}

/// The unembedding: the checkpoint's own `name` `(vocab, d_model)` when the model does not tie
/// it to the embedding and the checkpoint has it, else (a handle on) `embed`.
pub(crate) fn output_head(
    w: &mut crate::weights::Weights,
    name: &str,
    embed: &Tensor,
    tied: bool,
) -> Result<Tensor> {
    if !tied && w.has(name) {
        w.take(name, &embed.size())
    } else {
        Ok(embed.shallow_clone())
    }
}

/// `x W^T + b`. `xs`: `(..., in)`, `w`: `(out, in)`; returns `(..., out)`.
pub(crate) fn linear(xs: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    Ok(xs.f_linear(w, b)?)
}

/// LayerNorm over the last dimension. `xs`: `(..., d)`.
pub(crate) fn layer_norm(xs: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if let Some(out) = kernels::layer_norm(xs, None, w, b, eps)? {
        return Ok(out);
    }
    let d = *xs.size().last().unwrap_or(&0);
    Ok(xs.f_layer_norm([d], Some(w), Some(b), eps, false)?)
}

/// LayerNorm of a residual sum `xs + ys` (the sum rounded to the dtype first). `xs`, `ys`:
/// `(..., d)`.
pub(crate) fn add_layer_norm(
    xs: &Tensor,
    ys: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if let Some(out) = kernels::layer_norm(xs, Some(ys), w, b, eps)? {
        return Ok(out);
    }
    layer_norm(&xs.f_add(ys)?, w, b, eps)
}

/// Exact (erf) or tanh-approximated GELU, in place on a fresh tensor.
pub(crate) fn gelu(mut xs: Tensor, tanh: bool) -> Result<Tensor> {
    Ok(xs.f_gelu_(if tanh { "tanh" } else { "none" })?)
}

/// A projection with its bias: weight `(out, in)`, bias `(out)`.
pub(crate) type Lin = (Tensor, Tensor);

/// A second handle on a projection's parameters (shallow clones: no copy).
pub(crate) fn replica_lin(l: &Lin) -> Lin {
    (l.0.shallow_clone(), l.1.shallow_clone())
}

/// A LayerNorm's parameters, `(d_model)` each (GPT-NeoX, GPT-2).
#[derive(Debug)]
pub(crate) struct Norm {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Norm {
    /// A second handle on the same parameters (shallow clones: no copy).
    pub fn replica(&self) -> Norm {
        Norm {
            weight: self.weight.shallow_clone(),
            bias: self.bias.shallow_clone(),
        }
    }
}

/// The GELU MLP of GPT-NeoX and GPT-2, block `l`: `fc` (in), GELU (`blocks.{l}.mlp.hook_post`),
/// `proj` (out, `blocks.{l}.hook_mlp_out`); weights `(out, in)` with biases.
pub(crate) fn gelu_mlp(
    l: usize,
    xs: &Tensor,
    (fc, proj): (&Lin, &Lin),
    tanh: bool,
    hooks: &mut HookCtx<'_>,
) -> Result<Tensor> {
    let h = linear(xs, &fc.0, Some(&fc.1))?;
    let act = hooks.point(l, HookKind::MlpPost, gelu(h, tanh)?)?;
    let out = linear(&act, &proj.0, Some(&proj.1))?;
    hooks.point(l, HookKind::MlpOut, out)
}

/// Splits heads: `(batch, seq, heads * head_dim)` -> `(batch, heads, seq, head_dim)`.
pub(crate) fn split_heads(xs: &Tensor, heads: i64) -> Result<Tensor> {
    let (b, s, d) = xs.size3()?;
    Ok(xs.f_view([b, s, heads, d / heads])?.f_transpose(1, 2)?)
}

/// Merges heads: `(batch, heads, seq, head_dim)` -> `(batch, seq, heads * head_dim)`.
pub(crate) fn merge_heads(xs: &Tensor) -> Result<Tensor> {
    let (b, h, s, hd) = xs.size4()?;
    Ok(xs.f_transpose(1, 2)?.f_reshape([b, s, h * hd])?)
}
