//! The committed study files parse, validate, and plan what the issue asks of them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use concord_study::plan::{PlanOptions, plan};
use concord_study::spec::Question;
use concord_study::{StepKind, Study};

fn studies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/studies")
}

fn load(name: &str) -> Study {
    Study::load(&studies_dir().join(format!("{name}.toml"))).unwrap()
}

#[test]
fn every_committed_study_is_valid() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(studies_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let study = Study::load(&path).unwrap();
            let p = plan(&study, Path::new("/corpus.jsonl"), &PlanOptions::default());
            assert!(!p.pairs.is_empty(), "{} compares nothing", path.display());
            names.push(study.name);
        }
    }
    names.sort();
    assert_eq!(names, ["default", "full", "full-seeds", "long", "smoke"]);
}

#[test]
fn default_and_smoke_answer_every_question() {
    for name in ["default", "smoke", "long"] {
        answers_every_question(&load(name));
    }
    // The default study shows convergence: every init-seed pair is compared at three
    // snapshots or more besides its final SAEs, and the SAEs' rows are normalised.
    for name in ["default", "long"] {
        let s = load(name);
        assert!(s.train.normalize_activations, "{name}");
        let p = plan(&s, Path::new("/corpus.jsonl"), &PlanOptions::default());
        let seed_pairs: Vec<_> = p.pairs.iter().filter(|x| x.varies == "init_seed").collect();
        assert!(!seed_pairs.is_empty());
        for pair in seed_pairs {
            assert!(pair.snapshots.len() >= 3, "{name}: {pair:?}");
        }
    }
}

fn answers_every_question(s: &Study) {
    let p = plan(s, Path::new("/corpus.jsonl"), &PlanOptions::default());
    let questions: BTreeSet<Question> = p.pairs.iter().map(|x| x.question).collect();
    assert_eq!(
        questions,
        [
            Question::Size,
            Question::Seed,
            Question::Data,
            Question::Model,
            Question::Arch
        ]
        .into()
    );
    // Sizes up to at least 1:16, at least three init and three data-order seeds, three layers.
    assert!(p.saes.iter().any(|x| x.grid == "sizes" && x.ratio >= 8));
    let varies = |v: &str| p.pairs.iter().filter(|x| x.varies == v).count();
    assert!(varies("init_seed") >= 3 && varies("data_seed") >= 2 && varies("half") >= 1);
    let seed_layers: BTreeSet<usize> = p
        .saes
        .iter()
        .filter(|x| x.grid == "seeds")
        .map(|x| x.layer)
        .collect();
    assert!(seed_layers.len() >= 3);
    let archs: BTreeSet<&str> = p
        .saes
        .iter()
        .filter(|x| x.grid == "archs")
        .map(|x| x.arch.as_str())
        .collect();
    assert!(archs.contains("topk") && archs.iter().any(|a| a.starts_with("relu")));
    // Two harvests per model (training text, held-out text), and each null once per shape.
    assert_eq!(
        p.steps
            .iter()
            .filter(|x| x.kind == StepKind::Harvest)
            .count(),
        4
    );
    let null_labels: Vec<&str> = p
        .steps
        .iter()
        .filter(|x| x.kind == StepKind::Null)
        .map(|x| x.label.as_str())
        .collect();
    let unique: BTreeSet<&&str> = null_labels.iter().collect();
    assert_eq!(unique.len(), null_labels.len());
    assert!(p.describe(Path::new("/nonexistent")).contains("estimate"));
}

#[test]
fn full_reproduces_the_original_grid() {
    let s = load("full");
    assert_eq!(s.models.len(), 6);
    let p = plan(
        &s,
        Path::new("/corpus.jsonl"),
        &PlanOptions {
            device: Some("cuda".into()),
        },
    );
    assert!(p.saes.iter().any(|x| x.ratio == 32));
    assert!(
        p.steps
            .iter()
            .filter(|x| x.kind == StepKind::Train)
            .all(|x| x.command(Path::new("/r")).contains(&"cuda".to_owned()))
    );
    let seeds = load("full-seeds");
    let ps = plan(&seeds, Path::new("/corpus.jsonl"), &PlanOptions::default());
    assert!(ps.saes.len() > p.saes.len());
}
