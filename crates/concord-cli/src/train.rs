//! `concord train`: a grid of SAEs from one pass over a store.
//!
//! Several hooks of one store are read in lockstep (the study trained six layers from one
//! forward); every batch is read once and fed to every SAE of its hook. Checkpoints with
//! optimizer state are written periodically; killed and run again, training resumes from the
//! last one and ends with the same weights as an uninterrupted run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use concord_store::{Lockstep, LockstepBatch, Order, ReadConfig};
use concord_train::{Arch, Batch, SaeSpec, TrainOptions, Trainer};
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
    /// Training tokens (default: one epoch of the store).
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
    acts: Vec<String>,
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
    if args.batch == 0 || args.ratio.contains(&0) || args.tokens == Some(0) {
        bail!("--batch, --ratio and --tokens must be positive");
    }
    if let Some(density) = args.sparse_max_density.filter(|d| !(0.0..=1.0).contains(d)) {
        bail!("--sparse-max-density {density} must be between 0 and 1");
    }
    let mut seeds = args.init_seed.clone();
    seeds.sort_unstable();
    seeds.dedup();
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
    // Specs: every hook x ratio x init seed.
    let mut specs = Vec::new();
    for (stream, ds) in store.datasets().iter().enumerate() {
        let m = ds.manifest();
        let hook = m.hook.to_string();
        for &ratio in &args.ratio {
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
                spec.validate()?;
                specs.push(spec);
            }
        }
    }
    let windows = store.datasets()[0].windows();
    let rows = match half {
        None => store.rows(),
        Some(second) => half_rows(&store, second)?,
    };
    let tokens = args.tokens.unwrap_or(rows);
    let total_steps = tokens.div_ceil(args.batch as u64);
    let epochs = tokens.div_ceil(rows.max(1)).max(1);
    let record = TrainRecord {
        specs: specs.clone(),
        tokens,
        batch: args.batch,
        shuffle: args.shuffle.clone(),
        data_seed,
        half: args.half.clone(),
        acts: args.acts.iter().map(|p| p.display().to_string()).collect(),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let record_path = args.out.join(RECORD);
    if record_path.exists() {
        let old: TrainRecord = concord_core::fsutil::read_json(&record_path)?;
        if old != record {
            bail!(
                "{} holds SAEs trained with other settings; choose another --out",
                args.out.display()
            );
        }
        if !args.out.join(CHECKPOINT).exists()
            && specs
                .iter()
                .all(|s| args.out.join(&s.name).join("cfg.json").exists())
        {
            tracing::info!("{} is already trained", args.out.display());
            return Ok(());
        }
    } else {
        concord_core::fsutil::write_json_atomic(&record_path, &record)?;
    }
    let ckpt = args.out.join(CHECKPOINT);
    let opts = TrainOptions {
        device: args.device.clone(),
        total_steps: Some(total_steps),
        checkpoint_dir: Some(ckpt.clone()),
        checkpoint_every: args.checkpoint_every,
        sparse_max_density: args
            .sparse_max_density
            .unwrap_or(TrainOptions::default().sparse_max_density),
        ..TrainOptions::default()
    };
    // The trainer writes its checkpoint folder atomically: if it exists, it is whole.
    let mut trainer = if ckpt.exists() {
        tracing::info!("resuming from {}", ckpt.display());
        Trainer::resume_with(&ckpt, opts)?
    } else {
        Trainer::new(specs, opts)?
    };
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
    if tokens > rows {
        tracing::info!(
            "{tokens} tokens are {:.1} passes over the {rows} rows read: rows are seen again",
            tokens as f64 / rows.max(1) as f64
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
    // Only the windows of the half asked for are read; the reader starts at the first batch
    // a checkpoint does not hold yet.
    let mid = windows / 2;
    let range = match half {
        None => 0..windows,
        Some(false) => 0..mid,
        Some(true) => mid..windows,
    };
    let cfg = ReadConfig {
        start_batch: done,
        ..cfg
    };
    let mut feeder = Feeder {
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

/// Rows in the first or second half of the windows.
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

/// Feeds batches to the trainer and shows its progress.
struct Feeder<'a> {
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
        let stats = self.trainer.step(&batches)?;
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
