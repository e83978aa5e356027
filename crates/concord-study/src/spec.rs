//! The study file: what to harvest, which SAEs to train, and which question each grid answers.
//!
//! A study is validated as a whole before anything runs: unknown keys, a grid naming a model
//! the study does not define, a layer beyond the model's depth, an empty or impossible grid are
//! each one clear error naming the file.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A whole study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Study {
    pub name: String,
    /// One paragraph for the report: what this study runs and why.
    pub about: String,
    /// A corpus file or folder, a Hugging Face dataset id (`Elriggs/openwebtext-100k`,
    /// downloaded by the harvest when missing from the cache), or `shakespeare` for the default
    /// corpus fetched by the setup.
    pub corpus: String,
    /// Training text: the first `docs` documents of the corpus.
    pub docs: u64,
    /// Held-out text for evaluation and activation correlation: the next `eval_docs` documents.
    pub eval_docs: u64,
    #[serde(default = "default_context_len")]
    pub context_len: usize,
    /// Seeds of each null (isotropic random dictionaries, the study's `rand_like` baseline).
    #[serde(default = "default_null_seeds")]
    pub null_seeds: usize,
    pub models: BTreeMap<String, ModelEntry>,
    pub train: TrainDefaults,
    #[serde(rename = "grid")]
    pub grids: Vec<Grid>,
    /// Grids whose SAEs also get loss recovered and KL measured (causal models only).
    #[serde(default)]
    pub loss_recovered: Vec<String>,
    /// Held-out documents the loss-recovered passes read (three forward passes of the whole
    /// model per SAE: the clean model, the reconstruction spliced in, the hook zero-ablated).
    #[serde(default = "default_loss_recovered_docs")]
    pub loss_recovered_docs: u64,
}

fn default_loss_recovered_docs() -> u64 {
    8
}

fn default_context_len() -> usize {
    256
}

fn default_null_seeds() -> usize {
    3
}

/// A model of the study and the hooks harvested from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// What `concord harvest --model` takes: a built-in name, a folder, a `.gguf` file, a hub id.
    pub model: String,
    /// The model's depth and width, for planning and estimates (the harvest checks them).
    pub n_layers: usize,
    pub d_model: usize,
    /// Whether the model is a causal LM (loss recovered is measured only for those).
    pub causal: bool,
    /// The hook kind harvested at every layer, e.g. `hook_mlp_out` or `hook_resid_post`.
    pub hook: String,
    pub layers: Vec<usize>,
    /// Sequences per forward batch.
    #[serde(default = "default_harvest_batch")]
    pub batch: usize,
    /// Harvest speed on the reference machine, tokens per second, for `--dry-run` estimates.
    #[serde(default = "default_harvest_rate")]
    pub harvest_tokens_per_s: f64,
    /// What the model computes in during the harvest: `f32` or `bf16` (`harvest
    /// --compute-dtype`); the store holds f32 either way.
    #[serde(default = "default_dtype")]
    pub compute_dtype: String,
}

fn default_dtype() -> String {
    "f32".to_owned()
}

fn default_harvest_batch() -> usize {
    16
}

fn default_harvest_rate() -> f64 {
    1000.0
}

impl ModelEntry {
    /// The hook name at `layer`, e.g. `blocks.3.hook_mlp_out`.
    pub fn hook_at(&self, layer: usize) -> String {
        format!("blocks.{layer}.{}", self.hook)
    }

    /// Relative depth of `layer` in `[0, 1]`.
    pub fn depth(&self, layer: usize) -> f64 {
        if self.n_layers <= 1 {
            0.0
        } else {
            layer as f64 / (self.n_layers - 1) as f64
        }
    }
}

/// Training settings shared by all grids (a grid may override `tokens`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainDefaults {
    pub tokens: u64,
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_l1")]
    pub l1: f64,
    #[serde(default = "default_k")]
    pub k: usize,
    /// `sequences` (the study's order) or `rows`.
    #[serde(default = "default_shuffle")]
    pub shuffle: String,
    /// Training speed on the reference machine in tokens x features per second (one SAE of
    /// `n` features trains at this / n tokens per second), for `--dry-run` estimates.
    #[serde(default = "default_train_rate")]
    pub token_features_per_s: f64,
    /// Points of training kept per SAE (`train --snapshots`): the final SAE and its
    /// snapshots after 1/2, 1/4, ... of its steps. Seed pairs are compared at every one.
    #[serde(default = "default_snapshots")]
    pub snapshots: u32,
    /// Rows scaled to a mean squared norm of `d_model` before training (`train
    /// --normalize-activations`), so that `l1` means the same at every hook.
    #[serde(default)]
    pub normalize_activations: bool,
    /// Element type of training's large products: `f32` or `bf16` (`train --compute-dtype`).
    #[serde(default = "default_dtype")]
    pub compute_dtype: String,
    /// Linear lr warm-up and decay fractions (default: each architecture's own).
    #[serde(default)]
    pub lr_warmup: Option<f64>,
    #[serde(default)]
    pub lr_decay: Option<f64>,
    /// Per architecture, settings that replace the ones above (`[train.arch.topk]`).
    #[serde(default)]
    pub arch: BTreeMap<String, ArchSettings>,
}

/// Training settings of one architecture that replace the study's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSettings {
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default)]
    pub l1: Option<f64>,
    #[serde(default)]
    pub k: Option<usize>,
    #[serde(default)]
    pub lr_warmup: Option<f64>,
    #[serde(default)]
    pub lr_decay: Option<f64>,
}

/// The training settings an architecture runs with: the study's, replaced by its own.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchTrain {
    pub lr: f64,
    pub l1: f64,
    pub k: usize,
    pub lr_warmup: Option<f64>,
    pub lr_decay: Option<f64>,
}

impl TrainDefaults {
    /// The settings `arch` trains with.
    pub fn for_arch(&self, arch: &str) -> ArchTrain {
        let a = self.arch.get(arch).cloned().unwrap_or_default();
        ArchTrain {
            lr: a.lr.unwrap_or(self.lr),
            l1: a.l1.unwrap_or(self.l1),
            k: a.k.unwrap_or(self.k),
            lr_warmup: a.lr_warmup.or(self.lr_warmup),
            lr_decay: a.lr_decay.or(self.lr_decay),
        }
    }
}

fn default_snapshots() -> u32 {
    1
}

fn default_batch() -> usize {
    2048
}
fn default_lr() -> f64 {
    1e-3
}
fn default_l1() -> f64 {
    8e-4
}
fn default_k() -> usize {
    32
}
fn default_shuffle() -> String {
    "sequences".to_owned()
}
fn default_train_rate() -> f64 {
    2.0e7
}

/// Which of the study's questions a grid answers; it decides which pairs are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Question {
    /// Pairs that differ only in dictionary size.
    Size,
    /// Pairs that differ only in init seed, or only in data-order seed (per layer).
    Seed,
    /// The two SAEs trained on disjoint halves of the training text.
    Data,
    /// SAEs of two models at matching relative depths, compared on shared text.
    Model,
    /// Seed consistency of each architecture (ReLU/L1 against TopK).
    Arch,
}

impl Question {
    pub fn name(self) -> &'static str {
        match self {
            Question::Size => "size",
            Question::Seed => "seed",
            Question::Data => "data",
            Question::Model => "model",
            Question::Arch => "arch",
        }
    }
}

/// A data-order seed: a number, or `same` (the study's confound: the init seed orders data).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DataSeed {
    Seed(u64),
    #[serde(with = "same")]
    Same,
}

mod same {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("same")
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        let s = String::deserialize(d)?;
        if s == "same" {
            Ok(())
        } else {
            Err(serde::de::Error::custom(format!(
                "expected a number or \"same\", got {s:?}"
            )))
        }
    }
}

impl DataSeed {
    /// The argument of `concord train --data-seed`.
    pub fn arg(self) -> String {
        match self {
            DataSeed::Seed(s) => s.to_string(),
            DataSeed::Same => "same".to_owned(),
        }
    }
}

/// A grid of SAEs on one model, answering one question.
///
/// The grid is sparse, not a full product: every combination of `layers`, `archs` and
/// `ratios` is trained with the first init seed and first data seed; the other init seeds are
/// trained with the first data seed, the other data seeds with the first init seed. With
/// `halves`, the first-seed SAEs are trained once on each half of the training text instead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    pub name: String,
    pub question: Question,
    pub model: String,
    pub layers: Vec<usize>,
    #[serde(default = "default_archs")]
    pub archs: Vec<String>,
    pub ratios: Vec<u32>,
    #[serde(default = "default_seeds")]
    pub init_seeds: Vec<u64>,
    #[serde(default = "default_data_seeds")]
    pub data_seeds: Vec<DataSeed>,
    #[serde(default)]
    pub halves: bool,
    /// Overrides `train.tokens` (per half when `halves`).
    #[serde(default)]
    pub tokens: Option<u64>,
    /// For `question = "model"`: the grid of the other model whose SAEs these are compared with.
    #[serde(default)]
    pub versus: Option<String>,
}

fn default_archs() -> Vec<String> {
    vec!["relu-l1-faithful".to_owned()]
}
fn default_seeds() -> Vec<u64> {
    vec![0]
}
fn default_data_seeds() -> Vec<DataSeed> {
    vec![DataSeed::Seed(0)]
}

/// The architectures `concord train --arch` knows.
pub const ARCHS: [&str; 5] = [
    "relu-l1-faithful",
    "relu-l1",
    "topk",
    "batchtopk",
    "jumprelu",
];
/// The hook kinds of `concord_core::HookKind`, as written after `blocks.{L}.`.
const HOOKS: [&str; 5] = [
    "hook_resid_pre",
    "hook_resid_post",
    "hook_mlp_out",
    "hook_attn_out",
    "mlp.hook_post",
];

impl Study {
    /// Reads and validates a study file.
    pub fn load(path: &Path) -> Result<Study> {
        let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Study::parse(&text, path)
    }

    /// Parses and validates a study file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Study> {
        let invalid = |reason: String| Error::InvalidStudy {
            path: path.to_owned(),
            reason,
        };
        let study: Study =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim().replace('\n', " ")))?;
        study.validate().map_err(invalid)?;
        Ok(study)
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "name {:?} must be non-empty letters, digits, '-' or '_'",
                self.name
            ));
        }
        if self.docs == 0 || self.eval_docs == 0 {
            return Err("docs and eval_docs must be at least 1".to_owned());
        }
        if self.context_len < 2 {
            return Err(format!("context_len {} is too small", self.context_len));
        }
        if self.models.is_empty() {
            return Err("the study defines no [models]".to_owned());
        }
        for (id, m) in &self.models {
            if !HOOKS.contains(&m.hook.as_str()) {
                return Err(format!(
                    "models.{id}: unknown hook {:?} (known: {})",
                    m.hook,
                    HOOKS.join(", ")
                ));
            }
            if m.layers.is_empty() {
                return Err(format!("models.{id}: no layers"));
            }
            if let Some(l) = m.layers.iter().find(|&&l| l >= m.n_layers) {
                return Err(format!(
                    "models.{id}: layer {l} is out of range for a {}-layer model",
                    m.n_layers
                ));
            }
            if m.d_model == 0 || m.batch == 0 {
                return Err(format!("models.{id}: d_model and batch must be positive"));
            }
        }
        if self.train.tokens == 0 || self.train.batch == 0 {
            return Err("train.tokens and train.batch must be positive".to_owned());
        }
        if !(self.train.lr.is_finite() && self.train.lr > 0.0) {
            return Err(format!("train.lr {} must be positive", self.train.lr));
        }
        if !(self.train.l1.is_finite() && self.train.l1 >= 0.0) {
            return Err(format!(
                "train.l1 {} must be zero or positive",
                self.train.l1
            ));
        }
        for (what, dtype) in std::iter::once(("train.compute_dtype", &self.train.compute_dtype))
            .chain(
                self.models
                    .values()
                    .map(|m| ("models.*.compute_dtype", &m.compute_dtype)),
            )
        {
            if !["f32", "bf16"].contains(&dtype.as_str()) {
                return Err(format!("{what} {dtype:?}: expected \"f32\" or \"bf16\""));
            }
        }
        if !(1..=16).contains(&self.train.snapshots) {
            return Err(format!(
                "train.snapshots = {} must be in 1..=16",
                self.train.snapshots
            ));
        }
        for (arch, a) in &self.train.arch {
            if !ARCHS.contains(&arch.as_str()) {
                return Err(format!(
                    "train.arch.{arch}: unknown arch (known: {})",
                    ARCHS.join(", ")
                ));
            }
            if a.lr.is_some_and(|lr| !(lr.is_finite() && lr > 0.0)) {
                return Err(format!("train.arch.{arch}.lr must be positive"));
            }
            if a.l1.is_some_and(|l1| !(l1.is_finite() && l1 >= 0.0)) {
                return Err(format!("train.arch.{arch}.l1 must be zero or positive"));
            }
        }
        let fracs = std::iter::once(("train", self.train.lr_warmup, self.train.lr_decay)).chain(
            self.train
                .arch
                .iter()
                .map(|(a, s)| (a.as_str(), s.lr_warmup, s.lr_decay)),
        );
        for (at, warm, decay) in fracs {
            for (key, f) in [("lr_warmup", warm), ("lr_decay", decay)] {
                if let Some(f) = f.filter(|f| !(0.0..=1.0).contains(f)) {
                    return Err(format!("{at}: {key} = {f} must lie in [0, 1]"));
                }
            }
        }
        if !["sequences", "rows"].contains(&self.train.shuffle.as_str()) {
            return Err(format!(
                "train.shuffle {:?}: expected \"sequences\" or \"rows\"",
                self.train.shuffle
            ));
        }
        if self.grids.is_empty() {
            return Err("the study has no [[grid]]".to_owned());
        }
        let mut names = std::collections::BTreeSet::new();
        for g in &self.grids {
            let here = |reason: String| format!("grid {:?}: {reason}", g.name);
            if !names.insert(&g.name) {
                return Err(here("defined twice".to_owned()));
            }
            let model = self.models.get(&g.model).ok_or_else(|| {
                here(format!("model {:?} is not defined under [models]", g.model))
            })?;
            if g.layers.is_empty()
                || g.archs.is_empty()
                || g.ratios.is_empty()
                || g.init_seeds.is_empty()
                || g.data_seeds.is_empty()
            {
                return Err(here(
                    "layers, archs, ratios, init_seeds and data_seeds must not be empty".to_owned(),
                ));
            }
            if let Some(l) = g.layers.iter().find(|l| !model.layers.contains(l)) {
                return Err(here(format!(
                    "layer {l} is not harvested for model {:?} (its layers: {:?})",
                    g.model, model.layers
                )));
            }
            if let Some(a) = g.archs.iter().find(|a| !ARCHS.contains(&a.as_str())) {
                return Err(here(format!(
                    "unknown arch {a:?} (known: {})",
                    ARCHS.join(", ")
                )));
            }
            if g.ratios.contains(&0) {
                return Err(here("ratio 0".to_owned()));
            }
            for (key, dup) in [
                ("layers", first_repeat(&g.layers)),
                ("archs", first_repeat(&g.archs)),
                ("ratios", first_repeat(&g.ratios)),
                ("init_seeds", first_repeat(&g.init_seeds)),
                ("data_seeds", first_repeat(&g.data_seeds)),
            ] {
                if let Some(v) = dup {
                    return Err(here(format!("{key} lists {v} twice")));
                }
            }
            for a in g.archs.iter().filter(|a| a.contains("topk")) {
                let k = self.train.for_arch(a).k;
                let smallest = model.d_model * *g.ratios.iter().min().expect("non-empty") as usize;
                if k == 0 || k > smallest {
                    return Err(here(format!(
                        "train.k = {k} must be in 1..={smallest} (d_sae of its smallest TopK SAE)"
                    )));
                }
            }
            if g.tokens == Some(0) {
                return Err(here("tokens = 0".to_owned()));
            }
            let need = |ok: bool, what: &str| {
                if ok {
                    Ok(())
                } else {
                    Err(here(what.to_owned()))
                }
            };
            match g.question {
                Question::Size => {
                    need(g.ratios.len() >= 2, "a size grid needs at least two ratios")?
                }
                Question::Seed | Question::Arch => need(
                    g.init_seeds.len() >= 2 || g.data_seeds.len() >= 2,
                    "a seed grid needs at least two init seeds or two data seeds",
                )?,
                Question::Data => need(
                    g.halves,
                    "a data grid trains on the two halves: set halves = true",
                )?,
                Question::Model => {
                    let other = g.versus.as_ref().ok_or_else(|| {
                        here(
                            "a model grid names the grid it is compared with in `versus`"
                                .to_owned(),
                        )
                    })?;
                    let og = self
                        .grids
                        .iter()
                        .find(|o| &o.name == other)
                        .ok_or_else(|| here(format!("versus {other:?} is not a grid")))?;
                    need(
                        og.model != g.model,
                        "versus must be a grid of another model",
                    )?;
                }
            }
            if g.question == Question::Arch {
                need(
                    g.archs.len() >= 2,
                    "an arch grid compares at least two archs",
                )?;
            }
        }
        if self.null_seeds == 0 && self.needs_nulls() {
            return Err(
                "null_seeds = 0, but the study compares SAE weights, which needs at least 1"
                    .to_owned(),
            );
        }
        for name in &self.loss_recovered {
            let g = self
                .grids
                .iter()
                .find(|g| &g.name == name)
                .ok_or_else(|| format!("loss_recovered: {name:?} is not a grid"))?;
            if !self.models[&g.model].causal {
                return Err(format!(
                    "loss_recovered: grid {name:?} is on a model that is not causal"
                ));
            }
        }
        Ok(())
    }

    /// Whether some compared pair has a weight-space null: any pair within one model's grid, or
    /// a model grid whose two models have the same `d_model`.
    fn needs_nulls(&self) -> bool {
        self.grids.iter().any(|g| {
            g.question != Question::Model
                || self
                    .grids
                    .iter()
                    .find(|o| Some(&o.name) == g.versus.as_ref())
                    .is_some_and(|o| self.models[&o.model].d_model == self.models[&g.model].d_model)
        })
    }

    /// The corpus path: the default corpus under `data_dir`, or the path given.
    pub fn corpus_path(&self, data_dir: &Path) -> PathBuf {
        if self.corpus == "shakespeare" {
            data_dir.join("corpus/shakespeare.jsonl")
        } else {
            PathBuf::from(&self.corpus)
        }
    }
}

/// The first value of `xs` that appears in it twice, as text.
fn first_repeat<T: PartialEq + std::fmt::Debug>(xs: &[T]) -> Option<String> {
    xs.iter()
        .enumerate()
        .find(|(i, x)| xs[..*i].contains(x))
        .map(|(_, x)| format!("{x:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
about = "a test"
corpus = "shakespeare"
docs = 10
eval_docs = 4
[models.m]
model = "smollm2-135m"
n_layers = 30
d_model = 576
causal = true
hook = "hook_mlp_out"
layers = [3, 15]
[train]
tokens = 1000
[[grid]]
name = "sizes"
question = "size"
model = "m"
layers = [15]
ratios = [1, 2]
"#;

    fn check_err(edit: (&str, &str), expected: &str) {
        let text = MINIMAL.replace(edit.0, edit.1);
        assert_ne!(text, MINIMAL, "edit {edit:?} applies");
        let err = Study::parse(&text, Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("s.toml: ") && err.contains(expected),
            "{err}"
        );
    }

    #[test]
    fn minimal_study_parses_with_defaults() {
        let s = Study::parse(MINIMAL, Path::new("s.toml")).unwrap();
        assert_eq!(s.context_len, 256);
        assert_eq!(s.grids[0].archs, ["relu-l1-faithful"]);
        assert_eq!(s.grids[0].data_seeds, [DataSeed::Seed(0)]);
        assert_eq!(s.models["m"].hook_at(15), "blocks.15.hook_mlp_out");
    }

    #[test]
    fn invalid_studies_are_named_errors() {
        check_err(
            ("docs = 10", "docs = 10\ncolour = 3"),
            "unknown field `colour`",
        );
        check_err(
            ("model = \"m\"\nlayers", "model = \"x\"\nlayers"),
            "model \"x\" is not defined",
        );
        check_err(
            ("layers = [15]", "layers = [40]"),
            "layer 40 is not harvested",
        );
        check_err(
            ("layers = [3, 15]", "layers = [3, 30]"),
            "out of range for a 30-layer model",
        );
        check_err(("ratios = [1, 2]", "ratios = [1]"), "at least two ratios");
        check_err(
            ("question = \"size\"", "question = \"colour\""),
            "unknown variant",
        );
        check_err(
            ("name = \"sizes\"", "name = \"sizes\"\narchs = [\"relu\"]"),
            "unknown arch \"relu\"",
        );
        check_err(
            ("hook = \"hook_mlp_out\"", "hook = \"hook_mlp\""),
            "unknown hook",
        );
        check_err(
            ("question = \"size\"", "question = \"data\""),
            "halves = true",
        );
    }

    #[test]
    fn settings_that_would_fail_mid_run_are_errors() {
        check_err(("docs = 10", "docs = 10\nnull_seeds = 0"), "null_seeds = 0");
        check_err(
            ("tokens = 1000", "tokens = 1000\nlr = -1.0"),
            "train.lr -1 must be positive",
        );
        check_err(
            ("tokens = 1000", "tokens = 1000\nlr = 0.0"),
            "train.lr 0 must be positive",
        );
        check_err(
            ("ratios = [1, 2]", "ratios = [1, 1]"),
            "grid \"sizes\": ratios lists 1 twice",
        );
        check_err(
            ("ratios = [1, 2]", "ratios = [1, 2]\ninit_seeds = [1, 1]"),
            "init_seeds lists 1 twice",
        );
        let topk = ("ratios = [1, 2]", "ratios = [1, 2]\narchs = [\"topk\"]");
        let with_k = |k: &str| MINIMAL.replace(topk.0, topk.1).replace("tokens = 1000", k);
        for (k, ok) in [("k = 0", false), ("k = 577", false), ("k = 576", true)] {
            let text = with_k(&format!("tokens = 1000\n{k}"));
            let got = Study::parse(&text, Path::new("s.toml"));
            match got {
                Ok(_) => assert!(ok, "{k} accepted"),
                Err(e) => {
                    assert!(!ok, "{k}: {e}");
                    assert!(e.to_string().contains("train.k"), "{e}");
                }
            }
        }
    }

    #[test]
    fn data_seed_same_parses() {
        let text = MINIMAL.replace(
            "ratios = [1, 2]",
            "ratios = [1, 2]\ndata_seeds = [\"same\", 3]",
        );
        let s = Study::parse(&text, Path::new("s.toml")).unwrap();
        assert_eq!(s.grids[0].data_seeds, [DataSeed::Same, DataSeed::Seed(3)]);
        let bad = MINIMAL.replace(
            "ratios = [1, 2]",
            "ratios = [1, 2]\ndata_seeds = [\"other\"]",
        );
        assert!(Study::parse(&bad, Path::new("s.toml")).is_err());
    }
}
