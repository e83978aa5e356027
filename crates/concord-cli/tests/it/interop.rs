//! The checks against the field's own Python packages: `tests/python/interop.py` (SAELens,
//! sparsify and dictionary_learning read what `train` and `export` write with the same codes,
//! `encode`, `eval` and `align` read what they write, and Hugging Face `datasets` and polars
//! read the store), run with the project's `.venv`, where `cargo xtask test` installs the
//! pinned packages of `tests/python/requirements.txt`. Missing packages fail the test.

use std::path::Path;
use std::process::Command;

#[test]
fn the_field_s_packages_read_our_files_and_we_read_theirs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: `cargo xtask test` sets it up with the interop test's packages",
        python.display()
    );
    let work = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/interop.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg("--concord")
        .arg(env!("CARGO_BIN_EXE_concord"))
        .arg("--corpus")
        .arg(root.join("data/cache/corpus/shakespeare.jsonl"))
        .arg("--work")
        .arg(work.path())
        .output()
        .expect("the project's python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
