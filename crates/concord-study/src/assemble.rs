//! Assembles the report from the outputs of a finished plan: every number and figure comes
//! from the steps' `align.json`, `null.json` and `eval.json`; the published anchors the
//! findings compare with are quoted from the study notes, and each verdict is computed.

use std::collections::BTreeMap;
use std::path::Path;

use concord_core::fsutil;
use concord_core::outputs::{AlignOutput, EvalOutput, Interval, NullOutput};
use concord_report::plot::{self, Bar, BarChart, Heatmap, HistGrid, LineChart, Scatter, Series};
use concord_report::results::{ResultRow, SaeRow};
use concord_report::{Figure, Finding, Report, Section, Table};

use crate::convergence::{self, MMCS_TOLERANCE, SHARED_TOLERANCE};
use crate::plan::{Identity, Pair, Plan, SaeRef, step_dir, training_identity};
use crate::spec::{DataSeed, Question};
use crate::{Error, Result};

/// Everything the steps wrote, loaded.
#[derive(Debug)]
pub struct Outputs {
    pub align: BTreeMap<String, AlignOutput>,
    pub null: BTreeMap<String, NullOutput>,
    pub eval: BTreeMap<usize, EvalOutput>,
    /// The align steps of seed pairs' snapshots, by step id.
    pub snapshot_align: BTreeMap<String, AlignOutput>,
    /// Per (SAE index, steps): the eval of its snapshot after that many steps.
    pub snapshot_eval: BTreeMap<(usize, u64), EvalOutput>,
    /// Per (SAE index, steps): the training tokens its folder's `cfg.json` records, for the
    /// final SAE and every snapshot evaluated.
    pub tokens: BTreeMap<(usize, u64), u64>,
    /// Per model id: the rows (tokens) of its training store.
    pub store_rows: BTreeMap<String, u64>,
}

impl Outputs {
    /// The training tokens of SAE `i` after `at` steps: its folder's record, else the
    /// plan's nominal count.
    pub fn tokens_at(&self, plan: &Plan, i: usize, at: u64) -> u64 {
        self.tokens
            .get(&(i, at))
            .copied()
            .unwrap_or_else(|| plan.saes[i].tokens_at(&plan.study, at))
    }
}

/// Reads the outputs of every step of `plan` under `run_dir`.
pub fn load(plan: &Plan, run_dir: &Path) -> Result<Outputs> {
    let mut align = BTreeMap::new();
    let mut null = BTreeMap::new();
    for p in &plan.pairs {
        align.insert(
            p.step.clone(),
            fsutil::read_json(&step_dir(run_dir, &p.step).join("align.json"))?,
        );
        if let Some(n) = p.null.as_ref().filter(|n| !null.contains_key(*n)) {
            null.insert(
                n.clone(),
                fsutil::read_json(&step_dir(run_dir, n).join("null.json"))?,
            );
        }
    }
    let mut eval = BTreeMap::new();
    for (&i, step) in &plan.evals {
        eval.insert(
            i,
            fsutil::read_json(&step_dir(run_dir, step).join("eval.json"))?,
        );
    }
    let mut snapshot_align = BTreeMap::new();
    for (_, id) in plan.pairs.iter().flat_map(|p| &p.snapshots) {
        snapshot_align.insert(
            id.clone(),
            fsutil::read_json(&step_dir(run_dir, id).join("align.json"))?,
        );
    }
    let mut snapshot_eval = BTreeMap::new();
    for (&i, list) in &plan.snapshot_evals {
        for (at, id) in list {
            snapshot_eval.insert(
                (i, *at),
                fsutil::read_json(&step_dir(run_dir, id).join("eval.json"))?,
            );
        }
    }
    let mut tokens = BTreeMap::new();
    let points = plan.evals.keys().map(|&i| (i, plan.saes[i].steps));
    for (i, at) in points.chain(snapshot_eval.keys().copied()) {
        let s = &plan.saes[i];
        let path = step_dir(run_dir, &s.step)
            .join(s.folder_at(at))
            .join(concord_core::sae::CFG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let cfg = concord_core::SaeConfig::from_json(&text, &path)?;
        if let Some(t) = cfg.training_tokens {
            tokens.insert((i, at), t);
        }
    }
    let mut store_rows = BTreeMap::new();
    for (id, (train, _)) in &plan.stores {
        let m = &plan.study.models[id];
        let hook = m.hook_at(m.layers[0]);
        let path = step_dir(run_dir, train).join(hook).join("manifest.json");
        let manifest: concord_core::StoreManifest = fsutil::read_json(&path)?;
        store_rows.insert(id.clone(), manifest.rows());
    }
    Ok(Outputs {
        align,
        null,
        eval,
        snapshot_align,
        snapshot_eval,
        tokens,
        store_rows,
    })
}

fn fmt_interval(i: &Interval) -> String {
    if i.n <= 1 {
        format!("{:.3} (n = {})", i.mean, i.n)
    } else {
        format!("{:.3} [{:.3}, {:.3}] (n = {})", i.mean, i.lo, i.hi, i.n)
    }
}

/// The range a quantity can take, for clipping its intervals.
#[derive(Clone, Copy, Debug)]
struct Range(f64, f64);
/// Fractions, and cosines or correlations of matched or best-matching features as reported.
const UNIT: Range = Range(0.0, 1.0);
/// Counts per token (L0) and FVU.
const NON_NEGATIVE: Range = Range(0.0, f64::INFINITY);

/// [`Interval::of`] with its bounds clipped to `range`, widened to any value of `xs` outside
/// it (a mean-and-t interval of a bounded quantity can otherwise cross its bound).
fn interval_in(xs: &[f64], range: Range) -> Interval {
    let mut i = Interval::of(xs);
    let lo = xs.iter().copied().fold(range.0, f64::min);
    let hi = xs.iter().copied().fold(range.1, f64::max);
    i.lo = i.lo.max(lo);
    i.hi = i.hi.min(hi);
    i
}

/// Per SAE: the index of the first SAE of the plan with its training identity.
fn canonical_saes(plan: &Plan) -> Vec<usize> {
    let mut first: BTreeMap<Identity, usize> = BTreeMap::new();
    plan.saes
        .iter()
        .enumerate()
        .map(|(i, s)| *first.entry(training_identity(&plan.study, s)).or_insert(i))
        .collect()
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// The report and the rows of `results.parquet`.
pub fn assemble(plan: &Plan, out: &Outputs) -> Result<(Report, Vec<ResultRow>)> {
    let study = &plan.study;
    let mut ctx = Ctx {
        plan,
        out,
        canon: canonical_saes(plan),
        sections: Vec::new(),
        findings: Vec::new(),
        conv: convergence::groups(plan, out),
    };
    ctx.convergence()?;
    ctx.size()?;
    ctx.seeds_and_layers()?;
    ctx.models()?;
    ctx.arch()?;
    ctx.features()?;
    ctx.examples();
    // Findings about SAEs that are not shown converged give no verdict; the ones already
    // gated above say why.
    if let Some(reason) = ctx.unconverged(&[], None) {
        for f in ctx
            .findings
            .iter_mut()
            .filter(|f| !f.question.starts_with("Convergence"))
        {
            if !f.verdict.contains("no verdict") {
                f.verdict = format!("{reason}; at this budget: {}", f.verdict);
            }
        }
    }
    let rows = results(plan, out);
    let train_tokens: Vec<String> = study
        .grids
        .iter()
        .map(|g| {
            format!(
                "{} ({} tokens{})",
                g.name,
                g.tokens.unwrap_or(study.train.tokens),
                if g.halves { " per half" } else { "" }
            )
        })
        .collect();
    let models: Vec<String> = study
        .models
        .iter()
        .map(|(id, m)| {
            format!(
                "{id} = {} ({} layers, d_model {}, hook {} at layers {:?})",
                m.model, m.n_layers, m.d_model, m.hook, m.layers
            )
        })
        .collect();
    let intro = vec![
        study.about.clone(),
        format!(
            "Training text: the first {} documents of the corpus `{}`, packed into {}-token windows; held-out text \
             for evaluation and activation correlation: the next {} documents. Models: {}.",
            study.docs,
            study.corpus,
            study.context_len,
            study.eval_docs,
            models.join("; ")
        ),
        training(study, out),
        format!(
            "{} SAEs in {} grids, token budgets: {}. {} pairs compared. Nulls: isotropic random unit dictionaries of each \
             compared shape ({} seeds, mean and 95 % interval), the analytic expectation of the max cosine of random \
             unit vectors, and the study's all-positive `rand_like` baseline, which is biased upward and shown only as \
             the study's own reference.",
            plan.saes.len(),
            study.grids.len(),
            train_tokens.join(", "),
            plan.pairs.len(),
            study.null_seeds
        ),
    ];
    let duplicates = ctx
        .canon
        .iter()
        .enumerate()
        .filter(|(i, c)| *i != **c)
        .count();
    let report = Report {
        title: format!("SAE universality: study `{}`", study.name),
        intro,
        findings: ctx.findings,
        sections: ctx.sections,
        caveats: caveats(plan, duplicates),
    };
    Ok((report, rows))
}

/// The training paragraph of the introduction: the recipe as run, and passes over the text.
fn training(study: &crate::spec::Study, out: &Outputs) -> String {
    let t = &study.train;
    let mut archs: Vec<&str> = study
        .grids
        .iter()
        .flat_map(|g| g.archs.iter().map(String::as_str))
        .collect();
    archs.sort_unstable();
    archs.dedup();
    let recipes: Vec<String> = archs
        .iter()
        .map(|a| {
            let r = t.for_arch(a);
            let sparsity = if a.contains("topk") {
                format!("k {}", r.k)
            } else if *a == "jumprelu" {
                "the trainer's L0 coefficient".to_owned()
            } else {
                format!("l1 {}", r.l1)
            };
            let decay = r.lr_decay.map_or(String::new(), |d| {
                format!(", lr decay over the last {:.0} %", d * 100.0)
            });
            format!("{a}: lr {}{decay}, {sparsity}", r.lr)
        })
        .collect();
    let passes: Vec<String> = out
        .store_rows
        .iter()
        .filter(|(_, rows)| **rows > 0)
        .map(|(id, rows)| {
            format!(
                "{id} {:.1} passes over its {rows} stored tokens",
                t.tokens as f64 / *rows as f64
            )
        })
        .collect();
    let harvest_bf16: Vec<&str> = study
        .models
        .iter()
        .filter(|(_, m)| m.compute_dtype == "bf16")
        .map(|(id, _)| id.as_str())
        .collect();
    format!(
        "Training: {} tokens per SAE in batches of {} ({}), Adam; {}{}{}. {}",
        t.tokens,
        t.batch,
        if passes.is_empty() {
            "passes over the text not recorded".to_owned()
        } else {
            passes.join(", ")
        },
        recipes.join("; "),
        if t.normalize_activations {
            "; rows scaled to a mean squared norm of d_model before training (SAELens's expected_average_only_in, folded into the saved SAEs), so the L1 coefficients are in those units"
        } else {
            "; rows as harvested"
        },
        if t.compute_dtype == "bf16" {
            "; bf16 products with f32 weights, optimizer state and sums"
        } else {
            ""
        },
        if harvest_bf16.is_empty() {
            "Models ran in f32.".to_owned()
        } else {
            format!(
                "The harvest of {} computed in bf16 (stored as f32).",
                harvest_bf16.join(", ")
            )
        }
    )
}

/// The caveats section: what limits the verdicts, and how the numbers are summarised.
fn caveats(plan: &Plan, duplicates: usize) -> Vec<String> {
    let study = &plan.study;
    let mut tokens: Vec<u64> = study
        .grids
        .iter()
        .map(|g| g.tokens.unwrap_or(study.train.tokens))
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    let tokens: Vec<String> = tokens.iter().map(u64::to_string).collect();
    vec![
        format!(
            "Short training: each SAE sees {} training tokens, against hundreds of millions for the published SAEs, so the SAEs are \
             far from convergence. Seed consistency and variance explained are expected to be lower than published, and differences \
             between settings may shrink or reverse with longer training. The models are small and the corpus ({}, {} documents) \
             is narrow.",
            tokens.join(" or "),
            study.corpus,
            study.docs
        ),
        "Size consistency is partly an init artefact: with the same init seed, SAEs of different sizes start with the same \
         encoder directions for their shared features, because the initialiser draws the same values in the same order and only \
         the scale (the xavier bound) depends on the size; feature j of the 1:1 SAE and feature j of the 1:2 SAE start with \
         encoder columns of cosine 1 (checked on this crate's init; the study's PyTorch xavier init has the same property). \
         Encoder MMCS and encoder matching between sizes are therefore inflated, the more so with short training. For \
         relu-l1-faithful the decoder is drawn after the encoder and starts unrelated, so decoder comparisons are the ones to \
         read; for the other architectures the encoder starts as the decoder's transpose, and the decoder prefix is shared too."
            .to_owned(),
        "Intervals: the mean and a 95 % interval, mean +- t(0.975, n - 1) s / sqrt(n) over the n distinct pairs or SAEs (n > 31: \
         1.96), clipped to the quantity's range (fractions, variance explained, loss recovered, cosines and correlations of \
         matched features to [0, 1], L0 and FVU to values >= 0), widened only to an observed value outside that range. n = 1 \
         shows no interval, and a verdict that rests on one comparison, or on a tie, says so instead of claiming a difference."
            .to_owned(),
        format!(
            "Repeated SAEs: an SAE with the same training identity (model, hook, architecture, ratio, init seed, data seed, half, \
             tokens and the study's training settings) in several grids is trained once when a later grid's whole training pass \
             repeats an earlier one's SAEs (that grid reads the earlier folders), and again, with identical weights, when it shares \
             a pass with SAEs of its own; either way it is counted once in the summary statistics (the seed, data and architecture tables and findings, the frequency curve, the \
             evaluation table and its finding); the per-grid figures show it in each grid. This study has {duplicates} such repeated \
             SAE(s)."
        ),
    ]
}

struct Ctx<'a> {
    plan: &'a Plan,
    out: &'a Outputs,
    /// Per SAE: the first SAE with its training identity (see [`canonical_saes`]).
    canon: Vec<usize>,
    sections: Vec<Section>,
    findings: Vec<Finding>,
    /// The seed pairs' curves against training tokens.
    conv: Vec<convergence::Group>,
}

impl<'a> Ctx<'a> {
    fn sae(&self, i: usize) -> &'a SaeRef {
        &self.plan.saes[i]
    }

    fn align(&self, p: &Pair) -> &'a AlignOutput {
        &self.out.align[&p.step]
    }

    fn pairs(&self, q: Question) -> impl Iterator<Item = &'a Pair> + 'a {
        let plan: &'a Plan = self.plan;
        plan.pairs.iter().filter(move |p| p.question == q)
    }

    fn dec_mmcs(&self, p: &Pair) -> Option<(f64, f64)> {
        self.align(p)
            .mmcs
            .get("decoder")
            .map(|d| (d.a_to_b, d.b_to_a))
    }

    fn matching(&self, p: &Pair, which: &str) -> Option<&'a concord_core::outputs::MatchSummary> {
        self.align(p).matching.get(which)
    }

    /// The pair's null, when its shape is the shape the align step measured.
    fn null(&self, p: &Pair) -> Option<&'a NullOutput> {
        null_of(p, self.align(p), self.out)
    }

    /// Whether SAE `i` is the first with its training identity.
    fn distinct_sae(&self, i: usize) -> bool {
        self.canon[i] == i
    }

    /// `pairs` without repeats: a pair of the same two SAEs (by training identity) counts once.
    fn distinct<'p>(&self, pairs: impl IntoIterator<Item = &'p Pair>) -> Vec<&'p Pair> {
        let mut seen = std::collections::BTreeSet::new();
        pairs
            .into_iter()
            .filter(|p| {
                let (a, b) = (self.canon[p.a], self.canon[p.b]);
                seen.insert((a.min(b), a.max(b)))
            })
            .collect()
    }

    /// Why no verdict may be given on SAEs trained like the init-seed groups of `grids` (all
    /// grids when empty; one architecture's when `arch` is given): they are not converged, or
    /// no snapshots show that they are. `None` when every such group is converged.
    fn unconverged(&self, grids: &[&str], arch: Option<&str>) -> Option<String> {
        let groups: Vec<&convergence::Group> = self
            .conv
            .iter()
            .filter(|g| g.varies == "init_seed")
            .filter(|g| grids.is_empty() || grids.contains(&g.grid.as_str()))
            .filter(|g| arch.is_none_or(|a| g.arch == a))
            .collect();
        let changes: Vec<convergence::Change> =
            groups.iter().filter_map(|g| g.last_change()).collect();
        if changes.is_empty() {
            return Some(
                "no verdict: no snapshots show whether these SAEs are trained far enough (see Convergence)".into(),
            );
        }
        let bad = changes.iter().filter(|c| !c.converged()).count();
        if bad == 0 {
            return None;
        }
        let worst = changes.iter().map(|c| c.mmcs.abs()).fold(0.0f64, f64::max);
        let worst_shared = changes
            .iter()
            .map(|c| c.shared.abs())
            .fold(0.0f64, f64::max);
        Some(format!(
            "no verdict: {bad} of {} init-seed groups are not converged (the last doubling of tokens moved decoder MMCS by up to \
             {worst:.3} and the shared fraction by up to {worst_shared:.3}; see Convergence)",
            changes.len()
        ))
    }

    /// Convergence: the seed pairs' consistency against training tokens, and a verdict per
    /// group.
    fn convergence(&mut self) -> Result<()> {
        let groups: Vec<&convergence::Group> =
            self.conv.iter().filter(|g| !g.points.is_empty()).collect();
        if groups.is_empty() {
            return Ok(());
        }
        let mut section = Section {
            heading: "0. Convergence: are the SAEs trained far enough for the findings to hold?"
                .into(),
            ..Section::default()
        };
        let series_of = |pick: fn(&convergence::Point) -> &Interval| -> Vec<Series> {
            groups
                .iter()
                .map(|g| Series {
                    name: format!("{} ({})", g.label(), g.pairs),
                    points: g
                        .points
                        .iter()
                        .map(|p| (p.tokens as f64, pick(p).mean))
                        .collect(),
                    band: g
                        .points
                        .iter()
                        .filter(|p| pick(p).n > 1)
                        .map(|p| {
                            let i = pick(p);
                            (p.tokens as f64, i.lo.max(0.0), i.hi.min(1.0))
                        })
                        .collect(),
                    dashed: g.varies != "init_seed",
                })
                .collect()
        };
        let span = {
            let t: Vec<f64> = groups
                .iter()
                .flat_map(|g| &g.points)
                .map(|p| p.tokens as f64)
                .collect();
            (
                t.iter().copied().fold(f64::INFINITY, f64::min),
                t.iter().copied().fold(0.0, f64::max),
            )
        };
        let null_line = |value: f64, name: &str| Series {
            name: name.to_owned(),
            points: vec![(span.0, value), (span.1, value)],
            dashed: true,
            ..Series::default()
        };
        let null = self
            .plan
            .pairs
            .iter()
            .filter(|p| !p.snapshots.is_empty())
            .find_map(|p| self.null(p));
        let mut mmcs_series = series_of(|p| &p.mmcs);
        let mut shared_series = series_of(|p| &p.shared);
        if let Some(n) = null {
            if let Some((ab, ba)) = n.isotropic.mmcs_decoder {
                mmcs_series.push(null_line(
                    (ab.hi + ba.hi) / 2.0,
                    "null: isotropic random (upper 95 %)",
                ));
            }
            if let Some(i) = n.isotropic.shared.get("0.7") {
                shared_series.push(null_line(i.hi, "null: isotropic random (upper 95 %)"));
            }
        }
        for (id, title, y, series) in [
            (
                "convergence-mmcs",
                "Decoder MMCS of seed pairs against training tokens",
                "decoder MMCS",
                mmcs_series,
            ),
            (
                "convergence-shared",
                "Shared fraction above 0.7 of seed pairs against training tokens",
                "shared fraction > 0.7",
                shared_series,
            ),
        ] {
            section.figures.push(Figure {
                id: id.into(),
                title: title.into(),
                caption: format!(
                    "Every seed pair compared at each snapshot of its SAEs (after 1/2, 1/4, ... of their steps) and at the end: mean over \
                     the pairs of a group (one grid, layer, architecture and ratio) with a 95 % interval; solid lines are init-seed \
                     pairs, dashed ones data-order pairs and the null. A group is converged when its last doubling of tokens moved \
                     decoder MMCS by at most {MMCS_TOLERANCE} and the shared fraction above 0.7 by at most {SHARED_TOLERANCE}."
                ),
                svg: plot::lines(&LineChart {
                    title: title.into(),
                    x_label: "training tokens".into(),
                    y_label: y.into(),
                    series,
                    log2_x: true,
                    y_range: Some((0.0, 1.0)),
                })?,
            });
        }
        let mut rows = Vec::new();
        for g in &groups {
            let at = |i: usize| g.points.get(i);
            let n = g.points.len();
            let (prev, last) = (n.checked_sub(2).and_then(at), n.checked_sub(1).and_then(at));
            let fmt = |p: Option<&convergence::Point>| {
                p.map_or("-".into(), |p| {
                    format!("{:.3} / {:.3}", p.mmcs.mean, p.shared.mean)
                })
            };
            let verdict = match g.last_change() {
                None => "one point: not shown".to_owned(),
                Some(c) if c.converged() => {
                    format!("converged (change {:+.3} / {:+.3})", c.mmcs, c.shared)
                }
                Some(c) => format!("not converged (change {:+.3} / {:+.3})", c.mmcs, c.shared),
            };
            rows.push(vec![
                g.label(),
                g.points
                    .iter()
                    .map(|p| p.tokens.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                fmt(prev),
                fmt(last),
                verdict,
            ]);
        }
        section.tables.push(Table {
            caption: "Seed-pair groups: training tokens of each point, decoder MMCS / shared fraction above 0.7 (means over pairs) at the \
                      last two points, and the verdict."
                .into(),
            header: ["group", "tokens", "before the last doubling", "final", "verdict"].map(String::from).to_vec(),
            rows,
        });
        let init: Vec<&&convergence::Group> =
            groups.iter().filter(|g| g.varies == "init_seed").collect();
        if !init.is_empty() {
            let done = init.iter().filter(|g| g.converged() == Some(true)).count();
            let worst = init
                .iter()
                .filter_map(|g| g.last_change())
                .max_by(|a, b| a.mmcs.abs().total_cmp(&b.mmcs.abs()));
            self.findings.push(Finding {
                question: "Convergence: are the SAEs trained far enough that more training would not change the answers?".into(),
                ours: format!(
                    "{done} of {} init-seed groups converged (last doubling of tokens: decoder MMCS within {MMCS_TOLERANCE}, shared > 0.7 \
                     within {SHARED_TOLERANCE}){}",
                    init.len(),
                    worst.map_or(String::new(), |c| format!(
                        "; largest change {:+.3} MMCS / {:+.3} shared, {} to {} tokens",
                        c.mmcs, c.shared, c.from, c.to
                    ))
                ),
                anchor: "Paulo & Belrose 2025: a 32k-latent Pythia-160m SAE shares 7 % of latents across seeds after 0.8B tokens, 42 % after \
                         8B and 61 % after 80B: consistency keeps rising with training long after reconstruction has settled."
                    .into(),
                verdict: if done == init.len() {
                    "converged: the findings below describe SAEs that more training would not change by more than the tolerances".into()
                } else {
                    "not converged: findings on these SAEs give no verdict; comparisons between conditions are made only where their order \
                     holds at the last two points"
                        .into()
                },
            });
        }
        self.sections.push(section);
        Ok(())
    }

    /// Question 1: dictionary size.
    fn size(&mut self) -> Result<()> {
        let mut section = Section {
            heading: "1. Size: do SAEs of different dictionary sizes learn the same features?"
                .into(),
            ..Section::default()
        };
        let grids: Vec<String> = self
            .plan
            .study
            .grids
            .iter()
            .filter(|g| g.question == Question::Size)
            .map(|g| g.name.clone())
            .collect();
        for grid in grids {
            let pairs: Vec<&Pair> = self
                .pairs(Question::Size)
                .filter(|p| p.grid == grid)
                .collect();
            // One panel per (layer, arch) of the grid.
            let mut keys: Vec<(usize, String)> = pairs
                .iter()
                .map(|p| (self.sae(p.a).layer, self.sae(p.a).arch.clone()))
                .collect();
            keys.sort();
            keys.dedup();
            for (layer, arch) in keys {
                let here: Vec<&Pair> = pairs
                    .iter()
                    .copied()
                    .filter(|p| self.sae(p.a).layer == layer && self.sae(p.a).arch == arch)
                    .collect();
                let mut ratios: Vec<u32> = here
                    .iter()
                    .flat_map(|p| [self.sae(p.a).ratio, self.sae(p.b).ratio])
                    .collect();
                ratios.sort_unstable();
                ratios.dedup();
                let labels: Vec<String> = ratios.iter().map(|r| format!("1:{r}")).collect();
                let idx = |r: u32| {
                    ratios
                        .iter()
                        .position(|&x| x == r)
                        .expect("a ratio of the grid")
                };
                let n = ratios.len();
                let mut mmcs = vec![vec![None; n]; n];
                let mut matched = vec![vec![None; n]; n];
                for i in 0..n {
                    mmcs[i][i] = Some(1.0);
                    matched[i][i] = Some(1.0);
                }
                for p in &here {
                    let (ia, ib) = (idx(self.sae(p.a).ratio), idx(self.sae(p.b).ratio));
                    if let Some((ab, ba)) = self.dec_mmcs(p) {
                        mmcs[ia][ib] = Some(ab);
                        mmcs[ib][ia] = Some(ba);
                    }
                    if let Some(m) = self.matching(p, "decoder") {
                        matched[ia][ib] = Some(m.mean_cos);
                        matched[ib][ia] = Some(m.mean_cos);
                    }
                }
                let model = &self.sae(here[0].a).model;
                let what = format!("{model}, layer {layer}, {arch}, grid {grid}");
                let id = slug(&format!("size-{grid}-{layer}-{arch}"));
                section.figures.push(Figure {
                    id: format!("{id}-mmcs"),
                    title: format!("Pairwise decoder MMCS between sizes ({what})"),
                    caption: format!(
                        "Decoder MMCS from the row SAE to the column SAE (mean over the row SAE's features of the best cosine in the \
                         column SAE; not symmetric), SAEs of ratios {} trained on the same text with the same seeds. The study's \
                         figure 1. Null: see the next figure.",
                        labels.join(", ")
                    ),
                    svg: plot::heatmap(&Heatmap {
                        title: format!("Decoder MMCS, row to column ({model} L{layer})"),
                        row_labels: labels.clone(),
                        col_labels: labels.clone(),
                        values: mmcs,
                        range: (0.0, 1.0),
                        x_label: "to".into(),
                        y_label: "from".into(),
                    })?,
                });
                section.figures.push(Figure {
                    id: format!("{id}-matched"),
                    title: format!("Mean matched cosine between sizes ({what})"),
                    caption: "Mean cosine of the exact maximum-weight one-to-one matching of decoder directions (every feature of the \
                              smaller SAE matched to a distinct feature of the larger; symmetric), same SAEs as the previous figure."
                        .into(),
                    svg: plot::heatmap(&Heatmap {
                        title: format!("Matched decoder cosine ({model} L{layer})"),
                        row_labels: labels.clone(),
                        col_labels: labels.clone(),
                        values: matched,
                        range: (0.0, 1.0),
                        x_label: "".into(),
                        y_label: "".into(),
                    })?,
                });
                // Against the largest SAE.
                let largest = *ratios.last().expect("a grid has ratios");
                let vs: Vec<&Pair> = here
                    .iter()
                    .copied()
                    .filter(|p| self.sae(p.b).ratio == largest || self.sae(p.a).ratio == largest)
                    .collect();
                let mut lines: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
                let mut corr: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
                let mut null_line = Vec::new();
                let mut fam_rows = Vec::new();
                for p in &vs {
                    let (small, flip) = if self.sae(p.a).ratio == largest {
                        (p.b, true)
                    } else {
                        (p.a, false)
                    };
                    let r = f64::from(self.sae(small).ratio);
                    let a = self.align(p);
                    let pick = |d: &concord_core::outputs::Directions| {
                        if flip { d.b_to_a } else { d.a_to_b }
                    };
                    if let Some(d) = a.mmcs.get("decoder") {
                        lines
                            .entry("decoder MMCS to the largest")
                            .or_default()
                            .push((r, pick(d)));
                    }
                    if let Some(d) = a.mmcs.get("encoder") {
                        lines
                            .entry("encoder MMCS to the largest")
                            .or_default()
                            .push((r, pick(d)));
                    }
                    if let Some(m) = a.matching.get("decoder") {
                        lines
                            .entry("matched decoder cosine")
                            .or_default()
                            .push((r, m.mean_cos));
                        if let Some(s) = m.shared.get("0.7") {
                            lines
                                .entry("shared fraction > 0.7")
                                .or_default()
                                .push((r, *s));
                        }
                    }
                    if let Some(n) = self.null(p) {
                        null_line.push((
                            r,
                            if flip {
                                n.analytic.b_to_a
                            } else {
                                n.analytic.a_to_b
                            },
                        ));
                    }
                    if let Some(c) = &a.correlation {
                        corr.entry("centred Pearson, small to largest")
                            .or_default()
                            .push((r, pick(&c.centred)));
                        if let (Some(u), false) = (c.study_uncentred, flip) {
                            corr.entry("study's uncentred variant")
                                .or_default()
                                .push((r, u));
                        }
                    }
                    if let Some(f) = &a.families {
                        fam_rows.push(vec![
                            format!("1:{}", self.sae(small).ratio),
                            format!("1:{largest}"),
                            f.parents.to_string(),
                            format!(
                                "{:.1} %",
                                100.0 * f.with_children as f64 / f.parents.max(1) as f64
                            ),
                            format!("{:.1} %", 100.0 * f.split as f64 / f.parents.max(1) as f64),
                            format!("{:.2}", f.mean_children),
                            f.max_children.to_string(),
                        ]);
                    }
                }
                let mut series: Vec<Series> = lines
                    .into_iter()
                    .map(|(name, mut pts)| {
                        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                        Series {
                            name: name.into(),
                            points: pts,
                            ..Series::default()
                        }
                    })
                    .collect();
                if !null_line.is_empty() {
                    null_line.sort_by(|a, b| a.0.total_cmp(&b.0));
                    series.push(Series {
                        name: "null: expected max cosine, random unit vectors".into(),
                        points: null_line,
                        dashed: true,
                        ..Series::default()
                    });
                }
                if !series.is_empty() {
                    section.figures.push(Figure {
                        id: format!("{id}-vs-largest"),
                        title: format!("Consistency with the 1:{largest} SAE against ratio ({what})"),
                        caption: format!(
                            "Each smaller SAE compared with the 1:{largest} SAE of the same layer and seeds: decoder and encoder MMCS \
                             (small to largest), the exact matching's mean cosine and shared fraction above 0.7. The study's figure 2 \
                             (\"Pairwise Decoder MCS with 1:32 Autoencoder\"). Dashed: the analytic null, the expected max cosine of a \
                             random unit vector against as many random unit vectors as the larger SAE has features in d = {}.",
                            self.align(here[0]).d_in_a
                        ),
                        svg: plot::lines(&LineChart {
                            title: format!("Against the 1:{largest} SAE ({model} L{layer})"),
                            x_label: "dictionary ratio (features / d_model)".into(),
                            y_label: "score".into(),
                            series,
                            log2_x: true,
                            y_range: Some((0.0, 1.0)),
                        })?,
                    });
                }
                if !corr.is_empty() {
                    section.figures.push(Figure {
                        id: format!("{id}-corr"),
                        title: format!("Activation correlation with the 1:{largest} SAE against ratio ({what})"),
                        caption: format!(
                            "Feature activations on the held-out text ({} documents): for each feature of the smaller SAE, its highest \
                             centred Pearson correlation with a feature of the 1:{largest} SAE, averaged (dead features excluded); and the \
                             study's own uncentred variant (cosine of activation vectors), behind its figure 3.",
                            self.plan.study.eval_docs
                        ),
                        svg: plot::lines(&LineChart {
                            title: format!("Activation correlation with 1:{largest} ({model} L{layer})"),
                            x_label: "dictionary ratio".into(),
                            y_label: "mean max correlation".into(),
                            series: corr
                                .into_iter()
                                .map(|(name, mut pts)| {
                                    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                                    Series { name: name.into(), points: pts, ..Series::default() }
                                })
                                .collect(),
                            log2_x: true,
                            y_range: Some((0.0, 1.0)),
                        })?,
                    });
                }
                if !fam_rows.is_empty() {
                    fam_rows.sort();
                    section.tables.push(Table {
                        caption: format!("Feature families ({what}): for each feature of the smaller SAE, the features of the 1:{largest} SAE with decoder cosine above the threshold."),
                        header: ["smaller", "larger", "features", "with a child", "split (2+ children)", "mean children", "max children"].map(String::from).to_vec(),
                        rows: fam_rows,
                    });
                }
                // Finding: the smallest SAE's decoder MMCS to the largest, against the null.
                let smallest = ratios[0];
                if let Some(p) = vs
                    .iter()
                    .find(|p| self.sae(p.a).ratio == smallest || self.sae(p.b).ratio == smallest)
                {
                    let flip = self.sae(p.a).ratio == largest;
                    if let (Some((ab, ba)), Some(n)) = (self.dec_mmcs(p), self.null(p)) {
                        let ours = if flip { ba } else { ab };
                        let null = if flip {
                            n.analytic.b_to_a
                        } else {
                            n.analytic.a_to_b
                        };
                        self.findings.push(Finding {
                            question: format!("Size: do SAEs of 1:{smallest} and 1:{largest} learn the same features? ({model} L{layer}, {arch})"),
                            ours: format!("decoder MMCS 1:{smallest} to 1:{largest} = {ours:.3} (null {null:.3})"),
                            anchor: "The study (figure 2): MMCS with the 1:32 SAE rises with the smaller SAE's ratio and is well above its random baseline; Paulo & Belrose 2025: sharing falls with width.".into(),
                            verdict: if ours > null + 0.1 { "agrees: far above the null".into() } else { "disagrees: close to the null".into() },
                        });
                    }
                }
            }
        }
        if !section.figures.is_empty() {
            self.sections.push(section);
        }
        Ok(())
    }

    /// Questions 2-4: seeds, data halves, layers.
    fn seeds_and_layers(&mut self) -> Result<()> {
        let mut section = Section { heading: "2-4. Seeds, data and layers: do SAEs that differ only in seed, data order or training text agree?".into(), ..Section::default() };
        let kinds = [
            ("init_seed", "init-seed pairs"),
            ("data_seed", "data-order seed pairs"),
            ("half", "disjoint halves"),
        ];
        let pairs: Vec<&Pair> = self.distinct(
            self.plan
                .pairs
                .iter()
                .filter(|p| matches!(p.question, Question::Seed | Question::Data)),
        );
        if pairs.is_empty() {
            return Ok(());
        }
        // Shared fraction against threshold.
        let mut series = Vec::new();
        for (varies, name) in kinds {
            let here: Vec<&Pair> = pairs
                .iter()
                .copied()
                .filter(|p| p.varies == varies)
                .collect();
            let curves: Vec<&Vec<(f64, f64)>> = here
                .iter()
                .filter_map(|p| self.matching(p, "decoder"))
                .map(|m| &m.shared_curve)
                .filter(|c| !c.is_empty())
                .collect();
            if curves.is_empty() {
                continue;
            }
            let mut points = Vec::new();
            let mut band = Vec::new();
            for (k, &(t, _)) in curves[0].iter().enumerate() {
                let vals: Vec<f64> = curves
                    .iter()
                    .filter_map(|c| c.get(k).map(|x| x.1))
                    .collect();
                let i = Interval::of(&vals);
                points.push((t, i.mean));
                band.push((t, i.lo.max(0.0), i.hi.min(1.0)));
            }
            series.push(Series {
                name: format!("{name} ({})", curves.len()),
                points,
                band,
                dashed: false,
            });
        }
        if let Some(n) = pairs.iter().find_map(|p| self.null(p)) {
            let pts: Vec<(f64, f64)> = n
                .isotropic
                .shared
                .iter()
                .filter_map(|(k, v)| k.parse::<f64>().ok().map(|t| (t, v.mean)))
                .collect();
            if !pts.is_empty() {
                series.push(Series {
                    name: "null: isotropic random dictionaries".into(),
                    points: pts,
                    dashed: true,
                    ..Series::default()
                });
            }
        }
        if !series.is_empty() {
            section.figures.push(Figure {
                id: "seed-shared-curve".into(),
                title: "Shared fraction against threshold".into(),
                caption: "Share of the smaller SAE's features matched (exact one-to-one matching of decoder directions) above each cosine \
                          threshold, for SAEs that differ only in init seed, only in data-order seed, or only in the half of the training \
                          text; mean over pairs (all layers of the seed grids) with a 95 % interval. Dashed: isotropic random \
                          dictionaries of the same shape."
                    .into(),
                svg: plot::lines(&LineChart {
                    title: "Shared features against threshold".into(),
                    x_label: "cosine threshold".into(),
                    y_label: "shared fraction".into(),
                    series,
                    log2_x: false,
                    y_range: Some((0.0, 1.0)),
                })?,
            });
        }
        // Per-layer bars with nulls.
        let mut layers: Vec<(String, usize)> = pairs
            .iter()
            .map(|p| (self.sae(p.a).model.clone(), self.sae(p.a).layer))
            .collect();
        layers.sort();
        layers.dedup();
        let mut groups = Vec::new();
        let mut rows = Vec::new();
        let mut per_layer_seed: Vec<(usize, f64)> = Vec::new();
        for (model, layer) in &layers {
            let mut bars = Vec::new();
            let at: Vec<&Pair> = pairs
                .iter()
                .copied()
                .filter(|p| &self.sae(p.a).model == model && self.sae(p.a).layer == *layer)
                .collect();
            for (varies, name) in kinds {
                let vals: Vec<f64> = at
                    .iter()
                    .filter(|p| p.varies == varies)
                    .filter_map(|p| self.dec_mmcs(p))
                    .map(|(ab, ba)| (ab + ba) / 2.0)
                    .collect();
                if vals.is_empty() {
                    continue;
                }
                let i = interval_in(&vals, UNIT);
                if varies == "init_seed" {
                    per_layer_seed.push((*layer, i.mean));
                }
                let shared: Vec<f64> = at
                    .iter()
                    .filter(|p| p.varies == varies)
                    .filter_map(|p| self.matching(p, "decoder"))
                    .filter_map(|m| m.shared.get("0.7").copied())
                    .collect();
                let pw: Vec<f64> = at
                    .iter()
                    .filter(|p| p.varies == varies)
                    .filter_map(|p| self.matching(p, "decoder"))
                    .map(|m| m.pw_mcc)
                    .collect();
                rows.push(vec![
                    format!("{model} L{layer}"),
                    name.to_owned(),
                    fmt_interval(&i),
                    fmt_interval(&interval_in(&shared, UNIT)),
                    fmt_interval(&interval_in(&pw, UNIT)),
                ]);
                bars.push(Bar {
                    series: name.to_owned(),
                    value: i.mean,
                    interval: (i.n > 1).then_some((i.lo, i.hi)),
                });
            }
            if let Some(n) = at.iter().find_map(|p| self.null(p)) {
                if let Some((ab, ba)) = n.isotropic.mmcs_decoder {
                    let m = (ab.mean + ba.mean) / 2.0;
                    bars.push(Bar {
                        series: "null: isotropic random".into(),
                        value: m,
                        interval: Some(((ab.lo + ba.lo) / 2.0, (ab.hi + ba.hi) / 2.0)),
                    });
                }
                if let Some((ab, ba)) = n.rand_like.mmcs_decoder {
                    bars.push(Bar {
                        series: "study's rand_like baseline (biased)".into(),
                        value: (ab.mean + ba.mean) / 2.0,
                        interval: None,
                    });
                }
            }
            groups.push((format!("{model} L{layer}"), bars));
        }
        section.figures.push(Figure {
            id: "layer-bars".into(),
            title: "Decoder MMCS of paired SAEs per layer, next to the nulls".into(),
            caption: "Per layer: decoder MMCS (mean of both directions) of SAEs that differ only in init seed, only in data-order seed, or \
                      only in the half of the training text (95 % interval over pairs), next to isotropic random dictionaries of the same \
                      shape (95 % interval over null seeds) and the study's all-positive rand_like baseline, which is biased upward. The \
                      study's figure 4 compared deduplicated against non-deduplicated Pythia models here; no offline model pair has that \
                      difference."
                .into(),
            svg: plot::bars(&BarChart { title: "Paired SAEs per layer".into(), x_label: "layer".into(), y_label: "decoder MMCS".into(), groups })?,
        });
        section.tables.push(Table {
            caption: "Paired SAEs: decoder MMCS (mean of both directions), shared fraction above 0.7 and PW-MCC (mean |cos| of matched pairs), mean and 95 % interval over pairs.".into(),
            header: ["layer", "pairs", "decoder MMCS", "shared > 0.7", "PW-MCC"].map(String::from).to_vec(),
            rows,
        });
        // Findings.
        for (varies, name) in kinds {
            let shared: Vec<f64> = pairs
                .iter()
                .filter(|p| p.varies == varies)
                .filter_map(|p| self.matching(p, "decoder"))
                .filter_map(|m| m.shared.get("0.7").copied())
                .collect();
            if shared.is_empty() {
                continue;
            }
            let i = interval_in(&shared, UNIT);
            let null = pairs
                .iter()
                .filter(|p| p.varies == varies)
                .find_map(|p| self.null(p))
                .and_then(|n| n.isotropic.shared.get("0.7"))
                .map_or(f64::NAN, |x| x.mean);
            let question = match varies {
                "half" => "Data: do SAEs trained on disjoint halves of the text share features?",
                "data_seed" => "Seed: do SAEs that differ only in data order share features?",
                _ => "Seed: do SAEs that differ only in init seed share features?",
            };
            let grids: Vec<&str> = pairs
                .iter()
                .filter(|p| p.varies == varies && p.question == Question::Seed)
                .map(|p| p.grid.as_str())
                .collect();
            let gate = self.unconverged(&grids, None);
            self.findings.push(Finding {
                question: question.into(),
                ours: format!("shared fraction > 0.7 (decoder, exact matching), {name}: {} (isotropic null {null:.3})", fmt_interval(&i)),
                anchor: "Paulo & Belrose 2025: about 30 % of features shared across seeds (Llama-3-8B, 131k features), about 53 % for Pythia-160m layer 6 TopK.".into(),
                verdict: if i.n < 2 {
                    "n = 1, no verdict".into()
                } else if let Some(reason) = gate {
                    reason
                } else if i.mean >= 0.2 && i.mean <= 0.7 {
                    "agrees: in the published range".into()
                } else if i.mean > 0.7 {
                    "higher than published: small, short-trained SAEs on a narrow corpus (see caveats)".into()
                } else {
                    "lower than published: short training leaves SAEs far from convergence (see caveats)".into()
                },
            });
        }
        if per_layer_seed.len() >= 3 {
            let best = per_layer_seed
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("non-empty");
            let (first, last) = (
                per_layer_seed[0].0,
                per_layer_seed[per_layer_seed.len() - 1].0,
            );
            let mid = best.0 != first && best.0 != last;
            let grids: Vec<&str> = pairs
                .iter()
                .filter(|p| p.question == Question::Seed)
                .map(|p| p.grid.as_str())
                .collect();
            let gate = self.unconverged(&grids, None);
            self.findings.push(Finding {
                question: "Layer: how does seed consistency change with depth?".into(),
                ours: format!(
                    "init-seed decoder MMCS by layer: {}; highest at layer {}",
                    per_layer_seed.iter().map(|(l, v)| format!("L{l} {v:.3}")).collect::<Vec<_>>().join(", "),
                    best.0
                ),
                anchor: "Lan et al. 2024: paired-feature similarity across models is strongest at middle depth.".into(),
                verdict: if let Some(reason) = gate {
                    reason
                } else if mid {
                    "agrees: most consistent in the middle".into()
                } else {
                    "differs: not most consistent in the middle".into()
                },
            });
        }
        self.sections.push(section);
        Ok(())
    }

    /// Question 5: models.
    fn models(&mut self) -> Result<()> {
        let pairs: Vec<&Pair> = self.pairs(Question::Model).collect();
        if pairs.is_empty() {
            return Ok(());
        }
        let mut section = Section {
            heading:
                "5. Models: do SAEs of different models learn the same features on the same text?"
                    .into(),
            ..Section::default()
        };
        section.paragraphs.push(
            "The two models have different tokenizers; their stores are aligned on the held-out text by byte spans (each token of one \
             model is paired with the token of the other that covers its last byte), so feature activations are compared on the same \
             characters. No offline model pair reproduces the study's comparison of a model trained on deduplicated data against one \
             trained on the original data; that comparison needs Pythia (data/studies/full.toml)."
                .into(),
        );
        let (ma, mb) = (
            self.sae(pairs[0].a).model.clone(),
            self.sae(pairs[0].b).model.clone(),
        );
        let mut la: Vec<usize> = pairs.iter().map(|p| self.sae(p.a).layer).collect();
        let mut lb: Vec<usize> = pairs.iter().map(|p| self.sae(p.b).layer).collect();
        la.sort_unstable();
        la.dedup();
        lb.sort_unstable();
        lb.dedup();
        let mut values = vec![vec![None; lb.len()]; la.len()];
        for p in &pairs {
            if let Some(c) = &self.align(p).correlation {
                let i = la
                    .iter()
                    .position(|&l| l == self.sae(p.a).layer)
                    .expect("a layer");
                let j = lb
                    .iter()
                    .position(|&l| l == self.sae(p.b).layer)
                    .expect("a layer");
                values[i][j] = Some(c.centred.a_to_b);
            }
        }
        let depth_a = &self.plan.study.models[&ma];
        let depth_b = &self.plan.study.models[&mb];
        section.figures.push(Figure {
            id: "model-correlation".into(),
            title: format!("Activation correlation between the SAEs of {ma} and {mb}"),
            caption: format!(
                "Mean over the features of the {ma} SAE (rows) of the highest centred Pearson correlation with a feature of the {mb} SAE \
                 (columns), on the held-out text aligned by byte spans, dead features excluded; first seeds, equal ratios. Relative \
                 depths: {ma} {}, {mb} {}. The study's figure 6.",
                la.iter().map(|&l| format!("L{l}={:.2}", depth_a.depth(l))).collect::<Vec<_>>().join(" "),
                lb.iter().map(|&l| format!("L{l}={:.2}", depth_b.depth(l))).collect::<Vec<_>>().join(" ")
            ),
            svg: plot::heatmap(&Heatmap {
                title: format!("Max activation correlation, {ma} to {mb}"),
                row_labels: la.iter().map(|l| format!("{ma} L{l}")).collect(),
                col_labels: lb.iter().map(|l| format!("L{l}")).collect(),
                values: values.clone(),
                range: (0.0, 1.0),
                x_label: mb.clone(),
                y_label: "".into(),
            })?,
        });
        // Finding: is each row's best column the one at the closest relative depth?
        let mut hits = 0;
        let mut rows = 0;
        for (i, &l) in la.iter().enumerate() {
            let best = values[i]
                .iter()
                .enumerate()
                .filter_map(|(j, v)| v.map(|v| (j, v)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let closest = lb
                .iter()
                .enumerate()
                .min_by(|a, b| {
                    (depth_b.depth(*a.1) - depth_a.depth(l))
                        .abs()
                        .total_cmp(&(depth_b.depth(*b.1) - depth_a.depth(l)).abs())
                })
                .map(|x| x.0);
            if let (Some((j, _)), Some(c)) = (best, closest) {
                rows += 1;
                hits += usize::from(j == c);
            }
        }
        let matched: Vec<f64> = la
            .iter()
            .enumerate()
            .filter_map(|(i, &l)| {
                let c = lb
                    .iter()
                    .enumerate()
                    .min_by(|a, b| {
                        (depth_b.depth(*a.1) - depth_a.depth(l))
                            .abs()
                            .total_cmp(&(depth_b.depth(*b.1) - depth_a.depth(l)).abs())
                    })?
                    .0;
                values[i][c]
            })
            .collect();
        self.findings.push(Finding {
            question: format!("Model: do SAEs of {ma} and {mb} share features on the same text?"),
            ours: format!(
                "centred activation correlation at matching relative depth: {}; the best-correlated layer is the depth-matched one for {hits} of {rows} layers",
                fmt_interval(&interval_in(&matched, UNIT))
            ),
            anchor: "Lan et al. 2024: SAE features of Pythia-70m and -160m are similar, most at middle depth; the study: correlation between models falls with depth mismatch.".into(),
            verdict: if lb.len() < 2 || rows < 2 {
                format!("no verdict: {} layer(s) of {ma} against {} of {mb}, too few to tell depth matching apart", rows, lb.len())
            } else if hits * 2 > rows {
                "agrees: depth-matched layers correlate best".into()
            } else {
                "differs: depth-matched layers are not the best correlated".into()
            },
        });
        self.sections.push(section);
        Ok(())
    }

    /// Question 6: architecture.
    fn arch(&mut self) -> Result<()> {
        let pairs: Vec<&Pair> = self.distinct(self.pairs(Question::Arch));
        let mut section = Section {
            heading: "6. Architecture: is ReLU/L1 or TopK more consistent across seeds?".into(),
            ..Section::default()
        };
        let mut archs: Vec<String> = pairs.iter().map(|p| self.sae(p.a).arch.clone()).collect();
        archs.sort();
        archs.dedup();
        let mut groups = Vec::new();
        let mut summary = Vec::new();
        for arch in &archs {
            let here: Vec<&Pair> = pairs
                .iter()
                .copied()
                .filter(|p| &self.sae(p.a).arch == arch)
                .collect();
            let mut bars = Vec::new();
            let mmcs: Vec<f64> = here
                .iter()
                .filter_map(|p| self.dec_mmcs(p))
                .map(|(a, b)| (a + b) / 2.0)
                .collect();
            let shared: Vec<f64> = here
                .iter()
                .filter_map(|p| self.matching(p, "decoder"))
                .filter_map(|m| m.shared.get("0.7").copied())
                .collect();
            let pw: Vec<f64> = here
                .iter()
                .filter_map(|p| self.matching(p, "decoder"))
                .map(|m| m.pw_mcc)
                .collect();
            for (name, vals) in [
                ("decoder MMCS", &mmcs),
                ("shared > 0.7", &shared),
                ("PW-MCC", &pw),
            ] {
                let i = interval_in(vals, UNIT);
                bars.push(Bar {
                    series: name.into(),
                    value: i.mean,
                    interval: (i.n > 1).then_some((i.lo, i.hi)),
                });
            }
            let evals: Vec<&EvalOutput> = self
                .plan
                .saes
                .iter()
                .enumerate()
                .filter(|(i, s)| {
                    s.grid == here.first().map_or(String::new(), |p| p.grid.clone())
                        && &s.arch == arch
                        && self.distinct_sae(*i)
                })
                .filter_map(|(i, _)| self.out.eval.get(&i))
                .collect();
            let l0 = interval_in(
                &evals.iter().map(|e| e.l0).collect::<Vec<_>>(),
                NON_NEGATIVE,
            );
            let fvu = interval_in(
                &evals.iter().map(|e| e.fvu).collect::<Vec<_>>(),
                NON_NEGATIVE,
            );
            summary.push((
                arch.clone(),
                interval_in(&shared, UNIT),
                interval_in(&pw, UNIT),
                l0,
                fvu,
            ));
            groups.push((arch.clone(), bars));
        }
        if !groups.is_empty() {
            section.figures.push(Figure {
                id: "arch-consistency".into(),
                title: "Seed consistency by architecture".into(),
                caption: "SAEs of the arch grid that differ only in init seed: decoder MMCS, shared fraction above 0.7 and PW-MCC, mean and \
                          95 % interval over seed pairs, per architecture (same layer, ratio and text)."
                    .into(),
                svg: plot::bars(&BarChart { title: "Seed consistency by architecture".into(), x_label: "architecture".into(), y_label: "score".into(), groups })?,
            });
            section.tables.push(Table {
                caption: "Seed consistency with each architecture's sparsity and reconstruction on the held-out text.".into(),
                header: ["arch", "shared > 0.7", "PW-MCC", "L0", "FVU"].map(String::from).to_vec(),
                rows: summary.iter().map(|(a, s, p, l, f)| vec![a.clone(), fmt_interval(s), fmt_interval(p), fmt_interval(l), fmt_interval(f)]).collect(),
            });
            let relu = summary.iter().find(|s| s.0.starts_with("relu"));
            let topk = summary.iter().find(|s| s.0.contains("topk"));
            if let (Some(r), Some(t)) = (relu, topk) {
                self.findings.push(Finding {
                    question: "Architecture: is ReLU/L1 or TopK more consistent across seeds?".into(),
                    ours: format!(
                        "shared > 0.7: {} {} (L0 {:.1}, FVU {:.3}) against {} {} (L0 {:.1}, FVU {:.3}); TopK PW-MCC {}",
                        r.0, fmt_interval(&r.1), r.3.mean, r.4.mean, t.0, fmt_interval(&t.1), t.3.mean, t.4.mean, fmt_interval(&t.2)
                    ),
                    anchor: "Paulo & Belrose 2025: ReLU/L1 SAEs are more seed-stable than TopK; Song et al. 2025: PW-MCC about 0.80 for TopK SAEs (Pythia-160m).".into(),
                    verdict: self.arch_gate(&pairs, &r.0, &t.0).unwrap_or_else(|| Self::arch_verdict(&r.1, &t.1)),
                });
            }
        }
        // The L0-FVU frontier of every SAE, by architecture.
        let mut by_arch: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (i, s) in self.plan.saes.iter().enumerate() {
            if let Some(e) = self
                .out
                .eval
                .get(&i)
                .filter(|e| e.l0 > 0.0 && e.fvu.is_finite())
            {
                by_arch
                    .entry(format!("{} ({})", s.arch, s.model))
                    .or_default()
                    .push((e.l0, e.fvu));
            }
        }
        if !by_arch.is_empty() {
            section.figures.push(Figure {
                id: "l0-fvu".into(),
                title: "Sparsity against reconstruction, every SAE".into(),
                caption: "L0 (mean active features per token) against FVU (fraction of variance unexplained, variance about the mean) on the \
                          held-out text, for every SAE of the study, by architecture and model."
                    .into(),
                svg: plot::scatter(&Scatter { title: "L0 against FVU".into(), x_label: "L0".into(), y_label: "FVU".into(), groups: by_arch.into_iter().collect(), log_x: true })?,
            });
        }
        if !section.figures.is_empty() {
            self.sections.push(section);
        }
        Ok(())
    }

    /// Question 7: which features are consistent; density histograms; evaluation anchors.
    fn features(&mut self) -> Result<()> {
        let mut section = Section {
            heading: "7. Which features are consistent? Frequencies, dead and dense features"
                .into(),
            ..Section::default()
        };
        // Consistency against frequency, over seed pairs.
        let mut by_bin: BTreeMap<(i64, i64), (f64, f64, Vec<f64>)> = BTreeMap::new();
        for p in self.distinct(
            self.plan
                .pairs
                .iter()
                .filter(|p| matches!(p.question, Question::Seed | Question::Data | Question::Size)),
        ) {
            for b in &self.align(p).by_frequency {
                if b.features > 0 {
                    let key = (
                        (b.lo.log10() * 100.0).round() as i64,
                        (b.hi.log10() * 100.0).round() as i64,
                    );
                    by_bin
                        .entry(key)
                        .or_insert((b.lo, b.hi, Vec::new()))
                        .2
                        .push(b.mean_matched_cos);
                }
            }
        }
        if !by_bin.is_empty() {
            let mut pts = Vec::new();
            let mut band = Vec::new();
            for (lo, hi, vals) in by_bin.values() {
                let x = ((lo.max(1e-6)).log10() + hi.log10()) / 2.0;
                let i = interval_in(vals, UNIT);
                pts.push((x, i.mean));
                band.push((x, i.lo, i.hi));
            }
            section.figures.push(Figure {
                id: "consistency-by-frequency".into(),
                title: "Consistency against feature frequency".into(),
                caption: "Mean matched decoder cosine of features of SAE A, binned by how often they fire on the held-out text (log10 of the \
                          fraction of tokens), over the size, seed and data pairs; 95 % interval over pairs."
                    .into(),
                svg: plot::lines(&LineChart {
                    title: "Matched cosine by feature frequency".into(),
                    x_label: "log10 activation frequency".into(),
                    y_label: "mean matched cosine".into(),
                    series: vec![Series { name: "matched decoder cosine".into(), points: pts, band, dashed: false }],
                    log2_x: false,
                    y_range: Some((0.0, 1.0)),
                })?,
            });
        }
        // Density histograms: rows = layers, columns = ratios, first seeds, first arch of each model.
        let firsts: Vec<(usize, &SaeRef)> = self
            .plan
            .saes
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.init_seed == 0
                    && s.data_seed == DataSeed::Seed(0)
                    && s.half.is_none()
                    && s.arch == "relu-l1-faithful"
            })
            .collect();
        if let Some((_, first)) = firsts.first() {
            let model = first.model.clone();
            let cells_of: Vec<&(usize, &SaeRef)> =
                firsts.iter().filter(|(_, s)| s.model == model).collect();
            let mut layers: Vec<usize> = cells_of.iter().map(|(_, s)| s.layer).collect();
            let mut ratios: Vec<u32> = cells_of.iter().map(|(_, s)| s.ratio).collect();
            layers.sort_unstable();
            layers.dedup();
            ratios.sort_unstable();
            ratios.dedup();
            let cells: Vec<Vec<Option<Vec<f64>>>> = layers
                .iter()
                .map(|&l| {
                    ratios
                        .iter()
                        .map(|&r| {
                            cells_of
                                .iter()
                                .find(|(_, s)| s.layer == l && s.ratio == r)
                                .and_then(|(i, _)| self.out.eval.get(i))
                                .map(|e| e.frequency.iter().map(|&f| f64::from(f)).collect())
                        })
                        .collect()
                })
                .collect();
            section.figures.push(Figure {
                id: "density-grid".into(),
                title: format!("Feature density histograms ({model}, layers x ratios)"),
                caption: "Histograms of log10 feature activation frequency on the held-out text, 100 log-spaced bins from 1e-5 to 1 (the \
                          study's figure 5); each panel counts the features that never fired (below the range) in its title. ReLU/L1 SAEs of \
                          the first seeds."
                    .into(),
                svg: plot::histogram_grid(&HistGrid {
                    title: format!("Feature density, {model}"),
                    row_labels: layers.iter().map(|l| format!("L{l}")).collect(),
                    col_labels: ratios.iter().map(|r| format!("1:{r}")).collect(),
                    cells,
                    bins: 100,
                    lo: 1e-5,
                    hi: 1.0,
                })?,
            });
        }
        // Evaluation table and anchors.
        let mut rows = Vec::new();
        let mut alive = Vec::new();
        let mut ve = Vec::new();
        let mut l0s = Vec::new();
        let mut lr = Vec::new();
        for (i, s) in self.plan.saes.iter().enumerate() {
            let Some(e) = self.out.eval.get(&i).filter(|_| self.distinct_sae(i)) else {
                continue;
            };
            alive.push(1.0 - e.dead_fraction);
            ve.push(1.0 - e.fvu);
            l0s.push(e.l0);
            if let Some(x) = e.loss_recovered {
                lr.push(x);
            }
            rows.push(vec![
                s.label(),
                s.model.clone(),
                format!("{:.4}", e.mse),
                format!("{:.3}", e.fvu),
                format!("{:.1}", e.l0),
                format!("{:.1} %", 100.0 * e.dead_fraction),
                format!("{:.1} %", 100.0 * e.dense_fraction),
                e.loss_recovered
                    .map_or("-".into(), |x| format!("{:.1} %", 100.0 * x)),
                e.kl.map_or("-".into(), |x| format!("{x:.3}")),
            ]);
        }
        if !rows.is_empty() {
            section.tables.push(Table {
                caption: "Every distinct SAE on the held-out text (one row per training identity, whichever grids list it): MSE, FVU, L0, dead (never active) and dense (active on more than 10 % of tokens) \
                          fractions; loss recovered and KL with the reconstruction spliced into the model, where measured."
                    .into(),
                header: ["SAE", "model", "MSE", "FVU", "L0", "dead", "dense", "loss recovered", "KL"].map(String::from).to_vec(),
                rows,
            });
            let v = interval_in(&ve, UNIT);
            let a = interval_in(&alive, UNIT);
            self.findings.push(Finding {
                question: "Which features: how much do the SAEs explain, how sparse are they, how many features live?".into(),
                ours: format!(
                    "variance explained {} ; L0 {} ; alive {}{}",
                    fmt_interval(&v),
                    fmt_interval(&interval_in(&l0s, NON_NEGATIVE)),
                    fmt_interval(&a),
                    if lr.is_empty() { String::new() } else { format!(" ; loss recovered {}", fmt_interval(&interval_in(&lr, UNIT))) }
                ),
                anchor: "dictionary_learning (Pythia-70m-deduped MLP out, 32,768 features): variance explained 85-99 %, L0 5-160, alive 25-44 %, loss recovered 88-99 %.".into(),
                verdict: if v.n < 2 {
                    "n = 1, no verdict".into()
                } else if v.mean >= 0.85 {
                    "agrees on variance explained".into()
                } else {
                    "explains less: far fewer training tokens than the anchors' SAEs (see caveats)".into()
                },
            });
        }
        if !section.figures.is_empty() || !section.tables.is_empty() {
            self.sections.push(section);
        }
        Ok(())
    }

    /// The architecture verdict: ReLU/L1 against TopK shared fraction, with no verdict on a single
    /// pair or a tie at the printed precision, and none claimed while the intervals overlap.
    /// Why the architecture comparison of `relu` and `topk` gives no verdict: their SAEs are
    /// not converged and the order of their shared fractions differs at the last two points
    /// (or no snapshots show it). `None` when a verdict may be given.
    fn arch_gate(&self, pairs: &[&Pair], relu: &str, topk: &str) -> Option<String> {
        let grids: Vec<&str> = pairs.iter().map(|p| p.grid.as_str()).collect();
        let reason = self.unconverged(&grids, None)?;
        // Mean shared fraction of each architecture's init-seed groups at the second-last and
        // last points.
        let last_two = |arch: &str| -> Option<(f64, f64)> {
            let gs: Vec<&convergence::Group> = self
                .conv
                .iter()
                .filter(|g| {
                    g.varies == "init_seed" && g.arch == arch && grids.contains(&g.grid.as_str())
                })
                .filter(|g| g.points.len() >= 2)
                .collect();
            if gs.is_empty() {
                return None;
            }
            let mean = |k: usize| {
                gs.iter()
                    .map(|g| g.points[g.points.len() - k].shared.mean)
                    .sum::<f64>()
                    / gs.len() as f64
            };
            Some((mean(2), mean(1)))
        };
        match (last_two(relu), last_two(topk)) {
            (Some((r0, r1)), Some((t0, t1))) if (r0 > t0) == (r1 > t1) && r0 != t0 && r1 != t1 => {
                let leader = if r1 > t1 { relu } else { topk };
                Some(format!(
                    "not converged, but the order holds at the last two points: {leader} shares more ({relu} {r0:.3} then {r1:.3}, {topk} \
                     {t0:.3} then {t1:.3}); no verdict on the published claim"
                ))
            }
            _ => Some(reason),
        }
    }

    fn arch_verdict(relu: &Interval, topk: &Interval) -> String {
        if relu.n < 2 || topk.n < 2 {
            format!("n = {} and {} seed pairs, no verdict", relu.n, topk.n)
        } else if (relu.mean - topk.mean).abs() < 5e-4 {
            format!("tie: both {:.3}, no verdict", relu.mean)
        } else if relu.lo <= topk.hi && topk.lo <= relu.hi {
            "no clear difference: the intervals overlap".into()
        } else if relu.mean > topk.mean {
            "agrees: ReLU/L1 shares more features".into()
        } else {
            "disagrees: TopK shares more features here".into()
        }
    }

    /// Matched-pair examples: the text both features of a matched pair fire on.
    fn examples(&mut self) {
        let mut rows = Vec::new();
        for p in self
            .plan
            .pairs
            .iter()
            .filter(|p| p.varies == "init_seed")
            .take(1)
        {
            for ex in self.align(p).examples.iter().take(6) {
                let snip = |v: &[concord_core::outputs::Snippet]| {
                    v.iter()
                        .take(2)
                        .map(|s| {
                            format!(
                                "\u{201c}{}\u{201d} ({:.2})",
                                s.text.replace('\n', " "),
                                s.act
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                rows.push(vec![
                    format!("{} / {}", ex.a, ex.b),
                    format!("{:.3}", ex.cos),
                    snip(&ex.a_top),
                    snip(&ex.b_top),
                ]);
            }
            if !rows.is_empty() {
                let (a, b) = (self.sae(p.a).label(), self.sae(p.b).label());
                self.sections.push(Section {
                    heading: "Matched-pair examples".into(),
                    paragraphs: vec![format!("Matched features of {a} and {b} (SAEs that differ only in init seed): the held-out text where each fires most, the firing token in [brackets].")],
                    tables: vec![Table { caption: String::new(), header: ["features a / b", "cosine", "a fires on", "b fires on"].map(String::from).to_vec(), rows: std::mem::take(&mut rows) }],
                    figures: Vec::new(),
                });
            }
        }
    }
}

/// The null of a pair, when its shape `(d, n_a, n_b)` is the shape of the SAEs its align step
/// measured (a study file's wrong `d_model` gives nulls of another shape, which are dropped).
fn null_of<'a>(p: &Pair, al: &AlignOutput, out: &'a Outputs) -> Option<&'a NullOutput> {
    p.null
        .as_ref()
        .and_then(|n| out.null.get(n))
        .filter(|n| (n.d, n.n_a, n.n_b) == (al.d_in_a, al.d_sae_a, al.d_sae_b))
}

/// One row per compared pair and point of training for `results.parquet`: the final SAEs,
/// then each snapshot of a seed pair.
fn results(plan: &Plan, out: &Outputs) -> Vec<ResultRow> {
    let mut rows = Vec::new();
    for p in &plan.pairs {
        let steps = plan.saes[p.a].steps;
        rows.push(result_row(plan, out, p, &out.align[&p.step], steps));
        for (at, id) in &p.snapshots {
            if let Some(al) = out.snapshot_align.get(id) {
                rows.push(result_row(plan, out, p, al, *at));
            }
        }
    }
    rows
}

/// The row of pair `p` compared (by `al`) after `at` steps of training.
fn result_row(plan: &Plan, out: &Outputs, p: &Pair, al: &AlignOutput, at: u64) -> ResultRow {
    let (a, b) = (&plan.saes[p.a], &plan.saes[p.b]);
    let mut m = BTreeMap::new();
    for (which, d) in &al.mmcs {
        m.insert(format!("mmcs_{which}_a_to_b"), d.a_to_b);
        m.insert(format!("mmcs_{which}_b_to_a"), d.b_to_a);
    }
    for (which, s) in &al.matching {
        m.insert(format!("matching_{which}_mean_cos"), s.mean_cos);
        m.insert(format!("matching_{which}_pw_mcc"), s.pw_mcc);
        m.insert(
            format!("matching_{which}_optimal"),
            f64::from(u8::from(s.optimal)),
        );
        for (t, v) in &s.shared {
            m.insert(format!("shared_{which}_{t}"), *v);
        }
    }
    if let Some(c) = &al.correlation {
        m.insert("corr_centred_a_to_b".into(), c.centred.a_to_b);
        m.insert("corr_centred_b_to_a".into(), c.centred.b_to_a);
        m.insert("corr_dead_a".into(), c.dead_a as f64);
        m.insert("corr_dead_b".into(), c.dead_b as f64);
        m.insert("corr_tokens".into(), c.tokens as f64);
        if let Some(x) = c.study_zscore {
            m.insert("corr_study_zscore".into(), x);
        }
        if let Some(x) = c.study_uncentred {
            m.insert("corr_study_uncentred".into(), x);
        }
        if let Some(n) = &c.permutation_null {
            m.insert("null_permutation_corr_mean".into(), n.mean);
            m.insert("null_permutation_corr_hi".into(), n.hi);
        }
    }
    if let Some(n) = null_of(p, al, out) {
        m.insert("null_analytic_max_cos_a_to_b".into(), n.analytic.a_to_b);
        m.insert("null_analytic_max_cos_b_to_a".into(), n.analytic.b_to_a);
        for (name, stats) in [("isotropic", &n.isotropic), ("rand_like", &n.rand_like)] {
            if let Some((ab, ba)) = stats.mmcs_decoder {
                m.insert(format!("null_{name}_mmcs_a_to_b_mean"), ab.mean);
                m.insert(format!("null_{name}_mmcs_a_to_b_hi"), ab.hi);
                m.insert(format!("null_{name}_mmcs_b_to_a_mean"), ba.mean);
            }
            if let Some(i) = stats.matching_mean_cos {
                m.insert(format!("null_{name}_matching_mean_cos"), i.mean);
            }
            if let Some(i) = stats.shared.get("0.7") {
                m.insert(format!("null_{name}_shared_0.7"), i.mean);
            }
        }
    }
    // Shapes as the align step read them from the SAEs, not as the study file says.
    for (key, s, d_sae) in [("a", a, al.d_sae_a), ("b", b, al.d_sae_b)] {
        m.insert(format!("ratio_{key}"), f64::from(s.ratio));
        m.insert(format!("layer_{key}"), s.layer as f64);
        m.insert(format!("d_sae_{key}"), d_sae as f64);
    }
    // Pairs of SAEs of different run lengths (a halves grid's) are compared final
    // against final.
    let at_b = if at == a.steps { b.steps } else { at };
    ResultRow {
        question: p.question.name().to_owned(),
        comparison: format!("{} differs: {} vs {}", p.varies, a.label(), b.label()),
        a: format!("{}/{}", a.step, a.folder_at(at)),
        b: format!("{}/{}", b.step, b.folder_at(at_b)),
        tokens_a: Some(out.tokens_at(plan, p.a, at)),
        tokens_b: Some(out.tokens_at(plan, p.b, at_b)),
        metrics: m,
    }
}

/// One row per SAE (each trained SAE once, whichever grids list it) and point of training
/// for `saes.parquet`.
fn sae_rows(plan: &Plan, out: &Outputs) -> Vec<SaeRow> {
    let mut rows = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in plan.saes.iter().enumerate() {
        if !seen.insert((s.step.clone(), s.name.clone())) {
            continue;
        }
        let finals = out.eval.get(&i).map(|e| (s.steps, e));
        let snaps = s
            .snapshots
            .iter()
            .filter_map(|&at| out.snapshot_eval.get(&(i, at)).map(|e| (at, e)));
        for (at, e) in snaps.chain(finals) {
            rows.push(SaeRow {
                name: format!("{}/{}", s.step, s.folder_at(at)),
                model: s.model.clone(),
                hook: s.hook.clone(),
                layer: s.layer as u64,
                arch: s.arch.clone(),
                ratio: u64::from(s.ratio),
                init_seed: s.init_seed,
                data_seed: s.data_seed.arg(),
                half: s.half.clone(),
                training_tokens: out.tokens_at(plan, i, at),
                fvu: e.fvu,
                l0: e.l0,
                dead_fraction: e.dead_fraction,
                dense_fraction: e.dense_fraction,
            });
        }
    }
    rows
}

/// Loads the outputs, assembles the report and writes `report/` and `report/results.parquet`.
pub fn write_report(plan: &Plan, run_dir: &Path) -> Result<std::path::PathBuf> {
    let outputs = load(plan, run_dir)?;
    let (report, rows) = assemble(plan, &outputs)?;
    let dir = run_dir.join("report");
    concord_report::write(&dir, &report)?;
    concord_report::results::write_parquet(&dir.join("results.parquet"), &rows)?;
    concord_report::results::write_saes_parquet(
        &dir.join("saes.parquet"),
        &sae_rows(plan, &outputs),
    )?;
    if report.figures().count() == 0 {
        return Err(Error::BadOutput {
            path: dir,
            reason: "the report has no figures".into(),
        });
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use concord_core::outputs::{Directions, MatchSummary};

    use super::*;
    use crate::plan::{PlanOptions, plan};
    use crate::spec::Study;

    /// A study whose file says `d_model = 8` for a model whose SAEs really have `d_in = 10`.
    const STUDY: &str = r#"
name = "t"
about = "a test"
corpus = "shakespeare"
docs = 10
eval_docs = 4
[models.m]
model = "smollm2-135m"
n_layers = 30
d_model = 8
causal = true
hook = "hook_mlp_out"
layers = [15]
[train]
tokens = 1000
k = 4
[[grid]]
name = "sizes"
question = "size"
model = "m"
layers = [15]
ratios = [1, 2]
[[grid]]
name = "seeds"
question = "seed"
model = "m"
layers = [15]
ratios = [1]
init_seeds = [0, 1]
[[grid]]
name = "archs"
question = "arch"
model = "m"
layers = [15]
archs = ["relu-l1-faithful", "topk"]
ratios = [1]
init_seeds = [0, 1]
"#;

    const D_IN: usize = 10;

    fn outputs(plan: &Plan) -> Outputs {
        outputs_with_drift(plan, 0.0)
    }

    /// Outputs whose seed pairs' decoder MMCS and shared fraction rise by `drift` per
    /// doubling of training up to their final values.
    fn outputs_with_drift(plan: &Plan, drift: f64) -> Outputs {
        let mut align = BTreeMap::new();
        let mut null = BTreeMap::new();
        let mut snapshot_align = BTreeMap::new();
        for p in &plan.pairs {
            let (a, b) = (&plan.saes[p.a], &plan.saes[p.b]);
            let matching = MatchSummary {
                mean_cos: 0.0,
                pw_mcc: 0.0,
                shared: [("0.7".to_owned(), 0.0)].into(),
                ..Default::default()
            };
            align.insert(
                p.step.clone(),
                AlignOutput {
                    d_in_a: D_IN,
                    d_in_b: D_IN,
                    d_sae_a: D_IN * a.ratio as usize,
                    d_sae_b: D_IN * b.ratio as usize,
                    mmcs: [(
                        "decoder".to_owned(),
                        Directions {
                            a_to_b: 0.2,
                            b_to_a: 0.2,
                        },
                    )]
                    .into(),
                    matching: [("decoder".to_owned(), matching)].into(),
                    correlation: Some(concord_core::outputs::CorrelationSummary {
                        centred: Directions {
                            a_to_b: 0.3,
                            b_to_a: 0.3,
                        },
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            );
            let last = &align[&p.step];
            for (k, (_, id)) in p.snapshots.iter().rev().enumerate() {
                let mut al: AlignOutput = Clone::clone(last);
                let down = drift * (k + 1) as f64;
                for d in al.mmcs.values_mut() {
                    d.a_to_b -= down;
                    d.b_to_a -= down;
                }
                for m in al.matching.values_mut() {
                    m.shared
                        .values_mut()
                        .for_each(|v| *v = (*v - down).max(0.0));
                }
                snapshot_align.insert(id.clone(), al);
            }
            if let Some(n) = &p.null {
                // The null step ran with the study file's (wrong) d_model.
                null.insert(
                    n.clone(),
                    NullOutput {
                        d: a.d_in,
                        n_a: a.d_sae(),
                        n_b: b.d_sae(),
                        seeds: 1,
                        analytic: Directions {
                            a_to_b: 0.9,
                            b_to_a: 0.9,
                        },
                        ..Default::default()
                    },
                );
            }
        }
        // L0 spread wide enough for a mean-and-t interval to cross zero.
        let eval = (0..plan.saes.len())
            .map(|i| {
                let e = EvalOutput {
                    l0: if i % 2 == 0 { 1.0 } else { 80.0 },
                    fvu: 0.5,
                    ..Default::default()
                };
                (i, e)
            })
            .collect();
        Outputs {
            align,
            null,
            eval,
            snapshot_align,
            snapshot_eval: BTreeMap::new(),
            tokens: BTreeMap::new(),
            store_rows: BTreeMap::new(),
        }
    }

    fn assembled() -> (Plan, Report, Vec<ResultRow>) {
        assembled_from(STUDY)
    }

    fn assembled_from(text: &str) -> (Plan, Report, Vec<ResultRow>) {
        let study = Study::parse(text, Path::new("t.toml")).unwrap();
        let plan = plan(&study, Path::new("/c.jsonl"), &PlanOptions::default());
        let (report, rows) = assemble(&plan, &outputs(&plan)).unwrap();
        (plan, report, rows)
    }

    fn finding<'r>(r: &'r Report, question: &str) -> &'r Finding {
        r.findings
            .iter()
            .find(|f| f.question.starts_with(question))
            .unwrap_or_else(|| panic!("no finding {question:?}: {:#?}", r.findings))
    }

    #[test]
    fn findings_on_saes_not_shown_converged_give_no_verdict() {
        // Three init seeds: three pairs, enough for verdicts.
        let three = STUDY.replace(
            "init_seeds = [0, 1]\n[[grid]]\nname = \"archs\"",
            "init_seeds = [0, 1, 2]\n[[grid]]\nname = \"archs\"",
        );
        // No snapshots: nothing shows convergence.
        let (_, report, _) = assembled_from(&three);
        let seed = finding(&report, "Seed: do SAEs that differ only in init seed");
        assert!(
            seed.verdict.starts_with("no verdict: no snapshots"),
            "{}",
            seed.verdict
        );
        // Snapshots after 1/4 and 1/2 of the steps (1000 tokens of 2048-token batches: one
        // step, so more tokens): settled curves converge, rising ones do not.
        let text = three.replace("tokens = 1000\n", "tokens = 40960\nsnapshots = 3\n");
        let study = Study::parse(&text, Path::new("t.toml")).unwrap();
        let plan = plan(&study, Path::new("/c.jsonl"), &PlanOptions::default());
        let seeds = plan.pairs.iter().find(|p| p.varies == "init_seed").unwrap();
        assert_eq!(
            seeds.snapshots.iter().map(|s| s.0).collect::<Vec<_>>(),
            [5, 10]
        );
        let (report, rows) = assemble(&plan, &outputs(&plan)).unwrap();
        let conv = finding(&report, "Convergence");
        assert!(conv.verdict.starts_with("converged"), "{}", conv.verdict);
        let seed = finding(&report, "Seed: do SAEs that differ only in init seed");
        assert!(!seed.verdict.contains("no verdict: "), "{}", seed.verdict);
        // Rows for every snapshot of the seed pairs, with their (nominal) tokens.
        let tokens: Vec<(u64, u64)> = rows
            .iter()
            .filter(|r| r.question == "seed" && r.comparison.starts_with("init_seed"))
            .map(|r| (r.tokens_a.unwrap(), r.tokens_b.unwrap()))
            .collect();
        assert!(
            tokens.contains(&(40960, 40960)) && tokens.contains(&(10240, 10240)),
            "{tokens:?}"
        );
        let (report, _) = assemble(&plan, &outputs_with_drift(&plan, 0.05)).unwrap();
        let conv = finding(&report, "Convergence");
        assert!(
            conv.verdict.starts_with("not converged"),
            "{}",
            conv.verdict
        );
        let seed = finding(&report, "Seed: do SAEs that differ only in init seed");
        assert!(seed.verdict.starts_with("no verdict: "), "{}", seed.verdict);
        assert!(report.findings.len() > 3);
        for f in report.findings.iter().skip(1) {
            assert!(
                f.verdict.contains("no verdict"),
                "{}: {}",
                f.question,
                f.verdict
            );
        }
        let figs: Vec<&str> = report.figures().map(|f| f.id.as_str()).collect();
        assert!(
            figs.contains(&"convergence-mmcs") && figs.contains(&"convergence-shared"),
            "{figs:?}"
        );
    }

    #[test]
    fn shapes_come_from_the_saes_and_nulls_of_another_shape_are_dropped() {
        let (_, report, rows) = assembled();
        let size = rows.iter().find(|r| r.question == "size").unwrap();
        assert_eq!(size.metrics["d_sae_a"], D_IN as f64);
        assert_eq!(size.metrics["d_sae_b"], 2.0 * D_IN as f64);
        assert!(
            !size.metrics.contains_key("null_analytic_max_cos_a_to_b"),
            "{:?}",
            size.metrics
        );
        assert!(
            report
                .findings
                .iter()
                .all(|f| !f.ours.contains("null 0.900"))
        );
    }

    #[test]
    fn the_report_has_the_caveats_its_verdicts_refer_to() {
        let (_, report, _) = assembled();
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.verdict.contains("see caveats"))
        );
        let all = report.caveats.join("\n");
        for needle in [
            "Short training",
            "init artefact",
            "Intervals:",
            "Repeated SAEs",
        ] {
            assert!(all.contains(needle), "{needle}: {all}");
        }
    }

    #[test]
    fn repeated_saes_count_once_and_bounded_intervals_stay_in_range() {
        let (plan, report, _) = assembled();
        // The 1:1 i0 d0 relu SAE is in all three grids, the 1:1 i1 d0 relu SAE in two.
        assert_eq!(plan.saes.len(), 2 + 2 + 4);
        let which = finding(&report, "Which features");
        assert!(which.ours.contains("(n = 5)"), "{}", which.ours);
        assert!(!which.ours.contains("[-"), "{}", which.ours);
        assert!(report.caveats.iter().any(|c| c.contains("3 such repeated")));
        let table = report
            .sections
            .iter()
            .flat_map(|s| &s.tables)
            .find(|t| t.header.first().is_some_and(|h| h == "SAE"))
            .unwrap();
        assert_eq!(table.rows.len(), 5);
        // One init-seed pair in the seed grid, the same pair again in the arch grid.
        let seed = finding(&report, "Seed: do SAEs that differ only in init seed");
        assert!(seed.ours.contains("(n = 1)"), "{}", seed.ours);
        assert_eq!(seed.verdict, "n = 1, no verdict");
    }

    #[test]
    fn arch_verdicts_claim_no_difference_on_a_tie_or_one_pair() {
        let (_, report, _) = assembled();
        let arch = finding(&report, "Architecture");
        assert!(arch.verdict.contains("no verdict"), "{}", arch.verdict);
        let i = |mean: f64, lo: f64, hi: f64, n: usize| Interval { mean, lo, hi, n };
        let verdict = Ctx::arch_verdict;
        assert!(verdict(&i(0.0, 0.0, 0.0, 3), &i(0.0, 0.0, 0.0, 3)).starts_with("tie"));
        assert!(verdict(&i(0.5, 0.4, 0.6, 3), &i(0.45, 0.3, 0.5, 3)).contains("overlap"));
        assert!(verdict(&i(0.5, 0.4, 0.6, 3), &i(0.2, 0.1, 0.3, 3)).starts_with("agrees"));
        assert!(verdict(&i(0.2, 0.1, 0.3, 3), &i(0.5, 0.4, 0.6, 3)).starts_with("disagrees"));
    }

    #[test]
    fn one_layer_per_model_gives_no_depth_verdict() {
        let text = format!(
            "{STUDY}\n[[grid]]\nname = \"enc\"\nquestion = \"model\"\nmodel = \"e\"\nlayers = [3]\nratios = [1]\nversus = \"seeds\"\n"
        )
        .replace(
            "[train]",
            "[models.e]\nmodel = \"minilm-l6\"\nn_layers = 6\nd_model = 4\ncausal = false\nhook = \"hook_mlp_out\"\nlayers = [3]\n[train]",
        );
        let (_, report, _) = assembled_from(&text);
        let model = finding(&report, "Model");
        assert!(model.verdict.starts_with("no verdict"), "{}", model.verdict);
    }

    #[test]
    fn intervals_are_clipped_to_the_range_widened_by_observations() {
        let i = interval_in(&[1.0, 80.0], NON_NEGATIVE);
        assert!(i.lo == 0.0 && i.hi > 80.0, "{i:?}");
        let i = interval_in(&[0.9, 1.0, 0.2], UNIT);
        assert!(i.lo >= 0.0 && i.hi == 1.0, "{i:?}");
        let i = interval_in(&[-0.5, 0.5], UNIT);
        assert_eq!(i.lo, -0.5);
    }
}
