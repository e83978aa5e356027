//! `cargo xtask bench`: the criterion benchmarks and the side-by-side peer comparisons.
//!
//! Benchmarks and peer scripts append JSON records to `target/bench-results/*.jsonl`:
//! `{"group": ..., "case": ..., "impl": ..., "seconds": ..., "peer": bool, "note": ...}`.
//! This command runs them all and renders the records as tables in `docs/BENCHMARKS.md`, each
//! case with the ratio of its fastest peer's time to ours (the machines are noisy: ratios
//! measured in one run, not absolute times, are what the targets are stated in).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::{cargo, setup, status};

/// The peers' Python packages, installed on demand into the project's environment.
const PEERS: &[&str] = &[
    "numpy",
    "scipy",
    "faiss-cpu",
    "transformers",
    "gguf",
    "accelerate",
    "safetensors",
];

#[derive(Debug, Deserialize)]
struct Record {
    group: String,
    case: String,
    #[serde(rename = "impl")]
    implementation: String,
    seconds: f64,
    #[serde(default)]
    peer: bool,
    #[serde(default)]
    note: String,
}

pub fn run(root: &Path, args: &[String]) -> Result<ExitCode> {
    setup::ensure(root, setup::Need::run())?;
    setup::pip_install(root, PEERS)?;
    // `benches/peers/align_py.sh` times the Python package, built from this tree by pip.
    setup::pip_install(root, &[&format!("./{}", crate::align_py::CRATE)])?;
    // The harvest and training peers time the whole release command.
    let cli = crate::build_cli(root)?;
    // The real-SAE correlation peer times our kernel on the codes it computes.
    crate::build_release("concord-align", "--example", "correlate_files")?;
    let results = root.join("target/bench-results");
    let _ = fs::remove_dir_all(&results);
    fs::create_dir_all(&results)?;
    status(
        cargo()
            .args(["bench", "--package", "concord-benches"])
            .args(args)
            .env("CONCORD_BENCH_RESULTS", &results)
            .env("CONCORD_PYTHON", setup::venv_python(root)),
        "cargo bench",
    )?;
    let peers_dir = root.join("benches/peers");
    if peers_dir.exists() {
        let mut scripts: Vec<_> = fs::read_dir(&peers_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "sh"))
            .collect();
        scripts.sort();
        for script in scripts {
            status(
                Command::new("bash")
                    .arg(&script)
                    .env("CONCORD_BENCH_RESULTS", &results)
                    .env("CONCORD_BIN", &cli)
                    .env(
                        "CONCORD_CORRELATE_FILES",
                        root.join("target/release/examples/correlate_files"),
                    )
                    .env("CONCORD_PYTHON", setup::venv_python(root)),
                &format!("peer benchmark {}", script.display()),
            )?;
        }
    }
    let table = render(&results)?;
    let out = root.join("docs/BENCHMARKS.md");
    fs::write(&out, table).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("bench: wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn render(results: &Path) -> Result<String> {
    let mut records = Vec::new();
    // Records are `*.jsonl`; benchmarks also leave data for their peers in sub-folders.
    let mut files: Vec<_> = fs::read_dir(results)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for file in files {
        let text = fs::read_to_string(&file)?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let record: Record = serde_json::from_str(line).with_context(|| {
                format!("{}:{}: invalid benchmark record", file.display(), n + 1)
            })?;
            records.push(record);
        }
    }
    let mut groups: BTreeMap<&str, BTreeMap<&str, Vec<&Record>>> = BTreeMap::new();
    for r in &records {
        groups
            .entry(&r.group)
            .or_default()
            .entry(&r.case)
            .or_default()
            .push(r);
    }
    let mut md = String::from(
        "# Benchmarks\n\nWritten by `cargo xtask bench` (do not edit by hand). Each case is \
         measured side by side with its peers in one run; `speed-up` is the fastest peer's time \
         over ours. \
         In the harvest and train groups, seconds are per 65,536 tokens.\n",
    );
    for (group, cases) in groups {
        let _ = write!(
            md,
            "\n## {group}\n\n| case | implementation | seconds | speed-up | note |\n|---|---|---:|---:|---|\n"
        );
        for (case, rs) in cases {
            let ours = rs
                .iter()
                .filter(|r| !r.peer)
                .map(|r| r.seconds)
                .fold(f64::INFINITY, f64::min);
            let peer = rs
                .iter()
                .filter(|r| r.peer)
                .map(|r| r.seconds)
                .fold(f64::INFINITY, f64::min);
            for r in rs {
                let ratio = if !r.peer && peer.is_finite() && ours > 0.0 {
                    format!("{:.2}x", peer / r.seconds)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    md,
                    "| {case} | {} | {:.4} | {ratio} | {} |",
                    r.implementation, r.seconds, r.note
                );
            }
        }
    }
    Ok(md)
}
