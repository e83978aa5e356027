//! The forward and hand-written backward pass of every architecture, and the Adam update.
//!
//! Gradients are written out rather than taken from autograd: it saves one of the six
//! `(batch, d_in, d_sae)` products autograd would run (the gradient reaching `b_dec` through
//! the encoder is `-(sum_b g_pre) W_enc^T`, a vector-matrix product), builds no graph, and
//! keeps every temporary under our control. A unit test checks each architecture's gradients
//! against autograd.

use tch::{Kind, Tensor};

use crate::Result;
use crate::sparse::{self, Codes, Isa};
use crate::spec::{Arch, ComputeDtype, Hyper};

/// The trainable tensors of one SAE, in SAELens orientation.
#[derive(Debug)]
pub(crate) struct Params {
    /// `(d_in, d_sae)`.
    pub w_enc: Tensor,
    /// `(d_sae)`.
    pub b_enc: Tensor,
    /// `(d_sae, d_in)`; rows are feature directions (raw, normalised at use, for the faithful
    /// architecture; unit norm for the others).
    pub w_dec: Tensor,
    /// `(d_in)`.
    pub b_dec: Tensor,
    /// `(d_sae)`: JumpReLU's thresholds as `ln(theta)` (positive by construction; Adam's
    /// steps are relative changes of theta); `None` for the other architectures.
    pub log_threshold: Option<Tensor>,
}

impl Params {
    pub fn as_array(&self) -> [&Tensor; 4] {
        [&self.w_enc, &self.b_enc, &self.w_dec, &self.b_dec]
    }
}

/// What one forward/backward pass of one SAE on one batch yields.
#[derive(Debug)]
pub(crate) struct Pass {
    /// `(3)`: loss, mse (mean over elements), L0 (mean active features per row).
    pub stats: Tensor,
    /// Gradients of the loss, in [`Params`] order and shapes.
    pub grads: [Tensor; 4],
    /// `(d_sae)`: JumpReLU's pseudo-gradient of `log_threshold` (straight-through estimator).
    pub g_log_threshold: Option<Tensor>,
    /// `(d_sae)` bool: features active on at least one row.
    pub fired: Tensor,
    /// `()`: BatchTopK's smallest kept activation (for its inference threshold).
    pub min_kept: Option<Tensor>,
}

/// The per-step knobs a schedule sets.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepKnobs {
    /// The sparsity coefficient this step: L1 (ReLU variants) or L0 (JumpReLU), warmed up.
    pub sparsity: f64,
    /// Codes denser than this run the dense decoder path (libtorch GEMMs); sparser codes on
    /// the CPU run the kernels of [`crate::sparse`].
    pub sparse_max_density: f64,
    /// The element type of the large products.
    pub compute: ComputeDtype,
}

/// `t` as an operand of the large products: itself in f32, a bfloat16 copy in bf16.
fn operand(t: &Tensor, compute: ComputeDtype) -> Result<Tensor> {
    Ok(match compute {
        ComputeDtype::F32 => t.shallow_clone(),
        ComputeDtype::Bf16 => t.f_to_kind(Kind::BFloat16)?,
    })
}

/// `a b` of two operands (see [`operand`]), as f32.
fn mm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let r = a.f_mm(b)?;
    Ok(if r.kind() == Kind::Float {
        r
    } else {
        r.f_to_kind(Kind::Float)?
    })
}

fn sum0(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_sum_dim_intlist(0i64, false, Kind::Float)?)
}

/// Row norms of `w (rows, cols)` as `(rows, 1)`, clamped like `F.normalize` (eps 1e-12).
pub(crate) fn row_norms(w: &Tensor) -> Result<Tensor> {
    Ok(w.f_square()?
        .f_sum_dim_intlist(1i64, true, Kind::Float)?
        .f_sqrt()?
        .f_clamp_min(1e-12)?)
}

/// The gradient pieces a decoder path returns.
struct Tail {
    /// `()`: the loss beyond the MSE (L1 term, or AuxK loss).
    extra: Tensor,
    mse: Tensor,
    /// `(d_sae)` f32: rows on which each feature is active.
    counts: Tensor,
    /// `(d_in)`: gradient of `b_dec` through the decoder.
    g_b_dec: Tensor,
    /// `(d_sae, d_in)`: gradient of the effective decoder (normalised, for the faithful SAE).
    g_wdec: Tensor,
    /// `(d_in, d_sae)`.
    g_w_enc: Tensor,
    /// `(d_sae)`.
    g_b_enc: Tensor,
    /// `(batch, d_in)`: gradient of the MSE with respect to `x_hat` (JumpReLU's threshold
    /// gradient needs it at codes that are zero).
    g_xhat: Tensor,
}

/// Forward and backward pass of one SAE on `xs (batch, d_in)`. `b_dec` may be a replacement
/// for `p.b_dec` (its first-batch initialisation). `dead (d_sae)` marks dead features for AuxK.
pub(crate) fn pass(
    arch: Arch,
    hyper: &Hyper,
    p: &Params,
    b_dec: &Tensor,
    xs: &Tensor,
    knobs: StepKnobs,
    dead: Option<&Tensor>,
) -> Result<Pass> {
    let (batch, d_in) = (xs.size()[0], xs.size()[1] as usize);
    let d_sae = p.w_enc.size()[1];
    let xc = xs.f_sub(b_dec)?;
    let compute = knobs.compute;
    let xc_op = operand(&xc, compute)?;
    // `acts` is ReLU(pre), computed in place: every architecture selects from it. JumpReLU
    // zeroes `pre <= theta` instead (theta > 0, so its codes are non-negative too), after
    // noting the entries in its kernel's window (some of which are zeroed).
    let cpu = xs.device() == tch::Device::Cpu;
    // ReLU SAEs on the CPU take the product alone; one pass then adds the bias, applies ReLU
    // and counts the active entries (addmm would first copy the bias into every row).
    let (mut acts, fused_stats) = if cpu && matches!(arch, Arch::ReluL1Faithful | Arch::ReluL1) {
        let mut pre = mm(&xc_op, &operand(&p.w_enc, compute)?)?;
        let b_enc = cpu_contiguous(&p.b_enc)?;
        let stats = match (cpu_f32_slice_mut(&mut pre), cpu_f32_slice(&b_enc)) {
            (Some(dense), Some(bias)) => Some(sparse::bias_relu_stats(dense, bias)),
            _ => None,
        };
        match stats {
            Some(_) => (pre, stats),
            // Not a plain f32 tensor: ReLU comes below, as for the other architectures.
            None => (pre.f_add(&p.b_enc)?, None),
        }
    } else {
        let mut pre = mm(&xc_op, &operand(&p.w_enc, compute)?)?;
        let _ = pre.f_add_(&p.b_enc)?;
        (pre, None)
    };
    let jump = match (arch, &p.log_threshold) {
        (Arch::JumpRelu, Some(log_th)) => {
            let eps = hyper.bandwidth.unwrap_or(crate::spec::JUMPRELU_BANDWIDTH);
            let theta = log_th.f_exp()?;
            let window = acts.f_sub(&theta)?.f_abs()?.f_lt(eps / 2.0)?;
            let below = acts.f_le_tensor(&theta)?;
            let _ = acts.f_masked_fill_(&below, 0.0)?;
            Some((theta, window, eps))
        }
        (Arch::JumpRelu, None) => {
            return Err(crate::Error::InvalidSpec {
                sae: String::new(),
                reason: "a jumprelu SAE without thresholds".into(),
            });
        }
        _ => {
            if fused_stats.is_none() {
                let _ = acts.f_relu_()?;
            }
            None
        }
    };
    let norms = if arch == Arch::ReluL1Faithful {
        Some(row_norms(&p.w_dec)?)
    } else {
        None
    };
    let w_dec = match &norms {
        Some(n) => p.w_dec.f_div(n)?,
        None => p.w_dec.shallow_clone(),
    };
    let k = hyper.k.unwrap_or(1) as i64;
    let mut min_kept = None;
    let aux_dead = dead.filter(|_| hyper.auxk_alpha > 0.0);
    let l1 = arch.uses_l1().then_some(knobs.sparsity);
    let tail = match arch {
        Arch::ReluL1Faithful | Arch::ReluL1 | Arch::JumpRelu => match cpu_f32_slice(&acts) {
            Some(dense) => {
                // One pass counts the active entries per feature and per row; sparse enough
                // codes are then gathered into CSR from the same memory.
                let stats = match fused_stats {
                    Some(stats) => stats,
                    None => sparse::column_stats(dense, d_sae as usize),
                };
                if (stats.nnz() as f64) < knobs.sparse_max_density * (batch * d_sae) as f64 {
                    let codes =
                        Codes::from_dense(Isa::detect(), dense, d_sae as usize, &stats.row_counts);
                    sparse_tail(
                        &codes,
                        Some(stats.sum),
                        None,
                        xs,
                        &xc,
                        &w_dec,
                        b_dec,
                        l1,
                        hyper,
                        p,
                    )?
                } else {
                    let counts: Vec<f32> = stats.col_counts.iter().map(|&c| c as f32).collect();
                    let counts = Tensor::f_from_slice(&counts)?;
                    dense_tail(
                        &acts,
                        Some((counts, stats.sum)),
                        None,
                        xs,
                        &xc_op,
                        &w_dec,
                        b_dec,
                        l1,
                        hyper,
                        p,
                        compute,
                    )?
                }
            }
            None => dense_tail(
                &acts, None, None, xs, &xc_op, &w_dec, b_dec, l1, hyper, p, compute,
            )?,
        },
        Arch::TopK | Arch::BatchTopK => {
            // TopK keeps `k` per row; BatchTopK keeps `k * batch` over the whole batch.
            let batchwise = arch == Arch::BatchTopK;
            let flat = acts.f_view([-1])?;
            let (vals, idx) = if batchwise {
                flat.f_topk(k * batch, 0, true, false)?
            } else {
                acts.f_topk(k, 1, true, false)?
            };
            if batchwise {
                // The smallest kept positive activation: zeros kept when too few are positive
                // must not drag the threshold to zero.
                let pos = vals.f_where_scalarother(&vals.f_gt(0.0)?, f64::INFINITY)?;
                min_kept = Some(pos.f_min()?);
            }
            let aux = match aux_dead {
                Some(dead) => aux_select(&acts, dead, xs.size()[1])?,
                None => None,
            };
            if cpu && (k as f64) < knobs.sparse_max_density * d_sae as f64 {
                let (idx, vals, n) = (to_i64(&idx)?, to_f32(&vals)?, d_sae as usize);
                let codes = if batchwise {
                    Codes::from_flat(&idx, &vals, batch as usize, n)
                } else {
                    Codes::from_topk(&idx, &vals, k as usize, n)
                };
                let aux = aux.map(|a| sparse_aux(a, n)).transpose()?;
                let aux = aux.as_ref();
                sparse_tail(&codes, None, aux, xs, &xc, &w_dec, b_dec, l1, hyper, p)?
            } else {
                let cs = if batchwise {
                    flat.f_zeros_like()?
                        .f_scatter(0, &idx, &vals)?
                        .f_view([batch, d_sae])?
                } else {
                    acts.f_zeros_like()?.f_scatter(1, &idx, &vals)?
                };
                let aux = aux.map(|a| dense_aux(&acts, a)).transpose()?;
                dense_tail(
                    &cs, None, aux, xs, &xc_op, &w_dec, b_dec, l1, hyper, p, compute,
                )?
            }
        }
    };
    let Tail {
        mut extra,
        mse,
        counts,
        mut g_b_dec,
        g_wdec,
        g_w_enc,
        g_b_enc,
        g_xhat,
    } = tail;
    let l0 = counts.f_sum(Kind::Float)?.f_div_scalar(batch as f64)?;
    let g_log_threshold = match jump {
        Some((theta, window, eps)) => {
            extra = l0.f_mul_scalar(knobs.sparsity)?;
            let g = threshold_grad(&theta, &window, eps, knobs.sparsity, &g_xhat, &w_dec)?;
            Some(g)
        }
        None => None,
    };
    // b_dec also enters through `xc = xs - b_dec`: its gradient there is -(sum_b g_pre) W_enc^T.
    let through_enc = g_b_enc
        .f_unsqueeze(0)?
        .f_mm(&p.w_enc.f_tr()?)?
        .f_squeeze_dim(0)?;
    let _ = g_b_dec.f_sub_(&through_enc)?;
    // The faithful decoder is normalised at use: d/dW of W / |W| (row-wise) is
    // (G - Wn * <G, Wn>) / |W|. A unit-norm decoder removes the gradient component parallel
    // to each row: G - W * <G, W>.
    let unit = match &norms {
        Some(_) => &w_dec,
        None => &p.w_dec,
    };
    let mut g_w_dec = g_wdec;
    let norms_t = norms.as_ref().map(Tensor::f_contiguous).transpose()?;
    let fused = match (
        cpu_f32_slice(unit),
        norms_t.as_ref().map(cpu_f32_slice),
        cpu_f32_slice_mut(&mut g_w_dec),
    ) {
        (Some(w), Some(Some(n)), Some(g)) => project_rows(g, w, Some(n), d_in),
        (Some(w), None, Some(g)) => project_rows(g, w, None, d_in),
        _ => false,
    };
    if !fused {
        let dot = g_w_dec
            .f_mul(unit)?
            .f_sum_dim_intlist(1i64, true, Kind::Float)?;
        g_w_dec = g_w_dec.f_sub(&unit.f_mul(&dot)?)?;
        if let Some(n) = &norms {
            g_w_dec = g_w_dec.f_div(n)?;
        }
    }
    let fired = counts.f_gt(0.0)?;
    let loss = mse.f_add(&extra)?;
    let stats = Tensor::f_stack(&[loss, mse, l0], 0)?;
    Ok(Pass {
        stats,
        grads: [g_w_enc, g_b_enc, g_w_dec, g_b_dec],
        g_log_threshold,
        fired,
        min_kept,
    })
}

/// JumpReLU's pseudo-gradient of `log_threshold (d_sae)` (Rajamanoharan et al. 2024, as in
/// SAELens): with `rect(u) = 1` for `|u| < 1/2`, the straight-through estimator gives
/// `d z_tj / d theta_j = -(theta_j / eps) rect((pre_tj - theta_j) / eps)` for the code and
/// `-(1 / eps) rect(...)` for its step `H(pre_tj - theta_j)`, so
/// `dL / d theta_j = -(theta_j / eps) sum_t rect * g_z_tj - (l0 / (batch eps)) sum_t rect`,
/// times `theta_j` for `ln(theta_j)`. `window (batch, d_sae)` is true where `rect = 1`;
/// `g_z_tj = <g_xhat_t, W_dec_j>` is needed there only, where most codes are zero, so it is
/// a gathered dot product per window entry, or one GEMM when the window holds many.
fn threshold_grad(
    theta: &Tensor,
    window: &Tensor,
    eps: f64,
    l0: f64,
    g_xhat: &Tensor,
    w_dec: &Tensor,
) -> Result<Tensor> {
    let (batch, d_in) = (g_xhat.size()[0], g_xhat.size()[1]);
    let d_sae = theta.size()[0];
    let n_w = window.f_sum(Kind::Int64)?.int64_value(&[]);
    let opts = (Kind::Float, theta.device());
    let (g_sum, count) = if n_w * d_in <= batch * d_sae {
        let idx = window.f_nonzero()?;
        let (rows, cols) = (idx.f_select(1, 0)?, idx.f_select(1, 1)?);
        let g = g_xhat
            .f_index_select(0, &rows)?
            .f_mul(&w_dec.f_index_select(0, &cols)?)?
            .f_sum_dim_intlist(1i64, false, Kind::Float)?;
        // CPU index_add walks the entries in order: sums are repeatable.
        let zeros = Tensor::f_zeros([d_sae], opts)?;
        let ones = Tensor::f_ones([n_w], opts)?;
        (
            zeros.f_index_add(0, &cols, &g)?,
            zeros.f_index_add(0, &cols, &ones)?,
        )
    } else {
        let mask = window.f_to_kind(Kind::Float)?;
        let g_z = g_xhat.f_mm(&w_dec.f_tr()?)?;
        (sum0(&g_z.f_mul(&mask)?)?, sum0(&mask)?)
    };
    let g_theta = g_sum
        .f_mul(theta)?
        .f_add(&count.f_mul_scalar(l0 / batch as f64)?)?
        .f_mul_scalar(-1.0 / eps)?;
    Ok(g_theta.f_mul(theta)?)
}

fn to_i64(t: &Tensor) -> Result<Vec<i64>> {
    Ok(Vec::try_from(&t.f_contiguous()?.f_view([-1])?)?)
}

fn to_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::try_from(&t.f_contiguous()?.f_view([-1])?)?)
}

/// AuxK's selection (Gao et al. 2024): the top `k_aux = min(d_in / 2, dead)` activations
/// among dead features, `(batch, k_aux)` values and indices, with the loss scale
/// `min(dead / (d_in / 2), 1)`. `None` when no feature is dead.
/// The AuxK selection `(values, indices, scale)` as sparse codes.
fn sparse_aux((av, ai, scale): (Tensor, Tensor, f64), d_sae: usize) -> Result<(Codes, f64)> {
    let ka = ai.size()[1] as usize;
    let codes = Codes::from_topk(&to_i64(&ai)?, &to_f32(&av)?, ka, d_sae);
    Ok((codes, scale))
}

/// The AuxK selection `(values, indices, scale)` scattered into a dense `(batch, d_sae)`.
fn dense_aux(acts: &Tensor, (av, ai, scale): (Tensor, Tensor, f64)) -> Result<(Tensor, f64)> {
    Ok((acts.f_zeros_like()?.f_scatter(1, &ai, &av)?, scale))
}

fn aux_select(acts: &Tensor, dead: &Tensor, d_in: i64) -> Result<Option<(Tensor, Tensor, f64)>> {
    let num_dead = dead.f_sum(Kind::Int64)?.int64_value(&[]);
    if num_dead == 0 {
        return Ok(None);
    }
    let half = (d_in / 2).max(1);
    let scale = (num_dead as f64 / half as f64).min(1.0);
    let (vals, idx) = acts
        .f_mul(dead)?
        .f_topk(half.min(num_dead), 1, true, false)?;
    Ok(Some((vals, idx, scale)))
}

/// The decoder path on libtorch GEMMs: `cs (batch, d_sae)` dense codes; `aux` the dense AuxK
/// codes and their scale. The AuxK loss is `alpha * scale * mean((e_hat - r)^2)` with
/// `e_hat = aux W_dec` and `r = xs - x_hat` (gradient stopped).
#[allow(clippy::too_many_arguments)]
fn dense_tail(
    cs: &Tensor,
    // Per-feature active counts and the codes' L1 sum, when the caller has them.
    stats: Option<(Tensor, f64)>,
    aux: Option<(Tensor, f64)>,
    xs: &Tensor,
    xc: &Tensor,
    w_dec: &Tensor,
    b_dec: &Tensor,
    l1: Option<f64>,
    hyper: &Hyper,
    p: &Params,
    compute: ComputeDtype,
) -> Result<Tail> {
    let (batch, d_in) = (xs.size()[0], xs.size()[1]);
    let d_sae = cs.size()[1];
    let (cs_op, w_dec_op) = (operand(cs, compute)?, operand(w_dec, compute)?);
    let mut x_hat = mm(&cs_op, &w_dec_op)?;
    let _ = x_hat.f_add_(b_dec)?;
    let err = x_hat.f_sub(xs)?;
    let flat = err.f_view([-1])?;
    let mse = flat.f_dot(&flat)?.f_div_scalar((batch * d_in) as f64)?;
    let (counts, l1_sum) = match stats {
        Some((c, s)) => (c, Some(s)),
        // Codes are non-negative: the column sums of their signs count active rows.
        None => (sum0(&cs.f_sign()?)?, None),
    };
    let g_xhat = err.f_mul_scalar(2.0 / (batch * d_in) as f64)?;
    let g_b_dec = sum0(&g_xhat)?;
    let g_xhat_op = operand(&g_xhat, compute)?;
    let mut g_wdec = mm(&cs_op.f_tr()?, &g_xhat_op)?;
    // The L1 term's gradient: a constant l1 / batch on active codes. On the CPU it is added
    // in one pass with ReLU's backward and the bias gradient, in place; elsewhere it rides
    // in the GEMM's bias.
    let c = l1.map_or(0.0, |l1| l1 / batch as f64);
    let cpu_acts = cpu_f32_slice(cs).filter(|_| aux.is_none());
    let mut g_cs = match cpu_acts {
        Some(_) => mm(&g_xhat_op, &w_dec_op.f_tr()?)?,
        None => mm(&g_xhat_op, &w_dec_op.f_tr()?)?.f_add_scalar(c)?,
    };
    let fused = match (cpu_acts, cpu_f32_slice_mut(&mut g_cs)) {
        (Some(a), Some(g)) => Some(sparse::relu_backward_column_sums(
            g,
            a,
            d_sae as usize,
            c as f32,
        )),
        _ => None,
    };
    let mut g_pre = match fused {
        Some(_) => g_cs,
        None if cpu_acts.is_some() => cs.f_threshold_backward(&g_cs.f_add_scalar(c)?, 0.0)?,
        None => cs.f_threshold_backward(&g_cs, 0.0)?,
    };
    let extra = match (l1, aux) {
        (Some(l1), _) => match l1_sum {
            Some(sum) => Tensor::f_from_slice(&[(sum * l1 / batch as f64) as f32])?.f_view([])?,
            None => cs.f_sum(Kind::Float)?.f_mul_scalar(l1 / batch as f64)?,
        },
        (None, Some((acts, scale))) => {
            let (acts_op, w_raw_op) = (operand(&acts, compute)?, operand(&p.w_dec, compute)?);
            let e_hat = mm(&acts_op, &w_raw_op)?;
            let diff = e_hat.f_add(&err)?;
            let coef = hyper.auxk_alpha * scale;
            let df = diff.f_view([-1])?;
            let loss = df.f_dot(&df)?.f_mul_scalar(coef / (batch * d_in) as f64)?;
            let g_ehat = diff.f_mul_scalar(coef * 2.0 / (batch * d_in) as f64)?;
            let g_ehat_op = operand(&g_ehat, compute)?;
            g_wdec = g_wdec.f_add(&mm(&acts_op.f_tr()?, &g_ehat_op)?)?;
            let g_acts = acts.f_threshold_backward(&mm(&g_ehat_op, &w_raw_op.f_tr()?)?, 0.0)?;
            g_pre = g_pre.f_add(&g_acts)?;
            loss
        }
        (None, None) => Tensor::f_zeros([], (Kind::Float, xs.device()))?,
    };
    let g_b_enc = match fused {
        Some(sums) => Tensor::f_from_slice(&sums)?,
        None => sum0(&g_pre)?,
    };
    let g_w_enc = mm(&xc.f_tr()?, &operand(&g_pre, compute)?)?;
    Ok(Tail {
        extra,
        mse,
        counts,
        g_b_dec,
        g_wdec,
        g_w_enc,
        g_b_enc,
        g_xhat,
    })
}

/// The decoder path on the sparse CPU kernels (same math as [`dense_tail`]): `codes
/// (batch, d_sae)` with their L1 sum when the caller has it, `aux` AuxK's codes and scale.
#[allow(clippy::too_many_arguments)]
fn sparse_tail(
    codes: &Codes,
    l1_sum: Option<f64>,
    aux: Option<&(Codes, f64)>,
    xs: &Tensor,
    xc: &Tensor,
    w_dec: &Tensor,
    b_dec: &Tensor,
    l1: Option<f64>,
    hyper: &Hyper,
    p: &Params,
) -> Result<Tail> {
    let (batch, d_in) = (xs.size()[0], xs.size()[1]);
    let (b, d, n) = (batch as usize, d_in as usize, codes.n);
    let isa = Isa::detect();
    let (w_t, x_t, xc_t, bias_t) = (
        cpu_contiguous(w_dec)?,
        cpu_contiguous(xs)?,
        cpu_contiguous(xc)?,
        cpu_contiguous(b_dec)?,
    );
    let [w, x, xcv, bias] = [&w_t, &x_t, &xc_t, &bias_t].map(|t| cpu_f32_slice(t).unwrap_or(&[]));
    let mut g_xhat = codes.decode(isa, w, d);
    // g_xhat <- x_hat + b_dec - xs (the error), then scaled into the MSE's gradient.
    let mut sq = 0.0f64;
    for (row, xr) in g_xhat.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let mut row_sq = 0.0f32;
        for ((o, bias), x) in row.iter_mut().zip(bias).zip(xr) {
            *o += bias - x;
            row_sq += *o * *o;
        }
        sq += f64::from(row_sq);
    }
    let err = (aux.is_some()).then(|| g_xhat.clone());
    let inv = 2.0 / (b * d) as f32;
    g_xhat.iter_mut().for_each(|e| *e *= inv);
    let mse = sq / (b * d) as f64;
    let byf = codes.by_feature();
    let mut g_vals = byf.sddmm(isa, &g_xhat, w, d);
    let mut extra = 0.0;
    if let Some(l1) = l1 {
        let c = (l1 / batch as f64) as f32;
        g_vals.iter_mut().for_each(|g| *g += c);
        let sum = l1_sum.unwrap_or_else(|| byf.val.iter().map(|&v| f64::from(v)).sum());
        extra = sum * l1 / batch as f64;
    }
    let mut g_wdec = Tensor::f_zeros([n as i64, d_in], (Kind::Float, tch::Device::Cpu))?;
    let mut g_wenc_t = g_wdec.f_zeros_like()?;
    let mut g_b_enc = byf.column_sums(&g_vals);
    {
        // Both are fresh tensors of their own; empty ones (no features) have no slice.
        let gd = cpu_f32_slice_mut(&mut g_wdec).unwrap_or_default();
        let ge = cpu_f32_slice_mut(&mut g_wenc_t).unwrap_or_default();
        byf.accumulate(isa, &byf.val, &g_xhat, d, gd);
        byf.accumulate(isa, &g_vals, xcv, d, ge);
        if let (Some((ac, scale)), Some(err)) = (aux, err) {
            // AuxK: e_hat = aux W_dec (raw decoder; TopK variants are unit norm), r = -err.
            let wr_t = cpu_contiguous(&p.w_dec)?;
            let wr = cpu_f32_slice(&wr_t).unwrap_or(&[]);
            let mut diff = ac.decode(isa, wr, d);
            diff.iter_mut().zip(&err).for_each(|(e, r)| *e += r);
            let coef = hyper.auxk_alpha * scale;
            extra = diff
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                * coef
                / (b * d) as f64;
            let gc = (coef * 2.0 / (b * d) as f64) as f32;
            let g_ehat: Vec<f32> = diff.iter().map(|v| v * gc).collect();
            let acf = ac.by_feature();
            let g_aux = acf.sddmm(isa, &g_ehat, wr, d);
            acf.accumulate(isa, &acf.val, &g_ehat, d, gd);
            acf.accumulate(isa, &g_aux, xcv, d, ge);
            for (o, a) in g_b_enc.iter_mut().zip(acf.column_sums(&g_aux)) {
                *o += a;
            }
        }
    }
    let g_xhat_t = Tensor::f_from_slice(&g_xhat)?.f_view([batch, d_in])?;
    Ok(Tail {
        extra: Tensor::f_from_slice(&[extra as f32])?.f_view([])?,
        mse: Tensor::f_from_slice(&[mse as f32])?.f_view([])?,
        counts: Tensor::f_from_slice(&byf.counts())?,
        g_b_dec: sum0(&g_xhat_t)?,
        g_wdec,
        g_w_enc: g_wenc_t.f_tr()?.f_contiguous()?,
        g_b_enc: Tensor::f_from_slice(&g_b_enc)?,
        g_xhat: g_xhat_t,
    })
}

/// `t` as a contiguous f32 CPU tensor (itself when it is one already).
fn cpu_contiguous(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_to_device(tch::Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?)
}

/// Adam's two moment estimates of one SAE, in [`Params`] order.
#[derive(Debug)]
pub(crate) struct Moments {
    pub m: [Tensor; 4],
    pub v: [Tensor; 4],
    /// `(m, v)` of [`Params::log_threshold`], when the SAE has one.
    pub threshold: Option<(Tensor, Tensor)>,
}

impl Moments {
    pub fn zeros(p: &Params) -> Result<Moments> {
        let z = |t: &Tensor| t.f_zeros_like();
        let threshold = match &p.log_threshold {
            Some(t) => Some((z(t)?, z(t)?)),
            None => None,
        };
        Ok(Moments {
            m: [z(&p.w_enc)?, z(&p.b_enc)?, z(&p.w_dec)?, z(&p.b_dec)?],
            v: [z(&p.w_enc)?, z(&p.b_enc)?, z(&p.w_dec)?, z(&p.b_dec)?],
            threshold,
        })
    }
}

/// One Adam step, `t` counting from 1: PyTorch's formulation
/// (`p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)`). On the CPU it is one fused pass per
/// tensor ([`adam_fused`]); elsewhere in-place tensor ops that use the gradients as scratch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn adam(
    p: &mut Params,
    mom: &mut Moments,
    grads: &mut [Tensor; 4],
    g_log_threshold: Option<&mut Tensor>,
    hyper: &Hyper,
    lr: f64,
    t: u64,
) -> Result<()> {
    let (b1, b2) = (hyper.adam_beta1, hyper.adam_beta2);
    let bc1 = 1.0 - b1.powf(t as f64);
    let bc2_sqrt = (1.0 - b2.powf(t as f64)).sqrt();
    let step_size = lr / bc1;
    let Params {
        w_enc,
        b_enc,
        w_dec,
        b_dec,
        log_threshold,
    } = p;
    let [m0, m1, m2, m3] = &mut mom.m;
    let [v0, v1, v2, v3] = &mut mom.v;
    let [g0, g1, g2, g3] = grads;
    let mut jobs = vec![
        (w_enc, g0, m0, v0),
        (b_enc, g1, m1, v1),
        (w_dec, g2, m2, v2),
        (b_dec, g3, m3, v3),
    ];
    // JumpReLU's thresholds take the same Adam step (SAELens optimises `log_threshold` with
    // the other parameters).
    if let (Some(th), Some(g), Some((m, v))) = (
        log_threshold.as_mut(),
        g_log_threshold,
        mom.threshold.as_mut(),
    ) {
        jobs.push((th, g, m, v));
    }
    for (param, g, m, v) in jobs {
        if adam_fused(
            param,
            g,
            m,
            v,
            [b1, b2, bc2_sqrt, step_size, hyper.adam_eps],
        ) {
            continue;
        }
        let _ = m.f_lerp_(g, 1.0 - b1)?;
        let _ = v.f_mul_scalar_(b2)?;
        let _ = g.f_mul_scalar_((1.0 - b2).sqrt())?;
        let _ = v.f_addcmul_(g, g)?;
        // g <- -(sqrt(v) / bc2_sqrt + eps) / step_size, so that p += m / g is the update.
        let _ = v.f_sqrt_out(g)?;
        let _ = g.f_mul_scalar_(-1.0 / (bc2_sqrt * step_size))?;
        let _ = g.f_add_scalar_(-hyper.adam_eps / step_size)?;
        let _ = param.f_addcdiv_(m, g)?;
    }
    Ok(())
}

/// The values of a contiguous f32 CPU tensor, borrowed; `None` for any other tensor.
pub(crate) fn cpu_f32_slice(t: &Tensor) -> Option<&[f32]> {
    let n = t.numel();
    if !plain_cpu_f32(t, n) || n == 0 {
        return None;
    }
    // SAFETY: `t` is a contiguous f32 CPU tensor of `n` elements, so its data pointer
    // addresses `n` initialised f32 values; the shared borrow of `t` outlives the slice, and
    // this crate never writes to a tensor while a slice of it is alive.
    Some(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) })
}

/// The values of a contiguous f32 CPU tensor, mutably borrowed; `None` for any other tensor.
pub(crate) fn cpu_f32_slice_mut(t: &mut Tensor) -> Option<&mut [f32]> {
    let n = t.numel();
    if !plain_cpu_f32(t, n) || n == 0 {
        return None;
    }
    // SAFETY: as in `cpu_f32_slice`; the exclusive borrow of `t` keeps every other Rust
    // reference to this tensor away while the slice lives. Only call it on tensors whose
    // storage no other tensor shares (fresh results of an operation).
    Some(unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) })
}

/// Whether `t` is a contiguous f32 CPU tensor of `numel` elements.
fn plain_cpu_f32(t: &Tensor, numel: usize) -> bool {
    t.device() == tch::Device::Cpu
        && t.kind() == Kind::Float
        && t.is_contiguous()
        && t.numel() == numel
}

/// The decoder gradient's projection in one parallel pass over the rows of `g (rows, d)`, in
/// place: `(g - w <g, w>) / norm` with `w (rows, d)` unit rows and `norms (rows)` (`None`: no
/// division). `false` (nothing done) when the lengths disagree.
fn project_rows(g: &mut [f32], w: &[f32], norms: Option<&[f32]>, d: usize) -> bool {
    use rayon::prelude::*;
    if d == 0 || g.len() != w.len() || norms.is_some_and(|n| n.len() * d != g.len()) {
        return false;
    }
    g.par_chunks_mut(d * 64)
        .zip(w.par_chunks(d * 64))
        .enumerate()
        .for_each(|(block, (g, w))| {
            let norms = norms.map(|n| &n[block * 64..]);
            sparse::wide!(project_block(g: &mut [f32], w: &[f32], norms: Option<&[f32]>, d: usize) -> ())
        });
    true
}

/// [`project_rows`] on one block of rows; `norms` starts at the block's first row.
#[inline(always)]
fn project_block(g: &mut [f32], w: &[f32], norms: Option<&[f32]>, d: usize) {
    for (i, (g, w)) in g.chunks_exact_mut(d).zip(w.chunks_exact(d)).enumerate() {
        // Sixteen lanes of partial sums: vectorised, in a fixed order.
        let mut lanes = [0.0f32; 16];
        let (gc, wc) = (g.chunks_exact(16), w.chunks_exact(16));
        for (l, (x, y)) in gc.remainder().iter().zip(wc.remainder()).enumerate() {
            lanes[l] += x * y;
        }
        for (x, y) in gc.zip(wc) {
            for l in 0..16 {
                lanes[l] += x[l] * y[l];
            }
        }
        let dot: f32 = lanes.iter().sum();
        let inv = norms.map_or(1.0, |n| 1.0 / n[i]);
        for (x, y) in g.iter_mut().zip(w) {
            *x = (*x - y * dot) * inv;
        }
    }
}

/// Adam on CPU tensors in one fused, parallel pass; `false` (nothing done) when a tensor is
/// not a contiguous f32 CPU tensor. `c = [beta1, beta2, sqrt(bc2), step_size, eps]`.
fn adam_fused(p: &mut Tensor, g: &Tensor, m: &mut Tensor, v: &mut Tensor, c: [f64; 5]) -> bool {
    use rayon::prelude::*;
    let n = p.numel();
    if ![&*p, g, &*m, &*v].iter().all(|t| plain_cpu_f32(t, n)) || n == 0 {
        return false;
    }
    // SAFETY: the four tensors are contiguous f32 CPU tensors of `n` elements (checked
    // above), so each data pointer addresses `n` initialised f32 values. They are distinct
    // allocations: parameters, the two moments and the gradient of this step are each created
    // separately and never share storage, and the `&mut` borrows keep other Rust code from
    // touching them while the slices live.
    let (ps, gs, ms, vs) = unsafe {
        (
            std::slice::from_raw_parts_mut(p.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts(g.data_ptr() as *const f32, n),
            std::slice::from_raw_parts_mut(m.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts_mut(v.data_ptr() as *mut f32, n),
        )
    };
    let c = c.map(|x| x as f32);
    const CHUNK: usize = 1 << 14;
    ps.par_chunks_mut(CHUNK)
        .zip(gs.par_chunks(CHUNK))
        .zip(ms.par_chunks_mut(CHUNK))
        .zip(vs.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            sparse::wide!(adam_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: [f32; 5]) -> ())
        });
    true
}

/// [`adam_fused`] on one chunk.
#[inline(always)]
fn adam_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: [f32; 5]) {
    let [b1, b2, bc2_sqrt, step, eps] = c;
    for (((p, &gi), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let mi = *m + (gi - *m) * (1.0 - b1);
        let vi = *v * b2 + (1.0 - b2) * gi * gi;
        *m = mi;
        *v = vi;
        *p -= step * mi / (vi.sqrt() / bc2_sqrt + eps);
    }
}

/// The geometric median of the rows of `xs (batch, d_in)` by Weiszfeld's iteration.
pub(crate) fn geometric_median(xs: &Tensor) -> Result<Tensor> {
    let xs = xs.f_to_kind(Kind::Double)?;
    let mut m = xs.f_mean_dim(0i64, false, Kind::Double)?;
    for _ in 0..50 {
        let dist = xs
            .f_sub(&m)?
            .f_square()?
            .f_sum_dim_intlist(1i64, true, Kind::Double)?
            .f_sqrt()?;
        let w = dist.f_clamp_min(1e-8)?.f_reciprocal()?;
        let next = xs
            .f_mul(&w)?
            .f_sum_dim_intlist(0i64, false, Kind::Double)?
            .f_div(&w.f_sum(Kind::Double)?)?;
        let shift = next
            .f_sub(&m)?
            .f_square()?
            .f_sum(Kind::Double)?
            .f_sqrt()?
            .double_value(&[]);
        m = next;
        if shift < 1e-9 {
            break;
        }
    }
    Ok(m.f_to_kind(Kind::Float)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::init_weights;
    use crate::spec::SaeSpec;
    use crate::trainer::params_from_weights;
    use tch::Device;

    /// The same losses written for autograd (JumpReLU's thresholds as constants: autograd
    /// sees the codes' mask, not the straight-through estimator).
    fn autograd_loss(
        arch: Arch,
        hyper: &Hyper,
        p: &Params,
        xs: &Tensor,
        l1: f64,
        dead: Option<&Tensor>,
    ) -> Tensor {
        let batch = xs.size()[0];
        let xc = xs - &p.b_dec;
        let pre = xc.mm(&p.w_enc) + &p.b_enc;
        let k = hyper.k.unwrap_or(1) as i64;
        let cs = match arch {
            Arch::ReluL1Faithful | Arch::ReluL1 => pre.relu(),
            Arch::TopK => {
                let (v, i) = pre.relu().topk(k, 1, true, false);
                pre.zeros_like().scatter(1, &i, &v)
            }
            Arch::BatchTopK => {
                let flat = pre.relu().view([-1]);
                let (v, i) = flat.topk(k * batch, 0, true, false);
                flat.zeros_like().scatter(0, &i, &v).view_as(&pre)
            }
            Arch::JumpRelu => {
                let theta = p.log_threshold.as_ref().unwrap().detach().exp();
                &pre * pre.gt_tensor(&theta).to_kind(Kind::Float)
            }
        };
        let w_dec = if arch == Arch::ReluL1Faithful {
            &p.w_dec
                / p.w_dec
                    .square()
                    .sum_dim_intlist(1i64, true, Kind::Float)
                    .sqrt()
        } else {
            p.w_dec.shallow_clone()
        };
        let x_hat = cs.mm(&w_dec) + &p.b_dec;
        let err = &x_hat - xs;
        let mut loss = err.square().mean(Kind::Float);
        if arch == Arch::JumpRelu {
            loss += cs.gt(0.0).sum(Kind::Float) * (l1 / batch as f64);
        } else if !arch.uses_k() {
            loss += cs.sum(Kind::Float) * (l1 / batch as f64);
        } else if let Some(dead) = dead {
            let d_in = xs.size()[1];
            let n_dead = dead.sum(Kind::Int64).int64_value(&[]);
            let k_aux = (d_in / 2).min(n_dead);
            let scale = (n_dead as f64 / (d_in / 2) as f64).min(1.0);
            let (v, i) = (pre.relu() * dead).topk(k_aux, 1, true, false);
            let acts = pre.zeros_like().scatter(1, &i, &v);
            let e_hat = acts.mm(&p.w_dec);
            let aux = (e_hat + err.detach()).square().mean(Kind::Float);
            loss += aux * (hyper.auxk_alpha * scale);
        }
        loss
    }

    /// A seeded standard-normal tensor (libtorch's global RNG is shared between tests).
    fn normal(seed: u64, shape: &[i64]) -> Tensor {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.iter().product::<i64>() as usize;
        let v: Vec<f32> = (0..n)
            .map(|_| rand::RngExt::sample(&mut rng, rand_distr::StandardNormal))
            .collect();
        Tensor::from_slice(&v).view(shape)
    }

    #[test]
    fn hand_gradients_match_autograd() {
        let xs = normal(1, &[12, 6]) + 0.3;
        for arch in Arch::ALL {
            let mut spec = SaeSpec::new(arch, 0, "h", "m", 6, 4);
            if arch.uses_k() {
                spec.hyper.k = Some(3);
            }
            let mut p = params_from_weights(&init_weights(&spec), Device::Cpu).unwrap();
            p.b_dec = normal(2, &[6]) * 0.1;
            p.b_enc = normal(3, &[24]) * 0.1;
            if arch == Arch::JumpRelu {
                p.log_threshold = Some((normal(4, &[24]).abs() * 0.2 + 0.01).log());
            }
            // Some features dead, to exercise AuxK.
            let dead = Tensor::arange(24, (Kind::Int64, Device::Cpu))
                .remainder(3)
                .eq(0);
            let dead_opt = arch.uses_k().then_some(&dead);
            for sparse in [0.0, 1.0] {
                let knobs = StepKnobs {
                    sparsity: 0.05,
                    sparse_max_density: sparse,
                    compute: ComputeDtype::F32,
                };
                let got = pass(arch, &spec.hyper, &p, &p.b_dec, &xs, knobs, dead_opt).unwrap();
                let leaves: Vec<Tensor> = p
                    .as_array()
                    .iter()
                    .map(|t| t.detach().set_requires_grad(true))
                    .collect();
                let q = Params {
                    w_enc: leaves[0].shallow_clone(),
                    b_enc: leaves[1].shallow_clone(),
                    w_dec: leaves[2].shallow_clone(),
                    b_dec: leaves[3].shallow_clone(),
                    log_threshold: p.log_threshold.as_ref().map(Tensor::shallow_clone),
                };
                let loss = autograd_loss(arch, &spec.hyper, &q, &xs, 0.05, dead_opt);
                loss.backward();
                let want_loss = loss.double_value(&[]);
                let got_loss = got.stats.double_value(&[0]);
                assert!(
                    (want_loss - got_loss).abs() <= 1e-5 * want_loss.abs(),
                    "{arch} (sparse {sparse}): {want_loss} vs {got_loss}"
                );
                for (j, leaf) in leaves.iter().enumerate() {
                    let mut want = leaf.grad();
                    if j == 2 && arch.unit_norm_decoder() {
                        let w = &leaves[2].detach();
                        want = &want - w * (&want * w).sum_dim_intlist(1i64, true, Kind::Float);
                    }
                    let diff = (&want - &got.grads[j]).abs().max().double_value(&[]);
                    let scale = want.abs().max().double_value(&[]).max(1e-6);
                    assert!(
                        diff <= 1e-4 * scale,
                        "{arch} (sparse {sparse}) gradient {j}: max diff {diff} at scale {scale}"
                    );
                }
            }
        }
    }

    /// A tiny JumpReLU SAE: `d_in` 4, `d_sae` 6, batch 5, `b_enc` 1 so that most
    /// pre-activations are positive, each threshold put 0.01 above or below one
    /// pre-activation (inside a kernel window of 0.05 or wider).
    fn tiny_jumprelu() -> (Hyper, Params, Tensor, Tensor) {
        let mut spec = SaeSpec::new(Arch::JumpRelu, 0, "h", "m", 4, 1);
        spec.d_sae = 6;
        let mut p = params_from_weights(&init_weights(&spec), Device::Cpu).unwrap();
        p.b_dec = normal(12, &[4]) * 0.1;
        p.b_enc = normal(13, &[6]) * 0.1 + 1.0;
        let xs = normal(11, &[5, 4]) * 0.5 + 0.2;
        let pre = (&xs - &p.b_dec).mm(&p.w_enc) + &p.b_enc;
        let pre: Vec<f32> = Vec::try_from(&pre.view([-1])).unwrap();
        let theta: Vec<f32> = (0..6)
            .map(|j| {
                let v = pre[(j % 5) * 6 + j];
                let th = if j % 2 == 0 { v + 0.01 } else { v - 0.01 };
                th.max(0.02)
            })
            .collect();
        p.log_threshold = Some(Tensor::from_slice(&theta).log());
        (spec.hyper, p, xs, Tensor::from_slice(&pre).view([5, 6]))
    }

    /// JumpReLU's loss in f64 (MSE + `l0 * mean_t L0_t`) at the given weights.
    fn jumprelu_loss_f64(w: &[Tensor; 4], theta: &Tensor, xs: &Tensor, l0: f64) -> f64 {
        let xs = xs.to_kind(Kind::Double);
        let pre = (&xs - &w[3]).mm(&w[0]) + &w[1];
        let on = pre.gt_tensor(theta).to_kind(Kind::Double);
        let x_hat = (&pre * &on).mm(&w[2]) + &w[3];
        let mse = (x_hat - &xs).square().mean(Kind::Double).double_value(&[]);
        mse + l0 * on.sum(Kind::Double).double_value(&[]) / xs.size()[0] as f64
    }

    #[test]
    fn jumprelu_gradients_match_finite_differences_and_the_threshold_formula() {
        let (mut hyper, p, xs, pre) = tiny_jumprelu();
        let l0 = 0.3;
        let theta = p.log_threshold.as_ref().unwrap().exp();
        let th: Vec<f32> = Vec::try_from(&theta).unwrap();
        let pre_v: Vec<f32> = Vec::try_from(&pre.view([-1])).unwrap();
        let weights = p.as_array().map(|t| t.to_kind(Kind::Double));
        let theta64 = theta.to_kind(Kind::Double);
        // The 0.05 window holds a few entries, some zero codes; 10 holds them all (and takes
        // the GEMM branch of `threshold_grad`).
        for eps in [0.05f32, 10.0] {
            let in_window = |t: usize, j: usize| (pre_v[t * 6 + j] - th[j]).abs() < eps / 2.0;
            let off = (0..30).filter(|&i| in_window(i / 6, i % 6) && pre_v[i] <= th[i % 6]);
            let on = (0..30).filter(|&i| in_window(i / 6, i % 6) && pre_v[i] > th[i % 6]);
            assert!(off.count() > 0 && on.count() > 0, "eps {eps}");
            hyper.bandwidth = Some(f64::from(eps));
            for sparse in [0.0, 1.0] {
                let knobs = StepKnobs {
                    sparsity: l0,
                    sparse_max_density: sparse,
                    compute: ComputeDtype::F32,
                };
                let got = pass(Arch::JumpRelu, &hyper, &p, &p.b_dec, &xs, knobs, None).unwrap();
                let loss = jumprelu_loss_f64(&weights, &theta64, &xs, l0);
                let got_loss = got.stats.double_value(&[0]);
                assert!(
                    (loss - got_loss).abs() < 1e-5 * loss,
                    "{loss} vs {got_loss}"
                );
                // Central differences of the f64 loss; no pre-activation crosses its threshold
                // within h (the nearest is 0.01 away).
                let h = 1e-6;
                for (i, g) in got.grads.iter().enumerate() {
                    let n = weights[i].numel();
                    let mut fd = vec![0.0f64; n];
                    for (e, slot) in fd.iter_mut().enumerate() {
                        let bump = |s: f64| {
                            let w = weights.each_ref().map(|t| t.copy());
                            let flat = w[i].view([-1]);
                            let _ = flat.get(e as i64).f_add_scalar_(s * h).unwrap();
                            jumprelu_loss_f64(&w, &theta64, &xs, l0)
                        };
                        *slot = (bump(1.0) - bump(-1.0)) / (2.0 * h);
                    }
                    let mut want = Tensor::from_slice(&fd).view(weights[i].size().as_slice());
                    if i == 2 {
                        // The unit-norm decoder's gradient is projected onto the rows' tangents.
                        let w = &weights[2];
                        want = &want - w * (&want * w).sum_dim_intlist(1i64, true, Kind::Double);
                    }
                    let g = g.to_kind(Kind::Double);
                    let diff = (&want - &g).abs().max().double_value(&[]);
                    let scale = want.abs().max().double_value(&[]).max(1e-6);
                    assert!(
                        diff <= 1e-3 * scale,
                        "eps {eps} sparse {sparse} gradient {i}: diff {diff} at scale {scale}"
                    );
                }
                // The threshold's pseudo-gradient, entry by entry from the formula.
                let x_hat =
                    (&pre * pre.gt_tensor(&theta).to_kind(Kind::Float)).mm(&p.w_dec) + &p.b_dec;
                let g_xhat = (x_hat - &xs) * (2.0 / 20.0);
                let g_z: Vec<f32> = Vec::try_from(&g_xhat.mm(&p.w_dec.tr()).view([-1])).unwrap();
                let got_g: Vec<f32> = Vec::try_from(got.g_log_threshold.as_ref().unwrap()).unwrap();
                let e = f64::from(eps);
                for j in 0..6 {
                    let t_j = f64::from(th[j]);
                    let mut want = 0.0;
                    for t in (0..5).filter(|&t| in_window(t, j)) {
                        want += -(t_j / e) * f64::from(g_z[t * 6 + j]) - l0 / (5.0 * e);
                    }
                    want *= t_j;
                    let got = f64::from(got_g[j]);
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1e-3),
                        "eps {eps} sparse {sparse} feature {j}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn geometric_median_resists_an_outlier() {
        let mut rows = vec![0.0f32; 2 * 11];
        for i in 0..10 {
            rows[2 * i] = 1.0 + (i as f32 - 4.5) * 0.01;
            rows[2 * i + 1] = 2.0;
        }
        rows[20] = 1000.0;
        rows[21] = -1000.0;
        let xs = Tensor::from_slice(&rows).view([11, 2]);
        let m = geometric_median(&xs).unwrap();
        assert!((m.double_value(&[0]) - 1.0).abs() < 0.05, "{m}");
        assert!((m.double_value(&[1]) - 2.0).abs() < 0.05, "{m}");
    }
}
