//! The `concord_align` Python package (`crates/concord-align-py`), installed the way a user
//! installs it (`pip install crates/concord-align-py` into a fresh virtual environment: pip
//! fetches maturin and builds the module with cargo) and tested from Python against numpy,
//! scipy and the `concord` binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

use crate::{cargo, setup, status};

/// The package's folder, relative to the workspace root.
pub const CRATE: &str = "crates/concord-align-py";

/// What the tests import next to the module (the bench's peers come with `bench`'s own list).
const TEST_PACKAGES: &[&str] = &["numpy", "scipy", "pytest"];

/// A fresh virtual environment, `target/concord-align-py/venv`, holding `TEST_PACKAGES` and
/// the package; returns its interpreter. Fails, naming what pip could not install, when PyPI
/// or the build fails: the tests never pass by being skipped.
fn fresh_venv(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/concord-align-py/venv");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    // The project's interpreter makes it (any Python 3.9+ would do: the module is abi3).
    let base = setup::ensure_venv(root)?;
    status(
        Command::new(&base).args(["-m", "venv"]).arg(&dir),
        &format!("python -m venv {}", dir.display()),
    )?;
    let python = dir.join("bin/python");
    let pip = |args: &[&str], what: &str| -> Result<()> {
        eprintln!("xtask test: pip install {}", args.join(" "));
        let ok = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
            ])
            .args(args)
            .current_dir(root)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!(
                "pip could not install {what} into {} (see pip's output above), so the \
                 concord_align Python tests cannot run",
                dir.display()
            );
        }
        Ok(())
    };
    pip(TEST_PACKAGES, &TEST_PACKAGES.join(", "))?;
    pip(
        &[&format!("./{CRATE}")],
        &format!("{CRATE} (built by maturin from PyPI with cargo)"),
    )?;
    Ok(python)
}

/// Installs the package into a fresh environment and runs its Python tests; `compare` is
/// checked against the debug `concord` binary (built here when `cargo test` did not).
pub fn test(root: &Path) -> Result<()> {
    let python = fresh_venv(root)?;
    status(
        cargo().args([
            "build",
            "--quiet",
            "--locked",
            "--package",
            "concord-cli",
            "--bin",
            "concord",
        ]),
        "cargo build -p concord-cli --bin concord",
    )?;
    status(
        Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(root.join(CRATE).join("tests"))
            .env("CONCORD_BIN", root.join("target/debug/concord"))
            .current_dir(root),
        &format!("pytest {CRATE}/tests"),
    )
}
