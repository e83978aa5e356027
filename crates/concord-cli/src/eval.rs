//! `concord eval`: an SAE on a hook's dataset (MSE, FVU, L0, dead and dense features,
//! feature frequencies) and, for causal LMs, loss recovered and KL with the reconstruction
//! spliced into the model on held-out text.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, Result, bail};
use concord_core::HookName;
use concord_core::outputs::EvalOutput;
use concord_core::sae::Sae;
use concord_models::tch::{Kind, Tensor};
use concord_models::{PackOptions, Window, pack, to_batch};
use concord_store::Dataset;
use concord_train::{SaeModel, SpliceMeter};

use crate::harvest::{documents, load_model};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The SAE: a SAELens or sparsify folder, or a dictionary_learning `ae.pt` (or the folder
    /// holding it).
    #[arg(long)]
    sae: PathBuf,
    /// The hook's dataset (`STORE/<hook name>`) to evaluate on.
    #[arg(long)]
    acts: PathBuf,
    /// Where to write `eval.json` (default: inside the SAE folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rows evaluated at most (from the start of the dataset).
    #[arg(long, default_value_t = 200_000)]
    tokens: u64,
    /// A causal LM to splice the reconstruction into (loss recovered, KL).
    #[arg(long, requires = "corpus")]
    model: Option<String>,
    /// The text for loss recovered: a corpus file or folder, or a Hugging Face dataset id (as
    /// for `harvest --corpus`).
    #[arg(long, requires = "model")]
    corpus: Option<PathBuf>,
    /// Documents of the corpus to skip before the loss-recovered text.
    #[arg(long, default_value_t = 0)]
    skip_docs: u64,
    /// Documents of loss-recovered text.
    #[arg(long, default_value_t = 16)]
    docs: u64,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Reads an SAE whatever package wrote it (a SAELens or sparsify folder, a
/// dictionary_learning `ae.pt` or its folder); SAEs whose files carry no names are named after
/// the dataset's hook and model.
pub fn load_sae(path: &Path, ds: Option<&Dataset>) -> Result<Sae> {
    let (hook, model) = ds.map_or((String::new(), String::new()), |d| {
        (d.hook().to_string(), d.manifest().model.clone())
    });
    concord_train::load_sae(path, &hook, &model)
        .with_context(|| format!("cannot read SAE {}", path.display()))
}

/// Names row `row` (in stored order) of `ds` for an error: its shard file and row there, and
/// its store row, window (`seq`) and position in its document.
pub fn describe_row(ds: &Dataset, row: u64) -> String {
    let place = ds.locate(row).map_or_else(
        || ds.dir().display().to_string(),
        |(shard, i)| format!("{} row {i}", shard.display()),
    );
    match ds
        .read_meta(row..row + 1)
        .ok()
        .and_then(|m| m.first().copied())
    {
        Some(m) => format!("{place} (store row {row}, seq {}, pos {})", m.seq, m.pos),
        None => format!("{place} (store row {row})"),
    }
}

/// Checks that a dataset holds rows an SAE can read.
pub fn check_widths(sae: &Sae, sae_path: &Path, ds: &Dataset) -> Result<()> {
    if ds.d() != sae.cfg.d_in {
        bail!(
            "width mismatch: SAE {} reads d_in = {}, but {} holds rows of width {}",
            sae_path.display(),
            sae.cfg.d_in,
            ds.dir().display(),
            ds.d()
        );
    }
    if sae.cfg.hook_name != ds.hook().to_string() {
        tracing::warn!(
            "SAE {} was trained on {}, evaluated on {}",
            sae_path.display(),
            sae.cfg.hook_name,
            ds.hook()
        );
    }
    Ok(())
}

pub fn run(args: &Args) -> Result<()> {
    let ds = Dataset::open(&args.acts)?;
    let sae = load_sae(&args.sae, Some(&ds))?;
    check_widths(&sae, &args.sae, &ds)?;
    let device = concord_models::parse_device(&args.device)?;
    let model = SaeModel::from_sae(&sae, device)?;
    let rows = ds.rows().min(args.tokens);
    let mut batches = Vec::new();
    let step = 4096u64;
    let mut at = 0;
    while at < rows {
        let end = (at + step).min(rows);
        batches.push(ds.read_rows(at..end)?.xs);
        at = end;
    }
    // Batches are read from row 0 in stored order: an evaluation row is a store row.
    let report = match concord_train::evaluate(&model, batches.iter().map(Vec::as_slice)) {
        Err(concord_train::Error::NonFiniteEvalRow { row, column, value }) => bail!(
            "{} holds a non-finite value ({value}) at column {column}",
            describe_row(&ds, row)
        ),
        r => r?,
    };
    let mut out = EvalOutput {
        tokens: report.tokens,
        mse: report.mse,
        fvu: report.fvu,
        l0: report.l0,
        dead_fraction: report.dead_fraction,
        dense_fraction: report.dense_fraction,
        frequency: report.frequency.iter().map(|&f| f as f32).collect(),
        ..EvalOutput::default()
    };
    if let (Some(name), Some(corpus_path)) = (&args.model, &args.corpus) {
        let hook: HookName = sae.cfg.hook_name.parse()?;
        let m = ds.manifest();
        if &m.model != name {
            tracing::warn!(
                "--model {name} is not the model of {} ({})",
                ds.dir().display(),
                m.model
            );
        }
        let lm = load_model(name, &args.device, "f32")?;
        // Before any forward pass: the splice would fail deep inside the model.
        let width = lm.info.hook_width(hook);
        if width != sae.cfg.d_in {
            bail!(
                "width mismatch: --model {name} has {hook} of width {width}, but SAE {} (model {}) reads d_in = {}",
                args.sae.display(),
                sae.cfg.model_name,
                sae.cfg.d_in
            );
        }
        let corpus = crate::hub::open_corpus(corpus_path)?;
        let error = Rc::new(RefCell::new(None));
        let docs = documents(&corpus, args.skip_docs, Some(args.docs), error.clone())?;
        let opts = PackOptions {
            context_len: m.context_len,
            packing: m.packing,
        };
        let windows: Vec<Window> =
            pack(&lm.tokenizer, lm.info.is_causal, docs, opts)?.collect::<Result<_, _>>()?;
        if let Some(e) = error.borrow_mut().take() {
            return Err(e.into());
        }
        if windows.is_empty() {
            bail!(
                "{}: no text for loss recovered: documents {}..{} are missing or hold less than \
                 one window of the store's {} tokens",
                corpus_path.display(),
                args.skip_docs,
                args.skip_docs + args.docs,
                m.context_len
            );
        }
        let pad = lm.info.pad.or(lm.info.eos).unwrap_or(0);
        let mut meter = SpliceMeter::default();
        let reconstruct = |x: &Tensor| -> Tensor {
            let shape = x.size();
            let flat = x
                .to_kind(Kind::Float)
                .reshape([-1, *shape.last().expect("a hook value has a width")]);
            model
                .reconstruct(&flat)
                .expect("widths were checked against the dataset")
                .reshape(shape.as_slice())
                .to_kind(x.kind())
        };
        let zero = |x: &Tensor| x.zeros_like();
        for chunk in windows.chunks(4) {
            let (ids, mask) = to_batch(chunk, pad)?;
            let clean = lm.forward_logits(&ids, &mask)?;
            let spliced = lm.splice(&ids, &mask, hook, &reconstruct)?;
            let ablated = lm.splice(&ids, &mask, hook, &zero)?;
            let n = ids.size()[1];
            let logits = |t: &Tensor| t.narrow(1, 0, n - 1).contiguous();
            meter.add(
                &clean.loss,
                &spliced.loss,
                &ablated.loss,
                &logits(&clean.logits),
                &logits(&spliced.logits),
            )?;
        }
        let r = meter.report();
        out.loss_recovered = Some(r.loss_recovered);
        out.kl = Some(r.kl);
        out.ce_clean = Some(r.ce_clean);
        out.ce_spliced = Some(r.ce_spliced);
        out.ce_zero_ablated = Some(r.ce_zero_ablate);
    }
    let path = args.out.clone().unwrap_or_else(|| {
        if args.sae.is_file() {
            args.sae.with_extension("eval.json")
        } else {
            args.sae.join("eval.json")
        }
    });
    concord_core::fsutil::write_json_atomic(&path, &out)?;
    tracing::info!(
        "FVU {:.4}, L0 {:.1}, dead {:.1} % -> {}",
        out.fvu,
        out.l0,
        100.0 * out.dead_fraction,
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use concord_core::sae::Sae;
    use concord_core::{SaeConfig, SaeWeights};

    use super::{Args, run};
    use crate::train::tests::{D, store};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn a_non_finite_row_is_named_by_its_shard_and_store_row() {
        let tmp = tempfile::tempdir().unwrap();
        let acts = store(tmp.path(), Some(150));
        let cfg = SaeConfig::from_json(
            &format!(
                r#"{{"d_in": {D}, "d_sae": 2, "architecture": "standard",
                    "hook_name": "blocks.0.hook_resid_post", "model_name": "synthetic"}}"#
            ),
            std::path::Path::new("cfg.json"),
        )
        .unwrap();
        let weights = SaeWeights {
            d_in: D,
            d_sae: 2,
            w_enc: vec![0.5; D * 2],
            b_enc: vec![0.0; 2],
            w_dec: vec![0.25; 2 * D],
            b_dec: vec![0.0; D],
            threshold: None,
        };
        let sae_dir = tmp.path().join("sae");
        Sae { cfg, weights }.save(&sae_dir, &[]).unwrap();
        let out = tmp.path().join("eval.json");
        let cli = Cli::try_parse_from([
            "eval",
            "--sae",
            sae_dir.to_str().unwrap(),
            "--acts",
            acts.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap();
        let err = format!("{:#}", run(&cli.args).unwrap_err());
        assert!(
            err.contains("part-00002.parquet row 22 (store row 150, seq 9, pos 6)")
                && err.contains("(NaN) at column 3"),
            "{err}"
        );
        assert!(!out.exists());
    }
}
