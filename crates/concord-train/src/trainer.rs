//! The grid trainer: many SAEs, each fed every batch of its input stream, in one pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use concord_core::sae::Sae;
use concord_core::{SaeConfig, SaeWeights};

use crate::checkpoint;
use crate::init::init_weights;
use crate::math::{self, Moments, Params, StepKnobs};
use crate::spec::{Arch, BDecInit, SaeSpec, TrainOptions};
use crate::{Error, Result};

/// One stream's rows for one step.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// The input stream (see [`SaeSpec::stream`]).
    pub stream: usize,
    /// Values per row (`d_in` of the hook).
    pub width: usize,
    /// `(batch, width)` row-major.
    pub rows: &'a [f32],
}

/// The progress numbers of one SAE after one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaeStepStats {
    /// The training loss (architecture-specific: MSE + L1 term, or MSE + AuxK term).
    pub loss: f64,
    /// `mean((x_hat - x)^2)` over the batch's elements.
    pub mse: f64,
    /// Mean number of active features per row.
    pub l0: f64,
    /// Share of features that have not fired for `dead_tokens` tokens.
    pub dead_fraction: f64,
    /// The learning rate this step used.
    pub lr: f64,
}

/// What [`Trainer::step`] reports.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// Steps done, this one included.
    pub step: u64,
    /// Rows fed this step, summed over streams (tokens per step for the progress bar).
    pub rows: u64,
    /// One entry per SAE, in spec order.
    pub saes: Vec<SaeStepStats>,
}

impl StepStats {
    fn mean(&self, f: impl Fn(&SaeStepStats) -> f64) -> f64 {
        self.saes.iter().map(f).sum::<f64>() / self.saes.len().max(1) as f64
    }
    pub fn mean_loss(&self) -> f64 {
        self.mean(|s| s.loss)
    }
    pub fn mean_mse(&self) -> f64 {
        self.mean(|s| s.mse)
    }
    pub fn mean_l0(&self) -> f64 {
        self.mean(|s| s.l0)
    }
    pub fn mean_dead_fraction(&self) -> f64 {
        self.mean(|s| s.dead_fraction)
    }
}

/// Numbers per SAE in a step's one transfer: loss, MSE, L0 (the pass's stats), dead fraction,
/// smallest kept activation, and the batch's mean square (first step only).
const STATS: usize = 6;

/// One point of a training curve (`curve.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub step: u64,
    pub tokens: u64,
    #[serde(flatten)]
    pub stats: SaeStepStats,
}

/// The scalar state of one SAE that checkpoints carry next to its tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SlotMeta {
    pub spec: SaeSpec,
    pub tokens: u64,
    /// BatchTopK's inference threshold (running mean of the smallest kept activation).
    pub threshold: Option<f64>,
    pub first_loss: Option<f64>,
    /// The mean square of the first batch's values: the loss of reconstructing nothing, the
    /// divergence test's scale when the first loss is (near) zero.
    #[serde(default)]
    pub first_scale: Option<f64>,
    pub b_dec_ready: bool,
    pub curve: Vec<CurvePoint>,
    pub last: Option<SaeStepStats>,
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub meta: SlotMeta,
    pub params: Params,
    pub mom: Moments,
    /// `(d_sae)` i64: tokens since each feature last fired.
    pub since_fired: Tensor,
}

/// Trains a grid of SAEs from one pass over the data.
///
/// ```no_run
/// # use concord_train::*;
/// let spec = SaeSpec::new(Arch::ReluL1Faithful, 0, "blocks.3.hook_mlp_out", "smollm2-135m", 576, 8);
/// let mut trainer = Trainer::new(vec![spec], TrainOptions::default())?;
/// let rows = vec![0.0f32; 2048 * 576];
/// let stats = trainer.step(&[Batch { stream: 0, width: 576, rows: &rows }])?;
/// println!("loss {:.4} L0 {:.1}", stats.mean_loss(), stats.mean_l0());
/// trainer.save(std::path::Path::new("out"))?;
/// # Ok::<(), concord_train::Error>(())
/// ```
#[derive(Debug)]
pub struct Trainer {
    pub(crate) opts: TrainOptions,
    pub(crate) device: Device,
    pub(crate) step: u64,
    pub(crate) slots: Vec<Slot>,
}

impl Trainer {
    /// A trainer for `specs`, each initialised from its `init_seed`.
    pub fn new(specs: Vec<SaeSpec>, opts: TrainOptions) -> Result<Trainer> {
        let device = opts.tch_device()?;
        validate(&specs, &opts)?;
        let slots = specs
            .into_iter()
            .map(|spec| {
                let weights = init_weights(&spec);
                let params = trainable_params(&spec, &weights, device)?;
                let mom = Moments::zeros(&params)?;
                let since_fired = Tensor::f_zeros([spec.d_sae as i64], (Kind::Int64, device))?;
                let b_dec_ready = spec.hyper.b_dec_init == BDecInit::Zeros;
                let meta = SlotMeta {
                    spec,
                    tokens: 0,
                    threshold: None,
                    first_loss: None,
                    first_scale: None,
                    b_dec_ready,
                    curve: Vec::new(),
                    last: None,
                };
                Ok(Slot {
                    meta,
                    params,
                    mom,
                    since_fired,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Trainer {
            opts,
            device,
            step: 0,
            slots,
        })
    }

    /// Replaces SAE `index`'s parameters before training starts (e.g. a reference init):
    /// `W_enc (d_in, d_sae)`, `b_enc`, `W_dec (d_sae, d_in)`, `b_dec`, and a JumpReLU SAE's
    /// `threshold (d_sae)` (positive; without one it keeps its initial thresholds); `b_dec`
    /// is then kept rather than initialised from the first batch.
    pub fn set_weights(&mut self, index: usize, weights: &SaeWeights) -> Result<()> {
        let step = self.step;
        let device = self.device;
        let slot = self.slot_mut(index)?;
        let spec = &slot.meta.spec;
        if step > 0 || weights.d_in != spec.d_in || weights.d_sae != spec.d_sae {
            return Err(Error::InvalidSpec {
                sae: spec.name.clone(),
                reason: format!(
                    "weights of shape d_in = {}, d_sae = {} can only replace an untrained SAE of the same shape",
                    weights.d_in, weights.d_sae
                ),
            });
        }
        let mut params = trainable_params(spec, weights, device)?;
        if params.log_threshold.is_none() {
            params.log_threshold = slot.params.log_threshold.take();
        }
        slot.params = params;
        slot.meta.b_dec_ready = true;
        Ok(())
    }

    fn slot_mut(&mut self, index: usize) -> Result<&mut Slot> {
        let n = self.slots.len();
        self.slots.get_mut(index).ok_or_else(|| Error::InvalidSpec {
            sae: format!("#{index}"),
            reason: format!("no SAE with index {index} (the trainer has {n})"),
        })
    }

    /// The specs, in order.
    pub fn specs(&self) -> Vec<&SaeSpec> {
        self.slots.iter().map(|s| &s.meta.spec).collect()
    }

    /// Steps done so far (after [`Trainer::resume`], the caller's reader skips this many).
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// The options the trainer runs with.
    pub fn options(&self) -> &TrainOptions {
        &self.opts
    }

    /// The input streams the SAEs read, with their widths.
    pub fn streams(&self) -> BTreeMap<usize, usize> {
        self.slots
            .iter()
            .map(|s| (s.meta.spec.stream, s.meta.spec.d_in))
            .collect()
    }

    /// One optimisation step of every SAE on its stream's batch.
    ///
    /// Every stream the SAEs read must be given once. Rows are checked before anything
    /// changes: a non-finite value is an error naming stream, row and column, and leaves the
    /// trainer as it was. A non-finite or diverging loss is an error too, raised before any
    /// SAE is updated. Writes a checkpoint when [`TrainOptions::checkpoint_every`] says so.
    pub fn step(&mut self, batches: &[Batch<'_>]) -> Result<StepStats> {
        let inputs = self.inputs(batches)?;
        let t = self.step;
        let total = self.opts.total_steps;

        struct Pending {
            pass: math::Pass,
            b_dec: Option<Tensor>,
            since_fired: Tensor,
            lr: f64,
            rows: i64,
        }
        let mut pending = Vec::with_capacity(self.slots.len());
        let mut stats = Vec::with_capacity(self.slots.len());
        // Each stream's rows times each input scale its SAEs use, made once.
        let mut scaled: BTreeMap<(usize, u64), Tensor> = BTreeMap::new();
        for slot in &self.slots {
            let spec = &slot.meta.spec;
            let h = &spec.hyper;
            let xs = &inputs[&spec.stream];
            let xs = if spec.input_scale == 1.0 {
                xs
            } else {
                let key = (spec.stream, spec.input_scale.to_bits());
                if let std::collections::btree_map::Entry::Vacant(e) = scaled.entry(key) {
                    e.insert(xs.f_mul_scalar(spec.input_scale)?);
                }
                &scaled[&key]
            };
            let rows = xs.size()[0];
            let b_dec = if slot.meta.b_dec_ready {
                None
            } else {
                Some(match h.b_dec_init {
                    BDecInit::Zeros => slot.params.b_dec.f_zeros_like()?,
                    BDecInit::Mean => xs.f_mean_dim(0i64, false, Kind::Float)?,
                    BDecInit::GeometricMedian => math::geometric_median(xs)?,
                })
            };
            let sparsity =
                h.l1.or(h.l0_coefficient).unwrap_or(0.0) * ramp(t, total, h.l1_warmup_frac);
            let lr = lr_at(h.lr, t, total, h.lr_warmup_frac, h.lr_decay_frac);
            let dead_before = slot.since_fired.f_ge(h.dead_tokens as i64)?;
            let dead = if spec.arch.uses_k() {
                Some(&dead_before)
            } else {
                None
            };
            let pass = math::pass(
                spec.arch,
                h,
                &slot.params,
                b_dec.as_ref().unwrap_or(&slot.params.b_dec),
                xs,
                StepKnobs {
                    sparsity,
                    sparse_max_density: self.opts.sparse_max_density,
                    compute: self.opts.compute_dtype,
                },
                dead,
            )?;
            let since_fired = slot
                .since_fired
                .f_add_scalar(rows)?
                .f_masked_fill(&pass.fired, 0)?;
            let dead_frac = since_fired
                .f_ge(h.dead_tokens as i64)?
                .f_mean(Kind::Float)?;
            let min_kept = match &pass.min_kept {
                Some(m) => m.f_view([1])?,
                None => Tensor::f_full([1], f64::NAN, (Kind::Float, self.device))?,
            };
            let scale = if slot.meta.first_scale.is_none() {
                xs.f_square()?.f_mean(Kind::Float)?.f_view([1])?
            } else {
                Tensor::f_full([1], f64::NAN, (Kind::Float, self.device))?
            };
            stats.push(Tensor::f_cat(
                &[
                    pass.stats.shallow_clone(),
                    dead_frac.f_view([1])?,
                    min_kept,
                    scale,
                ],
                0,
            )?);
            pending.push(Pending {
                pass,
                b_dec,
                since_fired,
                lr,
                rows,
            });
        }
        // One transfer for every SAE's numbers.
        let flat = Tensor::f_cat(&stats, 0)?
            .f_to_kind(Kind::Double)?
            .f_to_device(Device::Cpu)?;
        let values: Vec<f64> = Vec::try_from(&flat)?;
        for (slot, v) in self.slots.iter().zip(values.chunks_exact(STATS)) {
            let loss = v[0];
            let first = slot.meta.first_loss.unwrap_or(loss);
            // The first loss alone is no scale: with `b_dec` initialised from the first batch
            // it is 0 for a batch of one row. The data's own scale bounds it from below.
            let scale = slot.meta.first_scale.unwrap_or(v[5]);
            let reference = first.abs().max(scale).max(1e-12);
            if !loss.is_finite() || loss > self.opts.divergence_factor * reference {
                return Err(Error::Diverged {
                    sae: slot.meta.spec.name.clone(),
                    step: t + 1,
                    loss,
                    first,
                    scale,
                });
            }
        }

        let mut out = Vec::with_capacity(self.slots.len());
        let mut rows_total = 0u64;
        let mut seen_streams = std::collections::BTreeSet::new();
        for ((slot, mut p), v) in self
            .slots
            .iter_mut()
            .zip(pending)
            .zip(values.chunks_exact(STATS))
        {
            let spec = &slot.meta.spec;
            if let Some(b) = p.b_dec {
                slot.params.b_dec = b;
                slot.meta.b_dec_ready = true;
            }
            math::adam(
                &mut slot.params,
                &mut slot.mom,
                &mut p.pass.grads,
                p.pass.g_log_threshold.as_mut(),
                &spec.hyper,
                p.lr,
                t + 1,
            )?;
            if spec.arch.unit_norm_decoder() {
                let norms = math::row_norms(&slot.params.w_dec)?;
                let _ = slot.params.w_dec.f_div_(&norms)?;
            }
            slot.since_fired = p.since_fired;
            slot.meta.tokens += p.rows as u64;
            if seen_streams.insert(spec.stream) {
                rows_total += p.rows as u64;
            }
            if spec.arch == Arch::BatchTopK && v[4].is_finite() {
                slot.meta.threshold = Some(match slot.meta.threshold {
                    None => v[4],
                    Some(th) => 0.99 * th + 0.01 * v[4],
                });
            }
            slot.meta.first_loss.get_or_insert(v[0]);
            slot.meta.first_scale.get_or_insert(v[5]);
            let s = SaeStepStats {
                loss: v[0],
                mse: v[1],
                l0: v[2],
                dead_fraction: v[3],
                lr: p.lr,
            };
            let every = self.opts.curve_every.max(1);
            if t == 0 || (t + 1).is_multiple_of(every) {
                slot.meta.curve.push(CurvePoint {
                    step: t + 1,
                    tokens: slot.meta.tokens,
                    stats: s.clone(),
                });
            }
            slot.meta.last = Some(s.clone());
            out.push(s);
        }
        self.step += 1;
        if let Some(dir) = &self.opts.snapshot_dir
            && self.opts.snapshot_steps.contains(&self.step)
        {
            self.save_snapshot(dir)?;
        }
        if let Some(dir) = self.opts.checkpoint_dir.clone()
            && self.opts.checkpoint_every > 0
            && self.step.is_multiple_of(self.opts.checkpoint_every)
        {
            self.checkpoint(&dir)?;
        }
        Ok(StepStats {
            step: self.step,
            rows: rows_total,
            saes: out,
        })
    }

    /// Checks the batches and turns each stream's rows into a `(batch, width)` tensor.
    fn inputs(&self, batches: &[Batch<'_>]) -> Result<BTreeMap<usize, Tensor>> {
        let mut given: BTreeMap<usize, &Batch<'_>> = BTreeMap::new();
        for b in batches {
            if given.insert(b.stream, b).is_some() {
                return Err(Error::InvalidSpec {
                    sae: String::new(),
                    reason: format!("input stream {} given twice in one step", b.stream),
                });
            }
        }
        for slot in &self.slots {
            let spec = &slot.meta.spec;
            let b = given
                .get(&spec.stream)
                .ok_or_else(|| Error::MissingStream {
                    stream: spec.stream,
                    sae: spec.name.clone(),
                })?;
            if b.width != spec.d_in {
                return Err(Error::WidthMismatch {
                    stream: b.stream,
                    sae: spec.name.clone(),
                    expected: spec.d_in,
                    got: b.width,
                });
            }
        }
        let used = self.streams();
        let mut out = BTreeMap::new();
        for (stream, b) in given {
            if !used.contains_key(&stream) {
                continue;
            }
            check_rows(b)?;
            let n = (b.rows.len() / b.width) as i64;
            let xs = Tensor::f_from_slice(b.rows)?
                .f_view([n, b.width as i64])?
                .f_to_device(self.device)?;
            out.insert(stream, xs);
        }
        Ok(out)
    }

    /// SAE `index` in the SAELens layout (the faithful decoder stored normalised).
    pub fn sae(&self, index: usize) -> Result<Sae> {
        let slot = self.slots.get(index).ok_or_else(|| Error::InvalidSpec {
            sae: format!("#{index}"),
            reason: format!("no SAE with index {index}"),
        })?;
        export(slot)
    }

    /// Writes every SAE as `out/<name>/` (`cfg.json`, `sae_weights.safetensors`,
    /// `metrics.json`, `curve.jsonl`), each folder atomically. Returns the folders.
    pub fn save(&self, out: &Path) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let sae = export(slot)?;
            let m = &slot.meta;
            let mut metrics = serde_json::json!({
                "name": m.spec.name,
                "steps": self.step,
                "training_tokens": m.tokens,
                "final": m.last,
                "hyper": m.spec.hyper,
            });
            // BatchTopK's one inference threshold; JumpReLU's per-feature ones are in the
            // weights file.
            if let Some(th) = m.threshold {
                metrics["threshold"] = serde_json::json!(th);
            }
            let metrics = serde_json::to_vec_pretty(&metrics).map_err(|e| Error::Checkpoint {
                path: out.join(&m.spec.name),
                reason: e.to_string(),
            })?;
            let mut curve = Vec::new();
            // The curve's last point is the last step, whatever `curve_every` says.
            let last = match (&m.last, m.curve.last()) {
                (Some(stats), Some(p)) if p.step != self.step => Some(CurvePoint {
                    step: self.step,
                    tokens: m.tokens,
                    stats: stats.clone(),
                }),
                _ => None,
            };
            for point in m.curve.iter().chain(&last) {
                let line = serde_json::to_string(point).map_err(|e| Error::Checkpoint {
                    path: out.join(&m.spec.name),
                    reason: e.to_string(),
                })?;
                curve.extend_from_slice(line.as_bytes());
                curve.push(b'\n');
            }
            let dir = out.join(&m.spec.name);
            save_folder(
                &dir,
                &sae,
                &[("metrics.json", &metrics), ("curve.jsonl", &curve)],
            )?;
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// Writes every SAE as it stands now to `dir/<step>/<name>/` (SAELens folders with
    /// `metrics.json`), each atomically; a snapshot already there (written before a resume)
    /// is replaced by the same bits on the CPU.
    fn save_snapshot(&self, dir: &Path) -> Result<()> {
        let out = dir.join(self.step.to_string());
        for slot in &self.slots {
            let sae = export(slot)?;
            let m = &slot.meta;
            let metrics = serde_json::json!({
                "name": m.spec.name,
                "steps": self.step,
                "training_tokens": m.tokens,
                "final": m.last,
                "snapshot": true,
            });
            let metrics = serde_json::to_vec_pretty(&metrics).map_err(|e| Error::Checkpoint {
                path: out.join(&m.spec.name),
                reason: e.to_string(),
            })?;
            save_folder(&out.join(&m.spec.name), &sae, &[("metrics.json", &metrics)])?;
        }
        Ok(())
    }

    /// Writes a checkpoint folder (parameters, Adam moments and step counts, dead-feature
    /// counters, curves) atomically: a killed write leaves the previous checkpoint.
    pub fn checkpoint(&self, dir: &Path) -> Result<()> {
        checkpoint::write(self, dir)
    }

    /// A trainer continuing from a checkpoint written by [`Trainer::checkpoint`]. With the
    /// same remaining batches it ends bitwise equal (on CPU) to an uninterrupted run.
    pub fn resume(dir: &Path) -> Result<Trainer> {
        checkpoint::read(dir, None)
    }

    /// Like [`Trainer::resume`], with other options (device, checkpointing, total steps).
    pub fn resume_with(dir: &Path, opts: TrainOptions) -> Result<Trainer> {
        checkpoint::read(dir, Some(opts))
    }
}

/// Writes `sae` with `files` as the folder `dir` (atomically), making its parent first.
fn save_folder(dir: &Path, sae: &Sae, files: &[(&str, &[u8])]) -> Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    Ok(sae.save(dir, files)?)
}

pub(crate) fn validate(specs: &[SaeSpec], opts: &TrainOptions) -> Result<()> {
    if specs.is_empty() {
        return Err(Error::InvalidSpec {
            sae: String::new(),
            reason: "no SAE to train".into(),
        });
    }
    let mut names = std::collections::BTreeSet::new();
    let mut widths = BTreeMap::new();
    for s in specs {
        s.validate()?;
        if !names.insert(&s.name) {
            return Err(Error::InvalidSpec {
                sae: s.name.clone(),
                reason: "two SAEs share this name".into(),
            });
        }
        if let Some(&w) = widths.get(&s.stream)
            && w != s.d_in
        {
            return Err(Error::InvalidSpec {
                sae: s.name.clone(),
                reason: format!("stream {} feeds SAEs of d_in {w} and {}", s.stream, s.d_in),
            });
        }
        widths.insert(s.stream, s.d_in);
    }
    if opts.divergence_factor.is_nan() || opts.divergence_factor <= 1.0 {
        return Err(Error::InvalidSpec {
            sae: String::new(),
            reason: format!(
                "divergence_factor = {} must exceed 1",
                opts.divergence_factor
            ),
        });
    }
    Ok(())
}

fn check_rows(b: &Batch<'_>) -> Result<()> {
    if b.width == 0 || b.rows.is_empty() || !b.rows.len().is_multiple_of(b.width) {
        return Err(Error::RaggedBatch {
            stream: b.stream,
            got: b.rows.len(),
            d_in: b.width,
        });
    }
    if let Some(i) = b.rows.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFiniteRow {
            stream: b.stream,
            row: i / b.width,
            column: i % b.width,
            value: b.rows[i],
        });
    }
    Ok(())
}

/// `0 -> 1` linear ramp over the first `frac` of `total` steps (1 without a total).
fn ramp(t: u64, total: Option<u64>, frac: f64) -> f64 {
    match total {
        Some(total) if frac > 0.0 => {
            let len = (total as f64 * frac).max(1.0);
            ((t + 1) as f64 / len).min(1.0)
        }
        _ => 1.0,
    }
}

/// The learning rate at step `t` (0-based): linear warm-up, constant, linear decay to zero.
fn lr_at(lr: f64, t: u64, total: Option<u64>, warm: f64, decay: f64) -> f64 {
    let Some(total) = total else { return lr };
    let mut f = ramp(t, Some(total), warm);
    if decay > 0.0 {
        let len = (total as f64 * decay).max(1.0);
        let left = total.saturating_sub(t) as f64;
        f = f.min(left / len);
    }
    lr * f.clamp(0.0, 1.0)
}

pub(crate) fn params_from_weights(w: &SaeWeights, device: Device) -> Result<Params> {
    let t = |v: &[f32], shape: &[i64]| -> Result<Tensor> {
        Ok(Tensor::f_from_slice(v)?
            .f_view(shape)?
            .f_to_device(device)?)
    };
    let (d_in, d_sae) = (w.d_in as i64, w.d_sae as i64);
    Ok(Params {
        w_enc: t(&w.w_enc, &[d_in, d_sae])?,
        b_enc: t(&w.b_enc, &[d_sae])?,
        w_dec: t(&w.w_dec, &[d_sae, d_in])?,
        b_dec: t(&w.b_dec, &[d_in])?,
        log_threshold: None,
    })
}

/// The parameters `spec` trains, from `w`: a JumpReLU SAE's thresholds become
/// `log_threshold` (an error when one is not positive); other SAEs ignore `w.threshold`.
fn trainable_params(spec: &SaeSpec, w: &SaeWeights, device: Device) -> Result<Params> {
    let mut p = params_from_weights(w, device)?;
    if spec.arch == Arch::JumpRelu
        && let Some(th) = &w.threshold
    {
        if let Some(bad) = th.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::InvalidSpec {
                sae: spec.name.clone(),
                reason: format!(
                    "threshold {bad} is {}: jumprelu thresholds must be positive",
                    th[bad]
                ),
            });
        }
        let th = Tensor::f_from_slice(th)?.f_to_device(device)?;
        p.log_threshold = Some(th.f_log()?);
    }
    Ok(p)
}

pub(crate) fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    let flat = t
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?
        .f_view([-1])?;
    Ok(Vec::try_from(&flat)?)
}

/// SAE `slot` in the SAELens layout, reading unscaled rows. Trained on rows times `s` (its
/// input scale), its codes on `x` are `c'(s x) / s`: every activation here is positively
/// homogeneous (ReLU, TopK's choice, thresholds compared with `pre`), so dividing `b_enc`,
/// `b_dec` and the thresholds by `s` folds the scale in, and the decoder keeps unit rows.
fn export(slot: &Slot) -> Result<Sae> {
    let m = &slot.meta;
    let spec = &m.spec;
    let p = &slot.params;
    let w_dec = if spec.arch == Arch::ReluL1Faithful {
        p.w_dec.f_div(&math::row_norms(&p.w_dec)?)?
    } else {
        p.w_dec.shallow_clone()
    };
    let s = spec.input_scale;
    let unscale = |t: &Tensor| -> Result<Vec<f32>> {
        if s == 1.0 {
            to_vec(t)
        } else {
            to_vec(&t.f_to_kind(Kind::Double)?.f_div_scalar(s)?)
        }
    };
    let weights = SaeWeights {
        d_in: spec.d_in,
        d_sae: spec.d_sae,
        w_enc: to_vec(&p.w_enc)?,
        b_enc: unscale(&p.b_enc)?,
        w_dec: to_vec(&w_dec)?,
        b_dec: unscale(&p.b_dec)?,
        // JumpReLU saves theta itself (SAELens's `threshold`), not its logarithm.
        threshold: match (&p.log_threshold, spec.arch) {
            (Some(log_th), Arch::JumpRelu) => Some(unscale(&log_th.f_exp()?)?),
            (_, Arch::BatchTopK) => Some(vec![(m.threshold.unwrap_or(0.0) / s) as f32; spec.d_sae]),
            _ => None,
        },
    };
    let mut extra = serde_json::Map::new();
    extra.insert(
        "concord_hyper".into(),
        serde_json::to_value(&spec.hyper).unwrap_or_default(),
    );
    if s != 1.0 {
        // Folded into the weights: informational only.
        extra.insert("concord_input_scale".into(), serde_json::json!(s));
    }
    let cfg = SaeConfig {
        d_in: spec.d_in,
        d_sae: spec.d_sae,
        architecture: spec.arch.saelens_name().into(),
        hook_name: spec.hook_name.clone(),
        model_name: spec.model_name.clone(),
        concord_architecture: Some(spec.arch.name().into()),
        k: spec.hyper.k,
        l1_coefficient: spec.hyper.l1,
        init_seed: Some(spec.init_seed),
        data_seed: Some(spec.data_seed),
        training_tokens: Some(m.tokens),
        apply_b_dec_to_input: Some(true),
        extra,
    };
    Ok(Sae { cfg, weights })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(lr_at(1.0, 5, None, 0.1, 0.2), 1.0);
        // 100 steps, 10 warm-up, 20 decay.
        assert!((lr_at(1.0, 0, Some(100), 0.1, 0.2) - 0.1).abs() < 1e-12);
        assert_eq!(lr_at(1.0, 50, Some(100), 0.1, 0.2), 1.0);
        assert!((lr_at(1.0, 90, Some(100), 0.1, 0.2) - 0.5).abs() < 1e-12);
        assert!((ramp(4, Some(100), 0.1) - 0.5).abs() < 1e-12);
    }
}
