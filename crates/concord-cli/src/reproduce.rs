//! `concord reproduce`: a whole study as a graph of steps (see the study crate).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use concord_models::gguf::Gguf;
use concord_models::resolve::{is_hub_id, needs_download};
use concord_models::{ModelConfig, ModelSource};
use concord_store::CorpusFormat;
use concord_study::exec::{Executor, Local};
use concord_study::plan::{Arg, PlanOptions, plan};
use concord_study::{Study, assemble};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A study name under data/studies/ (`default`, `smoke`, `long`, `full`, `full-seeds`) or a study file.
    #[arg(long, default_value = "default")]
    study: String,
    /// Where runs go: `<runs>/<study name>/`.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// `cpu` or `cuda`.
    #[arg(long)]
    device: Option<String>,
    /// Print the plan with estimates of time and disk, and run nothing.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: also print every step's command (for a cluster scheduler).
    #[arg(long, requires = "dry_run")]
    commands: bool,
    /// Steps run at once.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
}

fn study_path(name: &str) -> Result<PathBuf> {
    let as_path = Path::new(name);
    if as_path.extension().is_some_and(|e| e == "toml") {
        return Ok(as_path.to_owned());
    }
    let data = crate::data_dir();
    let dir = data
        .parent()
        .map_or_else(|| PathBuf::from("data"), Path::to_owned)
        .join("studies");
    let path = dir.join(format!("{name}.toml"));
    if !path.exists() {
        bail!(
            "unknown study {name:?}: no {} (give a name under {} or a .toml file)",
            path.display(),
            dir.display()
        );
    }
    Ok(path)
}

/// The `(n_layers, d_model)` of a model name, from its `config.json` or GGUF header (no weights
/// are read). `Ok(None)` when the name is a hub id missing from the cache and `fetch` is off.
fn model_shape(name: &str, fetch: bool) -> Result<Option<(usize, usize)>> {
    if needs_download(name) {
        if !fetch {
            return Ok(None);
        }
        crate::hub::ensure_model(name)
            .context("reading its config needs a download, which failed")?;
    }
    let cfg = match crate::harvest::resolve_model(name)? {
        ModelSource::HfFolder(dir) => ModelConfig::from_hf_json(&dir.join("config.json"))?,
        ModelSource::Gguf(file) => ModelConfig::from_gguf(&Gguf::open(&file)?)?,
    };
    Ok(Some((cfg.n_layers, cfg.d_model)))
}

/// Checks what the study file cannot check alone, before anything runs: each model resolves
/// and has the study's `n_layers` and `d_model`, the corpus exists, the device is available.
/// `fetch` allows downloading a hub model to read its config (off for `--dry-run`, which then
/// names the models it could not check).
fn preflight(
    study: &Study,
    path: &Path,
    corpus: &Path,
    device: Option<&str>,
    fetch: bool,
) -> Result<()> {
    let file = path.display();
    for (id, m) in &study.models {
        let shape = model_shape(&m.model, fetch).map_err(|e| {
            anyhow!(
                "{file}: models.{id}: cannot read the config of model {:?}: {e:#}",
                m.model
            )
        })?;
        let Some((n_layers, d_model)) = shape else {
            eprintln!(
                "note: models.{id}: {:?} is not in the local cache; its n_layers and d_model are checked when it is downloaded",
                m.model
            );
            continue;
        };
        let (key, ours, theirs) = if m.n_layers != n_layers {
            ("n_layers", m.n_layers, n_layers)
        } else {
            ("d_model", m.d_model, d_model)
        };
        if ours != theirs {
            bail!(
                "{file}: models.{id}.{key} = {ours}, but model {:?} has {key} {theirs}",
                m.model
            );
        }
    }
    if !corpus.exists() {
        let text = corpus.to_string_lossy();
        let id = text.split_once(':').map_or(&*text, |(id, _)| id);
        let dataset = CorpusFormat::of(corpus).is_none() && !corpus.is_absolute() && is_hub_id(id);
        if !dataset {
            bail!("{file}: corpus: {} does not exist", corpus.display());
        }
    }
    if let Some(d) = device {
        concord_models::parse_device(d).map_err(|e| anyhow!("--device: {e}"))?;
    }
    Ok(())
}

/// A step's command line with every file given as an absolute path, so it runs from anywhere.
fn absolute_command(step: &concord_study::Step, run_dir: &Path) -> Vec<String> {
    let abs =
        |p: &str| std::path::absolute(p).map_or_else(|_| p.to_owned(), |a| a.display().to_string());
    let command = step.command(run_dir);
    command
        .iter()
        .zip(&step.args)
        .enumerate()
        .map(|(i, (word, arg))| {
            let after_model = i > 0 && command[i - 1] == "--model";
            match arg {
                Arg::External(p) if Path::new(p).exists() => abs(p),
                Arg::Text(t) if after_model && Path::new(t).exists() => abs(t),
                _ => word.clone(),
            }
        })
        .collect()
}

pub fn run(args: &Args) -> Result<()> {
    let path = study_path(&args.study)?;
    let study = Study::load(&path)?;
    if let Some(d) = args
        .device
        .as_ref()
        .filter(|d| *d != "cpu" && *d != "cuda" && !d.starts_with("cuda:"))
    {
        bail!("--device {d:?}: expected cpu or cuda");
    }
    let corpus = study.corpus_path(&crate::data_dir());
    preflight(
        &study,
        &path,
        &corpus,
        args.device.as_deref(),
        !args.dry_run,
    )?;
    let plan = plan(
        &study,
        &corpus,
        &PlanOptions {
            device: args.device.clone(),
        },
    );
    let run_dir = args.runs.join(&study.name);
    if args.dry_run {
        crate::init_tracing(None);
        print!("{}", plan.describe(&run_dir));
        if args.commands {
            let run_dir = std::path::absolute(&run_dir)
                .with_context(|| format!("cannot resolve {}", run_dir.display()))?;
            for step in &plan.steps {
                println!(
                    "{}: concord {}",
                    step.id,
                    absolute_command(step, &run_dir).join(" ")
                );
            }
        }
        return Ok(());
    }
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let run_dir = run_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", run_dir.display()))?;
    let log = run_dir.join("log.txt");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    crate::init_tracing(Some(log_file));
    concord_core::fsutil::write_json_atomic(&run_dir.join("plan.json"), &plan)?;
    let start = Instant::now();
    tracing::info!(
        "study {}: {} steps in {}",
        study.name,
        plan.steps.len(),
        run_dir.display()
    );
    let program = std::env::current_exe().context("cannot find the concord binary")?;
    let mut exec = Local {
        program,
        jobs: args.jobs,
        progress: crate::show_progress(),
    };
    exec.run(&plan, &run_dir)?;
    let report = assemble::write_report(&plan, &run_dir)?;
    eprintln!(
        "study {} done in {:.0} s: {}",
        study.name,
        start.elapsed().as_secs_f64(),
        report.join("index.html").display()
    );
    Ok(())
}
