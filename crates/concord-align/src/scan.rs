//! The fused blocked pass over all pairs of two dictionaries: MMCS both ways and top-k
//! candidates without ever holding the `(n_a, n_b)` similarity matrix.
//!
//! `a` is cut into row blocks and `b` into column blocks; each block product
//! `A[r0..r1] · B[c0..c1]ᵀ` is one call of the pure-Rust `gemm` crate into a small reusable
//! buffer, and a visitor folds the block into running row and column state. Row blocks run in
//! parallel on rayon; every rayon fold keeps its own column state, merged at the end. Ties are
//! broken towards the smaller index everywhere, so results do not depend on the thread count.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::dict::{Dict, same_width};

/// Block sizes of the blocked pass: `rows` of `a` by `cols` of `b` per product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocking {
    pub rows: usize,
    pub cols: usize,
}

impl Default for Blocking {
    fn default() -> Self {
        Blocking {
            rows: 256,
            cols: 2048,
        }
    }
}

/// One block of the similarity matrix: rows `r0..r0 + nr` of `a`, columns `c0..c0 + nc` of
/// `b`; `c` is row-major `(nr, nc)`.
#[derive(Debug)]
pub(crate) struct BlockView<'a> {
    pub r0: usize,
    pub c0: usize,
    pub nr: usize,
    pub nc: usize,
    pub c: &'a [f32],
}

/// `buf = A[r0..r1] · B[c0..c1]ᵀ`, row-major `(r1 - r0, c1 - c0)`.
pub(crate) fn block_product(
    a: &Dict,
    (r0, r1): (usize, usize),
    b: &Dict,
    (c0, c1): (usize, usize),
    buf: &mut Vec<f32>,
) {
    let (m, n, k) = (r1 - r0, c1 - c0, a.d);
    buf.clear();
    buf.resize(m * n, 0.0);
    let lhs = a.rows[r0 * k..r1 * k].as_ptr();
    let rhs = b.rows[c0 * k..c1 * k].as_ptr();
    // SAFETY: `buf` holds `m * n` floats laid out with row stride `n`; `lhs` is `m` rows of
    // `k` contiguous floats (row stride `k`); `rhs` read as the `(k, n)` matrix `Bᵀ` has its
    // element `(p, j)` at `rhs[j * k + p]`, inside the `n * k` floats of the slice. Nothing
    // else aliases `buf` while gemm writes it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            buf.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs,
            1,
            k as isize,
            rhs,
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Runs `visit` over every block of `a · bᵀ`. Returns the fold states `S` (one per rayon fold,
/// to be merged by the caller) and the row-block states `R` in row order.
pub(crate) fn blocked<S, R>(
    a: &Dict,
    b: &Dict,
    blocking: Blocking,
    shared_init: impl Fn() -> S + Sync + Send,
    row_init: impl Fn(usize, usize) -> R + Sync + Send,
    visit: impl Fn(&mut S, &mut R, &BlockView<'_>) + Sync + Send,
) -> (Vec<S>, Vec<R>)
where
    S: Send,
    R: Send,
{
    let (br, bc) = (blocking.rows.max(1), blocking.cols.max(1));
    let nrb = a.n.div_ceil(br);
    let min_len = nrb.div_ceil(rayon::current_num_threads() * 4).max(1);
    let parts: Vec<(S, Vec<(usize, R)>)> = (0..nrb)
        .into_par_iter()
        .with_min_len(min_len)
        .fold(
            || (shared_init(), Vec::new(), Vec::new()),
            |(mut s, mut rs, mut buf), rb| {
                let (r0, r1) = (rb * br, ((rb + 1) * br).min(a.n));
                let mut r = row_init(r0, r1);
                let mut c0 = 0;
                while c0 < b.n {
                    let c1 = (c0 + bc).min(b.n);
                    block_product(a, (r0, r1), b, (c0, c1), &mut buf);
                    let view = BlockView {
                        r0,
                        c0,
                        nr: r1 - r0,
                        nc: c1 - c0,
                        c: &buf,
                    };
                    visit(&mut s, &mut r, &view);
                    c0 = c1;
                }
                rs.push((rb, r));
                (s, rs, buf)
            },
        )
        .map(|(s, rs, _)| (s, rs))
        .collect();
    let mut shared = Vec::with_capacity(parts.len());
    let mut rows: Vec<(usize, R)> = Vec::with_capacity(nrb);
    for (s, rs) in parts {
        shared.push(s);
        rows.extend(rs);
    }
    rows.sort_by_key(|(rb, _)| *rb);
    (shared, rows.into_iter().map(|(_, r)| r).collect())
}

/// Whether `(v, i)` ranks before `(w, j)`: larger value first, then smaller index.
#[inline]
fn better(v: f32, i: u32, w: f32, j: u32) -> bool {
    v > w || (v == w && i < j)
}

/// The `k` best `(index, value)` candidates of each of `n` items, sorted best first;
/// unfilled slots hold `u32::MAX` and `-inf`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopK {
    pub k: usize,
    /// `(n, k)`.
    pub index: Vec<u32>,
    /// `(n, k)`.
    pub value: Vec<f32>,
}

impl TopK {
    pub(crate) fn new(n: usize, k: usize) -> TopK {
        TopK {
            k,
            index: vec![u32::MAX; n * k],
            value: vec![f32::NEG_INFINITY; n * k],
        }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.index.len().checked_div(self.k).unwrap_or(0)
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Item `i`'s filled candidates, best first.
    pub fn get(&self, i: usize) -> impl Iterator<Item = (u32, f32)> + '_ {
        let s = i * self.k..(i + 1) * self.k;
        self.index[s.clone()]
            .iter()
            .zip(&self.value[s])
            .filter(|(j, _)| **j != u32::MAX)
            .map(|(&j, &v)| (j, v))
    }

    #[inline]
    pub(crate) fn kth(&self, slot: usize) -> f32 {
        self.value[slot * self.k + self.k - 1]
    }

    #[inline]
    pub(crate) fn insert(&mut self, slot: usize, v: f32, id: u32) {
        let base = slot * self.k;
        let (idx, val) = (
            &mut self.index[base..base + self.k],
            &mut self.value[base..base + self.k],
        );
        let last = self.k - 1;
        if !better(v, id, val[last], idx[last]) {
            return;
        }
        let mut p = last;
        while p > 0 && better(v, id, val[p - 1], idx[p - 1]) {
            val[p] = val[p - 1];
            idx[p] = idx[p - 1];
            p -= 1;
        }
        val[p] = v;
        idx[p] = id;
    }

    fn merge(&mut self, other: &TopK) {
        for slot in 0..self.len() {
            for (j, v) in other.get(slot) {
                self.insert(slot, v, j);
            }
        }
    }
}

/// What the fused pass computes (by default: maxima only, no candidates).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanOptions {
    /// Candidates kept per row and per column (0: none).
    pub top_k: usize,
    pub blocking: Blocking,
}

/// The result of the fused pass over `C = A Bᵀ`, `(n_a, n_b)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    /// `max_j C_ij`, `(n_a)`.
    pub row_max: Vec<f32>,
    /// The smallest `j` attaining the maximum, `(n_a)`.
    pub row_arg: Vec<u32>,
    /// `max_i C_ij`, `(n_b)`.
    pub col_max: Vec<f32>,
    /// `(n_b)`.
    pub col_arg: Vec<u32>,
    /// The best `k` columns of each row, when asked for.
    pub row_top: Option<TopK>,
    /// The best `k` rows of each column, when asked for.
    pub col_top: Option<TopK>,
}

impl Scan {
    /// `MMCS(a -> b) = mean_i max_j cos(a_i, b_j)`.
    pub fn mmcs_a_to_b(&self) -> f64 {
        mean(&self.row_max)
    }

    /// `MMCS(b -> a) = mean_j max_i cos(a_i, b_j)`.
    pub fn mmcs_b_to_a(&self) -> f64 {
        mean(&self.col_max)
    }
}

pub(crate) fn mean(xs: &[f32]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.iter().map(|&v| f64::from(v)).sum::<f64>() / xs.len() as f64
}

struct ColState {
    max: Vec<f32>,
    arg: Vec<u32>,
    top: Option<TopK>,
    /// Each column's current k-th best value, contiguous so that the per-element test does
    /// not stride through the top-k lists.
    kth: Vec<f32>,
}

struct RowState {
    max: Vec<f32>,
    arg: Vec<u32>,
    top: Option<TopK>,
}

/// The fused pass: row and column maxima (MMCS both ways) and optionally the top-k
/// candidates per row and per column, of `a · bᵀ` for unit-row dictionaries `a` `(n_a, d)`
/// and `b` `(n_b, d)`.
pub fn scan(a: &Dict, b: &Dict, opts: &ScanOptions) -> Result<Scan> {
    same_width(a, b)?;
    let k = opts.top_k;
    let (shared, rows) = blocked(
        a,
        b,
        opts.blocking,
        || ColState {
            max: vec![f32::NEG_INFINITY; b.n],
            arg: vec![u32::MAX; b.n],
            top: (k > 0).then(|| TopK::new(b.n, k)),
            kth: vec![f32::NEG_INFINITY; if k > 0 { b.n } else { 0 }],
        },
        |r0, r1| RowState {
            max: vec![f32::NEG_INFINITY; r1 - r0],
            arg: vec![u32::MAX; r1 - r0],
            top: (k > 0).then(|| TopK::new(r1 - r0, k)),
        },
        |col, row, blk| {
            // With lists, their first entries are the maxima: one pass over the block.
            if k == 0 {
                let cmax = &mut col.max[blk.c0..blk.c0 + blk.nc];
                let carg = &mut col.arg[blk.c0..blk.c0 + blk.nc];
                for i in 0..blk.nr {
                    let crow = &blk.c[i * blk.nc..(i + 1) * blk.nc];
                    let gi = (blk.r0 + i) as u32;
                    let (mut rmax, mut rarg) = (row.max[i], row.arg[i]);
                    for (j, &v) in crow.iter().enumerate() {
                        if v > rmax {
                            rmax = v;
                            rarg = (blk.c0 + j) as u32;
                        }
                        // Rows arrive in increasing order within a fold, so `>` keeps the
                        // smallest row index among equal values.
                        if v > cmax[j] {
                            cmax[j] = v;
                            carg[j] = gi;
                        }
                    }
                    row.max[i] = rmax;
                    row.arg[i] = rarg;
                }
            }
            if let (Some(rtop), Some(ctop)) = (&mut row.top, &mut col.top) {
                for i in 0..blk.nr {
                    let crow = &blk.c[i * blk.nc..(i + 1) * blk.nc];
                    let gi = (blk.r0 + i) as u32;
                    let mut kth = rtop.kth(i);
                    let ckth = &mut col.kth[blk.c0..blk.c0 + blk.nc];
                    for (j, &v) in crow.iter().enumerate() {
                        let gj = blk.c0 + j;
                        if v >= kth {
                            rtop.insert(i, v, gj as u32);
                            kth = rtop.kth(i);
                        }
                        if v >= ckth[j] {
                            ctop.insert(gj, v, gi);
                            ckth[j] = ctop.kth(gj);
                        }
                    }
                }
            }
        },
    );
    let mut it = shared.into_iter();
    let mut col = it
        .next()
        .expect("a non-empty dictionary yields at least one fold");
    for other in it {
        for j in 0..b.n {
            if better(other.max[j], other.arg[j], col.max[j], col.arg[j]) {
                col.max[j] = other.max[j];
                col.arg[j] = other.arg[j];
            }
        }
        if let (Some(t), Some(o)) = (&mut col.top, &other.top) {
            t.merge(o);
        }
    }
    if let Some(t) = &col.top {
        for j in 0..b.n {
            col.max[j] = t.value[j * t.k];
            col.arg[j] = t.index[j * t.k];
        }
    }
    let mut row_max = Vec::with_capacity(a.n);
    let mut row_arg = Vec::with_capacity(a.n);
    let mut row_top = (k > 0).then(|| TopK {
        k,
        index: Vec::new(),
        value: Vec::new(),
    });
    for r in rows {
        if let Some(t) = &r.top {
            row_max.extend((0..t.len()).map(|i| t.value[i * t.k]));
            row_arg.extend((0..t.len()).map(|i| t.index[i * t.k]));
        } else {
            row_max.extend(r.max);
            row_arg.extend(r.arg);
        }
        if let (Some(t), Some(rt)) = (&mut row_top, r.top) {
            t.index.extend(rt.index);
            t.value.extend(rt.value);
        }
    }
    Ok(Scan {
        row_max,
        row_arg,
        col_max: col.max,
        col_arg: col.arg,
        row_top,
        col_top: col.top,
    })
}

/// The full similarity matrix `a · bᵀ`, `(n_a, n_b)`, for moderate sizes (dense matching,
/// tests).
pub fn similarity_matrix(a: &Dict, b: &Dict) -> Result<Vec<f32>> {
    same_width(a, b)?;
    let mut out = vec![0.0f32; a.n * b.n];
    let blocking = Blocking {
        rows: 256,
        cols: b.n.max(1),
    };
    out.par_chunks_mut(blocking.rows * b.n)
        .enumerate()
        .for_each(|(rb, chunk)| {
            let r0 = rb * blocking.rows;
            let r1 = (r0 + blocking.rows).min(a.n);
            let mut buf = Vec::new();
            block_product(a, (r0, r1), b, (0, b.n), &mut buf);
            chunk.copy_from_slice(&buf);
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_keeps_best_with_ties_to_smaller_index() {
        let mut t = TopK::new(1, 3);
        for (i, v) in [(5, 0.1), (2, 0.5), (7, 0.5), (1, 0.5), (3, 0.9)] {
            t.insert(0, v, i);
        }
        assert_eq!(
            t.get(0).collect::<Vec<_>>(),
            vec![(3, 0.9), (1, 0.5), (2, 0.5)]
        );
    }
}
