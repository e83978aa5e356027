//! Activation correlation between the features of two SAEs on the same tokens, streamed over
//! sparse batches, and token alignment by byte spans for two tokenizers.
//!
//! The accumulator [`CoStats`] keeps per-feature sums, sums of squares and counts, and the
//! sparse co-occurrence sums `S_ij = sum_t a_ti b_tj` over tokens where both are active
//! (Gustavson's row-by-row sparse product per batch, rayon over chunks of `a`'s features).
//! A dense `tokens x features` matrix is never formed; the `(n_a, n_b)` sums are a dense
//! matrix up to [`DENSE_CROSS_LIMIT`] entries and otherwise hold only pairs that were ever
//! co-active.

use std::borrow::Cow;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::nulls::{Interval, derive_seed, interval, permutation};
use crate::{Error, Result};

/// The nonzero activations of a batch of tokens, CSR: token `t`'s features are
/// `indices[indptr[t]..indptr[t + 1]]` with values `values[..]` (same range).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseBatch {
    /// `(tokens + 1)`.
    pub indptr: Vec<usize>,
    /// `(nnz)`.
    pub indices: Vec<u32>,
    /// `(nnz)`.
    pub values: Vec<f32>,
}

impl SparseBatch {
    /// Number of tokens.
    pub fn tokens(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }

    /// Token `t`'s `(feature, value)` pairs.
    pub fn row(&self, t: usize) -> impl Iterator<Item = (u32, f32)> + '_ {
        let r = self.indptr[t]..self.indptr[t + 1];
        self.indices[r.clone()]
            .iter()
            .copied()
            .zip(self.values[r].iter().copied())
    }

    /// The nonzeros of a dense row-major `(tokens, n)` matrix.
    pub fn from_dense(xs: &[f32], tokens: usize, n: usize) -> SparseBatch {
        let mut out = SparseBatch {
            indptr: vec![0],
            ..SparseBatch::default()
        };
        for t in 0..tokens {
            for (j, &v) in xs[t * n..(t + 1) * n].iter().enumerate() {
                if v != 0.0 {
                    out.indices.push(j as u32);
                    out.values.push(v);
                }
            }
            out.indptr.push(out.indices.len());
        }
        out
    }

    /// The batch made of tokens `rows`, in that order.
    pub fn select(&self, rows: &[u32]) -> SparseBatch {
        let mut out = SparseBatch {
            indptr: vec![0],
            ..SparseBatch::default()
        };
        for &t in rows {
            let r = self.indptr[t as usize]..self.indptr[t as usize + 1];
            out.indices.extend_from_slice(&self.indices[r.clone()]);
            out.values.extend_from_slice(&self.values[r]);
            out.indptr.push(out.indices.len());
        }
        out
    }

    fn validate(&self, batch: usize, n: usize) -> Result<()> {
        let bad = |reason: String| Error::Invalid {
            what: "activation batch",
            reason,
        };
        if self.indptr.first() != Some(&0) || self.indptr.windows(2).any(|w| w[0] > w[1]) {
            return Err(bad(format!(
                "batch {batch}: indptr must start at 0 and not decrease"
            )));
        }
        let nnz = *self.indptr.last().unwrap_or(&0);
        if self.indices.len() != nnz || self.values.len() != nnz {
            return Err(bad(format!(
                "batch {batch}: indptr ends at {nnz} but there are {} indices and {} values",
                self.indices.len(),
                self.values.len()
            )));
        }
        for t in 0..self.tokens() {
            for (feature, value) in self.row(t) {
                if feature as usize >= n {
                    return Err(Error::FeatureOutOfRange {
                        batch,
                        token: t,
                        feature,
                        n,
                    });
                }
                if !value.is_finite() {
                    return Err(bad(format!(
                        "batch {batch}, token {t}: feature {feature} is not finite"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Streamed sufficient statistics of two SAEs' activations on the same tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct CoStats {
    pub n_a: usize,
    pub n_b: usize,
    pub tokens: u64,
    pub batches: usize,
    /// `(n_a)` sums, sums of squares, active counts.
    pub sum_a: Vec<f64>,
    pub sq_a: Vec<f64>,
    pub count_a: Vec<u64>,
    /// `(n_b)`.
    pub sum_b: Vec<f64>,
    pub sq_b: Vec<f64>,
    pub count_b: Vec<u64>,
    /// Per feature of `a`, the co-active features of `b` with `S_ij`, sorted by `j` (the
    /// sparse accumulator, used when `dense` is `None`).
    cross: Vec<Vec<(u32, f64)>>,
    /// `S` as a dense `(n_a, n_b)` matrix, used when it has at most [`DENSE_CROSS_LIMIT`]
    /// entries: feature-by-feature, never token-by-feature.
    dense: Option<Vec<f64>>,
}

/// Largest `n_a · n_b` accumulated densely (256 MB of `f64`). Below it a dense accumulator
/// is faster than merging sparse rows batch after batch; above it memory wins.
pub const DENSE_CROSS_LIMIT: usize = 1 << 25;

impl CoStats {
    pub fn new(n_a: usize, n_b: usize) -> CoStats {
        CoStats {
            n_a,
            n_b,
            tokens: 0,
            batches: 0,
            sum_a: vec![0.0; n_a],
            sq_a: vec![0.0; n_a],
            count_a: vec![0; n_a],
            sum_b: vec![0.0; n_b],
            sq_b: vec![0.0; n_b],
            count_b: vec![0; n_b],
            cross: if n_a.saturating_mul(n_b) <= DENSE_CROSS_LIMIT {
                Vec::new()
            } else {
                vec![Vec::new(); n_a]
            },
            dense: (n_a.saturating_mul(n_b) <= DENSE_CROSS_LIMIT).then(|| vec![0.0; n_a * n_b]),
        }
    }

    /// [`CoStats::new`] with the sparse accumulator whatever the sizes (the one used above
    /// [`DENSE_CROSS_LIMIT`]).
    pub fn new_sparse(n_a: usize, n_b: usize) -> CoStats {
        let mut s = CoStats::new(n_a, n_b);
        s.dense = None;
        s.cross = vec![Vec::new(); n_a];
        s
    }

    /// The co-occurrence sums `S_ij != 0` per feature of `a`, sorted by `j`.
    pub fn cross_rows(&self) -> Cow<'_, [Vec<(u32, f64)>]> {
        match &self.dense {
            None => Cow::Borrowed(&self.cross),
            Some(d) => Cow::Owned(
                d.par_chunks(self.n_b.max(1))
                    .map(|row| {
                        row.iter()
                            .enumerate()
                            .filter(|(_, s)| **s != 0.0)
                            .map(|(j, &s)| (j as u32, s))
                            .collect()
                    })
                    .collect(),
            ),
        }
    }

    /// Adds a batch: `a` and `b` hold the same tokens in the same order.
    pub fn add(&mut self, a: &SparseBatch, b: &SparseBatch) -> Result<()> {
        let batch = self.batches;
        if a.tokens() != b.tokens() {
            return Err(Error::TokenCountMismatch {
                batch,
                a_tokens: a.tokens(),
                b_tokens: b.tokens(),
            });
        }
        a.validate(batch, self.n_a)?;
        b.validate(batch, self.n_b)?;
        for (x, sum, sq, count) in [
            (a, &mut self.sum_a, &mut self.sq_a, &mut self.count_a),
            (b, &mut self.sum_b, &mut self.sq_b, &mut self.count_b),
        ] {
            for (&j, &v) in x.indices.iter().zip(&x.values) {
                let v = f64::from(v);
                sum[j as usize] += v;
                sq[j as usize] += v * v;
                count[j as usize] += 1;
            }
        }
        // Transpose `a` to feature -> (token, value) by counting sort.
        let mut start = vec![0usize; self.n_a + 1];
        for &j in &a.indices {
            start[j as usize + 1] += 1;
        }
        for i in 0..self.n_a {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut tok = vec![0u32; a.indices.len()];
        let mut val = vec![0f32; a.indices.len()];
        for t in 0..a.tokens() {
            for (j, v) in a.row(t) {
                let p = fill[j as usize];
                tok[p] = t as u32;
                val[p] = v;
                fill[j as usize] += 1;
            }
        }
        let chunk = self.n_a.div_ceil(rayon::current_num_threads() * 8).max(1);
        let n_b = self.n_b;
        if let Some(dense) = &mut self.dense {
            dense
                .par_chunks_mut(chunk * n_b.max(1))
                .enumerate()
                .for_each(|(c, rows)| {
                    for (k, row) in rows.chunks_mut(n_b.max(1)).enumerate() {
                        let i = c * chunk + k;
                        for p in start[i]..start[i + 1] {
                            let av = f64::from(val[p]);
                            for (j, bv) in b.row(tok[p] as usize) {
                                row[j as usize] += av * f64::from(bv);
                            }
                        }
                    }
                });
            self.tokens += a.tokens() as u64;
            self.batches += 1;
            return Ok(());
        }
        self.cross
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(c, rows)| {
                let mut acc = vec![0f64; n_b];
                let mut seen = vec![false; n_b];
                let mut hit: Vec<u32> = Vec::new();
                for (k, row) in rows.iter_mut().enumerate() {
                    let i = c * chunk + k;
                    if start[i] == start[i + 1] {
                        continue;
                    }
                    for p in start[i]..start[i + 1] {
                        let av = f64::from(val[p]);
                        for (j, bv) in b.row(tok[p] as usize) {
                            let j = j as usize;
                            if !seen[j] {
                                seen[j] = true;
                                hit.push(j as u32);
                            }
                            acc[j] += av * f64::from(bv);
                        }
                    }
                    hit.sort_unstable();
                    let mut merged = Vec::with_capacity(row.len() + hit.len());
                    let mut old = row.iter().peekable();
                    for &j in &hit {
                        while let Some(&&(oj, os)) = old.peek() {
                            if oj >= j {
                                break;
                            }
                            merged.push((oj, os));
                            old.next();
                        }
                        let mut s = acc[j as usize];
                        if let Some(&&(oj, os)) = old.peek()
                            && oj == j
                        {
                            s += os;
                            old.next();
                        }
                        merged.push((j, s));
                        acc[j as usize] = 0.0;
                        seen[j as usize] = false;
                    }
                    merged.extend(old);
                    *row = merged;
                    hit.clear();
                }
            });
        self.tokens += a.tokens() as u64;
        self.batches += 1;
        Ok(())
    }

    /// Accumulates a whole stream of `(a, b)` batches.
    pub fn from_batches<'x>(
        n_a: usize,
        n_b: usize,
        batches: impl IntoIterator<Item = (&'x SparseBatch, &'x SparseBatch)>,
    ) -> Result<CoStats> {
        let mut s = CoStats::new(n_a, n_b);
        for (a, b) in batches {
            s.add(a, b)?;
        }
        Ok(s)
    }

    /// The co-occurrence sums by feature of `b`: per `j`, `(i, S_ij)` sorted by `i`.
    fn cross_by_b(cross: &[Vec<(u32, f64)>], n_b: usize) -> Vec<Vec<(u32, f64)>> {
        let mut out = vec![Vec::new(); n_b];
        for (i, row) in cross.iter().enumerate() {
            for &(j, s) in row {
                out[j as usize].push((i as u32, s));
            }
        }
        out
    }
}

/// Centred Pearson correlation summary: `mean_i max_j rho_ij` both ways over live features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorrelationSummary {
    pub a_to_b: f64,
    pub b_to_a: f64,
    pub tokens: u64,
    pub alive_a: usize,
    pub alive_b: usize,
    /// Features never active (or constant) on these tokens, excluded.
    pub dead_a: usize,
    pub dead_b: usize,
    /// Per feature of `a`: its most correlated feature of `b` and `rho` (`None` when dead).
    #[serde(skip)]
    pub best_a: Vec<Option<(u32, f32)>>,
    #[serde(skip)]
    pub best_b: Vec<Option<(u32, f32)>>,
}

struct Moments {
    mean: Vec<f64>,
    sd: Vec<f64>,
}

fn moments(sum: &[f64], sq: &[f64], n: f64) -> Moments {
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let sd = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| {
            let var = q / n - m * m;
            // Relative cancellation guard: a constant feature has zero variance.
            if var > 1e-12 * (q / n) {
                var.sqrt()
            } else {
                0.0
            }
        })
        .collect();
    Moments { mean, sd }
}

/// For each row feature, `max_j rho_ij` where `rho_ij = (S_ij / N - m_i m_j) / (sd_i sd_j)`
/// over live `j`; pairs never co-active have `S_ij = 0`.
fn best_pearson(
    cross: &[Vec<(u32, f64)>],
    rows: &Moments,
    cols: &Moments,
    n: f64,
) -> Vec<Option<(u32, f32)>> {
    // Never-co-active pairs give `-(m_i / sd_i) (m_j / sd_j)`: the best is at an extreme of
    // `x_j = m_j / sd_j`, so live columns are sorted by `x_j` once.
    let mut order: Vec<u32> = (0..cols.sd.len() as u32)
        .filter(|&j| cols.sd[j as usize] > 0.0)
        .collect();
    let x = |j: u32| cols.mean[j as usize] / cols.sd[j as usize];
    order.sort_by(|&p, &q| x(p).total_cmp(&x(q)).then(p.cmp(&q)));
    cross
        .par_iter()
        .enumerate()
        .map(|(i, row)| {
            let (mi, si) = (rows.mean[i], rows.sd[i]);
            if si == 0.0 || order.is_empty() {
                return None;
            }
            let mut best: Option<(u32, f64)> = None;
            let mut consider = |j: u32, r: f64| {
                if best.is_none_or(|(bj, br)| r > br || (r == br && j < bj)) {
                    best = Some((j, r));
                }
            };
            for &(j, s) in row {
                let (mj, sj) = (cols.mean[j as usize], cols.sd[j as usize]);
                if sj > 0.0 {
                    consider(j, (s / n - mi * mj) / (si * sj));
                }
            }
            let xi = mi / si;
            let walk: Box<dyn Iterator<Item = &u32>> = if xi >= 0.0 {
                Box::new(order.iter())
            } else {
                Box::new(order.iter().rev())
            };
            for &j in walk {
                if row.binary_search_by_key(&j, |e| e.0).is_err() {
                    consider(j, -xi * x(j));
                    break;
                }
            }
            best.map(|(j, r)| (j, r as f32))
        })
        .collect()
}

/// [`best_pearson`] over a dense `(n_a, n_b)` sum matrix `d`: rows of `d` when `by_col` is
/// false, its columns otherwise.
fn best_pearson_dense(
    d: &[f64],
    n_b: usize,
    by_col: bool,
    rows: &Moments,
    cols: &Moments,
    n: f64,
) -> Vec<Option<(u32, f32)>> {
    (0..rows.sd.len())
        .into_par_iter()
        .map(|i| {
            let (mi, si) = (rows.mean[i], rows.sd[i]);
            if si == 0.0 {
                return None;
            }
            let mut best: Option<(u32, f64)> = None;
            for j in 0..cols.sd.len() {
                let sj = cols.sd[j];
                if sj == 0.0 {
                    continue;
                }
                let s = if by_col {
                    d[j * n_b + i]
                } else {
                    d[i * n_b + j]
                };
                let r = (s / n - mi * cols.mean[j]) / (si * sj);
                if best.is_none_or(|(_, br)| r > br) {
                    best = Some((j as u32, r));
                }
            }
            best.map(|(j, r)| (j, r as f32))
        })
        .collect()
}

fn mean_best(best: &[Option<(u32, f32)>]) -> f64 {
    let live: Vec<f64> = best.iter().flatten().map(|&(_, r)| f64::from(r)).collect();
    if live.is_empty() {
        f64::NAN
    } else {
        live.iter().sum::<f64>() / live.len() as f64
    }
}

/// Centred Pearson correlation of the accumulated statistics, both ways.
pub fn pearson(stats: &CoStats) -> CorrelationSummary {
    let n = stats.tokens.max(1) as f64;
    let ma = moments(&stats.sum_a, &stats.sq_a, n);
    let mb = moments(&stats.sum_b, &stats.sq_b, n);
    let (best_a, best_b) = match &stats.dense {
        Some(d) => (
            best_pearson_dense(d, stats.n_b, false, &ma, &mb, n),
            best_pearson_dense(d, stats.n_b, true, &mb, &ma, n),
        ),
        None => (
            best_pearson(&stats.cross, &ma, &mb, n),
            best_pearson(&CoStats::cross_by_b(&stats.cross, stats.n_b), &mb, &ma, n),
        ),
    };
    let alive_a = ma.sd.iter().filter(|&&s| s > 0.0).count();
    let alive_b = mb.sd.iter().filter(|&&s| s > 0.0).count();
    CorrelationSummary {
        a_to_b: mean_best(&best_a),
        b_to_a: mean_best(&best_b),
        tokens: stats.tokens,
        alive_a,
        alive_b,
        dead_a: stats.n_a - alive_a,
        dead_b: stats.n_b - alive_b,
        best_a,
        best_b,
    }
}

/// Streams `(a, b)` batches into [`CoStats`] and returns the centred Pearson summary.
pub fn correlate<'x>(
    n_a: usize,
    n_b: usize,
    batches: impl IntoIterator<Item = (&'x SparseBatch, &'x SparseBatch)>,
) -> Result<CorrelationSummary> {
    Ok(pearson(&CoStats::from_batches(n_a, n_b, batches)?))
}

/// The study's own correlation variants (one direction, `a` to `b`, per prompt, then averaged
/// over prompts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StudyVariant {
    /// Per prompt: z-score each feature with `(x - mean) / (std_unbiased + 1e-5)`, Pearson
    /// as `z_aᵀ z_b / (sqrt(sum z_a^2 sum z_b^2) + 1e-5)`, entries exactly 0 masked, max over
    /// `b` per feature of `a`, rows with nothing left dropped, mean.
    ZScore,
    /// The line figure's variant: no z-scoring, `a_iᵀ b_j / (|a_i| |b_j| + 1e-5)`, zeros
    /// masked as above (an uncentred cosine of activation vectors).
    Uncentred,
}

/// A study-variant score, labelled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyScore {
    pub variant: StudyVariant,
    pub label: String,
    /// Mean over prompts of the per-prompt mean of row maxima.
    pub value: f64,
    pub prompts: usize,
    /// Prompts where every row was masked (left out of the mean).
    pub empty_prompts: usize,
}

const STUDY_EPS: f64 = 1e-5;

/// One prompt's score under `variant` (`None` when every row is masked).
fn study_prompt(s: &CoStats, variant: StudyVariant) -> Option<f64> {
    let t = s.tokens as f64;
    let cross = s.cross_rows();
    let row_best: Vec<Option<f64>> = match variant {
        StudyVariant::Uncentred => cross
            .iter()
            .enumerate()
            .map(|(i, row)| {
                row.iter()
                    .map(|&(j, sij)| sij / ((s.sq_a[i] * s.sq_b[j as usize]).sqrt() + STUDY_EPS))
                    .filter(|&r| r != 0.0)
                    .max_by(f64::total_cmp)
            })
            .collect(),
        StudyVariant::ZScore => {
            // z = (x - m) k with k = 1 / (sd + eps); sum z_i z_j = k_i k_j (S_ij - T m_i m_j)
            // and sum z_i^2 = k_i^2 V_i with V_i = sum (x - m)^2.
            let stats = |sum: &[f64], sq: &[f64]| -> Vec<(f64, f64, f64)> {
                sum.iter()
                    .zip(sq)
                    .map(|(&su, &q)| {
                        let m = su / t;
                        let v = (q - t * m * m).max(0.0);
                        let sd = if t > 1.0 {
                            (v / (t - 1.0)).sqrt()
                        } else {
                            f64::NAN
                        };
                        (m, v, 1.0 / (sd + STUDY_EPS))
                    })
                    .collect()
            };
            let sa = stats(&s.sum_a, &s.sq_a);
            let sb = stats(&s.sum_b, &s.sq_b);
            cross
                .par_iter()
                .enumerate()
                .map(|(i, row)| {
                    let (mi, vi, ki) = sa[i];
                    let mut dense = vec![0.0f64; s.n_b];
                    for &(j, sij) in row {
                        dense[j as usize] = sij;
                    }
                    let mut best: Option<f64> = None;
                    for (j, &(mj, vj, kj)) in sb.iter().enumerate() {
                        let cov = ki * kj * (dense[j] - t * mi * mj);
                        let r = cov / ((ki * ki * vi * kj * kj * vj).sqrt() + STUDY_EPS);
                        if r != 0.0 && r.is_finite() && best.is_none_or(|b| r > b) {
                            best = Some(r);
                        }
                    }
                    best
                })
                .collect()
        }
    };
    let live: Vec<f64> = row_best.into_iter().flatten().collect();
    (!live.is_empty()).then(|| live.iter().sum::<f64>() / live.len() as f64)
}

/// The study's correlation variant over prompts: each item is one prompt's `(a, b)`
/// activations.
pub fn study_variant<'x>(
    n_a: usize,
    n_b: usize,
    prompts: impl IntoIterator<Item = (&'x SparseBatch, &'x SparseBatch)>,
    variant: StudyVariant,
) -> Result<StudyScore> {
    let (mut total, mut used, mut empty) = (0.0, 0usize, 0usize);
    for (a, b) in prompts {
        let s = CoStats::from_batches(n_a, n_b, [(a, b)])?;
        match study_prompt(&s, variant) {
            Some(v) => {
                total += v;
                used += 1;
            }
            None => empty += 1,
        }
    }
    let label = match variant {
        StudyVariant::ZScore => {
            "study-faithful: per-prompt z-score (eps 1e-5), zeros masked, a to b"
        }
        StudyVariant::Uncentred => {
            "study-faithful: uncentred cosine of activations, zeros masked, a to b"
        }
    };
    Ok(StudyScore {
        variant,
        label: label.to_owned(),
        value: if used == 0 {
            f64::NAN
        } else {
            total / used as f64
        },
        prompts: used + empty,
        empty_prompts: empty,
    })
}

/// Permutation null of the centred Pearson summary: `b`'s tokens are shuffled (one seeded
/// permutation over the whole stream per seed) so that features keep their marginals but
/// lose their pairing with `a`'s tokens. Returns intervals of `a_to_b` and `b_to_a`.
pub fn permutation_null(
    n_a: usize,
    n_b: usize,
    batches: &[(SparseBatch, SparseBatch)],
    seeds: &[u64],
) -> Result<(Interval, Interval)> {
    let mut b_all = SparseBatch {
        indptr: vec![0],
        ..SparseBatch::default()
    };
    for (_, b) in batches {
        for t in 0..b.tokens() {
            for (j, v) in b.row(t) {
                b_all.indices.push(j);
                b_all.values.push(v);
            }
            b_all.indptr.push(b_all.indices.len());
        }
    }
    let (mut ab, mut ba) = (Vec::new(), Vec::new());
    for &seed in seeds {
        let perm = permutation(b_all.tokens(), derive_seed(seed, 3));
        let shuffled = b_all.select(&perm);
        let mut stats = CoStats::new(n_a, n_b);
        let mut offset = 0usize;
        for (a, _) in batches {
            let rows: Vec<u32> = (offset as u32..(offset + a.tokens()) as u32).collect();
            stats.add(a, &shuffled.select(&rows))?;
            offset += a.tokens();
        }
        let s = pearson(&stats);
        ab.push(s.a_to_b);
        ba.push(s.b_to_a);
    }
    Ok((interval(ab), interval(ba)))
}

/// A token's bytes in its document: `text[start..end]` of document `doc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub doc: u32,
    pub start: u32,
    pub end: u32,
}

/// How tokens of two tokenizers on the same text are paired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpanRule {
    /// Pair tokens that end at the same byte of the same document (one-to-one). At such a
    /// token both causal models have read exactly the same text, so their activations
    /// summarise the same prefix. Tokens ending inside the other side's token are left out.
    #[default]
    SameEnd,
    /// Pair each token of `a` with the token of `b` that contains `a`'s last byte (many
    /// `a` tokens may share one `b` token).
    ContainsLastByte,
}

/// Pairs tokens of `a` and `b` by byte spans; both lists in stream order (by document, then
/// position, as the stores write them). Empty spans (special tokens) are never paired.
/// Returns `(index in a, index in b)` in increasing order of `a`.
pub fn align_spans(a: &[Span], b: &[Span], rule: SpanRule) -> Result<Vec<(u32, u32)>> {
    for (what, spans) in [("spans a", a), ("spans b", b)] {
        if let Some(k) = spans
            .windows(2)
            .position(|w| (w[1].doc, w[1].end) < (w[0].doc, w[0].end))
        {
            return Err(Error::Invalid {
                what,
                reason: format!(
                    "token {} ends before token {}: spans must be in stream order",
                    k + 1,
                    k
                ),
            });
        }
    }
    let mut out = Vec::new();
    let mut q = 0usize;
    for (p, sa) in a.iter().enumerate() {
        if sa.start >= sa.end {
            continue;
        }
        match rule {
            SpanRule::SameEnd => {
                // Advance to the last non-empty b token at or before (doc, end).
                while q < b.len() && (b[q].doc, b[q].end) < (sa.doc, sa.end) {
                    q += 1;
                }
                let mut hit = None;
                let mut r = q;
                while r < b.len() && (b[r].doc, b[r].end) == (sa.doc, sa.end) {
                    if b[r].start < b[r].end {
                        hit = Some(r);
                    }
                    r += 1;
                }
                // Several `a` tokens with one end byte: only the last is paired.
                let last_of_a = a
                    .get(p + 1)
                    .is_none_or(|n| (n.doc, n.end) != (sa.doc, sa.end) || n.start >= n.end);
                if let (Some(r), true) = (hit, last_of_a) {
                    out.push((p as u32, r as u32));
                }
            }
            SpanRule::ContainsLastByte => {
                let last = sa.end - 1;
                while q < b.len() && (b[q].doc, b[q].end) <= (sa.doc, last) {
                    q += 1;
                }
                // `b[q]` is the first b token ending after `last`; skipping empty spans, the
                // next one contains `last` when it starts at or before it.
                let mut r = q;
                while r < b.len() && b[r].start >= b[r].end {
                    r += 1;
                }
                if r < b.len() && b[r].doc == sa.doc && b[r].start <= last && last < b[r].end {
                    out.push((p as u32, r as u32));
                }
            }
        }
    }
    Ok(out)
}
