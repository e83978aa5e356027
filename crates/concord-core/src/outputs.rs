//! The JSON files the study's steps write and the report reads: `align.json` (`concord align`),
//! `null.json` (`concord null`) and `eval.json` (`concord eval`).
//!
//! They live in the vocabulary crate because two sides meet on them: the CLI writes them from
//! the alignment and training crates' results, the study crate reads them into the report.
//! Every field added later must have a default so older files still read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A score in both directions (e.g. MMCS from A to B and from B to A).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Directions {
    pub a_to_b: f64,
    pub b_to_a: f64,
}

/// A mean with a 95 % interval over `n` seeds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

impl Interval {
    /// The interval of no values: NaNs.
    fn undefined() -> Interval {
        Interval {
            mean: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
            n: 0,
        }
    }

    /// The mean and a normal-approximation 95 % interval (t-quantile for small n) of `xs`.
    pub fn of(xs: &[f64]) -> Interval {
        let n = xs.len();
        if n == 0 {
            return Interval::undefined();
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Interval {
                mean,
                lo: mean,
                hi: mean,
                n,
            };
        }
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        // Two-sided 97.5 % quantiles of Student's t for 1..=30 degrees of freedom.
        const T: [f64; 30] = [
            12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
            2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
            2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
        ];
        let t = T.get(n - 2).copied().unwrap_or(1.96);
        let half = t * (var / n as f64).sqrt();
        Interval {
            mean,
            lo: mean - half,
            hi: mean + half,
            n,
        }
    }

    /// The mean and the 2.5 % and 97.5 % quantiles of `xs` (linearly interpolated): where
    /// a null's values fall, as opposed to [`Interval::of`], an interval for their mean.
    pub fn quantiles(xs: &[f64]) -> Interval {
        let n = xs.len();
        if n == 0 {
            return Interval::undefined();
        }
        let mut sorted = xs.to_vec();
        sorted.sort_by(f64::total_cmp);
        let q = |p: f64| {
            let x = p * (n - 1) as f64;
            let (i, f) = (x.floor() as usize, x - x.floor());
            sorted[i] + f * (sorted[(i + 1).min(n - 1)] - sorted[i])
        };
        Interval {
            mean: xs.iter().sum::<f64>() / n as f64,
            lo: q(0.025),
            hi: q(0.975),
            n,
        }
    }
}

/// The summary of an exact one-to-one matching.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MatchSummary {
    /// Mean cosine over matched pairs.
    pub mean_cos: f64,
    /// Mean |cosine| over matched pairs (Song et al.'s PW-MCC for one pair of SAEs).
    #[serde(default)]
    pub pw_mcc: f64,
    /// Share of the smaller side matched above 0.5, 0.7 and 0.9 (keys `"0.5"`, ...).
    pub shared: BTreeMap<String, f64>,
    /// Whether the matching is proven optimal.
    pub optimal: bool,
    /// `(threshold, shared fraction)` for thresholds 0, 0.05, ..., 1.
    #[serde(default)]
    pub shared_curve: Vec<(f64, f64)>,
}

/// Feature families across sizes: for each feature of the smaller SAE, the features of the
/// larger one whose decoder cosine with it exceeds `threshold`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FamilySummary {
    pub threshold: f64,
    /// Features of the smaller SAE.
    pub parents: usize,
    /// Of those, how many have at least one child, and at least two (they split).
    pub with_children: usize,
    pub split: usize,
    pub mean_children: f64,
    pub max_children: usize,
}

/// Activation correlation of two SAEs' features on shared tokens.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CorrelationSummary {
    /// Centred Pearson, mean of row maxima, each way (dead features excluded).
    pub centred: Directions,
    pub dead_a: usize,
    pub dead_b: usize,
    pub tokens: u64,
    /// The study's per-prompt z-scored variant (one direction, A to B).
    #[serde(default)]
    pub study_zscore: Option<f64>,
    /// The study's uncentred cosine of activation vectors (its line figure), A to B.
    #[serde(default)]
    pub study_uncentred: Option<f64>,
    /// The permutation null of the centred A-to-B score.
    #[serde(default)]
    pub permutation_null: Option<Interval>,
}

/// Matched cosine by the activation frequency of the features of A.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FrequencyBin {
    pub lo: f64,
    pub hi: f64,
    pub features: usize,
    pub mean_matched_cos: f64,
}

/// A text snippet where a feature fires strongly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snippet {
    pub doc: u64,
    pub text: String,
    pub act: f32,
}

/// A matched pair of features with the text they fire on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub a: usize,
    pub b: usize,
    pub cos: f64,
    pub a_top: Vec<Snippet>,
    pub b_top: Vec<Snippet>,
}

/// `align.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlignOutput {
    pub a: String,
    pub b: String,
    pub d_in_a: usize,
    pub d_in_b: usize,
    pub d_sae_a: usize,
    pub d_sae_b: usize,
    /// `"decoder"` and `"encoder"`; empty for SAEs of different widths.
    pub mmcs: BTreeMap<String, Directions>,
    pub matching: BTreeMap<String, MatchSummary>,
    #[serde(default)]
    pub families: Option<FamilySummary>,
    /// Features whose vector is zero, per kind (`"decoder"`, `"encoder"`), when there are
    /// any: they count as cosine 0 with everything in MMCS and the matching.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub zero_features: BTreeMap<String, Counts>,
    /// Nulls computed by this command (`--null N`): `"isotropic"`, `"rand_like"`.
    #[serde(default)]
    pub null: BTreeMap<String, NullStats>,
    /// Written as `{}` when the command had no activations to correlate.
    #[serde(default, with = "empty_as_none")]
    pub correlation: Option<CorrelationSummary>,
    #[serde(default)]
    pub by_frequency: Vec<FrequencyBin>,
    #[serde(default)]
    pub examples: Vec<Example>,
    #[serde(default)]
    pub seconds: f64,
}

/// Serialises `None` as `{}` and reads `{}` (or `null`) back as `None`.
mod empty_as_none {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => v.serialize(s),
            None => serde_json::Map::new().serialize(s),
        }
    }

    pub fn deserialize<'de, T: serde::de::DeserializeOwned, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match &v {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::Object(m) if m.is_empty() => Ok(None),
            _ => serde_json::from_value(v)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// A count for each SAE of a pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub a: usize,
    pub b: usize,
}

/// A null's scores over its seeds; each interval holds the 2.5 % and 97.5 % quantiles of
/// the seeds' values ([`Interval::quantiles`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NullStats {
    /// What the null is; the study's `rand_like` baseline says it is biased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub mmcs_decoder: Option<(Interval, Interval)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmcs_encoder: Option<(Interval, Interval)>,
    pub matching_mean_cos: Option<Interval>,
    pub shared: BTreeMap<String, Interval>,
    /// For the isotropic null, the analytic expectation of MMCS: `E[max cos]` of a random unit
    /// vector against `n_b` (resp. `n_a`) others in `d` dimensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analytic: Option<Directions>,
}

/// `null.json`: nulls for one shape `(d, n_a, n_b)`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NullOutput {
    pub d: usize,
    pub n_a: usize,
    pub n_b: usize,
    pub seeds: usize,
    /// Isotropic random unit dictionaries.
    pub isotropic: NullStats,
    /// The study's all-positive `rand_like` baseline (biased: labelled as such).
    pub rand_like: NullStats,
    /// Expected max cosine of one random unit vector against `n_b` (resp. `n_a`) others.
    pub analytic: Directions,
}

/// `eval.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalOutput {
    pub tokens: u64,
    pub mse: f64,
    pub fvu: f64,
    pub l0: f64,
    pub dead_fraction: f64,
    pub dense_fraction: f64,
    /// Per feature: the fraction of tokens it is active on.
    pub frequency: Vec<f32>,
    #[serde(default)]
    pub loss_recovered: Option<f64>,
    #[serde(default)]
    pub kl: Option<f64>,
    #[serde(default)]
    pub ce_clean: Option<f64>,
    #[serde(default)]
    pub ce_spliced: Option<f64>,
    #[serde(default)]
    pub ce_zero_ablated: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_uses_t_quantiles() {
        let i = Interval::of(&[1.0, 2.0, 3.0]);
        assert_eq!(i.mean, 2.0);
        // sd = 1, n = 3: half width = 4.303 / sqrt(3).
        assert!((i.hi - 2.0 - 4.303 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(Interval::of(&[5.0]).lo, 5.0);
        assert!(Interval::of(&[]).mean.is_nan());
    }

    #[test]
    fn quantiles_stay_within_the_values() {
        let i = Interval::quantiles(&[0.9, 1.0, 0.95]);
        assert!((i.mean - 0.95).abs() < 1e-12);
        // Positions 0.05 and 1.95 of the sorted values: within [min, max], unlike a t interval.
        assert!((i.lo - 0.9025).abs() < 1e-12 && (i.hi - 0.9975).abs() < 1e-12);
        assert!(Interval::of(&[0.9, 1.0, 0.95]).hi > 1.0);
        assert_eq!(Interval::quantiles(&[0.3]).hi, 0.3);
        assert!(Interval::quantiles(&[]).mean.is_nan());
    }

    #[test]
    fn align_output_keeps_the_issue_shape() {
        let mut out = AlignOutput::default();
        out.mmcs.insert(
            "decoder".into(),
            Directions {
                a_to_b: 0.5,
                b_to_a: 0.25,
            },
        );
        let v = serde_json::to_value(&out).unwrap();
        assert_eq!(v["mmcs"]["decoder"]["a_to_b"], 0.5);
        assert_eq!(v["correlation"], serde_json::json!({}));
        assert_eq!(v["null"], serde_json::json!({}));
        let back: AlignOutput = serde_json::from_str(r#"{"a":"x","b":"y","d_in_a":1,"d_in_b":1,"d_sae_a":2,"d_sae_b":2,"mmcs":{},"matching":{}}"#).unwrap();
        assert_eq!(back.a, "x");
    }
}
