//! The plan of a study: a graph of steps, each a `concord` command whose output folder is named
//! by a hash of everything that determines it (its command, the steps it reads, a format
//! version). A finished step leaves a `.done` marker; a rerun skips it, a changed setting gives
//! the steps it touches new hashes, and a killed step is simply run again (the commands
//! themselves resume or rewrite atomically).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::spec::{DataSeed, Grid, ModelEntry, Question, Study};

/// Bumped when a step's output format changes, so old outputs are not reused.
const PLAN_VERSION: &str = "concord-plan-1";
/// Tokens per document assumed by estimates (the default corpus averages about 350).
const TOKENS_PER_DOC: f64 = 350.0;
/// Seconds to load a model for a loss-recovered eval, assumed by estimates.
const MODEL_LOAD_SECONDS: f64 = 5.0;

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Harvest,
    Train,
    Eval,
    Null,
    Align,
}

impl StepKind {
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Harvest => "harvest",
            StepKind::Train => "train",
            StepKind::Eval => "eval",
            StepKind::Null => "null",
            StepKind::Align => "align",
        }
    }
}

/// One argument of a step's command: text, or a path inside another step's (or this step's)
/// output folder, resolved against the run folder when the step runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arg {
    Text(String),
    /// `(step id, path inside it)`; the step id `""` is this step's own output folder.
    Output(String, String),
    /// Several outputs joined by commas (`concord train --acts DIR,DIR`).
    Outputs(Vec<(String, String)>),
    /// A path outside the run (a corpus file), given as is; the file's identity is the user's
    /// business (corpus hashes are recorded by the harvest's manifest).
    External(String),
}

/// An SAE a train step produces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaeRef {
    /// The train step's id and the SAE's folder name inside it.
    pub step: String,
    pub name: String,
    pub grid: String,
    pub model: String,
    pub layer: usize,
    pub hook: String,
    pub arch: String,
    pub ratio: u32,
    pub d_in: usize,
    pub init_seed: u64,
    pub data_seed: DataSeed,
    /// `Some("first")`/`Some("second")` for SAEs trained on one half of the training text.
    pub half: Option<String>,
    /// The steps of its training run, and its snapshots' steps (fewer, in increasing order;
    /// each a folder `snapshots/<step>/<name>` of the train step's output).
    pub steps: u64,
    pub snapshots: Vec<u64>,
}

impl SaeRef {
    pub fn d_sae(&self) -> usize {
        self.d_in * self.ratio as usize
    }

    /// The tokens its run trains on (nominal: the study's; the folder's `cfg.json` has the
    /// rows actually read).
    pub fn tokens(&self, study: &Study) -> u64 {
        study
            .grids
            .iter()
            .find(|g| g.name == self.grid)
            .and_then(|g| g.tokens)
            .unwrap_or(study.train.tokens)
    }

    /// The tokens it has seen after `at` steps (nominal: whole batches; the folder's
    /// `cfg.json` has the rows actually read).
    pub fn tokens_at(&self, study: &Study, at: u64) -> u64 {
        let tokens = self.tokens(study);
        if at >= self.steps {
            tokens
        } else {
            (at * study.train.batch as u64).min(tokens)
        }
    }

    /// The SAE's folder inside its train step's output after `steps` steps: the final SAE
    /// when `steps` is its run's length, else a snapshot.
    pub fn folder_at(&self, steps: u64) -> String {
        if steps == self.steps {
            self.name.clone()
        } else {
            format!(
                "{}/{steps}/{}",
                concord_core::snapshots::SNAPSHOTS_DIR,
                self.name
            )
        }
    }

    /// A short label for figures: `x4 i0 d0`.
    pub fn label(&self) -> String {
        let half = self
            .half
            .as_deref()
            .map(|h| format!(" {h} half"))
            .unwrap_or_default();
        format!(
            "{} L{} 1:{} i{} d{}{}",
            self.arch,
            self.layer,
            self.ratio,
            self.init_seed,
            self.data_seed.arg(),
            half
        )
    }
}

/// A compared pair and the question it answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub question: Question,
    pub grid: String,
    /// What differs: `ratio`, `init_seed`, `data_seed`, `half`, `model`.
    pub varies: String,
    pub a: usize,
    pub b: usize,
    /// The align step that compares them.
    pub step: String,
    /// The null step for their shape (weight-space pairs only).
    pub null: Option<String>,
    /// Seed pairs: `(steps, align step)` comparing the two SAEs' snapshots after `steps`
    /// steps (weights only), in increasing order; the final SAEs are `step`.
    #[serde(default)]
    pub snapshots: Vec<(u64, String)>,
}

/// One step of the plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// `<kind>-<first 12 hex digits of the hash>`: also its output folder's name.
    pub id: String,
    pub kind: StepKind,
    /// One line for humans.
    pub label: String,
    pub args: Vec<Arg>,
    /// Ids of the steps whose outputs it reads.
    pub deps: Vec<String>,
    /// Estimates for `--dry-run`.
    pub est_seconds: f64,
    pub est_bytes: u64,
}

impl Step {
    fn new(
        kind: StepKind,
        label: String,
        args: Vec<Arg>,
        est_seconds: f64,
        est_bytes: u64,
    ) -> Step {
        let mut deps: Vec<String> = args
            .iter()
            .flat_map(|a| match a {
                Arg::Output(step, _) => vec![step.clone()],
                Arg::Outputs(list) => list.iter().map(|(step, _)| step.clone()).collect(),
                _ => Vec::new(),
            })
            .filter(|step| !step.is_empty())
            .collect();
        deps.sort();
        deps.dedup();
        let canonical =
            serde_json::to_string(&(PLAN_VERSION, kind, &args)).expect("steps serialise");
        let hash = hex::encode(Sha256::digest(canonical.as_bytes()));
        Step {
            id: format!("{}-{}", kind.name(), &hash[..12]),
            kind,
            label,
            args,
            deps,
            est_seconds,
            est_bytes,
        }
    }

    /// The command line (without the program), with paths resolved under `run_dir`.
    pub fn command(&self, run_dir: &Path) -> Vec<String> {
        self.args
            .iter()
            .map(|a| match a {
                Arg::Text(t) | Arg::External(t) => t.clone(),
                Arg::Output(step, sub) => self.resolve(run_dir, step, sub),
                Arg::Outputs(list) => list
                    .iter()
                    .map(|(step, sub)| self.resolve(run_dir, step, sub))
                    .collect::<Vec<_>>()
                    .join(","),
            })
            .collect()
    }
}

impl Step {
    fn resolve(&self, run_dir: &Path, step: &str, sub: &str) -> String {
        let step = if step.is_empty() { &self.id } else { step };
        let p = step_dir(run_dir, step);
        if sub.is_empty() {
            p.display().to_string()
        } else {
            p.join(sub).display().to_string()
        }
    }
}

/// The output folder of a step.
pub fn step_dir(run_dir: &Path, id: &str) -> PathBuf {
    run_dir.join("steps").join(id)
}

/// The whole plan: steps in an order where every step comes after its dependencies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub study: Study,
    pub steps: Vec<Step>,
    pub saes: Vec<SaeRef>,
    pub pairs: Vec<Pair>,
    /// Per model id: the harvest step of the training text and of the held-out text.
    pub stores: BTreeMap<String, (String, String)>,
    /// Per SAE index: its eval step.
    pub evals: BTreeMap<usize, String>,
    /// Per SAE index of a seed pair with snapshots: `(steps, eval step)` of each snapshot.
    #[serde(default)]
    pub snapshot_evals: BTreeMap<usize, Vec<(u64, String)>>,
}

fn text(s: impl std::fmt::Display) -> Arg {
    Arg::Text(s.to_string())
}

fn out(step: &str, sub: impl Into<String>) -> Arg {
    Arg::Output(step.to_owned(), sub.into())
}

/// Options that change the commands without changing the study (they are part of the hashes).
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// `cpu` or `cuda`; `None` leaves each command's default (cpu).
    pub device: Option<String>,
}

/// Turns a validated study into its plan.
pub fn plan(study: &Study, corpus: &Path, opts: &PlanOptions) -> Plan {
    let mut steps: Vec<Step> = Vec::new();
    let device: Vec<Arg> = opts
        .device
        .iter()
        .flat_map(|d| [text("--device"), text(d)])
        .collect();
    let corpus = Arg::External(corpus.display().to_string());

    // Harvest: per model, the training text and the held-out text.
    let mut stores = BTreeMap::new();
    for (id, m) in &study.models {
        let hooks: Vec<String> = m.layers.iter().map(|&l| m.hook_at(l)).collect();
        let mut harvest = |skip: u64, docs: u64, what: &str| {
            let mut args = vec![
                text("harvest"),
                text("--model"),
                text(&m.model),
                text("--hooks"),
                text(hooks.join(",")),
                text("--corpus"),
                corpus.clone(),
                text("--docs"),
                text(docs),
                text("--context-len"),
                text(study.context_len),
                text("--batch"),
                text(m.batch),
            ];
            if m.compute_dtype != "f32" {
                args.extend([text("--compute-dtype"), text(&m.compute_dtype)]);
            }
            if skip > 0 {
                args.extend([text("--skip-docs"), text(skip)]);
            }
            args.extend(device.iter().cloned());
            args.extend([text("--out"), out("", "")]);
            let tokens = docs as f64 * TOKENS_PER_DOC;
            let step = Step::new(
                StepKind::Harvest,
                format!(
                    "harvest {what} of {} ({} docs, {} hooks)",
                    m.model,
                    docs,
                    hooks.len()
                ),
                args,
                tokens / m.harvest_tokens_per_s,
                (tokens * (m.d_model * 4 + 32) as f64 * hooks.len() as f64) as u64,
            );
            let id = step.id.clone();
            steps.push(step);
            id
        };
        let train = harvest(0, study.docs, "the training text");
        let eval = harvest(study.docs, study.eval_docs, "the held-out text");
        stores.insert(id.clone(), (train, eval));
    }

    // Train: per grid, one pass per (arch, data seed, half) over the store.
    let mut saes: Vec<SaeRef> = Vec::new();
    let mut grid_saes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for g in &study.grids {
        let m = &study.models[&g.model];
        let store = &stores[&g.model].0;
        for arch in &g.archs {
            for run in grid_runs(g) {
                let (step, refs) = train_step(study, g, m, &g.model, store, arch, &run, &device);
                for r in refs {
                    grid_saes
                        .entry(g.name.clone())
                        .or_default()
                        .push(saes.len());
                    saes.push(r);
                }
                steps.push(step);
            }
        }
    }
    reuse_trained(study, &mut steps, &mut saes);

    // Eval: every SAE on the held-out text; loss recovered for the grids that ask for it.
    let mut evals = BTreeMap::new();
    for (i, s) in saes.iter().enumerate() {
        let spliced = study.loss_recovered.contains(&s.grid);
        let step = eval_step(study, s, s.steps, &stores, &corpus, &device, spliced);
        evals.insert(i, step.id.clone());
        steps.push(step);
    }

    // Pairs, their nulls (once per shape) and their align steps.
    let mut pairs = Vec::new();
    let mut nulls: BTreeMap<(usize, usize, usize), String> = BTreeMap::new();
    for g in &study.grids {
        let members = grid_saes.get(&g.name).cloned().unwrap_or_default();
        let mut candidate_pairs: Vec<(usize, usize, &'static str)> = Vec::new();
        if g.question == Question::Model {
            let other = study
                .grids
                .iter()
                .find(|o| Some(&o.name) == g.versus.as_ref())
                .expect("validated");
            let others = grid_saes.get(&other.name).cloned().unwrap_or_default();
            // Every layer of this model against every layer of the other (same ratio and
            // arch, first seeds): the cross-model heatmap; the report reads the pairs at the
            // closest relative depths from it.
            for &a in members.iter().filter(|&&a| is_first(g, &saes[a])) {
                for &b in others.iter().filter(|&&b| is_first(other, &saes[b])) {
                    if saes[b].ratio == saes[a].ratio && saes[b].arch == saes[a].arch {
                        candidate_pairs.push((a, b, "model"));
                    }
                }
            }
        } else {
            for (x, &a) in members.iter().enumerate() {
                for &b in &members[x + 1..] {
                    if let Some(varies) = differs_only_in(&saes[a], &saes[b]) {
                        let wanted = match g.question {
                            Question::Size => varies == "ratio",
                            Question::Seed | Question::Arch => {
                                varies == "init_seed" || varies == "data_seed"
                            }
                            Question::Data => varies == "half",
                            Question::Model => false,
                        };
                        if wanted {
                            candidate_pairs.push((a, b, varies));
                        }
                    }
                }
            }
        }
        for (a, b, varies) in candidate_pairs {
            let (sa, sb) = (&saes[a], &saes[b]);
            let weights = sa.d_in == sb.d_in;
            let null = weights.then(|| {
                let key = (sa.d_in, sa.d_sae(), sb.d_sae());
                nulls
                    .entry(key)
                    .or_insert_with(|| {
                        let step = Step::new(
                            StepKind::Null,
                            format!("null d={} {}x{}", key.0, key.1, key.2),
                            vec![
                                text("null"),
                                text("--d"),
                                text(key.0),
                                text("--n-a"),
                                text(key.1),
                                text("--n-b"),
                                text(key.2),
                                text("--seeds"),
                                text(study.null_seeds),
                                text("--out"),
                                out("", "null.json"),
                            ],
                            (key.1 * key.2 * key.0) as f64 * 2.0 * study.null_seeds as f64 * 2.0
                                / 5e10,
                            4096,
                        );
                        let id = step.id.clone();
                        steps.push(step);
                        id
                    })
                    .clone()
            });
            let mut args = vec![
                text("align"),
                text("--a"),
                out(&sa.step, &sa.name),
                text("--b"),
                out(&sb.step, &sb.name),
                text("--acts-a"),
                out(&stores[&sa.model].1, &sa.hook),
                text("--acts-b"),
                out(&stores[&sb.model].1, &sb.hook),
            ];
            if !weights {
                args.push(text("--activations-only"));
            }
            args.extend([text("--corpus"), corpus.clone()]);
            if weights {
                args.extend([text("--matches"), out("", "matches.parquet")]);
            }
            args.extend([text("--out"), out("", "align.json")]);
            let est = (sa.d_sae() * sb.d_sae() * sa.d_in.max(sb.d_in)) as f64 * 6.0 / 5e10 + 2.0;
            // Seed pairs are also compared at every snapshot both SAEs have (weights only:
            // the convergence figure needs decoder MMCS and the shared fraction).
            let mut snapshots = Vec::new();
            if weights && matches!(varies, "init_seed" | "data_seed") {
                for &at in sa.snapshots.iter().filter(|t| sb.snapshots.contains(t)) {
                    let step = Step::new(
                        StepKind::Align,
                        format!(
                            "align {} vs {} after {at} steps ({})",
                            sa.label(),
                            sb.label(),
                            g.question.name()
                        ),
                        vec![
                            text("align"),
                            text("--a"),
                            out(&sa.step, sa.folder_at(at)),
                            text("--b"),
                            out(&sb.step, sb.folder_at(at)),
                            text("--out"),
                            out("", "align.json"),
                        ],
                        (sa.d_sae() * sb.d_sae() * sa.d_in) as f64 * 4.0 / 5e10 + 1.0,
                        ((sa.d_sae() + sb.d_sae()) * 32) as u64,
                    );
                    snapshots.push((at, step.id.clone()));
                    steps.push(step);
                }
            }
            let step = Step::new(
                StepKind::Align,
                format!(
                    "align {} vs {} ({})",
                    sa.label(),
                    sb.label(),
                    g.question.name()
                ),
                args,
                est,
                ((sa.d_sae() + sb.d_sae()) * 32) as u64,
            );
            pairs.push(Pair {
                question: g.question,
                grid: g.name.clone(),
                varies: varies.to_owned(),
                a,
                b,
                step: step.id.clone(),
                null,
                snapshots,
            });
            steps.push(step);
        }
    }

    // The snapshots of every SAE in a pair compared at snapshots, on the held-out text.
    let mut snapshot_evals: BTreeMap<usize, Vec<(u64, String)>> = BTreeMap::new();
    for p in &pairs {
        for i in [p.a, p.b] {
            if p.snapshots.is_empty() || snapshot_evals.contains_key(&i) {
                continue;
            }
            let s = &saes[i];
            let list = s
                .snapshots
                .iter()
                .map(|&at| {
                    let step = eval_step(study, s, at, &stores, &corpus, &device, false);
                    let id = step.id.clone();
                    steps.push(step);
                    (at, id)
                })
                .collect();
            snapshot_evals.insert(i, list);
        }
    }

    dedup(&mut steps);
    Plan {
        study: study.clone(),
        steps,
        saes,
        pairs,
        stores,
        evals,
        snapshot_evals,
    }
}

/// The eval step of SAE `s` after `at` steps of its run, on the held-out text; with
/// `spliced`, loss recovered and KL too.
fn eval_step(
    study: &Study,
    s: &SaeRef,
    at: u64,
    stores: &BTreeMap<String, (String, String)>,
    corpus: &Arg,
    device: &[Arg],
    spliced: bool,
) -> Step {
    let m = &study.models[&s.model];
    let eval_store = &stores[&s.model].1;
    let mut args = vec![
        text("eval"),
        text("--sae"),
        out(&s.step, s.folder_at(at)),
        text("--acts"),
        out(eval_store, &s.hook),
    ];
    if spliced {
        args.extend([
            text("--model"),
            text(&m.model),
            text("--corpus"),
            corpus.clone(),
            text("--skip-docs"),
            text(study.docs),
            text("--docs"),
            text(study.loss_recovered_docs.min(study.eval_docs)),
        ]);
    }
    args.extend(device.iter().cloned());
    args.extend([text("--out"), out("", "eval.json")]);
    let tokens = study.eval_docs as f64 * TOKENS_PER_DOC;
    // Loss recovered: loading the model and three forward passes over its documents.
    let splice_seconds = if spliced {
        let docs = study.loss_recovered_docs.min(study.eval_docs) as f64;
        MODEL_LOAD_SECONDS + 3.0 * docs * TOKENS_PER_DOC / m.harvest_tokens_per_s
    } else {
        0.0
    };
    let label = if at == s.steps {
        format!("eval {}", s.label())
    } else {
        format!("eval {} after {at} steps", s.label())
    };
    Step::new(
        StepKind::Eval,
        label,
        args,
        tokens * s.d_sae() as f64 / study.train.token_features_per_s * 0.3 + splice_seconds,
        (s.d_sae() * 16) as u64,
    )
}

/// The training identity of an SAE: two SAEs with the same one are the same SAE, whichever
/// grids list them (every training setting but the tokens is the study's).
pub(crate) type Identity = (
    String,
    String,
    String,
    u32,
    u64,
    DataSeed,
    Option<String>,
    u64,
);

pub(crate) fn training_identity(study: &Study, s: &SaeRef) -> Identity {
    (
        s.model.clone(),
        s.hook.clone(),
        s.arch.clone(),
        s.ratio,
        s.init_seed,
        s.data_seed,
        s.half.clone(),
        s.tokens(study),
    )
}

/// Leaves out every train step whose SAEs an earlier train step already trains (two grids can
/// share SAEs: the seed grid's ReLU SAEs at the middle layer are the architecture grid's), and
/// points its SAEs at the earlier step's folders. They are the same SAEs, weights and all:
/// initialisation depends on the init seed alone, data order on the data seed, and each SAE
/// of a pass trains on its own. A step that shares only some of its SAEs still runs whole.
fn reuse_trained(study: &Study, steps: &mut Vec<Step>, saes: &mut [SaeRef]) {
    let identity = |s: &SaeRef| training_identity(study, s);
    // Two grids asking for the very same pass share one step id: one step from here on.
    dedup(steps);
    let mut trained = BTreeMap::new();
    let mut dropped = BTreeSet::new();
    // Per kept pass, the other grids that read its SAEs (said in its label, for `--dry-run`).
    let mut serves = BTreeMap::new();
    for step in steps.iter().filter(|s| s.kind == StepKind::Train) {
        let members: Vec<usize> = (0..saes.len())
            .filter(|&i| saes[i].step == step.id)
            .collect();
        let known = |i: &usize| trained.contains_key(&identity(&saes[*i]));
        if !members.is_empty() && members.iter().all(known) {
            for i in members {
                let (at, name): &(String, String) = &trained[&identity(&saes[i])];
                serves
                    .entry(at.clone())
                    .or_insert_with(BTreeSet::new)
                    .insert(saes[i].grid.clone());
                saes[i].step = at.clone();
                saes[i].name = name.clone();
            }
            dropped.insert(step.id.clone());
        } else {
            for i in members {
                trained
                    .entry(identity(&saes[i]))
                    .or_insert_with(|| (saes[i].step.clone(), saes[i].name.clone()));
            }
        }
    }
    steps.retain(|s| !dropped.contains(&s.id));
    for step in steps.iter_mut() {
        if let Some(grids) = serves.get(&step.id) {
            let grids: Vec<&str> = grids.iter().map(String::as_str).collect();
            let _ = write!(step.label, "; also for grid {}", grids.join(", "));
        }
    }
}

/// Removes repeated steps (two grids can ask for the same null or the same SAE), keeping the
/// first occurrence, which also keeps dependencies before their users.
fn dedup(steps: &mut Vec<Step>) {
    let mut seen = BTreeSet::new();
    steps.retain(|s| seen.insert(s.id.clone()));
}

/// One training pass of a grid: a data seed and an optional half, with the init seeds it trains.
#[derive(Clone, Debug, PartialEq)]
struct Run {
    data_seed: DataSeed,
    half: Option<&'static str>,
    init_seeds: Vec<u64>,
}

/// The sparse design of a grid (see [`Grid`]).
fn grid_runs(g: &Grid) -> Vec<Run> {
    let (i0, d0) = (g.init_seeds[0], g.data_seeds[0]);
    if g.halves {
        return ["first", "second"]
            .into_iter()
            .map(|h| Run {
                data_seed: d0,
                half: Some(h),
                init_seeds: vec![i0],
            })
            .collect();
    }
    let mut runs = vec![Run {
        data_seed: d0,
        half: None,
        init_seeds: g.init_seeds.clone(),
    }];
    runs.extend(g.data_seeds[1..].iter().map(|&d| Run {
        data_seed: d,
        half: None,
        init_seeds: vec![i0],
    }));
    runs
}

fn is_first(g: &Grid, s: &SaeRef) -> bool {
    s.init_seed == g.init_seeds[0] && s.data_seed == g.data_seeds[0]
}

/// The one attribute two SAEs differ in, when they differ in exactly one.
fn differs_only_in(a: &SaeRef, b: &SaeRef) -> Option<&'static str> {
    let diffs: Vec<&'static str> = [
        ("model", a.model != b.model),
        ("layer", a.layer != b.layer),
        ("arch", a.arch != b.arch),
        ("ratio", a.ratio != b.ratio),
        ("init_seed", a.init_seed != b.init_seed),
        ("data_seed", a.data_seed != b.data_seed),
        ("half", a.half != b.half),
    ]
    .into_iter()
    .filter_map(|(name, differs)| differs.then_some(name))
    .collect();
    (diffs.len() == 1).then(|| diffs[0])
}

/// The folder name `concord train` gives an SAE.
pub fn sae_name(hook: &str, arch: &str, ratio: u32, init_seed: u64, data_seed: DataSeed) -> String {
    format!("{hook}-{arch}-x{ratio}-i{init_seed}-d{}", data_seed.arg())
}

#[allow(clippy::too_many_arguments)]
fn train_step(
    study: &Study,
    g: &Grid,
    m: &ModelEntry,
    model_id: &str,
    store: &str,
    arch: &str,
    run: &Run,
    device: &[Arg],
) -> (Step, Vec<SaeRef>) {
    let hooks: Vec<String> = g.layers.iter().map(|&l| m.hook_at(l)).collect();
    let tokens = g.tokens.unwrap_or(study.train.tokens);
    let t = &study.train;
    let at = t.for_arch(arch);
    let total_steps = tokens.div_ceil(t.batch as u64);
    let snapshots = concord_core::snapshots::snapshot_steps(total_steps, t.snapshots);
    let mut args = vec![
        text("train"),
        text("--acts"),
        Arg::Outputs(
            hooks
                .iter()
                .map(|h| (store.to_owned(), h.clone()))
                .collect(),
        ),
        text("--arch"),
        text(arch),
        text("--ratio"),
        text(
            g.ratios
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
        text("--init-seed"),
        text(
            run.init_seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
        text("--data-seed"),
        text(run.data_seed.arg()),
        text("--tokens"),
        text(tokens),
        text("--batch"),
        text(study.train.batch),
        text("--lr"),
        text(at.lr),
        text("--shuffle"),
        text(&study.train.shuffle),
    ];
    // TopK SAEs take the study's k, ReLU SAEs its L1 coefficient; JumpReLU SAEs train with
    // the trainer's default L0 coefficient and bandwidth.
    if arch.contains("topk") {
        args.extend([text("--k"), text(at.k)]);
    } else if arch != "jumprelu" {
        args.extend([text("--l1"), text(at.l1)]);
    }
    // Settings at their defaults are left out, so the commands (and step ids) of studies that
    // do not use them stay as they were.
    for (flag, frac) in [("--lr-warmup", at.lr_warmup), ("--lr-decay", at.lr_decay)] {
        if let Some(f) = frac {
            args.extend([text(flag), text(f)]);
        }
    }
    if t.normalize_activations {
        args.push(text("--normalize-activations"));
    }
    if t.compute_dtype != "f32" {
        args.extend([text("--compute-dtype"), text(&t.compute_dtype)]);
    }
    if t.snapshots > 1 {
        args.extend([text("--snapshots"), text(t.snapshots)]);
    }
    if let Some(h) = run.half {
        args.extend([text("--half"), text(h)]);
    }
    args.extend(device.iter().cloned());
    args.extend([text("--out"), out("", "")]);
    let n_saes = hooks.len() * g.ratios.len() * run.init_seeds.len();
    let features: usize = hooks.len()
        * run.init_seeds.len()
        * g.ratios
            .iter()
            .map(|&r| r as usize * m.d_model)
            .sum::<usize>();
    let mut label = String::new();
    let _ = write!(
        label,
        "train {} SAEs of grid {} ({arch}, data seed {}{})",
        n_saes,
        g.name,
        run.data_seed.arg(),
        run.half.map(|h| format!(", {h} half")).unwrap_or_default()
    );
    let step = Step::new(
        StepKind::Train,
        label,
        args,
        tokens as f64 * features as f64 / study.train.token_features_per_s,
        (features * m.d_model * 8 * 4) as u64,
    );
    let mut refs = Vec::new();
    for &layer in &g.layers {
        let hook = m.hook_at(layer);
        for &ratio in &g.ratios {
            for &init_seed in &run.init_seeds {
                refs.push(SaeRef {
                    step: step.id.clone(),
                    name: sae_name(&hook, arch, ratio, init_seed, run.data_seed),
                    grid: g.name.clone(),
                    model: model_id.to_owned(),
                    layer,
                    hook: hook.clone(),
                    arch: arch.to_owned(),
                    ratio,
                    d_in: m.d_model,
                    init_seed,
                    data_seed: run.data_seed,
                    half: run.half.map(str::to_owned),
                    steps: total_steps,
                    snapshots: snapshots.clone(),
                });
            }
        }
    }
    (step, refs)
}

impl Plan {
    /// The plan as text with estimates, for `--dry-run`; steps already finished under `run_dir`
    /// are counted as done and left out of the estimates.
    pub fn describe(&self, run_dir: &Path) -> String {
        let mut s = String::new();
        let (mut secs, mut bytes) = (0.0, 0u64);
        let _ = writeln!(
            s,
            "study {}: {} steps, {} SAEs, {} compared pairs",
            self.study.name,
            self.steps.len(),
            self.saes.len(),
            self.pairs.len()
        );
        for kind in [
            StepKind::Harvest,
            StepKind::Train,
            StepKind::Eval,
            StepKind::Null,
            StepKind::Align,
        ] {
            let of_kind: Vec<&Step> = self.steps.iter().filter(|st| st.kind == kind).collect();
            let is_done = |st: &Step| crate::exec::done(run_dir, &st.id).is_some();
            let todo: Vec<&Step> = of_kind.iter().copied().filter(|st| !is_done(st)).collect();
            // `+ 0.0`: an empty sum is -0.0, printed "-0".
            let t: f64 = todo.iter().map(|st| st.est_seconds).sum::<f64>() + 0.0;
            let b: u64 = todo.iter().map(|st| st.est_bytes).sum();
            secs += t;
            bytes += b;
            let _ = writeln!(
                s,
                "  {:8} {:4} steps ({} done)  ~{:>7.0} s  ~{:>8.1} MB",
                kind.name(),
                of_kind.len(),
                of_kind.len() - todo.len(),
                t,
                b as f64 / 1e6
            );
            if kind == StepKind::Harvest || kind == StepKind::Train {
                for st in of_kind {
                    let done = if is_done(st) { " (done)" } else { "" };
                    let _ = writeln!(s, "           {}: {}{done}", st.id, st.label);
                }
            }
        }
        let _ = writeln!(
            s,
            "estimate of what is left: ~{:.0} min and ~{:.1} GB on the reference 2-core CPU",
            secs / 60.0,
            bytes as f64 / 1e9
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn study() -> Study {
        let text = r#"
name = "t"
about = "a test"
corpus = "shakespeare"
docs = 100
eval_docs = 20
[models.lm]
model = "smollm2-135m"
n_layers = 30
d_model = 576
causal = true
hook = "hook_mlp_out"
layers = [7, 15, 22]
[models.enc]
model = "minilm-l6"
n_layers = 6
d_model = 384
causal = false
hook = "hook_mlp_out"
layers = [1, 3, 4]
[train]
tokens = 1000
[[grid]]
name = "sizes"
question = "size"
model = "lm"
layers = [15]
ratios = [1, 2, 4]
[[grid]]
name = "seeds"
question = "seed"
model = "lm"
layers = [7, 15]
ratios = [2]
init_seeds = [0, 1, 2]
data_seeds = [0, 1]
[[grid]]
name = "halves"
question = "data"
model = "lm"
layers = [15]
ratios = [2]
halves = true
[[grid]]
name = "enc"
question = "model"
model = "enc"
layers = [1, 3, 4]
ratios = [2]
versus = "lm3"
[[grid]]
name = "lm3"
question = "size"
model = "lm"
layers = [7, 15, 22]
ratios = [2, 4]
"#;
        Study::parse(text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn plan_has_the_sparse_design_and_pairs() {
        let p = plan(&study(), Path::new("/c.jsonl"), &PlanOptions::default());
        let grid = |g: &str| p.saes.iter().filter(|s| s.grid == g).count();
        assert_eq!(grid("sizes"), 3);
        // Two layers x (3 init seeds with data seed 0, plus data seed 1 with init seed 0).
        assert_eq!(grid("seeds"), 2 * 4);
        assert_eq!(grid("halves"), 2);
        let pairs = |q: Question| p.pairs.iter().filter(|x| x.question == q).count();
        // The sizes grid: 3 pairs of ratios; lm3: one pair at each of its 3 layers.
        assert_eq!(pairs(Question::Size), 3 + 3);
        // Per layer: 3 init-seed pairs and 1 data-seed pair.
        assert_eq!(pairs(Question::Seed), 2 * 4);
        assert_eq!(pairs(Question::Data), 1);
        assert_eq!(pairs(Question::Model), 3 * 3);
        // Cross-model pairs have no weight-space null; nulls are shared per shape.
        assert!(
            p.pairs
                .iter()
                .filter(|x| x.question == Question::Model)
                .all(|x| x.null.is_none())
        );
        let nulls = p.steps.iter().filter(|s| s.kind == StepKind::Null).count();
        // Shapes (d, n_a, n_b): (576, 576, 1152), (576, 576, 2304), (576, 1152, 2304), (576, 1152, 1152).
        assert_eq!(nulls, 4);
    }

    #[test]
    fn steps_come_after_their_dependencies_and_hashes_are_stable() {
        let p = plan(&study(), Path::new("/c.jsonl"), &PlanOptions::default());
        let mut seen = BTreeSet::new();
        for s in &p.steps {
            for d in &s.deps {
                assert!(seen.contains(d), "{} needs {d} first", s.id);
            }
            assert!(seen.insert(s.id.clone()), "{} twice", s.id);
        }
        let again = plan(&study(), Path::new("/c.jsonl"), &PlanOptions::default());
        assert_eq!(p.steps, again.steps);
    }

    #[test]
    fn estimates_count_loss_recovered_and_skip_finished_steps() {
        let mut s = study();
        let plain = plan(&s, Path::new("/c.jsonl"), &PlanOptions::default());
        s.loss_recovered = vec!["sizes".into()];
        let p = plan(&s, Path::new("/c.jsonl"), &PlanOptions::default());
        let eval_secs = |p: &Plan| -> f64 {
            p.steps
                .iter()
                .filter(|s| s.kind == StepKind::Eval)
                .map(|s| s.est_seconds)
                .sum()
        };
        // Three SAEs of the sizes grid, each loading the model and running three passes.
        let per = MODEL_LOAD_SECONDS + 3.0 * 8.0 * TOKENS_PER_DOC / 1000.0;
        assert!((eval_secs(&p) - eval_secs(&plain) - 3.0 * per).abs() < 1e-6);

        let run = tempfile::tempdir().unwrap();
        let before = p.describe(run.path());
        assert!(before.contains("harvest     4 steps (0 done)"), "{before}");
        for st in p.steps.iter().filter(|s| s.kind == StepKind::Harvest) {
            let dir = step_dir(run.path(), &st.id);
            std::fs::create_dir_all(&dir).unwrap();
            let done = crate::exec::Done {
                id: st.id.clone(),
                label: st.label.clone(),
                command: Vec::new(),
                seconds: 1.0,
            };
            concord_core::fsutil::write_json_atomic(&dir.join(crate::exec::DONE_FILE), &done)
                .unwrap();
        }
        let after = p.describe(run.path());
        assert!(
            after.contains("harvest     4 steps (4 done)  ~      0 s"),
            "{after}"
        );
        assert!(after.contains("(done)"), "{after}");
    }

    #[test]
    fn an_sae_two_grids_share_is_trained_once() {
        let mut s = study();
        // The seed grid's first data seed trains init seeds 0, 1, 2 at 1:2 on layers 7 and 15
        // in one pass; a grid asking for the layer-15 ones alone (TopK too) needs no pass of
        // its own for ReLU.
        let mut arch = s.grids.iter().find(|g| g.name == "seeds").unwrap().clone();
        arch.name = "archs".into();
        arch.question = Question::Arch;
        arch.layers = vec![15];
        arch.data_seeds = vec![arch.data_seeds[0]];
        arch.archs = vec!["relu-l1-faithful".into(), "topk".into()];
        s.grids.push(arch);
        let p = plan(&s, Path::new("/c.jsonl"), &PlanOptions::default());
        let trains: Vec<&Step> = p
            .steps
            .iter()
            .filter(|x| x.kind == StepKind::Train)
            .collect();
        let labels: Vec<&str> = trains.iter().map(|x| x.label.as_str()).collect();
        assert!(
            labels.iter().any(|l| l.contains("grid archs (topk")),
            "{labels:?}"
        );
        assert!(
            !labels.iter().any(|l| l.contains("grid archs (relu")),
            "{labels:?}"
        );
        // The passes that now serve the architecture grid say so (`--dry-run` lists them).
        assert!(
            labels.iter().any(|l| l.ends_with("; also for grid archs")),
            "{labels:?}"
        );
        // Each reads the folder of the same SAE in the first grid that trains it (i0 is in
        // the size grid's pass too, which comes first).
        for x in p
            .saes
            .iter()
            .filter(|x| x.grid == "archs" && x.arch != "topk")
        {
            let first = p
                .saes
                .iter()
                .find(|y| y.grid != "archs" && y.label() == x.label())
                .unwrap();
            assert_eq!((&x.step, &x.name), (&first.step, &first.name));
            assert!(trains.iter().any(|t| t.id == x.step));
        }
        // Their evaluations and the pairs between them are the seed grid's, run once.
        let evals = p.steps.iter().filter(|x| x.kind == StepKind::Eval).count();
        let distinct: BTreeSet<_> = p.evals.values().collect();
        assert_eq!(evals, distinct.len());
        assert!(evals < p.saes.len());
        // A pass that shares only some of its SAEs still runs: the size grid's 1:2 SAE is
        // in the seed grid's pass too, and both passes stay.
        assert!(labels.iter().any(|l| l.contains("grid sizes")));
    }

    #[test]
    fn a_changed_setting_touches_only_what_depends_on_it() {
        let base = plan(&study(), Path::new("/c.jsonl"), &PlanOptions::default());
        let mut s = study();
        s.grids[0].ratios = vec![1, 2, 8];
        let changed = plan(&s, Path::new("/c.jsonl"), &PlanOptions::default());
        let ids = |p: &Plan, k: StepKind| {
            p.steps
                .iter()
                .filter(|s| s.kind == k)
                .map(|s| s.id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(&base, StepKind::Harvest),
            ids(&changed, StepKind::Harvest)
        );
        let (tb, tc) = (ids(&base, StepKind::Train), ids(&changed, StepKind::Train));
        assert_ne!(tb[0], tc[0], "the size grid's pass changes");
        assert_eq!(tb[1..], tc[1..], "the other grids' passes do not");
    }
}
