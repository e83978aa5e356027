//! `concord harvest`: text through a model into the parquet activation store.
//!
//! The corpus (store crate) feeds the packer (models crate); each batch of windows runs once
//! through the model, capturing every hook asked for; the store writes one dataset per hook.
//! Killed and run again, the writer resumes at the first window some hook still lacks, so the
//! store ends identical to an uninterrupted run.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use concord_core::{Dtype, HookName};
use concord_models::tch::{Device, Kind, Tensor};
use concord_models::{
    ComputeDtype, LoadOptions, Model, ModelSource, PackOptions, Packing, Window, pack, to_batch,
};
use concord_store::{Corpus, ManifestSpec, RowMeta, StoreWriter, default_rows_per_shard};

use crate::progress::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `smollm2-135m`, `minilm-l6`, a Hugging Face folder, a `.gguf` file, or a hub id
    /// (`EleutherAI/pythia-70m-deduped`: read from the Hugging Face cache, downloaded into it
    /// when missing; `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_CACHE` and `HF_HUB_OFFLINE=1` apply).
    #[arg(long)]
    model: String,
    /// Hook points, comma-separated: `blocks.{L}.hook_resid_pre`, `hook_resid_post`,
    /// `hook_mlp_out`, `hook_attn_out`, `mlp.hook_post`.
    #[arg(long)]
    hooks: String,
    /// `.txt` (documents separated by blank lines), `.jsonl` (a `text` field per line) or
    /// `.parquet` (a `text` column); a folder of such files (read in name order); or a Hugging
    /// Face dataset id `owner/name[:CONFIG[/SPLIT]]` (the hub's parquet conversion; config
    /// `default` or the only one, split `train` unless given; read from the Hugging Face cache,
    /// downloaded into it when missing).
    #[arg(long)]
    corpus: PathBuf,
    /// The store: one dataset per hook, `OUT/<hook name>/`.
    #[arg(long)]
    out: PathBuf,
    /// Stop after this many tokens (whole windows).
    #[arg(long, conflicts_with = "docs")]
    tokens: Option<u64>,
    /// Stop after this many documents.
    #[arg(long)]
    docs: Option<u64>,
    /// Skip the corpus's first documents (held-out text after a training range).
    #[arg(long, default_value_t = 0)]
    skip_docs: u64,
    #[arg(long, default_value_t = 256)]
    context_len: usize,
    /// Tokenize each document on its own (as `tokenizer(text)`), truncated to the context
    /// length, instead of packing documents into full windows.
    #[arg(long)]
    no_pack: bool,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// What the store holds: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    /// What the model computes in: f32 or bf16.
    #[arg(long, default_value = "f32")]
    compute_dtype: String,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Rows per parquet shard, rounded up to whole windows (default: about 64 MB of
    /// activations per shard).
    #[arg(long)]
    rows_per_shard: Option<u64>,
    /// Threads that each run whole batches, libtorch's threads shared among them (default: 2
    /// on a CPU with at least 2 cores; 0 runs batches on the main thread, as on CUDA).
    #[arg(long)]
    workers: Option<usize>,
}

/// `(rows, d)` f32 on the CPU, row-major, from a tensor of any float kind and device.
pub fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    let flat = t
        .f_to_kind(Kind::Float)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_view([-1])?;
    Ok(Vec::<f32>::try_from(&flat)?)
}

pub fn load_model(name: &str, device: &str, compute: &str) -> Result<Model> {
    load_source(name, &resolve_model(name)?, device, compute)
}

/// The files behind a model name (downloading a hub id when it is missing and the hub is
/// reachable).
pub(crate) fn resolve_model(name: &str) -> Result<ModelSource> {
    let data = crate::data_dir();
    let root = data
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("data"));
    crate::hub::ensure_model(name)?;
    Ok(concord_models::resolve(name, &root)?)
}

fn load_source(name: &str, source: &ModelSource, device: &str, compute: &str) -> Result<Model> {
    let dtype = match compute {
        "f32" | "float32" => ComputeDtype::F32,
        "bf16" | "bfloat16" => ComputeDtype::Bf16,
        other => bail!("--compute-dtype {other:?}: expected f32 or bf16"),
    };
    let device = concord_models::parse_device(device)?;
    Model::load(source, LoadOptions { device, dtype })
        .with_context(|| format!("cannot load model {name}"))
}

/// Documents `skip..skip + take` of a corpus as `(index, text)`, stopping at the first error,
/// which is kept in `error` for the caller to report.
pub fn documents(
    corpus: &Corpus,
    skip: u64,
    take: Option<u64>,
    error: Rc<RefCell<Option<concord_store::Error>>>,
) -> Result<impl Iterator<Item = (u64, String)>> {
    let docs = corpus.documents()?;
    Ok(docs
        .skip(skip as usize)
        .take(take.map_or(usize::MAX, |t| t as usize))
        .map_while(move |d| match d {
            Ok(d) => Some((d.index, d.text)),
            Err(e) => {
                *error.borrow_mut() = Some(e);
                None
            }
        }))
}

pub fn run(args: &Args) -> Result<()> {
    let hooks = HookName::parse_list(&args.hooks)?;
    if hooks.is_empty() {
        bail!("--hooks: no hook given");
    }
    if args.batch == 0
        || args.tokens == Some(0)
        || args.docs == Some(0)
        || args.rows_per_shard == Some(0)
    {
        bail!("--batch, --tokens, --docs and --rows-per-shard must be positive");
    }
    let source = resolve_model(&args.model)?;
    let model = load_source(&args.model, &source, &args.device, &args.compute_dtype)?;
    // The weights' digest, not the name they were reached by, says which model made a store:
    // `m/`, `./m` and an absolute path resume the same dataset; other weights at a path do not.
    let model_sha256 = source
        .sha256()
        .with_context(|| format!("cannot read model {}", args.model))?;
    model.check_hooks(&hooks)?;
    model.check_context_len(args.context_len)?;
    let corpus = crate::hub::open_corpus(&args.corpus)?;
    let corpus_sha256 = corpus.sha256()?;
    let packing = if args.no_pack {
        Packing::PerDocument
    } else {
        Packing::Packed
    };
    let settings = serde_json::json!({
        "skip_docs": args.skip_docs,
        "docs": args.docs,
        "tokens": args.tokens,
        "compute_dtype": args.compute_dtype,
        // Padding and the products' blocking follow the batch, so its last bits do too: a
        // resume with another batch would mix two roundings in one dataset.
        "batch": args.batch,
        "model_sha256": model_sha256,
        "format": 2,
    });
    let window = args.context_len.max(1) as u64;
    let specs: Vec<ManifestSpec> = hooks
        .iter()
        .map(|&hook| {
            let d = model.info.hook_width(hook);
            ManifestSpec {
                model: args.model.clone(),
                hook,
                d,
                dtype: args.dtype,
                tokenizer: model
                    .tokenizer
                    .source()
                    .file_name()
                    .map_or_else(|| args.model.clone(), |n| n.to_string_lossy().into_owned()),
                tokenizer_sha256: model.tokenizer.sha256().to_owned(),
                corpus_sha256: corpus_sha256.clone(),
                context_len: args.context_len,
                packing,
                rows_per_shard: args.rows_per_shard.map_or_else(
                    || default_rows_per_shard(d, args.dtype, args.context_len),
                    |rows| rows.div_ceil(window) * window,
                ),
                settings: settings.clone(),
            }
        })
        .collect();
    // The first window is made before anything is written, so that a corpus with no text
    // for one window fails without leaving an empty store behind.
    let error = Rc::new(RefCell::new(None));
    let docs = documents(&corpus, args.skip_docs, args.docs, error.clone())?;
    let pad = model.info.pad.or(model.info.eos).unwrap_or(0);
    let opts = PackOptions {
        context_len: args.context_len,
        packing,
    };
    let mut windows = pack(&model.tokenizer, model.info.is_causal, docs, opts)?.peekable();
    if windows.peek().is_none() {
        if let Some(e) = error.borrow_mut().take() {
            return Err(e.into());
        }
        bail!(
            "{}: no text to harvest: the corpus is empty, --skip-docs is past its end, or its \
             text is shorter than one packed window of {} tokens (use a smaller --context-len \
             or --no-pack)",
            args.corpus.display(),
            args.context_len
        );
    }
    let mut writer = StoreWriter::open(&args.out, specs)?;
    if writer.is_complete() {
        tracing::info!("{} is already complete", args.out.display());
        return Ok(());
    }
    let resume_at = writer.next_seq();
    if resume_at > 0 {
        tracing::info!("resuming {} at window {resume_at}", args.out.display());
    }
    let bar = Progress::tokens(args.tokens, "harvest");
    let start = Instant::now();
    let workers = match args.workers {
        Some(n) => n,
        None => default_workers(&model),
    };
    let (tokens, done_tokens, ended) = std::thread::scope(|scope| -> Result<(u64, u64, bool)> {
        let mut batches = Batches::start(scope, &model, &hooks, pad, workers);
        let (mut tokens, mut done_tokens) = (0u64, 0u64);
        let mut batch: Vec<Window> = Vec::with_capacity(args.batch);
        let mut ended = false;
        loop {
            if args.tokens.is_some_and(|t| tokens >= t) {
                break;
            }
            let Some(w) = windows.next().transpose()? else {
                ended = true;
                break;
            };
            tokens += w.rows.len() as u64;
            if w.seq < resume_at {
                // Held by the store already (a resumed run): tokenized again, not recomputed.
                done_tokens += w.rows.len() as u64;
                continue;
            }
            batch.push(w);
            if batch.len() == args.batch {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(args.batch));
                batches.submit(full, &mut writer)?;
                bar.set(tokens);
            }
        }
        if !batch.is_empty() {
            batches.submit(batch, &mut writer)?;
        }
        batches.finish(&mut writer)?;
        bar.set(tokens);
        Ok((tokens, done_tokens, ended))
    })?;
    if let Some(e) = error.borrow_mut().take() {
        // Bad input (the corpus), found part-way: the same corpus fails here again and a
        // corrected one is another corpus, so what this run started can never be finished.
        writer.discard()?;
        return Err(e.into());
    }
    if ended && args.tokens.is_some_and(|t| tokens < t) {
        tracing::warn!(
            "the corpus ended after {tokens} tokens, before --tokens {}",
            args.tokens.unwrap_or(0)
        );
    }
    bar.finish();
    writer.finish()?;
    let secs = start.elapsed().as_secs_f64();
    tracing::info!(
        "harvested {} tokens ({} new) into {} in {secs:.1} s ({:.0} tokens/s)",
        tokens,
        tokens - done_tokens,
        args.out.display(),
        (tokens - done_tokens) as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Worker threads for a model: two on a CPU with at least two cores, else none (CUDA keeps one
/// stream, driven from the calling thread).
fn default_workers(model: &Model) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if model.device() == Device::Cpu && cores >= 2 {
        2
    } else {
        0
    }
}

/// A batch of windows and its activations, one `(batch * seq * d)` f32 vector per hook.
type Done = (Vec<Window>, Vec<Vec<f32>>);

/// Runs batches of windows through the model and writes them to the store in the order they
/// were submitted.
///
/// With workers, each worker thread owns a replica of the model (the weights shared) and runs
/// whole batches with its share of libtorch's intra-op threads (`at::set_num_threads` sets
/// OpenMP's and MKL's thread counts for the calling thread only). On a small CPU this beats one
/// forward split across all threads: element-wise kernels and attention scale poorly across
/// threads, whole batches do not contend. Results come back out of order and wait in `pending`
/// until every earlier batch is written, so the store (and a resumed run) is byte-identical to
/// a run without workers; at most two batches per worker are in flight, which bounds memory.
struct Batches<'s> {
    /// The model, when batches run on the calling thread (no workers).
    inline: Option<&'s Model>,
    hooks: &'s [HookName],
    widths: Vec<usize>,
    pad: u32,
    jobs: Option<mpsc::SyncSender<(u64, Vec<Window>)>>,
    results: Option<mpsc::Receiver<(u64, Result<Done>)>>,
    max_in_flight: u64,
    submitted: u64,
    written: u64,
    pending: BTreeMap<u64, Done>,
}

impl<'s> Batches<'s> {
    fn start<'env>(
        scope: &'s std::thread::Scope<'s, 'env>,
        model: &'s Model,
        hooks: &'s [HookName],
        pad: u32,
        workers: usize,
    ) -> Batches<'s> {
        let widths = hooks.iter().map(|&h| model.info.hook_width(h)).collect();
        let mut batches = Batches {
            inline: Some(model),
            hooks,
            widths,
            pad,
            jobs: None,
            results: None,
            max_in_flight: 2 * workers as u64,
            submitted: 0,
            written: 0,
            pending: BTreeMap::new(),
        };
        if workers == 0 {
            return batches;
        }
        let threads = (concord_models::tch::get_num_threads() / workers as i32).max(1);
        let (job_tx, job_rx) = mpsc::sync_channel::<(u64, Vec<Window>)>(workers);
        let job_rx = Arc::new(Mutex::new(job_rx));
        // Unbounded, so a worker never blocks on a caller that stopped early; `submit` bounds it.
        let (done_tx, done_rx) = mpsc::channel();
        for _ in 0..workers {
            let replica = model.replica();
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            scope.spawn(move || {
                concord_models::tch::set_num_threads(threads);
                loop {
                    let job = job_rx
                        .lock()
                        .map_err(|_| ())
                        .and_then(|rx| rx.recv().map_err(|_| ()));
                    let Ok((index, batch)) = job else { break };
                    let acts = forward(&replica, hooks, &batch, pad).map(|acts| (batch, acts));
                    if done_tx.send((index, acts)).is_err() {
                        break;
                    }
                }
            });
        }
        batches.inline = None;
        batches.jobs = Some(job_tx);
        batches.results = Some(done_rx);
        batches
    }

    /// Runs `batch` (now or on a worker) and writes every batch whose turn has come.
    fn submit(&mut self, batch: Vec<Window>, writer: &mut StoreWriter) -> Result<()> {
        if let Some(model) = self.inline {
            let acts = forward(model, self.hooks, &batch, self.pad)?;
            return write_batch(&batch, &acts, &self.widths, writer);
        }
        while self.submitted - self.written >= self.max_in_flight {
            self.receive(writer)?;
        }
        let jobs = self
            .jobs
            .as_ref()
            .context("harvest workers already finished")?;
        if jobs.send((self.submitted, batch)).is_err() {
            // Every worker is gone; its error, if any, is waiting in `results`.
            self.receive(writer)?;
            bail!("the harvest workers stopped");
        }
        self.submitted += 1;
        Ok(())
    }

    /// Waits for one result and writes every batch now complete in order.
    fn receive(&mut self, writer: &mut StoreWriter) -> Result<()> {
        let results = self
            .results
            .as_ref()
            .context("harvest workers already finished")?;
        let (index, done) = results.recv().context("the harvest workers stopped")?;
        self.pending.insert(index, done?);
        while let Some((batch, acts)) = self.pending.remove(&self.written) {
            write_batch(&batch, &acts, &self.widths, writer)?;
            self.written += 1;
        }
        Ok(())
    }

    /// Waits for every batch submitted and writes it; the workers then stop.
    fn finish(&mut self, writer: &mut StoreWriter) -> Result<()> {
        self.jobs = None;
        while self.written < self.submitted {
            self.receive(writer)?;
        }
        Ok(())
    }
}

/// Runs one batch of windows; returns each hook's activations as `(batch * seq * d)` f32.
fn forward(model: &Model, hooks: &[HookName], batch: &[Window], pad: u32) -> Result<Vec<Vec<f32>>> {
    let (ids, mask) = to_batch(batch, pad)?;
    let acts = model.run_with_cache(&ids, &mask, hooks)?;
    hooks
        .iter()
        .map(|hook| {
            let t = acts
                .get(hook)
                .with_context(|| format!("the model returned no {hook}"))?;
            to_f32_vec(t)
        })
        .collect()
}

/// Appends each window's rows of `acts` (from [`forward`], `widths` per hook) to every hook's
/// dataset.
fn write_batch(
    batch: &[Window],
    acts: &[Vec<f32>],
    widths: &[usize],
    writer: &mut StoreWriter,
) -> Result<()> {
    // The padded window length: every hook's vector holds `batch.len() * len` rows.
    let len = match (acts.first(), widths.first()) {
        (Some(xs), Some(&d)) if d > 0 && !batch.is_empty() => xs.len() / d / batch.len(),
        _ => 0,
    };
    for (i, w) in batch.iter().enumerate() {
        let rows: Vec<RowMeta> = w
            .rows
            .iter()
            .map(|r| RowMeta {
                doc: r.doc,
                pos: r.pos,
                seq: w.seq,
                token: r.token,
                byte_start: r.byte_start,
                byte_end: r.byte_end,
            })
            .collect();
        let n = rows.len();
        let slices: Vec<&[f32]> = acts
            .iter()
            .zip(widths)
            .map(|(xs, d)| &xs[i * len * d..(i * len + n) * d])
            .collect();
        writer.push_window(&rows, &slices)?;
    }
    Ok(())
}
