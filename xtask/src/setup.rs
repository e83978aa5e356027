//! `cargo xtask setup`: the project-local Python environment with libtorch, and the default
//! models and corpus listed in `data/inputs.toml`.
//!
//! Every step is idempotent and cheap to check: a second run does nothing. Stamps record what
//! was checked, so the sha256 of a 100 MB model is computed once, when it is fetched.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::status;

/// The libtorch `tch 0.26` is built against.
pub const TORCH_VERSION: &str = "2.13.0";
/// Where the project-local Python environment lives, relative to the workspace root.
pub const VENV: &str = ".venv";
/// Where fetched inputs live, relative to the workspace root.
pub const CACHE: &str = "data/cache";

/// What a command needs set up.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    pub torch: bool,
    pub inputs: bool,
    /// A headless browser, for the test that renders the report.
    pub browser: bool,
    /// The pinned Python packages the interop test checks against.
    pub interop: bool,
}

impl Need {
    /// What the CLI's commands need.
    pub fn run() -> Need {
        Need {
            torch: true,
            inputs: true,
            browser: false,
            interop: false,
        }
    }

    /// What the tests need.
    pub fn test() -> Need {
        Need {
            browser: true,
            interop: true,
            ..Need::run()
        }
    }
}

pub fn ensure(root: &Path, need: Need) -> Result<()> {
    if need.torch {
        ensure_torch(root)?;
    }
    if need.inputs {
        ensure_inputs(root)?;
    }
    if need.browser {
        ensure_browser()?;
    }
    if need.interop {
        ensure_interop(root)?;
    }
    Ok(())
}

/// The interop test's pinned packages (SAELens, sparsify, dictionary_learning, datasets,
/// polars), relative to the workspace root.
pub const INTEROP_REQUIREMENTS: &str = "crates/concord-cli/tests/python/requirements.txt";

/// Installs the interop test's packages into `.venv` when its stamp does not hold this exact
/// requirements file. torch (`TORCH_VERSION`) goes to pip as a constraint: the torch whose
/// libtorch the workspace links is never replaced. When pip fails, setup says so and goes on:
/// the interop test then fails naming the missing packages (never a silent skip), and the
/// rest of the tests still run.
fn ensure_interop(root: &Path) -> Result<()> {
    let requirements = root.join(INTEROP_REQUIREMENTS);
    let wanted = fs::read_to_string(&requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let stamp = root.join(VENV).join(".concord-interop");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    let python = ensure_venv(root)?;
    let constraints = root.join(VENV).join("constraints.txt");
    fs::write(&constraints, format!("torch=={TORCH_VERSION}\n"))
        .with_context(|| format!("cannot write {}", constraints.display()))?;
    eprintln!(
        "setup: installing the interop test's pinned packages ({INTEROP_REQUIREMENTS}: SAELens, \
         sparsify, dictionary_learning, datasets, polars; torch stays {TORCH_VERSION})"
    );
    let installed = Command::new(python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-c"])
        .arg(&constraints)
        .arg("-r")
        .arg(&requirements)
        .status()
        .is_ok_and(|s| s.success());
    if installed {
        fs::write(&stamp, wanted).with_context(|| format!("cannot write {}", stamp.display()))?;
    } else {
        eprintln!(
            "setup: WARNING: pip could not install {INTEROP_REQUIREMENTS} into {VENV}/ (see \
             above): the interop test (concord-cli, tests/it/interop.rs) will fail until it can"
        );
    }
    Ok(())
}

/// Debian's Chromium renders the report in a test; install it when missing (as root, with
/// apt), or say what to install.
fn ensure_browser() -> Result<()> {
    let found = |name: &str| {
        Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found("chromium") || std::env::var_os("CONCORD_CHROMIUM").is_some() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root || !found("apt-get") {
        bail!(
            "the report test needs a headless Chromium: install it (Debian: apt-get install chromium) or set \
             CONCORD_CHROMIUM to a Chromium binary"
        );
    }
    eprintln!("setup: installing Debian's chromium (headless browser for the report test)");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !apt(&["install", "-y", "-q", "--no-install-recommends", "chromium"]) {
        status(
            Command::new("apt-get").args(["update", "-q"]),
            "apt-get update",
        )?;
        if !apt(&["install", "-y", "-q", "--no-install-recommends", "chromium"]) {
            bail!(
                "apt-get install chromium failed: install Chromium by hand or set CONCORD_CHROMIUM"
            );
        }
    }
    Ok(())
}

/// The Python interpreter of the project's environment.
pub fn venv_python(root: &Path) -> PathBuf {
    root.join(VENV).join("bin/python")
}

/// Creates `.venv` when missing (with the machine's `python3`, or `$PYTHON`).
pub fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let python = venv_python(root);
    if python.exists() {
        return Ok(python);
    }
    let system = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe = Command::new(&system)
        .args(["-c", "import venv, ensurepip"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(_) => bail!(
            "`{system}` lacks the venv or ensurepip module, needed to create {VENV}/ for \
             libtorch: install them (Debian: apt-get install python3-venv python3-pip)"
        ),
        Err(_) => bail!(
            "`{system}` not found: libtorch comes from PyPI's torch=={TORCH_VERSION}, so setup \
             needs Python 3.10+ with pip and venv (Debian: apt-get install python3 python3-venv \
             python3-pip; or set PYTHON to an interpreter)"
        ),
    }
    eprintln!("setup: creating the project's Python environment in {VENV}/");
    status(
        Command::new(&system)
            .args(["-m", "venv", VENV])
            .current_dir(root),
        "python3 -m venv",
    )?;
    Ok(python)
}

/// `pip install` into the project's environment.
pub fn pip_install(root: &Path, packages: &[&str]) -> Result<()> {
    let python = ensure_venv(root)?;
    eprintln!("setup: pip install {}", packages.join(" "));
    status(
        Command::new(python)
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(packages),
        &format!("pip install {}", packages.join(" ")),
    )
}

/// Installs torch==2.13.0 into `.venv` when missing and links `.venv/libtorch` to it.
fn ensure_torch(root: &Path) -> Result<()> {
    let link = root.join(VENV).join("libtorch");
    let stamp = root.join(VENV).join(".concord-torch");
    if link.join("lib/libtorch_cpu.so").exists()
        && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == TORCH_VERSION)
    {
        return Ok(());
    }
    let python = ensure_venv(root)?;
    eprintln!(
        "setup: installing libtorch from PyPI (torch=={TORCH_VERSION}, about 5 GB with its CUDA libraries)"
    );
    pip_install(root, &[&format!("torch=={TORCH_VERSION}")])?;
    let out = Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .context("cannot ask the environment's python for site-packages")?;
    let site = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let torch = site.join("torch");
    if !torch.join("lib/libtorch_cpu.so").exists() {
        bail!(
            "{} holds no lib/libtorch_cpu.so after installing torch",
            torch.display()
        );
    }
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&torch, &link)
        .with_context(|| format!("cannot link {} to {}", link.display(), torch.display()))?;
    fs::write(&stamp, TORCH_VERSION)
        .with_context(|| format!("cannot write {}", stamp.display()))?;
    eprintln!("setup: libtorch ready at {}", link.display());
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    input: Vec<Input>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    name: String,
    about: String,
    pip: String,
    archive: String,
    archive_sha256: String,
    prefix: String,
    dest: String,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    derive: Option<String>,
    files: BTreeMap<String, String>,
}

impl Input {
    /// A digest of the entry: a stamp holding it proves this exact entry was checked.
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for (k, v) in &self.files {
            h.update(k.as_bytes());
            h.update(v.as_bytes());
        }
        h.update(self.archive_sha256.as_bytes());
        hex::encode(h.finalize())
    }
}

fn ensure_inputs(root: &Path) -> Result<()> {
    let manifest = root.join("data/inputs.toml");
    let text = fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let inputs: Inputs =
        toml::from_str(&text).with_context(|| format!("{}: invalid", manifest.display()))?;
    let cache = root.join(CACHE);
    let missing: Vec<&Input> = inputs
        .input
        .iter()
        .filter(|i| !is_ready(&cache, i))
        .collect();
    for (n, input) in missing.iter().enumerate() {
        eprintln!(
            "setup: [{}/{}] {}: {}",
            n + 1,
            missing.len(),
            input.name,
            input.about
        );
        fetch(root, &cache, input).with_context(|| format!("setting up input `{}`", input.name))?;
    }
    Ok(())
}

fn stamp_path(cache: &Path, input: &Input) -> PathBuf {
    cache.join(".stamps").join(&input.name)
}

fn is_ready(cache: &Path, input: &Input) -> bool {
    let dest = cache.join(&input.dest);
    fs::read_to_string(stamp_path(cache, input)).is_ok_and(|s| s.trim() == input.fingerprint())
        && input.files.keys().all(|f| dest.join(f).exists())
}

fn fetch(root: &Path, cache: &Path, input: &Input) -> Result<()> {
    let downloads = cache.join("downloads");
    fs::create_dir_all(&downloads)?;
    let archive = downloads.join(&input.archive);
    if !archive.exists() || sha256_file(&archive)? != input.archive_sha256 {
        let python = ensure_venv(root)?;
        eprintln!("setup: pip download --no-deps {}", input.pip);
        let mut cmd = Command::new(python);
        cmd.args([
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-deps",
            "--dest",
        ])
        .arg(&downloads)
        .arg(&input.pip);
        if input.archive.ends_with(".tar.gz") {
            cmd.args(["--no-binary", ":all:"]);
        }
        status(&mut cmd, &format!("pip download {}", input.pip))?;
    }
    let got = sha256_file(&archive)?;
    if got != input.archive_sha256 {
        bail!(
            "{}: sha256 {got}, data/inputs.toml expects {}",
            archive.display(),
            input.archive_sha256
        );
    }
    let dest = cache.join(&input.dest);
    let staging = cache.join(format!(".staging-{}", input.name));
    let _ = fs::remove_dir_all(&staging);
    extract(
        root,
        &archive,
        &input.prefix,
        &input.members,
        &input.files,
        input.derive.is_some(),
        &staging,
    )?;
    if let Some(kind) = &input.derive {
        let out_name = input
            .files
            .keys()
            .next()
            .context("a derived input names one output file")?;
        match kind.as_str() {
            "jsonl-documents" => crate::corpus::derive_jsonl(&staging, &staging.join(out_name))?,
            other => bail!("unknown derive {other:?}"),
        }
    }
    fs::create_dir_all(&dest)?;
    for (file, want) in &input.files {
        let from = staging.join(file);
        let got = sha256_file(&from)?;
        if &got != want {
            bail!(
                "{}: sha256 {got}, data/inputs.toml expects {want}",
                from.display()
            );
        }
        let to = dest.join(file);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(&from, &to)
            .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
    }
    let _ = fs::remove_dir_all(&staging);
    let stamp = stamp_path(cache, input);
    fs::create_dir_all(stamp.parent().expect("stamps have a parent"))?;
    fs::write(&stamp, input.fingerprint())?;
    eprintln!("setup: {} ready in {}", input.name, dest.display());
    Ok(())
}

/// Extracts the archive's members under `prefix` into `staging` with the prefix removed:
/// the listed `files` (or every member matching `members` when the output is derived).
/// Python's zipfile and tarfile do the unpacking; Python is already required for libtorch.
fn extract(
    root: &Path,
    archive: &Path,
    prefix: &str,
    members: &[String],
    files: &BTreeMap<String, String>,
    derived: bool,
    staging: &Path,
) -> Result<()> {
    let wanted: Vec<String> = if derived {
        members.iter().map(|m| format!("{prefix}{m}")).collect()
    } else {
        files.keys().map(|f| format!("{prefix}{f}")).collect()
    };
    let script = r#"
import fnmatch, os, sys, tarfile, zipfile
archive, prefix, staging = sys.argv[1], sys.argv[2], sys.argv[3]
patterns = sys.argv[4:]
def match(name):
    return any(fnmatch.fnmatchcase(name, p) and name.count('/') == p.count('/') for p in patterns)
def put(name, data):
    out = os.path.join(staging, name[len(prefix):])
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, 'wb') as f:
        f.write(data)
found = 0
if archive.endswith('.tar.gz'):
    with tarfile.open(archive) as t:
        for m in t.getmembers():
            if m.isfile() and match(m.name):
                put(m.name, t.extractfile(m).read()); found += 1
else:
    with zipfile.ZipFile(archive) as z:
        for name in z.namelist():
            if match(name):
                put(name, z.read(name)); found += 1
if found == 0:
    sys.exit('no member of ' + archive + ' matches ' + ' '.join(patterns))
"#;
    let python = ensure_venv(root)?;
    status(
        Command::new(python)
            .args(["-c", script])
            .arg(archive)
            .arg(prefix)
            .arg(staging)
            .args(&wanted),
        &format!("extracting {}", archive.display()),
    )
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
