//! `concord reproduce`: a whole study as a graph of steps (see the study crate).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use concord_study::exec::{Executor, Local};
use concord_study::plan::{PlanOptions, plan};
use concord_study::{Study, assemble};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A study name under data/studies/ (`quick`, `full`, `full-seeds`) or a study file.
    #[arg(long, default_value = "quick")]
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
        print!("{}", plan.describe());
        if args.commands {
            for step in &plan.steps {
                println!("{}: concord {}", step.id, step.command(&run_dir).join(" "));
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
