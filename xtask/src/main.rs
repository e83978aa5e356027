//! `cargo xtask`: the project's orchestrator.
//!
//! It links no libtorch crate, so it builds on a fresh machine. Every command first runs the
//! setup (a project-local Python environment carrying libtorch, the default models and corpus)
//! when something is missing. `setup`, `test` and `bench` are its own; every other command is
//! the `concord` CLI's: xtask builds it in release mode and runs it with the same arguments,
//! so `cargo xtask harvest ...` and `concord harvest ...` are one command with one set of flags.

mod align_py;
mod bench;
mod corpus;
mod setup;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

const HELP: &str = "\
cargo xtask <command> [args...]

Commands of the orchestrator:
  setup      create .venv with libtorch (PyPI torch==2.13.0), fetch the default models and
             corpus into data/cache/ and check their sha256 sums (idempotent)
  test       setup (also the interop test's pinned SAELens, sparsify, dictionary_learning,
             datasets and polars), then cargo fmt --check, clippy -D warnings and every test
  bench      setup and install the peers (scipy, FAISS, transformers), run the criterion
             benchmarks and the side-by-side peer comparisons, write docs/BENCHMARKS.md

Every other command is the `concord` CLI's (reproduce, harvest, train, eval, align, report, ...):
xtask runs setup, builds the CLI in release mode and forwards every argument.
Run `cargo xtask help` for the CLI's own help.
";

fn run() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root).with_context(|| format!("cannot enter {}", root.display()))?;
    let Some(cmd) = args.first() else {
        print!("{HELP}");
        return run_cli(&root, &["--help".to_owned()]);
    };
    match cmd.as_str() {
        "setup" => {
            setup::ensure(&root, setup::Need::run())?;
            Ok(ExitCode::SUCCESS)
        }
        "test" => test(&root, &args[1..]),
        "bench" => bench::run(&root, &args[1..]),
        "--help" | "-h" => {
            print!("{HELP}");
            run_cli(&root, &args)
        }
        _ => {
            setup::ensure(&root, setup::Need::run())?;
            run_cli(&root, &args)
        }
    }
}

/// The workspace root: the parent of this crate's folder.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs a command to completion, failing with its description when it fails.
fn status(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Builds the release `concord` binary and returns its path.
fn build_cli(root: &Path) -> Result<PathBuf> {
    build_release("concord-cli", "--bin", "concord")?;
    Ok(root.join("target/release/concord"))
}

/// Builds one target (`kind` is `--bin` or `--example`) of a package in release.
fn build_release(package: &str, kind: &str, name: &str) -> Result<()> {
    status(
        cargo().args([
            "build",
            "--release",
            "--quiet",
            "--package",
            package,
            kind,
            name,
        ]),
        &format!("cargo build --release -p {package} {kind} {name}"),
    )
}

fn run_cli(root: &Path, args: &[String]) -> Result<ExitCode> {
    let bin = build_cli(root)?;
    let status = Command::new(&bin)
        .args(args)
        .status()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// `cargo xtask test`: setup, formatting, lints, then every test of the workspace.
fn test(root: &Path, extra: &[String]) -> Result<ExitCode> {
    let start = Instant::now();
    setup::ensure(root, setup::Need::test())?;
    let stage = |name: &str, cmd: &mut Command| -> Result<()> {
        let t = Instant::now();
        eprintln!("xtask test: {name}");
        status(cmd, name)?;
        eprintln!(
            "xtask test: {name} done in {:.0} s",
            t.elapsed().as_secs_f64()
        );
        Ok(())
    };
    stage(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    stage(
        "cargo clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    stage(
        "cargo test",
        cargo()
            .args(["test", "--workspace", "--locked"])
            .args(extra),
    )?;
    let t = Instant::now();
    eprintln!("xtask test: concord_align (Python package, fresh venv)");
    align_py::test(root)?;
    eprintln!(
        "xtask test: concord_align (Python package, fresh venv) done in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    eprintln!(
        "xtask test: all passed in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
