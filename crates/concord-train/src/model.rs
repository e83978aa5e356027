//! Inference with a saved SAE: encode and decode on tensors, for evaluation and for splicing
//! reconstructions into a language model.

use tch::{Device, Kind, Tensor};

use concord_core::sae::Sae;

use crate::trainer::params_from_weights;
use crate::{Error, Result};

/// The activation function of a loaded SAE.
#[derive(Debug)]
pub enum Activation {
    /// `ReLU(pre)` (SAELens `standard`).
    Relu,
    /// The `k` largest of `ReLU(pre)` per row (SAELens `topk`).
    TopK(usize),
    /// `pre * (pre > threshold)` with a per-feature threshold `(d_sae)` (SAELens `jumprelu`,
    /// and `batchtopk` at inference).
    JumpRelu(Tensor),
}

/// An SAE on a device, ready to encode and decode.
#[derive(Debug)]
pub struct SaeModel {
    pub d_in: usize,
    pub d_sae: usize,
    /// `(d_in, d_sae)`.
    pub w_enc: Tensor,
    /// `(d_sae)`.
    pub b_enc: Tensor,
    /// `(d_sae, d_in)`.
    pub w_dec: Tensor,
    /// `(d_in)`.
    pub b_dec: Tensor,
    pub activation: Activation,
    /// Whether `encode` subtracts `b_dec` from its input first.
    pub apply_b_dec_to_input: bool,
}

impl SaeModel {
    /// Loads `sae` onto `device`. Architectures: `standard`, `topk` (needs `k`), `batchtopk`
    /// and `jumprelu` (need a `threshold` tensor; a `batchtopk` folder without one falls back to
    /// TopK with its `k`). A legacy `standard` cfg with `activation_fn_str: "topk"` is TopK with
    /// `activation_fn_kwargs.k`; an `activation_fn_str` other than `relu` or `topk` is an error.
    pub fn from_sae(sae: &Sae, device: Device) -> Result<SaeModel> {
        let cfg = &sae.cfg;
        let bad = |reason: String| Error::InvalidSpec {
            sae: cfg.hook_name.clone(),
            reason,
        };
        let p = params_from_weights(&sae.weights, device)?;
        let threshold = match &sae.weights.threshold {
            Some(t) => Some(Tensor::f_from_slice(t)?.f_to_device(device)?),
            None => None,
        };
        // SAELens before v6 wrote TopK SAEs as `standard` with `activation_fn_str: "topk"` and
        // `activation_fn_kwargs: {"k": K}`; an activation function read wrongly would go
        // unnoticed, so any other we do not implement is an error.
        let activation_fn = match cfg.extra.get("activation_fn_str") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.as_str()),
            Some(other) => return Err(bad(format!("activation_fn_str {other} is not a string"))),
        };
        if let Some(f) = activation_fn
            && !matches!(f, "relu" | "topk")
        {
            return Err(bad(format!(
                "activation_fn_str {f:?} is not supported (expected relu or topk)"
            )));
        }
        let kwargs_k = cfg
            .extra
            .get("activation_fn_kwargs")
            .and_then(|kw| kw.get("k"))
            .map(|k| {
                k.as_u64()
                    .and_then(|k| usize::try_from(k).ok())
                    .ok_or_else(|| bad(format!("activation_fn_kwargs.k = {k} is not a count")))
            })
            .transpose()?;
        let need_k = || {
            cfg.k.or(kwargs_k).ok_or_else(|| {
                bad(format!(
                    "{} SAE without k in cfg.json",
                    activation_fn.unwrap_or(&cfg.architecture)
                ))
            })
        };
        let activation = match (cfg.architecture.as_str(), threshold) {
            ("standard" | "relu", _) if activation_fn == Some("topk") => {
                Activation::TopK(need_k()?)
            }
            ("standard" | "relu", _) => Activation::Relu,
            ("topk", _) => Activation::TopK(need_k()?),
            ("batchtopk" | "jumprelu", Some(t)) => Activation::JumpRelu(t),
            ("batchtopk", None) => Activation::TopK(need_k()?),
            (other, _) => {
                return Err(Error::UnknownArchitecture {
                    name: other.to_owned(),
                    expected: "standard, topk, batchtopk, jumprelu (SAELens names)",
                });
            }
        };
        if let Activation::TopK(k) = activation
            && (k == 0 || k > cfg.d_sae)
        {
            return Err(bad(format!("k = {k} outside 1..={}", cfg.d_sae)));
        }
        Ok(SaeModel {
            d_in: cfg.d_in,
            d_sae: cfg.d_sae,
            w_enc: p.w_enc,
            b_enc: p.b_enc,
            w_dec: p.w_dec,
            b_dec: p.b_dec,
            activation,
            apply_b_dec_to_input: cfg.subtracts_b_dec(),
        })
    }

    /// Pre-activations `(batch, d_sae)` of `xs (batch, d_in)`.
    pub fn pre_activations(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = xs.f_to_kind(Kind::Float)?;
        let xc = if self.apply_b_dec_to_input {
            xs.f_sub(&self.b_dec)?
        } else {
            xs
        };
        Ok(self.b_enc.f_addmm(&xc, &self.w_enc)?)
    }

    /// Feature activations `(batch, d_sae)` of `xs (batch, d_in)`.
    pub fn encode(&self, xs: &Tensor) -> Result<Tensor> {
        let pre = self.pre_activations(xs)?;
        Ok(match &self.activation {
            Activation::Relu => pre.f_relu()?,
            Activation::TopK(k) => {
                let (vals, idx) = pre.f_relu()?.f_topk(*k as i64, 1, true, false)?;
                pre.f_zeros_like()?.f_scatter(1, &idx, &vals)?
            }
            Activation::JumpRelu(th) => pre.f_mul(&pre.f_gt_tensor(th)?)?.f_relu()?,
        })
    }

    /// Reconstruction `(batch, d_in)` of activations `cs (batch, d_sae)`.
    pub fn decode(&self, cs: &Tensor) -> Result<Tensor> {
        Ok(self.b_dec.f_addmm(cs, &self.w_dec)?)
    }

    /// `decode(encode(xs))`, `(batch, d_in)`.
    pub fn reconstruct(&self, xs: &Tensor) -> Result<Tensor> {
        self.decode(&self.encode(xs)?)
    }
}
