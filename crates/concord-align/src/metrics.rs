//! Scores derived from a matching (mean matched cosine, shared fraction, PW-MCC, match
//! records) and the splitting-aware view across sizes (feature families).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::dict::{Dict, same_width};
use crate::matching::{Certificate, Matching, Method, Pair};
use crate::scan::{Blocking, rows_above};

/// The study's thresholds for the shared fraction.
pub const SHARED_THRESHOLDS: [f64; 3] = [0.5, 0.7, 0.9];

/// The summary of one matching, as it lands in the comparison JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatchSummary {
    /// Mean matched cosine over the `min(n_a, n_b)` pairs.
    pub mean_cos: f64,
    /// Share of the smaller side matched with cosine above each threshold, keyed `"0.5"`...
    pub shared: BTreeMap<String, f64>,
    /// PW-MCC (Song et al. 2025): mean |cos| over matched pairs.
    pub pw_mcc: f64,
    pub pairs: usize,
    pub optimal: bool,
    pub method: Method,
    pub certificate: Certificate,
}

/// Summarises `m`, a matching between dictionaries of `n_a` and `n_b` features.
pub fn summarize(m: &Matching, n_a: usize, n_b: usize, thresholds: &[f64]) -> MatchSummary {
    let smaller = n_a.min(n_b).max(1) as f64;
    let n = m.pairs.len().max(1) as f64;
    let shared = thresholds
        .iter()
        .map(|&t| {
            let count = m.pairs.iter().filter(|p| f64::from(p.cos) > t).count();
            (format!("{t}"), count as f64 / smaller)
        })
        .collect();
    MatchSummary {
        mean_cos: m.objective / n,
        shared,
        pw_mcc: m.pairs.iter().map(|p| f64::from(p.cos).abs()).sum::<f64>() / n,
        pairs: m.pairs.len(),
        optimal: m.optimal,
        method: m.method,
        certificate: m.certificate.clone(),
    }
}

/// One row of the per-feature match table.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatchRecord {
    pub a: u32,
    pub b: u32,
    pub cos: f32,
    /// Activation frequency of feature `a` (share of tokens), when known.
    pub freq_a: Option<f32>,
    pub freq_b: Option<f32>,
}

/// The match table of matched `pairs` (`Matching::pairs`, `Comparison::matches`), with
/// feature frequencies `(n_a)` and `(n_b)` when given.
pub fn match_records(
    pairs: &[Pair],
    freq_a: Option<&[f32]>,
    freq_b: Option<&[f32]>,
) -> Vec<MatchRecord> {
    pairs
        .iter()
        .map(|p| MatchRecord {
            a: p.a,
            b: p.b,
            cos: p.cos,
            freq_a: freq_a.and_then(|f| f.get(p.a as usize).copied()),
            freq_b: freq_b.and_then(|f| f.get(p.b as usize).copied()),
        })
        .collect()
}

/// The features of the larger dictionary whose cosine with one feature of the smaller
/// dictionary reaches the threshold, best first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Family {
    pub feature: u32,
    /// `(feature of the larger side, cosine)`.
    pub members: Vec<(u32, f32)>,
}

/// Feature families across sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Families {
    /// Whether the smaller side (the family heads) is `a`.
    pub heads_are_a: bool,
    pub threshold: f32,
    /// One family per feature of the smaller side, in feature order.
    pub families: Vec<Family>,
    /// Number of members -> number of families of that size.
    pub size_counts: BTreeMap<usize, usize>,
    /// Features of the larger side that belong to at least one family.
    pub covered: usize,
}

/// For each feature of the smaller of `a` `(n_a, d)` and `b` `(n_b, d)`, the features of the
/// larger one with cosine at least `threshold` (at most `max_members`, the best kept).
pub fn families(
    a: &Dict,
    b: &Dict,
    threshold: f32,
    max_members: usize,
    blocking: Blocking,
) -> Result<Families> {
    same_width(a, b)?;
    let heads_are_a = a.n <= b.n;
    let (small, large) = if heads_are_a { (a, b) } else { (b, a) };
    let cap = max_members.max(1);
    let rows = rows_above(small, large, threshold, cap, blocking);
    let mut size_counts = BTreeMap::new();
    let mut covered = vec![false; large.n];
    let families: Vec<Family> = rows
        .into_iter()
        .enumerate()
        .map(|(i, mut members)| {
            sort_members(&mut members);
            members.truncate(cap);
            *size_counts.entry(members.len()).or_insert(0) += 1;
            for &(j, _) in &members {
                covered[j as usize] = true;
            }
            Family {
                feature: i as u32,
                members,
            }
        })
        .collect();
    Ok(Families {
        heads_are_a,
        threshold,
        families,
        size_counts,
        covered: covered.iter().filter(|&&c| c).count(),
    })
}

fn sort_members(list: &mut [(u32, f32)]) {
    list.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
}
