//! The commands one by one: bad input gives a one-line error naming the file or value, a
//! non-zero exit, and nothing that looks complete.

use std::path::{Path, PathBuf};
use std::process::Command;

fn concord(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(args)
        .output()
        .expect("concord runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/cache/corpus/shakespeare.jsonl")
}

#[track_caller]
fn check_error(args: &[&str], expected: &str) {
    let (ok, err) = concord(args);
    assert!(!ok, "{args:?} succeeded");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(line.contains(expected), "{args:?}: {err}");
}

#[test]
fn harvest_rejects_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("store");
    let (out, corpus) = (out.to_str().unwrap(), corpus());
    let corpus = corpus.to_str().unwrap();
    let harvest = |model: &str, hooks: &str, corpus: &str, extra: &[&str], expected: &str| {
        let mut args = vec![
            "harvest", "--model", model, "--hooks", hooks, "--corpus", corpus, "--out", out,
        ];
        args.extend_from_slice(extra);
        check_error(&args, expected);
    };
    harvest(
        "minilm-l6",
        "blocks.1.hook_mlp",
        corpus,
        &[],
        "blocks.1.hook_mlp",
    );
    harvest("minilm-l6", "blocks.9.hook_mlp_out", corpus, &[], "9");
    harvest(
        "no-such-model",
        "blocks.1.hook_mlp_out",
        corpus,
        &[],
        "no-such-model",
    );
    // BERT's positions are learned: 512 of them.
    let long = ["--context-len", "4096"];
    harvest(
        "minilm-l6",
        "blocks.1.hook_mlp_out",
        corpus,
        &long,
        "512 positions",
    );
    let file = |name: &str, text: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let empty = file("empty.txt", b"");
    harvest(
        "minilm-l6",
        "blocks.1.hook_mlp_out",
        &empty,
        &[],
        "empty.txt",
    );
    let bad = file("bad.txt", b"caf\xe9\n");
    harvest("minilm-l6", "blocks.1.hook_mlp_out", &bad, &[], "bad.txt");
    // Less text than one packed window: said so, and no store is started.
    let short = file("short.txt", b"Hello world.\n\nA second document.\n");
    harvest(
        "minilm-l6",
        "blocks.1.hook_mlp_out",
        &short,
        &[],
        "shorter than one packed window",
    );
    assert!(!Path::new(out).exists(), "a store was started for no text");
    // An error's cause is printed once.
    let (ok, err) = concord(&[
        "harvest",
        "--model",
        "minilm-l6",
        "--hooks",
        "blocks.1.hook_mlp_out",
        "--corpus",
        "no-such-corpus.txt",
        "--out",
        out,
    ]);
    assert!(!ok);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    // Nothing complete was left behind.
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        if entry.path().is_dir() {
            for hook in std::fs::read_dir(entry.path()).unwrap().flatten() {
                let manifest = hook.path().join("manifest.json");
                if let Ok(text) = std::fs::read_to_string(&manifest) {
                    assert!(
                        !text.contains("\"complete\": true"),
                        "{}",
                        manifest.display()
                    );
                }
            }
        }
    }
}

fn golden_model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../concord-models/tests/goldens")
        .join(name)
}

#[test]
fn harvest_stores_know_their_model_by_its_weights_and_bad_corpora_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..40)
        .map(|i| {
            format!("{{\"text\": \"Document {i} says a few words about kings and queens.\"}}\n")
        })
        .collect();
    let good = dir.path().join("c.jsonl");
    std::fs::write(&good, &text).unwrap();
    let bad = dir.path().join("late.jsonl");
    std::fs::write(&bad, format!("{text}{{\"body\": \"no text\"}}\n")).unwrap();
    let model = dir.path().join("m");
    std::fs::create_dir(&model).unwrap();
    let copy_model = |name: &str| {
        for f in std::fs::read_dir(golden_model(name)).unwrap().flatten() {
            std::fs::copy(f.path(), model.join(f.file_name())).unwrap();
        }
    };
    copy_model("tiny-neox");
    let out = dir.path().join("store");
    let args = |model: &str, corpus: &Path| -> Vec<String> {
        [
            "harvest",
            "--model",
            model,
            "--hooks",
            "blocks.1.hook_resid_post",
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--context-len",
            "16",
            "--rows-per-shard",
            "32",
        ]
        .map(String::from)
        .to_vec()
    };
    let m = model.to_str().unwrap().to_owned();
    // The corpus goes bad after many windows: the error names the line, and the store this
    // run started is gone, so the corrected corpus can go to the same folder.
    check_error(&argv(&args(&m, &bad)), "late.jsonl: line 41");
    assert!(!out.exists(), "a half-written store was left");
    let (ok, err) = concord(&argv(&args(&m, &good)));
    assert!(ok, "{err}");
    // The same weights by another spelling of their path: the same store.
    let (ok, err) = concord(&argv(&args(&format!("{m}/"), &good)));
    assert!(ok && err.contains("already complete"), "{err}");
    // Other weights at the same path: refused.
    copy_model("tiny-neox-seq");
    check_error(&argv(&args(&m, &good)), "model_sha256");
    // Another model's hook in the same store: refused, the store left as it was.
    let mut other = args(golden_model("tiny-gpt2").to_str().unwrap(), &good);
    other[4] = "blocks.0.hook_resid_post".into();
    check_error(&argv(&other), "another harvest");
    assert!(!out.join("blocks.0.hook_resid_post").exists());
}

#[test]
fn harvest_train_eval_align_on_a_small_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let saes = dir.path().join("saes");
    let (store_s, saes_s, corpus) = (store.to_str().unwrap(), saes.to_str().unwrap(), corpus());
    let corpus = corpus.to_str().unwrap();
    let (ok, err) = concord(&[
        "harvest",
        "--model",
        "minilm-l6",
        "--hooks",
        "blocks.1.hook_mlp_out,blocks.2.hook_resid_post",
        "--corpus",
        corpus,
        "--out",
        store_s,
        "--docs",
        "6",
        "--context-len",
        "64",
    ]);
    assert!(ok, "{err}");
    let acts = format!(
        "{0}/blocks.1.hook_mlp_out,{0}/blocks.2.hook_resid_post",
        store_s
    );
    let (ok, err) = concord(&[
        "train",
        "--acts",
        &acts,
        "--arch",
        "topk",
        "--k",
        "8",
        "--ratio",
        "1,2",
        "--init-seed",
        "0,1",
        "--batch",
        "128",
        "--tokens",
        "512",
        "--out",
        saes_s,
    ]);
    assert!(ok, "{err}");
    let sae = |hook: &str, r: u32, i: u32| saes.join(format!("{hook}-topk-x{r}-i{i}-d0"));
    let a = sae("blocks.1.hook_mlp_out", 1, 0);
    let b = sae("blocks.1.hook_mlp_out", 2, 1);
    assert!(
        a.join("cfg.json").exists()
            && sae("blocks.2.hook_resid_post", 2, 1)
                .join("sae_weights.safetensors")
                .exists()
    );
    let hook1 = store.join("blocks.1.hook_mlp_out");
    let eval = dir.path().join("eval.json");
    let (ok, err) = concord(&[
        "eval",
        "--sae",
        a.to_str().unwrap(),
        "--acts",
        hook1.to_str().unwrap(),
        "--out",
        eval.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&eval).unwrap()).unwrap();
    assert!(
        (e["l0"].as_f64().unwrap() - 8.0).abs() < 1e-6,
        "TopK L0 is k: {e}"
    );
    assert!(e["fvu"].as_f64().unwrap() > 0.0);
    let json = dir.path().join("align.json");
    let matches = dir.path().join("matches.parquet");
    // `align` of the two SAEs on `hook1`'s activations, with `extra` options; its report.
    let align = |extra: &[&str]| -> serde_json::Value {
        let (a, b, acts, out) = (
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            hook1.to_str().unwrap(),
            json.to_str().unwrap(),
        );
        let mut args = vec![
            "align", "--a", a, "--b", b, "--acts-a", acts, "--acts-b", acts, "--out", out,
        ];
        args.extend_from_slice(extra);
        let (ok, err) = concord(&args);
        assert!(ok, "{err}");
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
    };
    let v = align(&["--null", "2", "--matches", matches.to_str().unwrap()]);
    for dir in ["decoder", "encoder"] {
        let m = &v["matching"][dir];
        assert!(
            m["optimal"].as_bool().unwrap() && m["shared"]["0.7"].is_number(),
            "{v}"
        );
        assert!(v["mmcs"][dir]["a_to_b"].as_f64().unwrap() > 0.0);
    }
    assert!(
        v["correlation"]["centred"]["a_to_b"].is_number() && v["null"]["isotropic"].is_object()
    );
    let table = concord_store::Table::read(&matches).unwrap();
    assert_eq!(
        table.rows(),
        384,
        "one match per feature of the smaller SAE"
    );
    // `--acts-tokens` bounds the tokens read; the same store pairs row by row.
    let v = align(&["--acts-tokens", "50"]);
    assert_eq!(v["correlation"]["tokens"], 50, "{v}");
    // Widths that disagree are refused.
    let other = sae("blocks.2.hook_resid_post", 1, 0);
    let hook2 = store.join("blocks.2.hook_resid_post");
    check_error(
        &[
            "eval",
            "--sae",
            a.to_str().unwrap(),
            "--acts",
            store.join("missing").to_str().unwrap(),
        ],
        "missing",
    );
    let (ok, _) = concord(&[
        "eval",
        "--sae",
        other.to_str().unwrap(),
        "--acts",
        hook2.to_str().unwrap(),
        "--out",
        eval.to_str().unwrap(),
    ]);
    assert!(ok);
    // A train output is not mixed with other settings.
    check_error(
        &[
            "train", "--acts", &acts, "--arch", "topk", "--k", "4", "--ratio", "1", "--tokens",
            "256", "--out", saes_s,
        ],
        "other settings",
    );
}

/// Starts `concord args`, kills it (SIGKILL) as soon as `ready()` holds, and says whether it
/// was killed (false: it finished first).
fn kill_when(args: &[&str], ready: impl Fn() -> bool) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(args)
        .env("CONCORD_PROGRESS", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("concord starts");
    loop {
        if ready() {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Every file under `dir` (relative path, bytes), sorted.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn argv(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn killed_harvest_and_training_resume_to_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus();
    let harvest = |out: &Path| -> Vec<String> {
        [
            "harvest",
            "--model",
            "minilm-l6",
            "--hooks",
            "blocks.1.hook_mlp_out,blocks.3.hook_resid_post",
            "--corpus",
            corpus.to_str().unwrap(),
            "--docs",
            "24",
            "--context-len",
            "64",
            "--batch",
            "4",
            "--rows-per-shard",
            "512",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let whole = dir.path().join("whole");
    let (ok, err) = concord(&argv(&harvest(&whole)));
    assert!(ok, "{err}");
    let killed = dir.path().join("killed");
    let shard = killed.join("blocks.3.hook_resid_post/part-00002.parquet");
    assert!(
        kill_when(&argv(&harvest(&killed)), || shard.exists()),
        "the harvest finished before it could be killed"
    );
    // The manifest exists from the start; killed, it must not claim completion.
    let manifest = killed.join("blocks.3.hook_resid_post/manifest.json");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!(m["complete"], serde_json::json!(false), "{m}");
    let (ok, err) = concord(&argv(&harvest(&killed)));
    assert!(ok, "{err}");
    let (a, b) = (files(&whole), files(&killed));
    assert!(a.len() > 6, "several shards per hook: {}", a.len());
    assert_eq!(
        a.iter().map(|f| &f.0).collect::<Vec<_>>(),
        b.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(x.1 == y.1, "{} differs after the resume", x.0.display());
    }

    let train = |out: &Path| -> Vec<String> {
        [
            "train",
            "--acts",
            whole.join("blocks.1.hook_mlp_out").to_str().unwrap(),
            "--arch",
            "relu-l1-faithful",
            "--ratio",
            "2",
            "--batch",
            "128",
            "--checkpoint-every",
            "3",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let whole_saes = dir.path().join("whole-saes");
    let (ok, err) = concord(&argv(&train(&whole_saes)));
    assert!(ok, "{err}");
    let killed_saes = dir.path().join("killed-saes");
    let ckpt = killed_saes.join(".checkpoint");
    assert!(
        kill_when(&argv(&train(&killed_saes)), || ckpt.exists()),
        "training finished before it could be killed"
    );
    let (ok, err) = concord(&argv(&train(&killed_saes)));
    assert!(ok, "{err}");
    let name = "blocks.1.hook_mlp_out-relu-l1-faithful-x2-i0-d0";
    let weights = |d: &Path| std::fs::read(d.join(name).join("sae_weights.safetensors")).unwrap();
    assert!(
        weights(&whole_saes) == weights(&killed_saes),
        "resumed training ends with other weights"
    );
}

/// A SAELens folder with a minimal `cfg.json` and seeded weights; `zero` decoder rows zeroed.
fn small_sae(dir: &Path, d_in: usize, d_sae: usize, seed: u64, zero: usize) -> PathBuf {
    use concord_core::sae::{Sae, SaeConfig, SaeWeights};
    let cfg = format!(
        r#"{{"d_in": {d_in}, "d_sae": {d_sae}, "architecture": "standard",
            "hook_name": "blocks.0.hook_resid_post", "model_name": "m", "extra": {{"x": 1}}}}"#
    );
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let w_enc: Vec<f32> = (0..d_in * d_sae).map(|_| next()).collect();
    let mut w_dec: Vec<f32> = (0..d_sae * d_in).map(|_| next()).collect();
    w_dec[..zero * d_in].fill(0.0);
    let sae = Sae {
        cfg: SaeConfig::from_json(&cfg, Path::new("cfg.json")).unwrap(),
        weights: SaeWeights {
            d_in,
            d_sae,
            w_enc,
            b_enc: vec![0.0; d_sae],
            w_dec,
            b_dec: vec![0.0; d_in],
            threshold: None,
        },
    };
    let path = dir.join(format!("sae-{seed}"));
    sae.save(&path, &[]).unwrap();
    path
}

#[test]
fn align_reports_zero_features_labelled_nulls_and_refuses_one_file_for_two_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let a = small_sae(dir.path(), 8, 24, 1, 0);
    let b = small_sae(dir.path(), 8, 24, 2, 3);
    let out = dir.path().join("o.json");
    let (a, b, out_s) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    check_error(
        &[
            "align",
            "--a",
            a,
            "--b",
            b,
            "--out",
            out_s,
            "--matches",
            out_s,
        ],
        "the same file",
    );
    assert!(!out.exists());
    // The same file by `..` or through a link to its folder.
    let dotdot = dir.path().join("sub/../o.json");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    for other in [dotdot, link.join("o.json")] {
        let other = other.to_str().unwrap();
        check_error(
            &[
                "align",
                "--a",
                a,
                "--b",
                b,
                "--out",
                other,
                "--matches",
                out_s,
            ],
            "the same file",
        );
    }
    assert!(!out.exists());
    let (ok, err) = concord(&["align", "--a", a, "--b", b, "--out", out_s, "--null", "3"]);
    assert!(ok, "{err}");
    assert!(err.contains("3 of b are zero vectors"), "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["zero_features"]["decoder"]["b"], 3, "{v}");
    assert!(v["zero_features"].get("encoder").is_none(), "{v}");
    let iso = &v["null"]["isotropic"];
    assert!(iso["analytic"]["a_to_b"].as_f64().unwrap() > 0.0, "{v}");
    assert!(iso["mmcs_encoder"].is_array(), "{v}");
    assert!(
        v["null"]["rand_like"]["label"]
            .as_str()
            .unwrap()
            .contains("biased"),
        "{v}"
    );
    // An SAE whose decoder is all zeros has no directions to compare.
    let z = small_sae(dir.path(), 8, 24, 3, 24);
    check_error(
        &[
            "align",
            "--a",
            a,
            "--b",
            z.to_str().unwrap(),
            "--out",
            out_s,
        ],
        "all 24 rows are zero",
    );
}

#[test]
fn null_intervals_are_quantiles_within_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("null.json");
    let (ok, err) = concord(&[
        "null",
        "--d",
        "3",
        "--n-a",
        "10",
        "--n-b",
        "10",
        "--seeds",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for side in 0..2 {
        let i = &v["isotropic"]["mmcs_decoder"][side];
        let (lo, hi) = (i["lo"].as_f64().unwrap(), i["hi"].as_f64().unwrap());
        assert!(0.0 <= lo && lo <= hi && hi <= 1.0, "{v}");
    }
    assert!(v["rand_like"]["label"].as_str().unwrap().contains("biased"));
}
