//! The study end to end: a tiny study through every step kind to its report, then a rerun
//! that finds everything done.

use std::path::Path;
use std::process::Command;

use concord_store::Table;

fn concord(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(args)
        .output()
        .expect("concord runs")
}

#[test]
fn tiny_study_runs_to_its_report_and_reruns_for_free() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().to_str().unwrap();
    let study = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny.toml");
    let study = study.to_str().unwrap();
    let out = concord(&["reproduce", "--study", study, "--runs", runs]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report = dir.path().join("tiny/report");
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    let figures = html.matches("<figure").count();
    assert!(figures >= 8, "{figures} figures");
    assert_eq!(
        figures,
        html.matches("<svg").count(),
        "every figure is an inline SVG"
    );
    assert!(
        html.contains("Findings") && html.contains("Pythia"),
        "findings and the dedup caveat"
    );
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("## Findings"));
    let results = Table::read(&report.join("results.parquet")).unwrap();
    assert!(results.rows() >= 10, "{} rows", results.rows());
    for column in [
        "question",
        "a",
        "b",
        "mmcs_decoder_a_to_b",
        "corr_centred_a_to_b",
        "null_analytic_max_cos_a_to_b",
    ] {
        assert!(
            results.column(column).is_some(),
            "results.parquet lacks {column}"
        );
    }
    assert!(
        results.column("tokens_a").is_some() && results.column("tokens_b").is_some(),
        "results.parquet has the tokens of each compared point"
    );
    assert!(
        html.contains("convergence-mmcs") && html.contains("convergence-shared"),
        "the convergence figures"
    );
    // One row per SAE and point of training, snapshots included.
    let saes = Table::read(&report.join("saes.parquet")).unwrap();
    for column in [
        "name",
        "model",
        "hook",
        "layer",
        "arch",
        "ratio",
        "init_seed",
        "data_seed",
        "half",
        "training_tokens",
        "fvu",
        "l0",
        "dead_fraction",
        "dense_fraction",
    ] {
        assert!(saes.column(column).is_some(), "saes.parquet lacks {column}");
    }
    let Some(concord_store::Column::Str(names)) = saes.column("name") else {
        panic!("saes.parquet's name is not a string column");
    };
    let snapshot_rows = names.iter().filter(|n| n.contains("/snapshots/")).count();
    assert!(
        snapshot_rows >= 2 && snapshot_rows < saes.rows(),
        "{snapshot_rows} snapshot rows of {}",
        saes.rows()
    );
    assert!(dir.path().join("tiny/log.txt").exists());
    rendered_in_chromium(&report.join("index.html"), figures, &md);

    // A second run does nothing but rebuild the report.
    let logs = std::fs::read_dir(dir.path().join("tiny/logs"))
        .unwrap()
        .count();
    let again = concord(&["reproduce", "--study", study, "--runs", runs]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let log = std::fs::read_to_string(dir.path().join("tiny/log.txt")).unwrap();
    assert_eq!(
        log.matches("running ").count(),
        logs,
        "the rerun ran no step"
    );
    assert_eq!(
        std::fs::read_to_string(report.join("index.html")).unwrap(),
        html,
        "same report"
    );

    // Killed (SIGKILL) in the middle and started again, a run ends with the same results as
    // the uninterrupted one; its running step dies with it.
    let dir2 = tempfile::tempdir().unwrap();
    let runs2 = dir2.path().to_str().unwrap();
    let steps = dir2.path().join("tiny/steps");
    let done = || {
        std::fs::read_dir(&steps).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().join(".done").exists())
                .count()
        })
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["reproduce", "--study", study, "--runs", runs2])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if done() >= logs / 3 {
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the study finished before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let resumed = concord(&["reproduce", "--study", study, "--runs", runs2]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let report2 = dir2.path().join("tiny/report");
    assert_eq!(
        std::fs::read_to_string(report2.join("report.md")).unwrap(),
        md,
        "the resumed run's report"
    );
    assert!(
        std::fs::read(report2.join("results.parquet")).unwrap()
            == std::fs::read(report.join("results.parquet")).unwrap(),
        "the resumed run's results.parquet"
    );
}

#[test]
fn invalid_studies_fail_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny.toml"))
            .unwrap();
    std::fs::write(
        &bad,
        text.replace(
            "layers = [1, 2]\nbatch = 8\n\n[models.enc]",
            "layers = [1, 99]\nbatch = 8\n\n[models.enc]",
        ),
    )
    .unwrap();
    let out = concord(&[
        "reproduce",
        "--study",
        bad.to_str().unwrap(),
        "--runs",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("layer 99"),
        "{err}"
    );
    assert!(!dir.path().join("tiny").exists(), "nothing ran");
    let out = concord(&["reproduce", "--study", "no-such-study"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown study"));
}

/// `concord reproduce` of tiny.toml with `edit` applied, in `dir`, with `extra` arguments.
fn reproduce_edited(dir: &Path, edit: (&str, &str), extra: &[&str]) -> std::process::Output {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny.toml");
    let text = std::fs::read_to_string(tiny).unwrap();
    let edited = text.replacen(edit.0, edit.1, 1);
    assert!(edit.0 == edit.1 || edited != text, "{edit:?} applies");
    std::fs::write(dir.join("bad.toml"), edited).unwrap();
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["reproduce", "--study", "bad.toml", "--runs", "runs"])
        .args(extra)
        .current_dir(dir)
        .output()
        .expect("concord runs")
}

#[test]
fn studies_that_disagree_with_their_models_or_host_fail_before_anything_runs() {
    let cases: [((&str, &str), &[&str], &str); 6] = [
        (
            ("d_model = 576", "d_model = 512"),
            &[],
            "bad.toml: models.lm.d_model = 512, but model \"smollm2-135m\" has d_model 576",
        ),
        (
            ("n_layers = 30", "n_layers = 20"),
            &[],
            "bad.toml: models.lm.n_layers = 20, but model \"smollm2-135m\" has n_layers 30",
        ),
        (
            ("n_layers = 6", "n_layers = 12"),
            &["--dry-run"],
            "bad.toml: models.enc.n_layers = 12, but model \"minilm-l6\" has n_layers 6",
        ),
        (
            ("model = \"smollm2-135m\"", "model = \"nosuch-model-7b\""),
            &[],
            "bad.toml: models.lm: cannot read the config of model \"nosuch-model-7b\"",
        ),
        (
            ("corpus = \"shakespeare\"", "corpus = \"nope.jsonl\""),
            &[],
            "bad.toml: corpus: nope.jsonl does not exist",
        ),
        (
            ("docs = 8", "docs = 8"),
            &["--device", "cuda:99"],
            "--device: device \"cuda:99\" is not available",
        ),
    ];
    for (edit, extra, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = reproduce_edited(dir.path(), edit, extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{edit:?} ran: {err}");
        assert!(err.contains(expected), "{edit:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!dir.path().join("runs").exists(), "{edit:?} wrote runs/");
    }
}

#[test]
fn dry_run_commands_use_absolute_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.jsonl"), "{\"text\": \"a b c\"}\n").unwrap();
    let out = reproduce_edited(
        dir.path(),
        ("corpus = \"shakespeare\"", "corpus = \"c.jsonl\""),
        &["--dry-run", "--commands"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = dir.path().canonicalize().unwrap();
    let abs = |p: &str| {
        let a = std::path::absolute(dir.path().join(p)).unwrap();
        a.display().to_string()
    };
    let (corpus, runs) = (abs("c.jsonl"), abs("runs/tiny/steps/"));
    let harvest = stdout
        .lines()
        .find(|l| l.contains(": concord harvest"))
        .unwrap();
    assert!(
        harvest.contains(&format!("--corpus {corpus} "))
            && harvest.contains(&format!("--out {runs}")),
        "{harvest} ({})",
        root.display()
    );
    assert!(
        !dir.path().join("runs").exists(),
        "a dry run writes nothing"
    );
}

#[test]
fn dry_run_prints_the_plan_with_estimates() {
    let out = concord(&["reproduce", "--study", "smoke", "--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("study smoke") && plan.contains("estimate"),
        "{plan}"
    );
}

/// Renders the page in headless Chromium and checks that every figure and every number of the
/// findings made it into the rendered document.
fn rendered_in_chromium(page: &Path, figures: usize, md: &str) {
    let browser = std::env::var("CONCORD_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot start {browser} ({e}): install Chromium (Debian: apt-get install chromium) or set CONCORD_CHROMIUM")
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        dom.matches("<figure").count(),
        figures,
        "every figure rendered"
    );
    assert_eq!(dom.matches("<svg").count(), figures);
    // Every number of the findings table (markdown twin) appears in the rendered page.
    let findings = md
        .split("## Findings")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let numbers: Vec<&str> = findings
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .filter(|t| t.contains('.') && t.chars().any(|c| c.is_ascii_digit()))
        .collect();
    assert!(numbers.len() >= 10, "{numbers:?}");
    for n in numbers {
        assert!(dom.contains(n), "{n} is not in the rendered page");
    }
}
