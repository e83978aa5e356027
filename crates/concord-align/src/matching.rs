//! Exact maximum-weight one-to-one matching of two dictionaries on cosine similarity.
//!
//! Every feature of the smaller side is matched to a distinct feature of the larger side so
//! that the sum of cosines is maximal (scipy's `linear_sum_assignment(C, maximize=True)`,
//! rectangular, no padding). Moderate sizes use the dense solver on the full matrix. Large
//! sizes use the sparse solver on the top-k candidate graph of the fused pass, then *price*
//! all pairs with the dual variables: a pair outside the graph whose cosine exceeds
//! `U_i + V_j` is added and the graph solved again, until no pair violates. The duals then
//! prove the matching optimal over all pairs; the numbers are kept in a [`Certificate`].
//! See `docs/design/matching.md`.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m512;

use serde::{Deserialize, Serialize};

use crate::dict::{Dict, same_width};
#[cfg(target_arch = "x86_64")]
use crate::kernel::lane_mask;
use crate::kernel::{self, Epilogue, LANES, MR, NR, PackedCols, Sel, Tile};
use crate::lap::sparse::Graph;
use crate::lap::{LapSolution, NONE, dense, sparse};
use crate::scan::{Blocking, Scan, ScanOptions, TopK, blocks, scan, similarity_matrix};
use crate::{Error, Result};

/// Knobs of the matching.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatchOptions {
    /// Candidates per row and per column in the sparse graph.
    pub top_k: usize,
    /// Best pairs per row and per column kept by the fused pass for pricing (at least
    /// `top_k`): pairs on these lists are checked one by one, and only rows whose
    /// `pricing_k`-th best cosine exceeds their dual need a product (see `price`).
    pub pricing_k: usize,
    /// Problems with `n_a · n_b` at most this use the dense solver.
    pub dense_limit: usize,
    /// Problems with `n_a · n_b` at most this also use the dense solver when a dictionary
    /// has exact ties (zero rows, repeated rows), and when the sparse solve cannot be
    /// certified. Ties leave the candidate lists arbitrary among equals, which the pricing
    /// rounds repair only slowly; the dense solver does not care.
    pub tied_dense_limit: usize,
    /// Pricing rounds before giving up on the certificate.
    pub max_rounds: usize,
    /// Violating pairs added per row and round (the most violating first).
    pub add_per_row: usize,
    pub blocking: Blocking,
}

impl Default for MatchOptions {
    fn default() -> Self {
        MatchOptions {
            top_k: 16,
            pricing_k: 32,
            dense_limit: 1 << 22,
            tied_dense_limit: 1 << 26,
            max_rounds: 50,
            add_per_row: 16,
            blocking: Blocking::default(),
        }
    }
}

/// Which solver produced a matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Dense,
    Sparse,
}

/// One matched pair: feature `a` of the first dictionary, `b` of the second.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub a: u32,
    pub b: u32,
    pub cos: f32,
}

/// The numbers that prove (or fail to prove) a matching optimal, in maximisation form:
/// `U_i + V_j >= cos_ij` for all pairs with `V_j >= 0` makes `dual = sum U + sum V` an upper
/// bound on every matching's total cosine. `gap_bound = dual - primal` plus, per row, the
/// largest violation left (raising `U_i` by it restores feasibility), so the optimum lies in
/// `[primal, primal + gap_bound]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    pub primal: f64,
    pub dual: f64,
    pub max_violation: f64,
    pub gap_bound: f64,
    /// Pricing rounds (0 for the dense solver).
    pub rounds: usize,
    /// Edges of the final candidate graph (the full matrix for the dense solver).
    pub candidate_edges: usize,
    /// Rows and columns that the last pricing pass had to multiply out.
    pub priced_rows: usize,
    pub priced_cols: usize,
}

/// A maximum-weight one-to-one matching, pairs sorted by `a`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Matching {
    pub pairs: Vec<Pair>,
    /// Sum of matched cosines.
    pub objective: f64,
    pub optimal: bool,
    pub method: Method,
    pub certificate: Certificate,
}

/// Relative gap below which a certificate counts as a proof of optimality.
const GAP_TOLERANCE: f64 = 1e-9;

/// Maximum-weight matching on an explicit weight matrix `w`, `(n_a, n_b)` (dense solver).
pub fn match_weights<T: Copy + Into<f64>>(w: &[T], n_a: usize, n_b: usize) -> Result<Matching> {
    if w.len() != n_a * n_b {
        return Err(Error::BadShape {
            what: "weights",
            len: w.len(),
            rows: n_a,
            cols: n_b,
        });
    }
    if n_a == 0 || n_b == 0 {
        return Err(Error::Empty {
            what: "weights",
            rows: n_a,
            cols: n_b,
        });
    }
    if let Some(p) = w.iter().position(|&x| !x.into().is_finite()) {
        return Err(Error::NonFinite {
            what: "weights",
            row: p / n_b,
            col: p % n_b,
        });
    }
    let transposed = n_a > n_b;
    let (rows, cols) = if transposed { (n_b, n_a) } else { (n_a, n_b) };
    let weight = |i: usize, j: usize| -> f64 {
        if transposed {
            w[j * n_b + i].into()
        } else {
            w[i * n_b + j].into()
        }
    };
    let sol = dense::solve(rows, cols, |i, j| -weight(i, j));
    let mut cert = dual_numbers(&sol, weight);
    cert.candidate_edges = n_a * n_b;
    Ok(finish(
        &sol.col4row,
        transposed,
        |i, j| weight(i, j) as f32,
        Method::Dense,
        cert,
    ))
}

/// Maximum-weight matching of two unit-row dictionaries `a` `(n_a, d)` and `b` `(n_b, d)`.
/// `scan` may pass the fused pass's result when it already holds at least `opts.top_k`
/// candidates per row and column (the sparse path needs them), to avoid a second pass.
pub fn match_dicts(
    a: &Dict,
    b: &Dict,
    scan_in: Option<&Scan>,
    opts: &MatchOptions,
) -> Result<Matching> {
    match_dicts_as(a, b, scan_in, opts, opts.dense_for(a, b))
}

/// [`match_dicts`] with the choice of solver already made ([`MatchOptions::dense_for`]).
pub(crate) fn match_dicts_as(
    a: &Dict,
    b: &Dict,
    scan_in: Option<&Scan>,
    opts: &MatchOptions,
    use_dense: bool,
) -> Result<Matching> {
    same_width(a, b)?;
    let dense = || match_weights(&similarity_matrix(a, b)?, a.n, b.n);
    if use_dense {
        return dense();
    }
    let k = opts.scan_k();
    let owned;
    let sc = match scan_in {
        Some(s) if s.row_top.as_ref().is_some_and(|t| t.k >= k) => s,
        _ => {
            owned = scan(
                a,
                b,
                &ScanOptions {
                    top_k: k,
                    blocking: opts.blocking,
                },
            )?;
            &owned
        }
    };
    let transposed = a.n > b.n;
    let (rows, cols) = if transposed { (b, a) } else { (a, b) };
    let oriented = if transposed {
        Scan {
            row_max: sc.col_max.clone(),
            row_arg: sc.col_arg.clone(),
            col_max: sc.row_max.clone(),
            col_arg: sc.row_arg.clone(),
            row_top: sc.col_top.clone(),
            col_top: sc.row_top.clone(),
        }
    } else {
        sc.clone()
    };
    let (col4row, weights, cert) = certified(rows, cols, &oriented, opts);
    let weight_of = |i: usize, j: usize| weights.get(i, j);
    let m = finish(&col4row, transposed, weight_of, Method::Sparse, cert);
    if !m.optimal && a.n.saturating_mul(b.n) <= opts.tied_dense_limit {
        return dense();
    }
    Ok(m)
}

impl MatchOptions {
    /// Candidates per row and column that the sparse path needs from the fused pass.
    pub fn scan_k(&self) -> usize {
        self.top_k.max(self.pricing_k).max(1)
    }

    /// Whether [`match_dicts`] solves `a` against `b` with the dense solver.
    pub fn dense_for(&self, a: &Dict, b: &Dict) -> bool {
        let pairs = a.n.saturating_mul(b.n);
        pairs <= self.dense_limit
            || (pairs <= self.tied_dense_limit && (has_ties(a) || has_ties(b)))
    }
}

/// Whether some rows of `d` are exactly equal (zero rows included).
fn has_ties(d: &Dict) -> bool {
    if d.zero_rows > 1 {
        return true;
    }
    let bits = |i: usize| d.row(i).iter().map(|x| x.to_bits());
    let mut order: Vec<usize> = (0..d.n).collect();
    order.sort_unstable_by(|&i, &j| bits(i).cmp(bits(j)));
    order.windows(2).any(|w| bits(w[0]).eq(bits(w[1])))
}

/// Turns a row-to-column assignment into pairs sorted by `a`.
fn finish(
    col4row: &[u32],
    transposed: bool,
    weight: impl Fn(usize, usize) -> f32,
    method: Method,
    cert: Certificate,
) -> Matching {
    let mut pairs: Vec<Pair> = col4row
        .iter()
        .enumerate()
        .filter(|(_, j)| **j != NONE)
        .map(|(i, &j)| {
            let cos = weight(i, j as usize);
            if transposed {
                Pair {
                    a: j,
                    b: i as u32,
                    cos,
                }
            } else {
                Pair {
                    a: i as u32,
                    b: j,
                    cos,
                }
            }
        })
        .collect();
    pairs.sort_by_key(|p| p.a);
    let objective: f64 = pairs.iter().map(|p| f64::from(p.cos)).sum();
    let optimal = cert.gap_bound <= GAP_TOLERANCE * objective.abs().max(1.0);
    Matching {
        pairs,
        objective,
        optimal,
        method,
        certificate: cert,
    }
}

/// Primal and dual objectives of a solution in maximisation form.
fn dual_numbers(sol: &LapSolution, weight: impl Fn(usize, usize) -> f64) -> Certificate {
    let primal: f64 = sol
        .col4row
        .iter()
        .enumerate()
        .filter(|(_, j)| **j != NONE)
        .map(|(i, &j)| weight(i, j as usize))
        .sum();
    let dual = -sol.u.iter().sum::<f64>() - sol.v.iter().sum::<f64>();
    Certificate {
        primal,
        dual,
        gap_bound: (dual - primal).max(0.0),
        ..Certificate::default()
    }
}

/// The candidate graph's weights, per row sorted by column (maximisation form).
#[derive(Debug, Default)]
struct Candidates {
    edges: Vec<Vec<(u32, f32)>>,
}

impl Candidates {
    fn get(&self, i: usize, j: usize) -> f32 {
        let row = &self.edges[i];
        match row.binary_search_by_key(&(j as u32), |e| e.0) {
            Ok(p) => row[p].1,
            Err(_) => f32::NAN,
        }
    }

    fn contains(&self, i: usize, j: u32) -> bool {
        self.edges[i].binary_search_by_key(&j, |e| e.0).is_ok()
    }

    fn normalise(&mut self) {
        for row in &mut self.edges {
            row.sort_by_key(|e| e.0);
            row.dedup_by_key(|e| e.0);
        }
    }

    /// The minimisation graph with one private dummy column per row (cost `big`), which keeps
    /// every row assignable whatever the candidates.
    fn graph(&self, cols: usize, big: f64) -> Graph {
        let rows = self.edges.len();
        let mut g = Graph {
            rows,
            cols: cols + rows,
            ..Graph::default()
        };
        g.start.push(0);
        for (i, row) in self.edges.iter().enumerate() {
            for &(j, w) in row {
                g.col.push(j);
                g.cost.push(-f64::from(w));
            }
            g.col.push((cols + i) as u32);
            g.cost.push(big);
            g.start.push(g.col.len());
        }
        g
    }
}

/// The sparse solve with pricing rounds, `rows.n <= cols.n`, `sc` oriented rows by columns.
fn certified(
    rows: &Dict,
    cols: &Dict,
    sc: &Scan,
    opts: &MatchOptions,
) -> (Vec<u32>, Candidates, Certificate) {
    let (nr, nc) = (rows.n, cols.n);
    let mut cand = Candidates {
        edges: vec![Vec::new(); nr],
    };
    let k = opts.top_k.max(1);
    if let Some(t) = &sc.row_top {
        for (i, row) in cand.edges.iter_mut().enumerate() {
            row.extend(t.get(i).take(k));
        }
    }
    if let Some(t) = &sc.col_top {
        for j in 0..nc {
            for (i, w) in t.get(j).take(k) {
                cand.edges[i as usize].push((j as u32, w));
            }
        }
    }
    cand.normalise();
    // A dummy costs more than any real assignment can gain by avoiding it: costs lie in
    // [-1, 1], so any matching with a dummy loses against every all-real one.
    let big = 2.0 * nr as f64 + 4.0;
    let mut rounds = 0;
    let mut prev: Option<LapSolution> = None;
    loop {
        let g = cand.graph(nc, big);
        let mut sol = sparse::solve_from(&g, prev.take())
            .expect("every row has its dummy column, so a solution exists");
        sparse::lower_prices(&g, &mut sol);
        let u_max: Vec<f64> = sol.u.iter().map(|&u| -u).collect();
        let v_max: Vec<f64> = sol.v[..nc].iter().map(|&v| -v).collect();
        let mut primal = 0.0;
        let mut dummies = 0;
        let mut col4row = sol.col4row.clone();
        for (i, j) in col4row.iter_mut().enumerate() {
            if (*j as usize) >= nc {
                dummies += 1;
                *j = NONE;
            } else {
                primal += f64::from(cand.get(i, *j as usize));
            }
        }
        let dual = u_max.iter().sum::<f64>() + v_max.iter().sum::<f64>();
        let pricing = price(rows, cols, sc, &u_max, &v_max, &cand, opts);
        let mut cert = Certificate {
            primal,
            dual,
            max_violation: pricing.max_violation,
            gap_bound: (dual - primal).max(0.0) + pricing.violation_sum,
            rounds,
            candidate_edges: cand.edges.iter().map(Vec::len).sum(),
            priced_rows: pricing.rows,
            priced_cols: pricing.cols,
        };
        if dummies > 0 {
            cert.gap_bound = f64::INFINITY;
        }
        if pricing.added.iter().all(Vec::is_empty) || rounds >= opts.max_rounds {
            return (col4row, cand, cert);
        }
        for (i, add) in pricing.added.into_iter().enumerate() {
            cand.edges[i].extend(add);
        }
        cand.normalise();
        prev = Some(sol);
        rounds += 1;
    }
}

#[derive(Debug, Default)]
struct Pricing {
    max_violation: f64,
    violation_sum: f64,
    rows: usize,
    cols: usize,
    /// Per row, the violating pairs to add.
    added: Vec<Vec<(u32, f32)>>,
}

/// Per row: the largest violation and the violating pairs `(violation, column, cos)`.
type Found = Vec<(f64, Vec<(f64, u32, f32)>)>;

/// Checks `cos_ij <= U_i + V_j` for every pair outside the graph.
///
/// The fused pass kept the best `pricing_k` pairs of every row and column. A pair on
/// neither list is at most the last value of its row's list (`kr_i`) and of its column's
/// (`kc_j`). With `V >= 0`, a row with `kr_i <= U_i` can only violate on its list, which is
/// checked pair by pair; the other rows (`R*`) need a product, but only against columns
/// with `kc_j > V_j + min U` (`C*`), plus a check of the column lists of the rest.
fn price(
    rows: &Dict,
    cols: &Dict,
    sc: &Scan,
    u: &[f64],
    v: &[f64],
    cand: &Candidates,
    opts: &MatchOptions,
) -> Pricing {
    let mut out = Pricing {
        added: vec![Vec::new(); rows.n],
        ..Pricing::default()
    };
    let cap = opts.add_per_row.max(1);
    let bound = |t: &Option<TopK>, i: usize, max: &[f32]| -> f64 {
        match t {
            // A list that is not full holds every pair: nothing lies outside it.
            Some(t) if t.k > 0 && t.index[i * t.k + t.k - 1] == u32::MAX => f64::NEG_INFINITY,
            Some(t) if t.k > 0 => f64::from(t.kth(i)),
            _ => f64::from(max[i]),
        }
    };
    let mut in_r = vec![false; rows.n];
    let r_idx: Vec<u32> = (0..rows.n)
        .filter(|&i| bound(&sc.row_top, i, &sc.row_max) > u[i])
        .map(|i| i as u32)
        .collect();
    for &i in &r_idx {
        in_r[i as usize] = true;
    }
    // Per row: (largest violation, violating pairs (violation, column, cos)).
    let mut found: Found = vec![(0.0, Vec::new()); rows.n];
    let note = |i: usize, j: u32, w: f32, found: &mut Found| {
        let viol = f64::from(w) - u[i] - v[j as usize];
        if viol > 0.0 && !cand.contains(i, j) {
            let (worst, list) = &mut found[i];
            if list.iter().all(|e| e.1 != j) {
                *worst = worst.max(viol);
                list.push((viol, j, w));
            }
        }
    };
    if let Some(t) = &sc.row_top {
        for i in (0..rows.n).filter(|&i| !in_r[i]) {
            for (j, w) in t.get(i) {
                note(i, j, w, &mut found);
            }
        }
    }
    let u_min = r_idx
        .iter()
        .map(|&i| u[i as usize])
        .fold(f64::INFINITY, f64::min);
    let mut in_c = vec![false; cols.n];
    let c_idx: Vec<u32> = if r_idx.is_empty() {
        Vec::new()
    } else {
        (0..cols.n)
            .filter(|&j| bound(&sc.col_top, j, &sc.col_max) > v[j] + u_min)
            .map(|j| j as u32)
            .collect()
    };
    for &j in &c_idx {
        in_c[j as usize] = true;
    }
    if let (Some(t), false) = (&sc.col_top, r_idx.is_empty()) {
        for j in (0..cols.n).filter(|&j| !in_c[j]) {
            for (i, w) in t.get(j) {
                if in_r[i as usize] {
                    note(i as usize, j as u32, w, &mut found);
                }
            }
        }
    }
    let finish = |found: Found, out: &mut Pricing| {
        for (i, (worst, mut list)) in found.into_iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            out.max_violation = out.max_violation.max(worst);
            out.violation_sum += worst;
            keep_worst(&mut list, cap);
            out.added[i] = list.into_iter().map(|(_, j, w)| (j, w)).collect();
        }
    };
    out.rows = r_idx.len();
    out.cols = c_idx.len();
    if r_idx.is_empty() || c_idx.is_empty() {
        finish(found, &mut out);
        return out;
    }
    let packed = PackedCols::new(&cols.rows, cols.d, Sel::List(&c_idx));
    let e = PriceEpilogue::new(&r_idx, &c_idx, u, v, cand, cap);
    let (_, row_states) = kernel::run(
        &rows.rows,
        Sel::List(&r_idx),
        &packed,
        blocks(opts.blocking),
        &e,
    );
    for (li, (_, list)) in row_states.into_iter().flat_map(|(_, r)| r).enumerate() {
        let gi = r_idx[li] as usize;
        for (_, j, w) in list {
            note(gi, j, w, &mut found);
        }
    }
    finish(found, &mut out);
    out
}

fn keep_worst(list: &mut Vec<(f64, u32, f32)>, cap: usize) {
    list.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    list.truncate(cap);
}

/// Per priced row: (largest violation, violating pairs (violation, column, cos)).
type RowViol = Vec<(f64, Vec<(f64, u32, f32)>)>;

/// Finds the violating pairs `cos_ij > U_i + V_j` of the rows `r_idx` and columns `c_idx`.
///
/// Tiles are filtered in `f32`: a pair passes when `cos_ij - V_j >= U_i - tol_i` with
/// `tol_i = 1e-5 (1 + |U_i| + max |V|)`, far above the rounding of `V_j` and of the
/// subtraction, so every violating pair passes; the few that pass are then checked exactly
/// in `f64`, as the unfiltered loop would.
struct PriceEpilogue<'a> {
    r_idx: &'a [u32],
    c_idx: &'a [u32],
    u: &'a [f64],
    v: &'a [f64],
    /// `U_i - tol_i` per priced row, rounded to `f32`.
    u_lo: Vec<f32>,
    /// `V_j` per priced column in `f32`, padded with `+inf` to whole tiles.
    v_f: Vec<f32>,
    cand: &'a Candidates,
    cap: usize,
}

impl<'a> PriceEpilogue<'a> {
    fn new(
        r_idx: &'a [u32],
        c_idx: &'a [u32],
        u: &'a [f64],
        v: &'a [f64],
        cand: &'a Candidates,
        cap: usize,
    ) -> Self {
        let v_abs = c_idx
            .iter()
            .map(|&j| v[j as usize].abs())
            .fold(0.0f64, f64::max);
        let u_lo = r_idx
            .iter()
            .map(|&i| {
                let ui = u[i as usize];
                (ui - 1e-5 * (1.0 + ui.abs() + v_abs)) as f32
            })
            .collect();
        let mut v_f = vec![f32::INFINITY; c_idx.len().div_ceil(NR) * NR];
        for (x, &j) in v_f.iter_mut().zip(c_idx) {
            *x = v[j as usize] as f32;
        }
        PriceEpilogue {
            r_idx,
            c_idx,
            u,
            v,
            u_lo,
            v_f,
            cand,
            cap,
        }
    }

    /// The exact check of a pair that passed the filter.
    #[inline]
    fn check(&self, state: &mut RowViol, r0: usize, li: usize, lj: usize, w: f32) {
        let (gi, gj) = (self.r_idx[li] as usize, self.c_idx[lj]);
        let viol = f64::from(w) - self.u[gi] - self.v[gj as usize];
        if viol > 0.0 && !self.cand.contains(gi, gj) {
            let (worst, list) = &mut state[li - r0];
            *worst = worst.max(viol);
            list.push((viol, gj, w));
            if list.len() >= 4 * self.cap {
                keep_worst(list, self.cap);
            }
        }
    }
}

impl Epilogue for PriceEpilogue<'_> {
    type Shared = ();
    /// The first priced row of the block and its rows' violations.
    type Rows = (usize, RowViol);

    fn shared(&self) {}

    fn rows(&self, r0: usize, r1: usize) -> (usize, RowViol) {
        (r0, vec![(0.0, Vec::new()); r1 - r0])
    }

    fn visit(&self, _: &mut (), r: &mut (usize, RowViol), t: Tile, c: &[[f32; NR]; MR]) {
        for (i, ci) in c.iter().enumerate().take(t.nr) {
            let li = t.r0 + i;
            for (j, &w) in ci.iter().enumerate().take(t.nc) {
                if w - self.v_f[t.c0 + j] >= self.u_lo[li] {
                    self.check(&mut r.1, r.0, li, t.c0 + j, w);
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn visit_avx512(
        &self,
        _: &mut (),
        r: &mut (usize, RowViol),
        t: Tile,
        acc: &[[__m512; 2]; MR],
    ) {
        use std::arch::x86_64::*;
        let masks = [lane_mask(t.nc, 0), lane_mask(t.nc, 1)];
        assert!(t.c0 + NR <= self.v_f.len());
        // SAFETY: the padded `v_f` holds whole tiles (checked above).
        let vs = unsafe {
            [
                _mm512_loadu_ps(self.v_f.as_ptr().add(t.c0)),
                _mm512_loadu_ps(self.v_f.as_ptr().add(t.c0 + LANES)),
            ]
        };
        for (i, row) in acc.iter().enumerate().take(t.nr) {
            let li = t.r0 + i;
            let lo = _mm512_set1_ps(self.u_lo[li]);
            let reduced = [_mm512_sub_ps(row[0], vs[0]), _mm512_sub_ps(row[1], vs[1])];
            let g = kernel::lanes_at_least(reduced, [lo, lo], masks);
            kernel::for_each_lane(row, g, |l, v| self.check(&mut r.1, r.0, li, t.c0 + l, v));
        }
    }
}
