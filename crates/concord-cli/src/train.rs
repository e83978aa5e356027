//! `concord train`: a grid of SAEs from one pass over a store.
//!
//! Several hooks of one store are read in lockstep (the study trained six layers from one
//! forward); every batch is read once and fed to every SAE of its hook. Checkpoints with
//! optimizer state are written periodically; killed and run again, training resumes from the
//! last one and ends with the same weights as an uninterrupted run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use concord_store::{Lockstep, LockstepBatch, Order, ReadConfig, RowMeta};
use concord_train::{Arch, Batch, ComputeDtype, SaeSpec, TrainOptions, Trainer};
use serde::{Deserialize, Serialize};

use crate::progress::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hook datasets (`STORE/<hook name>`), comma-separated; several hooks of one store are
    /// read in lockstep.
    #[arg(long, value_delimiter = ',', required = true)]
    acts: Vec<PathBuf>,
    /// relu-l1-faithful (the study's SAE), relu-l1, topk, batchtopk or jumprelu.
    #[arg(long)]
    arch: String,
    /// Dictionary ratios (features per input dimension), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    ratio: Vec<usize>,
    /// Output folder: one SAELens-layout folder per SAE.
    #[arg(long)]
    out: PathBuf,
    /// Active features per token (topk, batchtopk).
    #[arg(long)]
    k: Option<usize>,
    /// L1 coefficient (relu-l1-faithful, relu-l1; default 8e-4, the study's).
    #[arg(long)]
    l1: Option<f64>,
    /// L0 coefficient (jumprelu; default 1e-3): the loss is MSE (a mean over elements) plus
    /// this times the mean number of active features per token.
    #[arg(long)]
    l0_coefficient: Option<f64>,
    /// Width of JumpReLU's kernel for the threshold's gradient (jumprelu; default 0.001).
    #[arg(long)]
    bandwidth: Option<f64>,
    /// Every feature's threshold at initialisation (jumprelu; default 0.001, SAELens 6 uses
    /// 0.01): thresholds move by about --lr (relative) per step, so a short run needs a start
    /// near the scale of the pre-activations.
    #[arg(long)]
    init_threshold: Option<f64>,
    /// Adam learning rate (default per architecture: 1e-3 for ReLU SAEs).
    #[arg(long)]
    lr: Option<f64>,
    /// Training tokens (default: one epoch of the store): `ceil(N / batch)` steps; past the
    /// store's rows, further shuffled passes follow, and each pass ends with its short batch,
    /// so `training_tokens` (in `cfg.json`) counts the rows actually seen.
    #[arg(long)]
    tokens: Option<u64>,
    /// Tokens (rows) per batch.
    #[arg(long, default_value_t = 2048)]
    batch: usize,
    /// `sequences`: whole shuffled context windows (the study's order); `rows`: single rows
    /// through a shuffle buffer.
    #[arg(long, default_value = "sequences")]
    shuffle: String,
    /// Parameter initialisation seeds, comma-separated (one SAE per seed).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    init_seed: Vec<u64>,
    /// Seed of the row order, or `same` (the study's confound: the init seed orders the data).
    #[arg(long, default_value = "0")]
    data_seed: String,
    /// Train on the first or second half of the store's context windows only.
    #[arg(long)]
    half: Option<String>,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 25)]
    checkpoint_every: u64,
    /// On the CPU, codes with at most this share of active entries use the sparse decoder
    /// kernels instead of dense products (0 turns them off; results agree to rounding).
    /// Default: the trainer's measured crossover.
    #[arg(long)]
    sparse_max_density: Option<f64>,
    /// Element type of the large matrix products: f32, or bf16 (bfloat16 operands with f32
    /// accumulation; weights, Adam state and sums stay f32; 5-10x faster on CPUs with AMX).
    #[arg(long, default_value = "f32")]
    compute_dtype: String,
    /// Scale each hook's rows to a mean squared norm of d_in before training (SAELens's
    /// `expected_average_only_in`), so that --l1 means the same on every model and layer; the
    /// factor comes from up to 64 windows spread over the rows trained on and is folded into
    /// the saved SAE, which reads unscaled rows.
    #[arg(long)]
    normalize_activations: bool,
    /// Points of training to keep: with N > 1, every SAE is also saved after total/2,
    /// total/4, ... total/2^(N-1) steps as OUT/snapshots/<step>/<name>/ (the final SAE is
    /// the N-th point).
    #[arg(long, default_value_t = 1)]
    snapshots: u32,
    /// Linear lr warm-up over this fraction of the steps (default per architecture).
    #[arg(long)]
    lr_warmup: Option<f64>,
    /// Linear lr decay to zero over this final fraction of the steps (default per
    /// architecture: 0.2 but for relu-l1-faithful, 0).
    #[arg(long)]
    lr_decay: Option<f64>,
}

/// What a train output folder was made with; a rerun with other settings is refused.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct TrainRecord {
    specs: Vec<SaeSpec>,
    tokens: u64,
    batch: usize,
    shuffle: String,
    data_seed: u64,
    half: Option<String>,
    /// The datasets as given; not compared, since one store has many spellings.
    acts: Vec<String>,
    /// The datasets' identities, compared instead (absent from records of older versions).
    #[serde(default)]
    datasets: Vec<DatasetId>,
    #[serde(default, skip_serializing_if = "is_f32")]
    compute_dtype: ComputeDtype,
    /// Points of training kept (1: the final SAE only).
    #[serde(default = "one_point", skip_serializing_if = "is_one_point")]
    snapshots: u32,
}

fn is_f32(d: &ComputeDtype) -> bool {
    *d == ComputeDtype::F32
}

fn one_point() -> u32 {
    1
}

fn is_one_point(n: &u32) -> bool {
    *n == 1
}

/// What makes a hook dataset the same on a rerun, wherever it lies.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct DatasetId {
    hook: String,
    settings_hash: String,
    rows: u64,
}

impl TrainRecord {
    /// The first setting in which `self` (the folder's record) and `new` differ, as
    /// `name: old there, new now`; `None` when they agree.
    fn differing_setting(&self, new: &TrainRecord) -> Option<String> {
        let json = |r: &TrainRecord| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.remove("acts");
            }
            v
        };
        let (mut old_v, new_v) = (json(self), json(new));
        // A record of an older version names its datasets by path only: compare their
        // canonical forms, so that a resume after the upgrade still works.
        if self.datasets.is_empty() {
            let canon = |acts: &[String]| -> Vec<PathBuf> {
                acts.iter()
                    .map(|a| std::fs::canonicalize(a).unwrap_or_else(|_| PathBuf::from(a)))
                    .collect()
            };
            if canon(&self.acts) != canon(&new.acts) {
                return Some(format!(
                    "--acts: {} there, {} now",
                    self.acts.join(","),
                    new.acts.join(",")
                ));
            }
            old_v["datasets"] = new_v["datasets"].clone();
        }
        first_difference("", &old_v, &new_v)
    }
}

/// The first place where `a` (old) and `b` (new) differ, with both values.
fn first_difference(path: &str, a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    if a == b {
        return None;
    }
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                first_difference(
                    &join(k),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (u, v))| {
                // Name an SAE by its name rather than its place in the grid.
                let item = match u.get("name").and_then(Value::as_str) {
                    Some(n) if u.get("name") == v.get("name") => format!("{path}[{n}]"),
                    _ => format!("{path}[{i}]"),
                };
                first_difference(&item, u, v)
            })
        }
        (Value::Array(x), Value::Array(y)) => Some(format!(
            "{path}: {} entries there, {} now",
            x.len(),
            y.len()
        )),
        _ => Some(format!("{path}: {a} there, {b} now")),
    }
}

const RECORD: &str = "train.json";
const CHECKPOINT: &str = ".checkpoint";

/// Training allocates the same large buffers every step (the codes and their gradient: 38 MB
/// each at 1:8, 151 MB at 1:32). glibc serves blocks over 32 MB straight from `mmap`, so every
/// step would fault in and zero fresh pages and unmap them again (about 12 % of a 1:8 run's
/// time, 20 % at 1:32). Kept on the heap and never trimmed, freed blocks are reused instead;
/// the process keeps its peak memory until it exits.
fn keep_large_blocks_on_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes glibc's allocation policy; both settings are valid.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// The folder name of an SAE, shared with the study planner.
pub fn sae_name(hook: &str, arch: &str, ratio: usize, init_seed: u64, data_seed: &str) -> String {
    format!("{hook}-{arch}-x{ratio}-i{init_seed}-d{data_seed}")
}

pub fn run(args: &Args) -> Result<()> {
    keep_large_blocks_on_heap();
    let arch: Arch = args.arch.parse()?;
    if args.batch == 0 {
        bail!("--batch 0: the batch must hold at least one row");
    }
    if args.tokens == Some(0) {
        bail!("--tokens 0: there is nothing to train on");
    }
    if args.ratio.contains(&0) {
        bail!("--ratio 0: ratios must be positive");
    }
    if let Some(density) = args.sparse_max_density.filter(|d| !(0.0..=1.0).contains(d)) {
        bail!("--sparse-max-density {density} must be between 0 and 1");
    }
    // Checked before anything is written, with the message `eval` gives.
    let device = concord_models::parse_device(&args.device)?;
    let compute_dtype: ComputeDtype = args
        .compute_dtype
        .parse()
        .map_err(|e| anyhow::anyhow!("--compute-dtype: {e}"))?;
    for (flag, frac) in [
        ("--lr-warmup", args.lr_warmup),
        ("--lr-decay", args.lr_decay),
    ] {
        if let Some(f) = frac.filter(|f| !(0.0..=1.0).contains(f)) {
            bail!("{flag} {f} must be between 0 and 1");
        }
    }
    // Duplicates are not removed: two SAEs of one name are an error, as for ratios.
    let mut seeds = args.init_seed.clone();
    seeds.sort_unstable();
    let data_seed = match args.data_seed.as_str() {
        "same" => match seeds.as_slice() {
            [s] => *s,
            _ => bail!(
                "--data-seed same needs exactly one --init-seed (the study's confound: one seed for both)"
            ),
        },
        s => s
            .parse::<u64>()
            .with_context(|| format!("--data-seed {s:?}: expected a number or `same`"))?,
    };
    let order = match args.shuffle.as_str() {
        "sequences" => Order::Windows,
        "rows" => Order::Rows {
            buffer_rows: 1 << 18,
        },
        other => bail!("--shuffle {other:?}: expected sequences or rows"),
    };
    let half = match args.half.as_deref() {
        None => None,
        Some("first") => Some(false),
        Some("second") => Some(true),
        Some(other) => bail!("--half {other:?}: expected first or second"),
    };
    let store = Lockstep::open(&args.acts)?;
    let windows = store.datasets()[0].windows();
    // Only the windows of the half asked for are read.
    let mid = windows / 2;
    let range = match half {
        None => 0..windows,
        Some(false) => 0..mid,
        Some(true) => mid..windows,
    };
    // Specs: every hook x ratio x init seed.
    let mut specs = Vec::new();
    for (stream, ds) in store.datasets().iter().enumerate() {
        let m = ds.manifest();
        let hook = m.hook.to_string();
        let input_scale = match args.normalize_activations {
            true => input_scale(ds, range.clone())?,
            false => 1.0,
        };
        for &ratio in &args.ratio {
            if ds
                .d()
                .checked_mul(ratio)
                .is_none_or(|n| n > i64::MAX as usize)
            {
                bail!("--ratio {ratio}: d_sae = {} x {ratio} is too large", ds.d());
            }
            for &seed in &seeds {
                let mut spec = SaeSpec::new(arch, stream, &hook, &m.model, ds.d(), ratio);
                spec.init_seed = seed;
                spec.data_seed = data_seed;
                spec.name = sae_name(&hook, arch.name(), ratio, seed, &args.data_seed);
                if let Some(k) = args.k {
                    if !arch.uses_k() {
                        bail!("--k applies to topk and batchtopk, not {}", arch.name());
                    }
                    spec.hyper.k = Some(k);
                }
                if let Some(l1) = args.l1 {
                    if !arch.uses_l1() {
                        bail!(
                            "--l1 applies to relu-l1-faithful and relu-l1, not {}{}",
                            arch.name(),
                            if arch == Arch::JumpRelu {
                                " (its sparsity coefficient is --l0-coefficient)"
                            } else {
                                ""
                            }
                        );
                    }
                    spec.hyper.l1 = Some(l1);
                }
                for (flag, value, slot) in [
                    (
                        "--l0-coefficient",
                        args.l0_coefficient,
                        &mut spec.hyper.l0_coefficient,
                    ),
                    ("--bandwidth", args.bandwidth, &mut spec.hyper.bandwidth),
                    (
                        "--init-threshold",
                        args.init_threshold,
                        &mut spec.hyper.init_threshold,
                    ),
                ] {
                    if let Some(v) = value {
                        if arch != Arch::JumpRelu {
                            bail!("{flag} applies to jumprelu, not {}", arch.name());
                        }
                        *slot = Some(v);
                    }
                }
                if let Some(lr) = args.lr {
                    spec.hyper.lr = lr;
                }
                if let Some(f) = args.lr_warmup {
                    spec.hyper.lr_warmup_frac = f;
                }
                if let Some(f) = args.lr_decay {
                    spec.hyper.lr_decay_frac = f;
                }
                spec.input_scale = input_scale;
                spec.validate()?;
                specs.push(spec);
            }
        }
    }
    let rows = match half {
        None => store.rows(),
        Some(second) => half_rows(&store, second)?,
    };
    let tokens = args.tokens.unwrap_or(rows);
    let total_steps = tokens.div_ceil(args.batch as u64);
    // Passes over the rows that `total_steps` reach (each pass ends with its short batch).
    let epochs = total_steps
        .div_ceil(rows.max(1).div_ceil(args.batch as u64))
        .max(1);
    let record = TrainRecord {
        specs: specs.clone(),
        tokens,
        batch: args.batch,
        shuffle: args.shuffle.clone(),
        data_seed,
        half: args.half.clone(),
        acts: args.acts.iter().map(|p| p.display().to_string()).collect(),
        datasets: store
            .datasets()
            .iter()
            .map(|ds| DatasetId {
                hook: ds.hook().to_string(),
                settings_hash: ds.manifest().settings_hash.clone(),
                rows: ds.rows(),
            })
            .collect(),
        compute_dtype,
        snapshots: args.snapshots.max(1),
    };
    if device == concord_models::tch::Device::Cpu {
        check_memory(&specs, args.batch)?;
    }
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out {}: not a folder", args.out.display());
    }
    // One `train` at a time writes a folder (a new folder is locked once it is made).
    let mut _lock = match args.out.is_dir() {
        true => Some(concord_core::fsutil::DirLock::acquire(&args.out)?),
        false => None,
    };
    let record_path = args.out.join(RECORD);
    let ckpt = args.out.join(CHECKPOINT);
    // A checkpoint write killed midway leaves temporary folders, or the last checkpoint
    // under its moved-aside name.
    concord_core::sae::recover_dir(&ckpt)?;
    // Whether a record is to be written: a record with nothing trained (a run that failed or
    // was killed before its first checkpoint) does not count and is replaced.
    let mut write_record = true;
    if record_path.exists() {
        let old: TrainRecord = concord_core::fsutil::read_json(&record_path)?;
        let trained = |s: &SaeSpec| {
            args.out
                .join(&s.name)
                .join(concord_core::sae::CFG_FILE)
                .exists()
        };
        match old.differing_setting(&record) {
            Some(diff) if ckpt.exists() || old.specs.iter().any(trained) => bail!(
                "{} holds SAEs trained with other settings ({diff}); choose another --out",
                args.out.display()
            ),
            Some(diff) => {
                tracing::info!(
                    "{} holds no checkpoint or SAE of its earlier settings ({diff}): starting afresh",
                    args.out.display()
                );
            }
            None => {
                write_record = false;
                if !ckpt.exists() && specs.iter().all(trained) {
                    tracing::info!("{} is already trained", args.out.display());
                    return Ok(());
                }
            }
        }
    }
    let opts = TrainOptions {
        device: args.device.clone(),
        total_steps: Some(total_steps),
        checkpoint_dir: Some(ckpt.clone()),
        checkpoint_every: args.checkpoint_every,
        sparse_max_density: args
            .sparse_max_density
            .unwrap_or(TrainOptions::default_sparse_max_density(compute_dtype)),
        compute_dtype,
        snapshot_steps: concord_train::snapshot_steps(total_steps, args.snapshots),
        snapshot_dir: Some(args.out.join(concord_core::snapshots::SNAPSHOTS_DIR)),
        ..TrainOptions::default()
    };
    // The trainer writes its checkpoint folder atomically: if it exists, it is whole.
    let mut trainer = if ckpt.exists() {
        tracing::info!("resuming from {}", ckpt.display());
        Trainer::resume_with(&ckpt, opts)?
    } else {
        Trainer::new(specs, opts)?
    };
    // Written once the trainer stands: a run refused before this leaves nothing behind.
    if write_record {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
        if _lock.is_none() {
            _lock = Some(concord_core::fsutil::DirLock::acquire(&args.out)?);
        }
        concord_core::fsutil::write_json_atomic(&record_path, &record)?;
    }
    let done = trainer.steps_done();
    tracing::info!(
        "training {} SAEs on {} hooks: {tokens} tokens ({total_steps} steps of {}), {} windows in the store{}",
        trainer.specs().len(),
        store.datasets().len(),
        args.batch,
        windows,
        args.half
            .as_deref()
            .map(|h| format!(", {h} half"))
            .unwrap_or_default()
    );
    if epochs > 1 {
        tracing::info!(
            "{tokens} tokens are {epochs} passes over the {rows} rows read: rows are seen again"
        );
    }
    let cfg = ReadConfig {
        batch_rows: args.batch,
        order,
        seed: data_seed,
        epochs,
        start_batch: 0,
        drop_last: false,
    };
    let bar = Progress::tokens(Some(total_steps * args.batch as u64), "train");
    let start = Instant::now();
    // The reader starts at the first batch a checkpoint does not hold yet.
    let cfg = ReadConfig {
        start_batch: done,
        ..cfg
    };
    let mut feeder = Feeder {
        store: &store,
        trainer: &mut trainer,
        bar: &bar,
        step: done,
        total: total_steps,
        batch: args.batch,
    };
    if done < total_steps {
        for b in store.batches_of_windows(&cfg, range)? {
            if !feeder.feed(&b?)? {
                break;
            }
        }
    }
    bar.finish();
    let dirs = trainer.save(&args.out)?;
    let _ = std::fs::remove_dir_all(&ckpt);
    let secs = start.elapsed().as_secs_f64();
    let fed = trainer.steps_done().saturating_sub(done) * args.batch as u64;
    tracing::info!(
        "trained {} SAEs in {secs:.1} s ({:.0} tokens/s)",
        dirs.len(),
        fed as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Refuses a grid whose training state would not fit in the memory available now (Linux's
/// `MemAvailable`; elsewhere nothing is checked), before anything is allocated. Per SAE:
/// parameters, their gradients and both Adam moments (`8 d_in d_sae` floats) and about three
/// `(batch, d_sae)` buffers (codes, their gradient, pre-activations).
fn check_memory(specs: &[SaeSpec], batch: usize) -> Result<()> {
    let need = |s: &SaeSpec| -> f64 {
        4.0 * (s.d_sae as f64) * (8.0 * s.d_in as f64 + 3.0 * batch as f64 + 8.0)
    };
    let total: f64 = specs.iter().map(need).sum();
    let Some(available) = mem_available() else {
        return Ok(());
    };
    if total > available as f64 {
        let largest = specs
            .iter()
            .max_by_key(|s| s.d_sae)
            .expect("a grid has SAEs");
        let gib = |b: f64| b / f64::from(1u32 << 30);
        bail!(
            "not enough memory: SAE {} (d_sae = {}) needs about {:.1} GiB and the grid of {} about {:.1} GiB, but {:.1} GiB are available",
            largest.name,
            largest.d_sae,
            gib(need(largest)),
            specs.len(),
            gib(total),
            gib(available as f64)
        );
    }
    Ok(())
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Rows in the first or second half of the windows.
/// The input scale that brings `ds`'s rows in the windows `range` to a mean squared norm of
/// `d` (see [`concord_train::input_scale_for`]), from up to 64 windows spread evenly over
/// the range: the same factor whatever the data order.
fn input_scale(ds: &concord_store::Dataset, range: std::ops::Range<u64>) -> Result<f64> {
    const SAMPLE: u64 = 64;
    let n = range.end.saturating_sub(range.start);
    let (mut sum, mut rows) = (0.0f64, 0u64);
    for i in 0..n.min(SAMPLE) {
        let seq = range.start + i * n / n.min(SAMPLE);
        let batch = ds.read_window(seq)?;
        for r in 0..batch.len() {
            sum += batch
                .row(r)
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>();
        }
        rows += batch.len() as u64;
    }
    let mean = sum / rows.max(1) as f64;
    if !(mean.is_finite() && mean > 0.0) {
        bail!(
            "{}: cannot normalise activations whose mean squared norm is {mean} (on {rows} rows)",
            ds.dir().display()
        );
    }
    Ok(concord_train::input_scale_for(ds.d(), mean))
}

fn half_rows(store: &Lockstep, second: bool) -> Result<u64> {
    let ds = &store.datasets()[0];
    let windows = ds.windows();
    let mid = windows / 2;
    let range = if second { mid..windows } else { 0..mid };
    let mut rows = 0;
    for seq in range {
        rows += ds.window_rows(seq).map_or(0, |r| r.end - r.start);
    }
    if rows == 0 {
        bail!(
            "{}: too few windows ({windows}) to split into halves",
            ds.dir().display()
        );
    }
    Ok(rows)
}

/// The store row (in stored order) of the row `meta` of `ds`: its window's rows are searched
/// for it (only for error messages).
fn store_row(ds: &concord_store::Dataset, meta: &RowMeta) -> Option<u64> {
    let range = ds.window_rows(meta.seq)?;
    let metas = ds.read_meta(range.clone()).ok()?;
    let i = metas.iter().position(|m| m == meta)?;
    Some(range.start + i as u64)
}

/// Feeds batches to the trainer and shows its progress.
struct Feeder<'a> {
    store: &'a Lockstep,
    trainer: &'a mut Trainer,
    bar: &'a Progress,
    /// Batches trained on, counting those before a resume.
    step: u64,
    total: u64,
    batch: usize,
}

impl Feeder<'_> {
    /// Trains on one batch; returns whether more batches are wanted.
    fn feed(&mut self, b: &LockstepBatch) -> Result<bool> {
        self.step += 1;
        let batches: Vec<Batch<'_>> =
            b.xs.iter()
                .zip(&b.ds)
                .enumerate()
                .map(|(s, (xs, &d))| Batch {
                    stream: s,
                    width: d,
                    rows: xs,
                })
                .collect();
        let stats = match self.trainer.step(&batches) {
            Err(concord_train::Error::NonFiniteRow {
                stream,
                row,
                column,
                value,
            }) => {
                let ds = &self.store.datasets()[stream];
                let place = b
                    .rows
                    .get(row)
                    .and_then(|meta| store_row(ds, meta))
                    .map_or_else(
                        || format!("{} (row {row} of batch {})", ds.dir().display(), self.step),
                        |r| crate::eval::describe_row(ds, r),
                    );
                bail!("{place} holds a non-finite value ({value}) at column {column}");
            }
            r => r?,
        };
        self.bar.set(self.step * self.batch as u64);
        self.bar.message(format!(
            "loss {:.4}  L0 {:.1}  dead {:.1} %",
            stats.mean_loss(),
            stats.mean_l0(),
            100.0 * stats.mean_dead_fraction()
        ));
        Ok(self.step < self.total)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};

    use clap::Parser;
    use concord_store::{Dtype, HookWriter, ManifestSpec, Packing, RowMeta};

    use super::{Args, RECORD, run};

    /// `D`-wide rows; 12 windows of 16 tokens, in shards of 64 rows (4 windows).
    pub(crate) const D: usize = 8;

    /// Writes a synthetic hook dataset `dir/blocks.0.hook_resid_post` (deterministic values
    /// in [-4, 4)); store row `nan_at`, if any, holds a NaN at column 3. Returns the dataset.
    pub(crate) fn store(dir: &Path, nan_at: Option<u64>) -> PathBuf {
        let hook = dir.join("blocks.0.hook_resid_post");
        let spec = ManifestSpec {
            model: "synthetic".into(),
            hook: "blocks.0.hook_resid_post".parse().unwrap(),
            d: D,
            dtype: Dtype::F32,
            tokenizer: "synthetic-tok".into(),
            tokenizer_sha256: "00".repeat(32),
            corpus_sha256: "11".repeat(32),
            context_len: 16,
            packing: Packing::Packed,
            rows_per_shard: 64,
            settings: serde_json::json!({"tokens": 192}),
        };
        let mut w = HookWriter::open(&hook, &spec).unwrap();
        for seq in 0..12u64 {
            let rows: Vec<RowMeta> = (0..16u32)
                .map(|pos| RowMeta {
                    doc: seq,
                    pos,
                    seq,
                    token: pos,
                    byte_start: pos * 4,
                    byte_end: pos * 4 + 3,
                })
                .collect();
            let mut xs: Vec<f32> = (0..16u64)
                .flat_map(|pos| {
                    (0..D as u64)
                        .map(move |j| ((seq * 31 + pos * 7 + j * 3) % 64) as f32 / 8.0 - 4.0)
                })
                .collect();
            if let Some(r) = nan_at.filter(|r| r / 16 == seq) {
                xs[(r % 16) as usize * D + 3] = f32::NAN;
            }
            w.push_window(&rows, &xs).unwrap();
        }
        w.finish().unwrap();
        hook
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    /// Runs `concord train` with `args`; the error's one line.
    pub(crate) fn train(args: &[&str]) -> Result<(), String> {
        let cli = Cli::try_parse_from(std::iter::once("train").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        run(&cli.args).map_err(|e| format!("{e:#}"))
    }

    /// A temporary folder holding [`store`]`(nan_at)`, and the path of an SAE folder in it
    /// (the folder guards both).
    fn setup(nan_at: Option<u64>) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let acts = store(tmp.path(), nan_at);
        let out = tmp.path().join("saes");
        (tmp, acts, out)
    }

    #[test]
    fn a_failed_run_does_not_block_a_corrected_one() {
        let (_tmp, acts, out) = setup(None);
        let (acts_s, out_s) = (acts.to_str().unwrap(), out.to_str().unwrap());
        let base = [
            "--acts", acts_s, "--arch", "relu-l1", "--ratio", "2", "--batch", "32", "--out", out_s,
        ];
        let with = |extra: &[&'static str]| -> Vec<&str> { [&base[..], extra].concat() };
        // Refused before training: nothing is left behind.
        let err = train(&with(&["--ratio", "100000000000"])).unwrap_err();
        assert!(err.contains("d_sae = 800000000000"), "{err}");
        let err = train(&with(&["--device", "cuda:7"])).unwrap_err();
        assert!(err.contains("device \"cuda:7\" is not available"), "{err}");
        assert!(!out.exists());
        // Diverges at step 2 and leaves a record of settings that trained nothing.
        let err = train(&with(&["--lr", "1e6"])).unwrap_err();
        assert!(err.contains("diverged"), "{err}");
        assert!(out.join(RECORD).exists());
        train(&with(&["--lr", "1e-3"])).unwrap();
        // The same dataset spelled otherwise is the same: already trained.
        let cwd = std::env::current_dir().unwrap();
        let relative = pathdiff(&acts, &cwd);
        for spelling in [format!("{acts_s}/"), relative] {
            train(&[
                "--acts", &spelling, "--arch", "relu-l1", "--ratio", "2", "--batch", "32", "--out",
                out_s, "--lr", "1e-3",
            ])
            .unwrap();
        }
        // Trained SAEs are not replaced, and the refusal names the setting.
        let err = train(&with(&["--lr", "2e-3"])).unwrap_err();
        assert!(
            err.contains("other settings") && err.contains("hyper.lr: 0.001 there, 0.002 now"),
            "{err}"
        );
        // A live process holding the folder keeps another run out; a dead one's lock does not.
        std::fs::write(out.join(".lock"), "1").unwrap();
        let err = train(&with(&["--lr", "1e-3"])).unwrap_err();
        assert!(err.contains("another process (1)"), "{err}");
        std::fs::write(out.join(".lock"), format!("{}", u32::MAX)).unwrap();
        train(&with(&["--lr", "1e-3"])).unwrap();
        assert!(!out.join(".lock").exists());
    }

    /// `path` relative to `base` (`..` as needed).
    fn pathdiff(path: &Path, base: &Path) -> String {
        let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
        let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let mut out = PathBuf::new();
        for _ in common..b.len() {
            out.push("..");
        }
        for c in &p[common..] {
            out.push(c);
        }
        out.display().to_string()
    }

    #[test]
    fn a_non_finite_row_is_named_by_its_shard_and_store_row() {
        // Store row 150: shard 2 (rows 128..192), its row 22; window 9, position 6.
        let (_tmp, acts, out) = setup(Some(150));
        for shuffle in ["sequences", "rows"] {
            let err = train(&[
                "--acts",
                acts.to_str().unwrap(),
                "--arch",
                "topk",
                "--k",
                "2",
                "--ratio",
                "1",
                "--batch",
                "32",
                "--shuffle",
                shuffle,
                "--out",
                out.to_str().unwrap(),
            ])
            .unwrap_err();
            assert!(
                err.contains("part-00002.parquet row 22 (store row 150, seq 9, pos 6)")
                    && err.contains("(NaN) at column 3"),
                "{shuffle}: {err}"
            );
        }
    }

    #[test]
    fn duplicates_and_zero_ratios_are_named() {
        let (_tmp, acts, out) = setup(None);
        let (acts, out) = (acts.to_str().unwrap(), out.to_str().unwrap());
        let run = |ratio: &str, seeds: &str| {
            train(&[
                "--acts",
                acts,
                "--arch",
                "relu-l1",
                "--ratio",
                ratio,
                "--init-seed",
                seeds,
                "--out",
                out,
            ])
            .unwrap_err()
        };
        assert!(run("1,1", "0").contains("two SAEs share this name"));
        assert!(run("1", "0,0").contains("two SAEs share this name"));
        assert!(run("1,0", "0").contains("--ratio 0"));
    }
}
