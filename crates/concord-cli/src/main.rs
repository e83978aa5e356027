//! The `concord` command: argument parsing, logging, and the glue where the domain crates meet.
//! Each subcommand lives in its own module and maps its errors to a one-line message and a
//! non-zero exit.

mod align;
mod correlate;
mod encode;
mod eval;
mod export;
mod harvest;
mod hub;
mod progress;
mod reproduce;
mod store_glue;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Are the features of sparse autoencoders universal? Harvest activations, train SAEs,
/// compare them, and report.
#[derive(Debug, Parser)]
#[command(name = "concord", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole study: harvest, train, evaluate, align every pair, and write the report.
    Reproduce(reproduce::Args),
    /// Run a model over a corpus and store the activations of hook points as parquet.
    Harvest(harvest::Args),
    /// Train a grid of SAEs (hooks x ratios x init seeds) in one pass over a store.
    Train(train::Args),
    /// Evaluate an SAE on a hook's dataset (and loss recovered in a causal LM).
    Eval(eval::Args),
    /// Compare two SAEs: MMCS, exact matching, activation correlation, nulls.
    Align(align::Args),
    /// Write an SAE's codes and reconstruction of a dataset's rows (safetensors).
    Encode(encode::Args),
    /// Write an SAE in another package's format (sparsify, dictionary-learning).
    Export(export::Args),
    /// Null scores for one shape: isotropic random dictionaries and the analytic expectation.
    Null(align::NullArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `reproduce` also logs to a file in its run folder; it sets up logging itself.
    if !matches!(cli.command, Command::Reproduce(_)) {
        init_tracing(None);
    }
    let result = match cli.command {
        Command::Reproduce(args) => reproduce::run(&args),
        Command::Harvest(args) => harvest::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Align(args) => align::run(&args),
        Command::Encode(args) => encode::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Null(args) => align::run_null(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `outer: cause: ...`, leaving out a cause whose text
/// the line already ends with (many errors print their source in their own message). Of a
/// message on several lines only the first is kept: libtorch's errors go on with a C++
/// backtrace.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim_end();
        if line.ends_with(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line
}

/// Logs go to stderr (and to `file` when given), filtered by `RUST_LOG` (default: info for
/// this project's crates).
pub fn init_tracing(file: Option<std::fs::File>) {
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,concord=info"))
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_target(false);
    let _ = match file {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(std::io::stderr.and(std::sync::Arc::new(f)))
            .try_init(),
        None => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

/// The workspace's data folder (`data/cache`): `$CONCORD_DATA`, else the one above the binary
/// (`target/release/concord` sits two levels below the root), else `./data/cache`.
pub fn data_dir() -> PathBuf {
    // Absolute, so that a path built from it (a built-in corpus, part of a study step's hash)
    // reads the same whichever way the folder was found.
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    if let Some(dir) = std::env::var_os("CONCORD_DATA") {
        return absolute(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1) {
            let candidate = up.join("data/cache");
            if candidate.is_dir() {
                return absolute(candidate);
            }
        }
    }
    absolute(PathBuf::from("data/cache"))
}

/// Whether progress bars should be drawn (steps run by `reproduce` log to files instead).
pub fn show_progress() -> bool {
    std::env::var("CONCORD_PROGRESS").map_or(true, |v| v != "0")
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn errors_print_on_one_line_with_each_cause_once() {
        let torch = anyhow::anyhow!(
            "Internal torch error: Unrecognized data format\nframe #0: c10::Error::Error() + 0x9d\n"
        );
        let e = torch.context("x.pt: not a state dict");
        assert_eq!(
            one_line(&e),
            "x.pt: not a state dict: Internal torch error: Unrecognized data format"
        );
        let io = std::io::Error::other("disk full");
        let e = anyhow::Error::new(io).context("cannot write out.json: disk full");
        assert_eq!(one_line(&e), "cannot write out.json: disk full");
    }
}
