//! The weight-space part of `concord align`'s JSON (`concord_core::outputs::AlignOutput`):
//! MMCS, matchings with their shared-fraction curves, zero features, nulls and feature
//! families of two SAEs. The CLI and the Python package both fill their record here, so
//! `concord_align.compare` in Python returns what `concord align` writes.

use std::collections::BTreeMap;

use concord_core::SaeWeights;
use concord_core::outputs::{
    AlignOutput, Counts, Directions, FamilySummary, Interval, MatchSummary, NullStats,
};

use crate::metrics::{Families, families};
use crate::{CompareOptions, Comparison, Dict, DirectionPair, MatchOptions, Pair, Result, nulls};

/// Knobs of [`weight_space`], with `concord align`'s defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightSpaceOptions {
    /// Seeds of each null computed for the pair (0: none).
    pub null_seeds: usize,
    /// Decoder cosine above which a feature of the larger SAE joins a family of the
    /// smaller's (SAEs of different sizes only).
    pub family_threshold: f32,
}

impl Default for WeightSpaceOptions {
    fn default() -> Self {
        WeightSpaceOptions {
            null_seeds: 0,
            family_threshold: 0.5,
        }
    }
}

/// Thresholds of the shared-fraction curve: 0, 0.05, ..., 1.
pub fn curve_thresholds() -> Vec<f64> {
    (0..=20).map(|i| f64::from(i) / 20.0).collect()
}

/// Compares the weights of two SAEs of the same width and fills `out`'s `mmcs`, `matching`,
/// `zero_features`, `null` and (for different sizes) `families`; returns the comparison,
/// whose `matches` hold the matched pairs.
pub fn weight_space(
    out: &mut AlignOutput,
    a: &SaeWeights,
    b: &SaeWeights,
    opts: &WeightSpaceOptions,
) -> Result<Comparison> {
    let cmp = crate::compare(
        a,
        b,
        &CompareOptions {
            null_seeds: opts.null_seeds,
            ..CompareOptions::default()
        },
    )?;
    fill(out, &cmp);
    if a.d_sae != b.d_sae {
        let da = Dict::from_rows("W_dec of a", a.decoder_rows(), a.d_sae, a.d_in)?;
        let db = Dict::from_rows("W_dec of b", b.decoder_rows(), b.d_sae, b.d_in)?;
        let fam = families(
            &da,
            &db,
            opts.family_threshold,
            64,
            MatchOptions::default().blocking,
        )?;
        out.families = Some(family_summary(&fam));
    }
    Ok(cmp)
}

fn dirs(d: &DirectionPair) -> Directions {
    Directions {
        a_to_b: d.a_to_b,
        b_to_a: d.b_to_a,
    }
}

fn summary(s: &crate::metrics::MatchSummary, pairs: &[Pair], smaller: usize) -> MatchSummary {
    let curve = curve_thresholds()
        .into_iter()
        .map(|t| {
            (
                t,
                pairs.iter().filter(|p| f64::from(p.cos) > t).count() as f64
                    / smaller.max(1) as f64,
            )
        })
        .collect();
    MatchSummary {
        mean_cos: s.mean_cos,
        pw_mcc: s.pw_mcc,
        shared: s.shared.clone(),
        optimal: s.optimal,
        shared_curve: curve,
    }
}

fn interval(i: &nulls::Interval) -> Interval {
    Interval {
        mean: i.mean,
        lo: i.lo,
        hi: i.hi,
        n: i.values.len(),
    }
}

/// Fills MMCS, matchings, zero features and (when asked) the per-pair nulls.
fn fill(out: &mut AlignOutput, cmp: &Comparison) {
    let smaller = cmp.n_a.min(cmp.n_b);
    out.mmcs.insert("decoder".into(), dirs(&cmp.mmcs.decoder));
    out.matching.insert(
        "decoder".into(),
        summary(&cmp.matching.decoder, &cmp.matches.decoder, smaller),
    );
    if let (Some(m), Some(s)) = (&cmp.mmcs.encoder, &cmp.matching.encoder) {
        out.mmcs.insert("encoder".into(), dirs(m));
        out.matching
            .insert("encoder".into(), summary(s, &cmp.matches.encoder, smaller));
    }
    let zero = &cmp.zero_features;
    for (kind, counts) in [("decoder", Some(zero.decoder)), ("encoder", zero.encoder)] {
        if let Some([a, b]) = counts.filter(|c| c.iter().any(|&n| n > 0)) {
            out.zero_features.insert(kind.into(), Counts { a, b });
        }
    }
    let null = &cmp.null;
    for (name, scores) in [
        ("isotropic", &null.isotropic_decoder),
        ("rand_like", &null.rand_like_decoder),
    ] {
        if let Some(s) = scores {
            let mut shared = BTreeMap::new();
            if let Some(x) = &s.shared_0_5 {
                shared.insert("0.5".to_owned(), interval(x));
            }
            let isotropic = name == "isotropic";
            let encoder = null.isotropic_encoder.as_ref().filter(|_| isotropic);
            out.null.insert(
                name.to_owned(),
                NullStats {
                    label: Some(s.label.clone()),
                    mmcs_decoder: Some((interval(&s.mmcs_a_to_b), interval(&s.mmcs_b_to_a))),
                    mmcs_encoder: encoder
                        .map(|e| (interval(&e.mmcs_a_to_b), interval(&e.mmcs_b_to_a))),
                    matching_mean_cos: s.mean_cos.as_ref().map(interval),
                    shared,
                    analytic: null.expected_mmcs.as_ref().filter(|_| isotropic).map(dirs),
                },
            );
        }
    }
}

fn family_summary(f: &Families) -> FamilySummary {
    let sizes: Vec<usize> = f.families.iter().map(|x| x.members.len()).collect();
    FamilySummary {
        threshold: f64::from(f.threshold),
        parents: sizes.len(),
        with_children: sizes.iter().filter(|&&n| n >= 1).count(),
        split: sizes.iter().filter(|&&n| n >= 2).count(),
        mean_children: sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64,
        max_children: sizes.iter().copied().max().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SAE whose decoder rows are `dec` `(n, d)` and whose encoder is its transpose.
    fn sae(dec: &[f32], n: usize, d: usize) -> SaeWeights {
        let mut w_enc = vec![0.0; d * n];
        for i in 0..n {
            for j in 0..d {
                w_enc[j * n + i] = dec[i * d + j];
            }
        }
        SaeWeights {
            d_in: d,
            d_sae: n,
            w_enc,
            b_enc: vec![0.0; n],
            w_dec: dec.to_vec(),
            b_dec: vec![0.0; d],
            threshold: None,
        }
    }

    #[test]
    fn the_record_holds_both_kinds_curves_and_families() {
        // a: e0, e1; b: e1, e0, (e0 + e1) / sqrt 2 and a zero row.
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let a = sae(&[1.0, 0.0, 0.0, 1.0], 2, 2);
        let b = sae(&[0.0, 1.0, 1.0, 0.0, s, s, 0.0, 0.0], 4, 2);
        let mut out = AlignOutput::default();
        let cmp = weight_space(&mut out, &a, &b, &WeightSpaceOptions::default()).unwrap();
        assert_eq!(out.mmcs.keys().collect::<Vec<_>>(), ["decoder", "encoder"]);
        let m = &out.matching["decoder"];
        assert!((m.mean_cos - 1.0).abs() < 1e-6 && m.optimal, "{m:?}");
        assert_eq!(m.shared_curve.len(), 21);
        assert_eq!(m.shared_curve[20], (1.0, 0.0));
        assert_eq!(m.shared_curve[19], (0.95, 1.0));
        // MMCS b to a: the rows 1, 1, 1/sqrt 2 and 0.
        let ba = out.mmcs["decoder"].b_to_a;
        assert!((ba - (2.0 + f64::from(s)) / 4.0).abs() < 1e-6, "{ba}");
        assert_eq!(out.zero_features["decoder"], Counts { a: 0, b: 1 });
        let fam = out.families.as_ref().unwrap();
        assert_eq!((fam.parents, fam.with_children, fam.split), (2, 2, 2));
        assert_eq!(cmp.matches.decoder.len(), 2);
        assert!(out.null.is_empty());
    }

    #[test]
    fn nulls_are_filled_when_asked() {
        let a = sae(&[1.0, 0.0, 0.0, 1.0, 0.6, 0.8], 3, 2);
        let mut out = AlignOutput::default();
        let opts = WeightSpaceOptions {
            null_seeds: 2,
            ..WeightSpaceOptions::default()
        };
        weight_space(&mut out, &a, &a, &opts).unwrap();
        assert_eq!(
            out.null.keys().collect::<Vec<_>>(),
            ["isotropic", "rand_like"]
        );
        let iso = &out.null["isotropic"];
        assert_eq!(iso.mmcs_decoder.unwrap().0.n, 2);
        assert!(iso.analytic.is_some() && iso.mmcs_encoder.is_some());
        assert!(out.families.is_none());
    }
}
