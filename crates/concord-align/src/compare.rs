//! The whole weight-space comparison of two SAEs: MMCS both ways, exact matching, nulls,
//! for decoders and encoders; what `concord align` writes as JSON.

use serde::{Deserialize, Serialize};

use concord_core::SaeWeights;

use crate::corr::{CorrelationSummary, StudyScore};
use crate::matching::{MatchOptions, Pair, match_dicts_as};
use crate::metrics::{MatchSummary, SHARED_THRESHOLDS, summarize};
use crate::nulls::{Interval, derive_seed, expected_max_cos, interval, isotropic, rand_like};
use crate::scan::{ScanOptions, scan};
use crate::{Dict, Error, Result};

/// Knobs of [`compare`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompareOptions {
    pub matching: MatchOptions,
    /// Also compare the encoders (columns of `W_enc`).
    pub encoder: bool,
    /// Thresholds of the shared fraction.
    pub thresholds: Vec<f64>,
    /// Seeds of each null (0: no nulls).
    pub null_seeds: usize,
    /// The first null seed; seed `s` of a null draws from `derive_seed(null_seed + s, kind)`.
    pub null_seed: u64,
    /// Also match against the random dictionaries of the nulls (costs one matching per seed).
    pub null_matching: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            matching: MatchOptions::default(),
            encoder: true,
            thresholds: SHARED_THRESHOLDS.to_vec(),
            null_seeds: 0,
            null_seed: 0,
            null_matching: true,
        }
    }
}

/// A score in both directions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirectionPair {
    pub a_to_b: f64,
    pub b_to_a: f64,
}

/// MMCS of decoders and encoders.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MmcsReport {
    pub decoder: DirectionPair,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder: Option<DirectionPair>,
}

/// Matching summaries of decoders and encoders.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatchingReport {
    pub decoder: MatchSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder: Option<MatchSummary>,
}

/// One null's scores over seeds, for one kind of dictionary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NullScores {
    pub label: String,
    pub mmcs_a_to_b: Interval,
    pub mmcs_b_to_a: Interval,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_cos: Option<Interval>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_0_5: Option<Interval>,
}

/// The nulls: `a` against random dictionaries of `b`'s shape (and `b` against `a`'s shape for
/// the other direction of the analytic value).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NullReport {
    /// `E[max cos]` of a unit vector against `n_b` (resp. `n_a`) isotropic random unit
    /// vectors in `d` dimensions: the expected MMCS against an isotropic null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_mmcs: Option<DirectionPair>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isotropic_decoder: Option<NullScores>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isotropic_encoder: Option<NullScores>,
    /// The study's baseline (`rand_like`, uniform [0, 1) entries): biased, kept as labelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rand_like_decoder: Option<NullScores>,
}

/// Activation-space results, filled in by the caller that has the activations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CorrelationReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pearson: Option<CorrelationSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permutation_null: Option<DirectionPairIntervals>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub study: Vec<StudyScore>,
}

/// Intervals of a score in both directions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirectionPairIntervals {
    pub a_to_b: Interval,
    pub b_to_a: Interval,
}

/// Matched pairs of decoders and encoders (the per-feature table; not in the JSON).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Matches {
    pub decoder: Vec<Pair>,
    pub encoder: Vec<Pair>,
}

/// The comparison of two SAEs, serialised as `concord align`'s JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub n_a: usize,
    pub n_b: usize,
    pub d: usize,
    pub mmcs: MmcsReport,
    pub matching: MatchingReport,
    pub null: NullReport,
    pub correlation: CorrelationReport,
    /// Features whose vector is zero, `[in a, in b]`: their cosine with everything is 0, and
    /// they take part in MMCS and the matching at that value (as in scipy on the cosines).
    pub zero_features: ZeroFeatures,
    #[serde(skip)]
    pub matches: Matches,
}

/// Zero-norm features of each kind, `[in a, in b]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ZeroFeatures {
    pub decoder: [usize; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder: Option<[usize; 2]>,
}

/// Compares two SAEs' decoders (rows of `W_dec`) and encoders (columns of `W_enc`).
pub fn compare(a: &SaeWeights, b: &SaeWeights, opts: &CompareOptions) -> Result<Comparison> {
    if a.d_in != b.d_in {
        return Err(Error::DimensionMismatch {
            a: "sae a",
            b: "sae b",
            d_a: a.d_in,
            d_b: b.d_in,
        });
    }
    let dec_a = Dict::from_rows("W_dec of a", a.decoder_rows(), a.d_sae, a.d_in)?;
    let dec_b = Dict::from_rows("W_dec of b", b.decoder_rows(), b.d_sae, b.d_in)?;
    let enc = if opts.encoder {
        let ea = Dict::from_rows("W_enc of a", &a.encoder_rows(), a.d_sae, a.d_in)?;
        let eb = Dict::from_rows("W_enc of b", &b.encoder_rows(), b.d_sae, b.d_in)?;
        Some((ea, eb))
    } else {
        None
    };
    compare_dicts(&dec_a, &dec_b, enc.as_ref().map(|(x, y)| (x, y)), opts)
}

/// [`compare`] on dictionaries: decoders `(n_a, d)`, `(n_b, d)` and optionally encoders of
/// the same shapes.
pub fn compare_dicts(
    dec_a: &Dict,
    dec_b: &Dict,
    enc: Option<(&Dict, &Dict)>,
    opts: &CompareOptions,
) -> Result<Comparison> {
    let (dec_mmcs, dec_match, dec_pairs) = one_kind(dec_a, dec_b, opts)?;
    let (enc_mmcs, enc_match, enc_pairs) = match enc {
        Some((ea, eb)) => {
            let (m, s, p) = one_kind(ea, eb, opts)?;
            (Some(m), Some(s), p)
        }
        None => (None, None, Vec::new()),
    };
    let mut null = NullReport::default();
    if opts.null_seeds > 0 {
        let d = dec_a.d;
        null.expected_mmcs = Some(DirectionPair {
            a_to_b: expected_max_cos(d, dec_b.n),
            b_to_a: expected_max_cos(d, dec_a.n),
        });
        null.isotropic_decoder = Some(null_scores(dec_a, dec_b.n, opts, NullKind::Isotropic)?);
        if let Some((ea, eb)) = enc {
            null.isotropic_encoder = Some(null_scores(ea, eb.n, opts, NullKind::Isotropic)?);
        }
        null.rand_like_decoder = Some(null_scores(dec_a, dec_b.n, opts, NullKind::RandLike)?);
    }
    Ok(Comparison {
        n_a: dec_a.n,
        n_b: dec_b.n,
        d: dec_a.d,
        mmcs: MmcsReport {
            decoder: dec_mmcs,
            encoder: enc_mmcs,
        },
        matching: MatchingReport {
            decoder: dec_match,
            encoder: enc_match,
        },
        null,
        correlation: CorrelationReport::default(),
        zero_features: ZeroFeatures {
            decoder: [dec_a.zero_rows, dec_b.zero_rows],
            encoder: enc.map(|(ea, eb)| [ea.zero_rows, eb.zero_rows]),
        },
        matches: Matches {
            decoder: dec_pairs,
            encoder: enc_pairs,
        },
    })
}

/// MMCS and matching of one kind of dictionary, sharing one fused pass.
fn one_kind(
    a: &Dict,
    b: &Dict,
    opts: &CompareOptions,
) -> Result<(DirectionPair, MatchSummary, Vec<Pair>)> {
    let dense = opts.matching.dense_for(a, b);
    let top_k = if dense { 0 } else { opts.matching.scan_k() };
    let sc = scan(
        a,
        b,
        &ScanOptions {
            top_k,
            blocking: opts.matching.blocking,
        },
    )?;
    let mmcs = DirectionPair {
        a_to_b: sc.mmcs_a_to_b(),
        b_to_a: sc.mmcs_b_to_a(),
    };
    let m = match_dicts_as(a, b, Some(&sc), &opts.matching, dense)?;
    let summary = summarize(&m, a.n, b.n, &opts.thresholds);
    Ok((mmcs, summary, m.pairs))
}

#[derive(Clone, Copy, Debug)]
enum NullKind {
    Isotropic,
    RandLike,
}

/// `a` against random dictionaries of `n_b` rows, one per seed.
fn null_scores(a: &Dict, n_b: usize, opts: &CompareOptions, kind: NullKind) -> Result<NullScores> {
    let (mut ab, mut ba, mut mc, mut sh) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for s in 0..opts.null_seeds as u64 {
        let seed = derive_seed(opts.null_seed + s, kind as u64 + 1);
        let r = match kind {
            NullKind::Isotropic => isotropic(n_b, a.d, seed)?,
            NullKind::RandLike => rand_like(n_b, a.d, seed)?,
        };
        if opts.null_matching {
            let (mmcs, summary, _) = one_kind(a, &r, opts)?;
            ab.push(mmcs.a_to_b);
            ba.push(mmcs.b_to_a);
            mc.push(summary.mean_cos);
            sh.push(summary.shared.get("0.5").copied().unwrap_or(f64::NAN));
        } else {
            let sc = scan(
                a,
                &r,
                &ScanOptions {
                    top_k: 0,
                    blocking: opts.matching.blocking,
                },
            )?;
            ab.push(sc.mmcs_a_to_b());
            ba.push(sc.mmcs_b_to_a());
        }
    }
    let label = match kind {
        NullKind::Isotropic => "isotropic random dictionary of b's shape",
        NullKind::RandLike => "study-faithful rand_like (uniform [0,1) entries): biased",
    };
    Ok(NullScores {
        label: label.to_owned(),
        mmcs_a_to_b: interval(ab),
        mmcs_b_to_a: interval(ba),
        mean_cos: opts.null_matching.then(|| interval(mc)),
        shared_0_5: opts.null_matching.then(|| interval(sh)),
    })
}
