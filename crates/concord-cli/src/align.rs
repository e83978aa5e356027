//! `concord align` (compare two SAEs) and `concord null` (nulls for one shape): the alignment
//! crate's results mapped onto the files the study reads (`concord_core::outputs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use concord_align::output::{self, WeightSpaceOptions, curve_thresholds};
use concord_align::{CompareOptions, nulls};
use concord_core::fsutil;
use concord_core::outputs::{AlignOutput, Directions, Interval, NullOutput, NullStats};
use concord_core::sae::Sae;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The first SAE: a SAELens-layout folder (`cfg.json`, `sae_weights.safetensors`) or a
    /// dictionary_learning `ae.pt` file.
    #[arg(long)]
    a: PathBuf,
    /// The second SAE.
    #[arg(long)]
    b: PathBuf,
    /// Where to write the comparison (JSON).
    #[arg(long)]
    out: PathBuf,
    /// The hook dataset (`STORE/<hook name>`) of the first SAE's activations.
    #[arg(long, requires = "acts_b")]
    acts_a: Option<PathBuf>,
    /// The hook dataset of the second SAE's activations (same text; another model's store is
    /// aligned by byte spans).
    #[arg(long, requires = "acts_a")]
    acts_b: Option<PathBuf>,
    /// Seeds of each null computed for this pair (0: none).
    #[arg(long, default_value_t = 0)]
    null: usize,
    /// Also write the per-feature match table (parquet).
    #[arg(long)]
    matches: Option<PathBuf>,
    /// Compare only activations (SAEs of models of different widths).
    #[arg(long, requires = "acts_a")]
    activations_only: bool,
    /// The corpus the stores were harvested from (a file, a folder or a Hugging Face dataset
    /// id, as for `harvest --corpus`): matched-pair examples then show the text their features
    /// fire on.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Decoder cosine above which a feature of the larger SAE joins a family of the smaller's.
    #[arg(long, default_value_t = 0.5)]
    family_threshold: f32,
    /// Tokens of the first store the activation comparison reads, from its start (0: all).
    #[arg(long, default_value_t = 24_000)]
    acts_tokens: u64,
}

/// Reads an SAE as `eval` does (a SAELens folder or a dictionary_learning `ae.pt`, named
/// after its activations' dataset when one is given).
fn load(path: &std::path::Path, acts: Option<&PathBuf>) -> Result<Sae> {
    let ds = match acts {
        Some(dir) if path.is_file() => Some(concord_store::Dataset::open(dir)?),
        _ => None,
    };
    crate::eval::load_sae(path, ds.as_ref())
}

pub fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    if let Some(matches) = &args.matches
        && resolved(matches) == resolved(&args.out)
    {
        bail!(
            "--matches and --out are the same file ({}): the table would be overwritten by the JSON",
            args.out.display()
        );
    }
    let (a, b) = (
        load(&args.a, args.acts_a.as_ref())?,
        load(&args.b, args.acts_b.as_ref())?,
    );
    let mut out = AlignOutput {
        a: args.a.display().to_string(),
        b: args.b.display().to_string(),
        d_in_a: a.cfg.d_in,
        d_in_b: b.cfg.d_in,
        d_sae_a: a.cfg.d_sae,
        d_sae_b: b.cfg.d_sae,
        ..AlignOutput::default()
    };
    let mut matched = Vec::new();
    if !args.activations_only {
        if a.cfg.d_in != b.cfg.d_in {
            bail!(
                "dimension mismatch: {} has d_in = {}, {} has d_in = {}; SAEs of different widths can only be compared by \
                 activations (--acts-a, --acts-b, --activations-only)",
                args.a.display(),
                a.cfg.d_in,
                args.b.display(),
                b.cfg.d_in
            );
        }
        let opts = WeightSpaceOptions {
            null_seeds: args.null,
            family_threshold: args.family_threshold,
        };
        let cmp = output::weight_space(&mut out, &a.weights, &b.weights, &opts)?;
        for (kind, n) in &out.zero_features {
            tracing::warn!(
                "{kind}: {} features of a and {} of b are zero vectors; they count as cosine 0 \
                 with everything",
                n.a,
                n.b
            );
        }
        for (kind, m) in &out.matching {
            if !m.optimal {
                tracing::warn!(
                    "the {kind} matching is not proven optimal (see docs/design/matching.md): \
                     its mean cosine may be below the optimum"
                );
            }
        }
        matched = cmp.matches.decoder;
    }
    let mut freqs = None;
    if let (Some(acts_a), Some(acts_b)) = (&args.acts_a, &args.acts_b) {
        freqs = Some(crate::correlate::run(
            &mut out,
            (&a, &args.a),
            (&b, &args.b),
            acts_a,
            acts_b,
            args.corpus.as_deref(),
            &matched,
            args.acts_tokens,
        )?);
    }
    if let Some(path) = &args.matches {
        if matched.is_empty() {
            bail!(
                "--matches: SAEs compared by activations only have no weight-space matching to write"
            );
        }
        let (fa, fb) = freqs.as_ref().map_or((None, None), |(a, b)| {
            (Some(a.as_slice()), Some(b.as_slice()))
        });
        crate::store_glue::write_matches(path, &matched, fa, fb)?;
    }
    out.seconds = start.elapsed().as_secs_f64();
    fsutil::write_json_atomic(&args.out, &out)?;
    Ok(())
}

/// `path` as the file system will see it: the file itself resolved when it exists (links,
/// `..`), else its resolved folder and its name; as given when neither resolves.
fn resolved(path: &std::path::Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    match (parent.canonicalize(), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
    }
}

#[derive(Debug, clap::Args)]
pub struct NullArgs {
    /// Width of the feature directions (d_model).
    #[arg(long)]
    d: usize,
    /// Features of the first dictionary.
    #[arg(long)]
    n_a: usize,
    /// Features of the second dictionary.
    #[arg(long)]
    n_b: usize,
    /// Seeds of each null.
    #[arg(long, default_value_t = 3)]
    seeds: usize,
    /// The first seed (seed `s` uses `seed + s`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the nulls (JSON).
    #[arg(long)]
    out: PathBuf,
}

/// Isotropic random dictionaries of both shapes compared as real SAEs are (MMCS, exact
/// matching, shared fractions), and the study's `rand_like` baseline against an isotropic one.
pub fn run_null(args: &NullArgs) -> Result<()> {
    if args.d < 2 || args.n_a == 0 || args.n_b == 0 || args.seeds == 0 {
        bail!(
            "null: d must be at least 2 and n-a, n-b, seeds at least 1 (got d={}, n-a={}, n-b={}, seeds={})",
            args.d,
            args.n_a,
            args.n_b,
            args.seeds
        );
    }
    let opts = CompareOptions {
        encoder: false,
        thresholds: curve_thresholds(),
        ..CompareOptions::default()
    };
    let mut iso: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut shared: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut rl: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for s in 0..args.seeds as u64 {
        let seed = args.seed + 3 * s;
        let a = nulls::isotropic(args.n_a, args.d, seed)?;
        let b = nulls::isotropic(args.n_b, args.d, seed + 1)?;
        let cmp = concord_align::compare_dicts(&a, &b, None, &opts)?;
        iso.entry("ab").or_default().push(cmp.mmcs.decoder.a_to_b);
        iso.entry("ba").or_default().push(cmp.mmcs.decoder.b_to_a);
        iso.entry("mean_cos")
            .or_default()
            .push(cmp.matching.decoder.mean_cos);
        for (t, v) in &cmp.matching.decoder.shared {
            shared.entry(t.clone()).or_default().push(*v);
        }
        let r = nulls::rand_like(args.n_b, args.d, seed + 2)?;
        let scan = concord_align::scan(&a, &r, &concord_align::ScanOptions::default())?;
        rl.entry("ab").or_default().push(scan.mmcs_a_to_b());
        rl.entry("ba").or_default().push(scan.mmcs_b_to_a());
    }
    let analytic = Directions {
        a_to_b: nulls::expected_max_cos(args.d, args.n_b),
        b_to_a: nulls::expected_max_cos(args.d, args.n_a),
    };
    let out = NullOutput {
        d: args.d,
        n_a: args.n_a,
        n_b: args.n_b,
        seeds: args.seeds,
        isotropic: NullStats {
            label: Some("isotropic random dictionaries of both shapes".into()),
            mmcs_decoder: Some((
                Interval::quantiles(&iso["ab"]),
                Interval::quantiles(&iso["ba"]),
            )),
            matching_mean_cos: Some(Interval::quantiles(&iso["mean_cos"])),
            shared: shared
                .iter()
                .map(|(t, v)| (t.clone(), Interval::quantiles(v)))
                .collect(),
            analytic: Some(analytic),
            ..NullStats::default()
        },
        rand_like: NullStats {
            label: Some(
                "study-faithful rand_like (uniform [0,1) entries) against an isotropic a: biased"
                    .into(),
            ),
            mmcs_decoder: Some((
                Interval::quantiles(&rl["ab"]),
                Interval::quantiles(&rl["ba"]),
            )),
            ..NullStats::default()
        },
        analytic,
    };
    fsutil::write_json_atomic(&args.out, &out)?;
    Ok(())
}
