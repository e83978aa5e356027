//! Evaluation: reconstruction quality and sparsity over an evaluation set, and the
//! loss-recovered and KL numbers of a reconstruction spliced into a language model.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::model::SaeModel;
use crate::{Error, Result};

/// What [`evaluate`] measures (`eval.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Rows (tokens) evaluated.
    pub tokens: u64,
    /// `mean((x_hat - x)^2)` over all elements.
    pub mse: f64,
    /// `E||x - x_hat||^2 / E||x - mean(x)||^2`, the mean taken over the evaluation set.
    pub fvu: f64,
    /// `1 - fvu`.
    pub explained_variance: f64,
    /// Mean number of active features per token.
    pub l0: f64,
    /// Share of features never active on the evaluation set.
    pub dead_fraction: f64,
    /// Share of features active on more than 10 % of tokens.
    pub dense_fraction: f64,
    /// `(d_sae)`: the share of tokens on which each feature is active.
    pub frequency: Vec<f64>,
}

/// Evaluates `model` on batches of rows, each `(batch, d_in)` row-major. A non-finite value
/// is an error naming its row, counted over all batches, and column; sums are kept in f64.
pub fn evaluate<'a, I>(model: &SaeModel, batches: I) -> Result<EvalReport>
where
    I: IntoIterator<Item = &'a [f32]>,
{
    let device = model.w_enc.device();
    let d_in = model.d_in;
    let mut tokens = 0u64;
    let mut sum_x = Tensor::f_zeros([d_in as i64], (Kind::Double, device))?;
    let mut sum_x2 = 0.0f64;
    let mut sum_err = 0.0f64;
    let mut sum_l0 = 0.0f64;
    let mut counts = Tensor::f_zeros([model.d_sae as i64], (Kind::Double, device))?;
    for (bi, rows) in batches.into_iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        if rows.len() % d_in != 0 {
            return Err(Error::RaggedBatch {
                stream: bi,
                got: rows.len(),
                d_in,
            });
        }
        if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFiniteEvalRow {
                row: tokens + (i / d_in) as u64,
                column: i % d_in,
                value: rows[i],
            });
        }
        let n = rows.len() / d_in;
        let xs = Tensor::f_from_slice(rows)?
            .f_view([n as i64, d_in as i64])?
            .f_to_device(device)?;
        let cs = model.encode(&xs)?;
        let x_hat = model.decode(&cs)?;
        let active = cs.f_gt(0.0)?;
        let xd = xs.f_to_kind(Kind::Double)?;
        sum_x = sum_x.f_add(&xd.f_sum_dim_intlist(0i64, false, Kind::Double)?)?;
        counts = counts.f_add(&active.f_sum_dim_intlist(0i64, false, Kind::Double)?)?;
        let nums = Tensor::f_stack(
            &[
                xd.f_square()?.f_sum(Kind::Double)?,
                x_hat
                    .f_to_kind(Kind::Double)?
                    .f_sub(&xd)?
                    .f_square()?
                    .f_sum(Kind::Double)?,
                active.f_sum(Kind::Double)?,
            ],
            0,
        )?
        .f_to_device(Device::Cpu)?;
        let v: Vec<f64> = Vec::try_from(&nums)?;
        sum_x2 += v[0];
        sum_err += v[1];
        sum_l0 += v[2];
        tokens += n as u64;
    }
    if tokens == 0 {
        return Err(Error::InvalidSpec {
            sae: String::new(),
            reason: "empty evaluation set".into(),
        });
    }
    let nt = tokens as f64;
    let mean_sq = sum_x.f_square()?.f_sum(Kind::Double)?.double_value(&[]) / nt;
    let total_var = sum_x2 - mean_sq;
    let fvu = if total_var > 0.0 {
        sum_err / total_var
    } else {
        f64::NAN
    };
    let frequency: Vec<f64> = Vec::try_from(&counts.f_div_scalar(nt)?.f_to_device(Device::Cpu)?)?;
    let d_sae = frequency.len().max(1) as f64;
    Ok(EvalReport {
        tokens,
        mse: sum_err / (nt * d_in as f64),
        fvu,
        explained_variance: 1.0 - fvu,
        l0: sum_l0 / nt,
        dead_fraction: frequency.iter().filter(|&&f| f == 0.0).count() as f64 / d_sae,
        dense_fraction: frequency.iter().filter(|&&f| f > 0.1).count() as f64 / d_sae,
        frequency,
    })
}

/// Loss recovered and KL of a spliced reconstruction (see [`SpliceMeter`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpliceReport {
    pub tokens: u64,
    /// Mean next-token cross-entropy of the clean model.
    pub ce_clean: f64,
    /// ... with the SAE's reconstruction spliced in at the hook.
    pub ce_spliced: f64,
    /// ... with the hook's activations replaced by zeros.
    pub ce_zero_ablate: f64,
    /// `(ce_zero_ablate - ce_spliced) / (ce_zero_ablate - ce_clean)`.
    pub loss_recovered: f64,
    /// Mean over tokens of `KL(p_clean || p_spliced)` in nats.
    pub kl: f64,
}

/// Accumulates the per-token losses and logits of three forward passes (clean, spliced,
/// zero-ablated) over batches of text, and reports loss recovered and KL.
#[derive(Debug, Default, Clone)]
pub struct SpliceMeter {
    tokens: u64,
    clean: f64,
    spliced: f64,
    zero: f64,
    kl: f64,
}

impl SpliceMeter {
    /// Adds one batch. `ce_*` are per-token cross-entropies of any shape with the same number
    /// of elements (`(tokens)` or `(batch, seq_len)`); `logits_*` are `(..., vocab)` with one
    /// row per token, in the same order.
    pub fn add(
        &mut self,
        ce_clean: &Tensor,
        ce_spliced: &Tensor,
        ce_zero: &Tensor,
        logits_clean: &Tensor,
        logits_spliced: &Tensor,
    ) -> Result<()> {
        let n = ce_clean.numel();
        let vocab = *logits_clean.size().last().unwrap_or(&0);
        let shape_err = |what: &str, got: Vec<i64>| Error::InvalidSpec {
            sae: String::new(),
            reason: format!("splice metrics: {what} has shape {got:?}, expected {n} tokens"),
        };
        for (what, t) in [("ce_spliced", ce_spliced), ("ce_zero", ce_zero)] {
            if t.numel() != n {
                return Err(shape_err(what, t.size()));
            }
        }
        for (what, t) in [
            ("logits_clean", logits_clean),
            ("logits_spliced", logits_spliced),
        ] {
            if vocab == 0 || t.numel() != n * vocab as usize || t.size().last() != Some(&vocab) {
                return Err(shape_err(what, t.size()));
            }
        }
        let sum = |t: &Tensor| -> Result<f64> {
            Ok(t.f_to_kind(Kind::Double)?
                .f_sum(Kind::Double)?
                .double_value(&[]))
        };
        let lp_c = logits_clean
            .f_view([-1, vocab])?
            .f_log_softmax(-1, Kind::Double)?;
        let lp_s = logits_spliced
            .f_view([-1, vocab])?
            .f_log_softmax(-1, Kind::Double)?;
        let kl = lp_c.f_exp()?.f_mul(&lp_c.f_sub(&lp_s)?)?;
        self.clean += sum(ce_clean)?;
        self.spliced += sum(ce_spliced)?;
        self.zero += sum(ce_zero)?;
        self.kl += sum(&kl)?;
        self.tokens += n as u64;
        Ok(())
    }

    pub fn report(&self) -> SpliceReport {
        let n = self.tokens.max(1) as f64;
        let (c, s, z) = (self.clean / n, self.spliced / n, self.zero / n);
        SpliceReport {
            tokens: self.tokens,
            ce_clean: c,
            ce_spliced: s,
            ce_zero_ablate: z,
            loss_recovered: (z - s) / (z - c),
            kl: self.kl / n,
        }
    }
}
