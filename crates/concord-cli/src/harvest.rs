//! `concord harvest`: text through a model into the parquet activation store.
//!
//! The corpus (store crate) feeds the packer (models crate); each batch of windows runs once
//! through the model, capturing every hook asked for; the store writes one dataset per hook.
//! Killed and run again, the writer resumes at the first window some hook still lacks, so the
//! store ends identical to an uninterrupted run.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use concord_core::{Dtype, HookName};
use concord_models::tch::{Device, Kind, Tensor};
use concord_models::{
    ComputeDtype, LoadOptions, Model, PackOptions, Packing, Window, pack, to_batch,
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
    let data = crate::data_dir();
    let root = data
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("data"));
    crate::hub::ensure_model(name)?;
    let source = concord_models::resolve(name, &root)?;
    let dtype = match compute {
        "f32" | "float32" => ComputeDtype::F32,
        "bf16" | "bfloat16" => ComputeDtype::Bf16,
        other => bail!("--compute-dtype {other:?}: expected f32 or bf16"),
    };
    let device = concord_models::parse_device(device)?;
    Model::load(&source, LoadOptions { device, dtype })
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
    if args.batch == 0 || args.tokens == Some(0) || args.docs == Some(0) {
        bail!("--batch, --tokens and --docs must be positive");
    }
    let model = load_model(&args.model, &args.device, &args.compute_dtype)?;
    model.check_hooks(&hooks)?;
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
        "format": 1,
    });
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
                rows_per_shard: default_rows_per_shard(d, args.dtype, args.context_len),
                settings: settings.clone(),
            }
        })
        .collect();
    let mut writer = StoreWriter::open(&args.out, specs)?;
    if writer.is_complete() {
        tracing::info!("{} is already complete", args.out.display());
        return Ok(());
    }
    let resume_at = writer.next_seq();
    if resume_at > 0 {
        tracing::info!("resuming {} at window {resume_at}", args.out.display());
    }
    let error = Rc::new(RefCell::new(None));
    let docs = documents(&corpus, args.skip_docs, args.docs, error.clone())?;
    let pad = model.info.pad.or(model.info.eos).unwrap_or(0);
    let opts = PackOptions {
        context_len: args.context_len,
        packing,
    };
    let mut windows = pack(&model.tokenizer, model.info.is_causal, docs, opts)?;
    let bar = Progress::tokens(args.tokens, "harvest");
    let start = Instant::now();
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
            run_batch(&model, &hooks, &batch, pad, &mut writer)?;
            batch.clear();
            bar.set(tokens);
        }
    }
    if !batch.is_empty() {
        run_batch(&model, &hooks, &batch, pad, &mut writer)?;
        bar.set(tokens);
    }
    if let Some(e) = error.borrow_mut().take() {
        return Err(e.into());
    }
    if tokens == 0 {
        bail!(
            "{}: no text to harvest (empty corpus, or --skip-docs past its end)",
            args.corpus.display()
        );
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

/// Runs one batch of windows and appends each window's rows to every hook's dataset.
fn run_batch(
    model: &Model,
    hooks: &[HookName],
    batch: &[Window],
    pad: u32,
    writer: &mut StoreWriter,
) -> Result<()> {
    let (ids, mask) = to_batch(batch, pad)?;
    let acts = model.run_with_cache(&ids, &mask, hooks)?;
    let len = ids.size()[1] as usize;
    let mut per_hook = Vec::with_capacity(hooks.len());
    for hook in hooks {
        let t = acts
            .get(hook)
            .with_context(|| format!("the model returned no {hook}"))?;
        per_hook.push((to_f32_vec(t)?, model.info.hook_width(*hook)));
    }
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
        let slices: Vec<&[f32]> = per_hook
            .iter()
            .map(|(xs, d)| &xs[i * len * d..(i * len + n) * d])
            .collect();
        writer.push_window(&rows, &slices)?;
    }
    Ok(())
}
