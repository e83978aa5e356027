//! The fused blocked pass over all pairs of two dictionaries: MMCS both ways and top-k
//! candidates without ever holding the `(n_a, n_b)` similarity matrix.
//!
//! The pass runs the packed microkernel of `kernel`: every register tile of `A · Bᵀ` goes
//! straight to an epilogue that folds it into running row and column state (lane-wise maxima
//! with their arguments, or top-k lists filtered against each row's and column's current
//! `k`-th value), so no block of the product is stored. Row blocks run in parallel on rayon;
//! every rayon fold keeps its own column state, merged at the end. Ties are broken towards
//! the smaller index everywhere, so results do not depend on the thread count.
//!
//! `blocked` (one call of the `gemm` crate per block into a buffer, then a visitor) remains
//! for passes whose visitor is not worth a vector epilogue (`metrics::families`).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m512;

use crate::Result;
use crate::dict::{Dict, same_width};
#[cfg(target_arch = "x86_64")]
use crate::kernel::lane_mask;
use crate::kernel::{self, Backend, Blocks, Epilogue, LANES, MR, NR, PackedCols, Sel, Tile};

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

/// One block of the similarity matrix: `nr` consecutive rows of `a`, columns `c0..c0 + nc` of
/// `b`; `c` is row-major `(nr, nc)`.
#[derive(Debug)]
pub(crate) struct BlockView<'a> {
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

/// Running maxima of each column: `(panels NR)`, padded so that whole vectors load.
struct ColMax {
    max: Vec<f32>,
    arg: Vec<u32>,
}

/// Running maxima of a block of rows, one per row and lane: lane `l` of row `i` holds the
/// best of the columns `j = l mod 16` seen so far; `finish` reduces the lanes.
struct RowLanes {
    r0: usize,
    max: Vec<f32>,
    arg: Vec<u32>,
}

/// Row and column maxima with their arguments.
struct MaxEpilogue {
    n_cols: usize,
}

/// Lane indices `0 .. 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn iota() -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::_mm512_setr_epi32;
    _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
}

impl Epilogue for MaxEpilogue {
    type Shared = ColMax;
    type Rows = RowLanes;

    fn shared(&self) -> ColMax {
        let n = self.n_cols.div_ceil(NR) * NR;
        ColMax {
            max: vec![f32::NEG_INFINITY; n],
            arg: vec![u32::MAX; n],
        }
    }

    fn rows(&self, r0: usize, r1: usize) -> RowLanes {
        RowLanes {
            r0,
            max: vec![f32::NEG_INFINITY; (r1 - r0) * LANES],
            arg: vec![u32::MAX; (r1 - r0) * LANES],
        }
    }

    fn visit(&self, s: &mut ColMax, r: &mut RowLanes, t: Tile, c: &[[f32; NR]; MR]) {
        for (i, ci) in c.iter().enumerate().take(t.nr) {
            let gi = t.r0 + i;
            let slot = (gi - r.r0) * LANES;
            for (j, &v) in ci.iter().enumerate().take(t.nc) {
                let l = slot + j % LANES;
                // Rows see their columns in increasing order and columns their rows: `>`
                // keeps the smallest index among equal values.
                if v > r.max[l] {
                    r.max[l] = v;
                    r.arg[l] = (t.c0 + j) as u32;
                }
                let gj = t.c0 + j;
                if v > s.max[gj] {
                    s.max[gj] = v;
                    s.arg[gj] = gi as u32;
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn visit_avx512(
        &self,
        s: &mut ColMax,
        r: &mut RowLanes,
        t: Tile,
        acc: &[[__m512; 2]; MR],
    ) {
        use std::arch::x86_64::*;
        let masks = [lane_mask(t.nc, 0), lane_mask(t.nc, 1)];
        let cols0 = _mm512_add_epi32(_mm512_set1_epi32(t.c0 as i32), iota());
        let cols1 = _mm512_add_epi32(cols0, _mm512_set1_epi32(LANES as i32));
        for (i, row) in acc.iter().enumerate().take(t.nr) {
            let slot = (t.r0 + i - r.r0) * LANES;
            assert!(slot + LANES <= r.max.len());
            // SAFETY: `slot .. slot + 16` lies inside both lane arrays (checked above).
            unsafe {
                let pm = r.max.as_mut_ptr().add(slot);
                let pa = r.arg.as_mut_ptr().add(slot).cast::<__m512i>();
                let mut vm = _mm512_loadu_ps(pm);
                let mut va = _mm512_loadu_si512(pa);
                let g = _mm512_mask_cmp_ps_mask(masks[0], row[0], vm, _CMP_GT_OQ);
                vm = _mm512_mask_mov_ps(vm, g, row[0]);
                va = _mm512_mask_mov_epi32(va, g, cols0);
                let g = _mm512_mask_cmp_ps_mask(masks[1], row[1], vm, _CMP_GT_OQ);
                vm = _mm512_mask_mov_ps(vm, g, row[1]);
                va = _mm512_mask_mov_epi32(va, g, cols1);
                _mm512_storeu_ps(pm, vm);
                _mm512_storeu_si512(pa, va);
            }
        }
        for (h, &mask) in masks.iter().enumerate() {
            if mask == 0 {
                continue;
            }
            // The column maxima of the tile: rows in increasing order, `>` keeps the first.
            let mut m = acc[0][h];
            let mut idx = _mm512_set1_epi32(t.r0 as i32);
            for (i, row) in acc.iter().enumerate().take(t.nr).skip(1) {
                let g = _mm512_cmp_ps_mask(row[h], m, _CMP_GT_OQ);
                m = _mm512_max_ps(m, row[h]);
                idx = _mm512_mask_mov_epi32(idx, g, _mm512_set1_epi32((t.r0 + i) as i32));
            }
            let p = t.c0 + h * LANES;
            assert!(p + LANES <= s.max.len());
            // SAFETY: `p .. p + 16` lies inside the padded column arrays (checked above).
            unsafe {
                let pm = s.max.as_mut_ptr().add(p);
                let pa = s.arg.as_mut_ptr().add(p).cast::<__m512i>();
                let cm = _mm512_loadu_ps(pm);
                let g = _mm512_mask_cmp_ps_mask(mask, m, cm, _CMP_GT_OQ);
                _mm512_storeu_ps(pm, _mm512_mask_mov_ps(cm, g, m));
                let ca = _mm512_loadu_si512(pa);
                _mm512_storeu_si512(pa, _mm512_mask_mov_epi32(ca, g, idx));
            }
        }
    }
}

/// The best `k` of each column, and each column's current `k`-th value (padded with `+inf`
/// to whole vectors, so padding never passes the filter).
struct ColTop {
    top: TopK,
    kth: Vec<f32>,
}

/// The best `k` of a block of rows starting at `r0`.
struct RowTop {
    r0: usize,
    top: TopK,
}

/// Top-k candidates of each row and column. A value is offered to a list only when it is at
/// least the list's current `k`-th value; `TopK::insert` settles ties by index, so the lists
/// do not depend on the order of the offers.
struct TopEpilogue {
    n_cols: usize,
    k: usize,
}

impl Epilogue for TopEpilogue {
    type Shared = ColTop;
    type Rows = RowTop;

    fn shared(&self) -> ColTop {
        let mut kth = vec![f32::INFINITY; self.n_cols.div_ceil(NR) * NR];
        kth[..self.n_cols].fill(f32::NEG_INFINITY);
        ColTop {
            top: TopK::new(self.n_cols, self.k),
            kth,
        }
    }

    fn rows(&self, r0: usize, r1: usize) -> RowTop {
        RowTop {
            r0,
            top: TopK::new(r1 - r0, self.k),
        }
    }

    fn visit(&self, s: &mut ColTop, r: &mut RowTop, t: Tile, c: &[[f32; NR]; MR]) {
        for (i, ci) in c.iter().enumerate().take(t.nr) {
            let gi = t.r0 + i;
            let li = gi - r.r0;
            for (j, &v) in ci.iter().enumerate().take(t.nc) {
                let gj = t.c0 + j;
                if v >= r.top.kth(li) {
                    r.top.insert(li, v, gj as u32);
                }
                if v >= s.kth[gj] {
                    s.top.insert(gj, v, gi as u32);
                    s.kth[gj] = s.top.kth(gj);
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn visit_avx512(
        &self,
        s: &mut ColTop,
        r: &mut RowTop,
        t: Tile,
        acc: &[[__m512; 2]; MR],
    ) {
        use std::arch::x86_64::*;
        let masks = [lane_mask(t.nc, 0), lane_mask(t.nc, 1)];
        let mut buf = [0.0f32; NR];
        for (i, row) in acc.iter().enumerate().take(t.nr) {
            let li = t.r0 + i - r.r0;
            let kth = _mm512_set1_ps(r.top.kth(li));
            let g0 = _mm512_mask_cmp_ps_mask(masks[0], row[0], kth, _CMP_GE_OQ);
            let g1 = _mm512_mask_cmp_ps_mask(masks[1], row[1], kth, _CMP_GE_OQ);
            let mut g = u32::from(g0) | (u32::from(g1) << LANES);
            if g != 0 {
                // SAFETY: `buf` holds two vectors.
                unsafe {
                    _mm512_storeu_ps(buf.as_mut_ptr(), row[0]);
                    _mm512_storeu_ps(buf.as_mut_ptr().add(LANES), row[1]);
                }
                while g != 0 {
                    let l = g.trailing_zeros() as usize;
                    g &= g - 1;
                    r.top.insert(li, buf[l], (t.c0 + l) as u32);
                }
            }
        }
        for (h, &mask) in masks.iter().enumerate() {
            if mask == 0 {
                continue;
            }
            let p = t.c0 + h * LANES;
            assert!(p + LANES <= s.kth.len());
            // SAFETY: `p .. p + 16` lies inside the padded thresholds (checked above).
            let kv = unsafe { _mm512_loadu_ps(s.kth.as_ptr().add(p)) };
            let mut m = acc[0][h];
            for row in acc.iter().take(t.nr).skip(1) {
                m = _mm512_max_ps(m, row[h]);
            }
            let any = _mm512_mask_cmp_ps_mask(mask, m, kv, _CMP_GE_OQ);
            if any == 0 {
                continue;
            }
            for (i, row) in acc.iter().enumerate().take(t.nr) {
                let mut g = _mm512_mask_cmp_ps_mask(any, row[h], kv, _CMP_GE_OQ);
                if g == 0 {
                    continue;
                }
                // SAFETY: `buf` holds two vectors.
                unsafe { _mm512_storeu_ps(buf.as_mut_ptr(), row[h]) };
                while g != 0 {
                    let l = g.trailing_zeros() as usize;
                    g &= g - 1;
                    s.top.insert(p + l, buf[l], (t.r0 + i) as u32);
                }
            }
            let mut g = any;
            while g != 0 {
                let l = g.trailing_zeros() as usize;
                g &= g - 1;
                s.kth[p + l] = s.top.kth(p + l);
            }
        }
    }
}

/// The cache blocks of the kernel for a [`Blocking`].
pub(crate) fn blocks(b: Blocking) -> Blocks {
    Blocks {
        rows: b.rows,
        cols: b.cols,
    }
}

/// The fused pass: row and column maxima (MMCS both ways) and optionally the top-k
/// candidates per row and per column, of `a · bᵀ` for unit-row dictionaries `a` `(n_a, d)`
/// and `b` `(n_b, d)`.
pub fn scan(a: &Dict, b: &Dict, opts: &ScanOptions) -> Result<Scan> {
    same_width(a, b)?;
    Ok(scan_on(Backend::detect(), a, b, opts))
}

/// [`scan`] on a chosen kernel.
pub(crate) fn scan_on(backend: Backend, a: &Dict, b: &Dict, opts: &ScanOptions) -> Scan {
    let k = opts.top_k;
    let packed = PackedCols::new(&b.rows, b.d, Sel::All(b.n));
    let (sel, blk) = (Sel::All(a.n), blocks(opts.blocking));
    if k == 0 {
        let e = MaxEpilogue { n_cols: b.n };
        let (shared, rows) = kernel::run_on(backend, &a.rows, sel, &packed, blk, &e);
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
        }
        col.max.truncate(b.n);
        col.arg.truncate(b.n);
        let mut row_max = Vec::with_capacity(a.n);
        let mut row_arg = Vec::with_capacity(a.n);
        for r in rows {
            for (m, g) in r.max.chunks_exact(LANES).zip(r.arg.chunks_exact(LANES)) {
                let (mut bm, mut bg) = (f32::NEG_INFINITY, u32::MAX);
                for l in 0..LANES {
                    if better(m[l], g[l], bm, bg) {
                        (bm, bg) = (m[l], g[l]);
                    }
                }
                row_max.push(bm);
                row_arg.push(bg);
            }
        }
        return Scan {
            row_max,
            row_arg,
            col_max: col.max,
            col_arg: col.arg,
            row_top: None,
            col_top: None,
        };
    }
    let e = TopEpilogue { n_cols: b.n, k };
    let (shared, rows) = kernel::run_on(backend, &a.rows, sel, &packed, blk, &e);
    let mut it = shared.into_iter();
    let mut col = it
        .next()
        .expect("a non-empty dictionary yields at least one fold")
        .top;
    for other in it {
        col.merge(&other.top);
    }
    let col_max = (0..b.n).map(|j| col.value[j * k]).collect();
    let col_arg = (0..b.n).map(|j| col.index[j * k]).collect();
    let mut row_top = TopK {
        k,
        index: Vec::with_capacity(a.n * k),
        value: Vec::with_capacity(a.n * k),
    };
    for r in rows {
        row_top.index.extend(r.top.index);
        row_top.value.extend(r.top.value);
    }
    Scan {
        row_max: (0..a.n).map(|i| row_top.value[i * k]).collect(),
        row_arg: (0..a.n).map(|i| row_top.index[i * k]).collect(),
        col_max,
        col_arg,
        row_top: Some(row_top),
        col_top: Some(col),
    }
}

/// Stores tiles: each row block keeps its rows of the product.
struct StoreEpilogue {
    n_cols: usize,
}

impl Epilogue for StoreEpilogue {
    type Shared = ();
    type Rows = (usize, Vec<f32>);

    fn shared(&self) {}

    fn rows(&self, r0: usize, r1: usize) -> (usize, Vec<f32>) {
        (r0, vec![0.0; (r1 - r0) * self.n_cols])
    }

    fn visit(&self, _: &mut (), r: &mut (usize, Vec<f32>), t: Tile, c: &[[f32; NR]; MR]) {
        for (i, ci) in c.iter().enumerate().take(t.nr) {
            let o = (t.r0 + i - r.0) * self.n_cols + t.c0;
            r.1[o..o + t.nc].copy_from_slice(&ci[..t.nc]);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn visit_avx512(
        &self,
        _: &mut (),
        r: &mut (usize, Vec<f32>),
        t: Tile,
        acc: &[[__m512; 2]; MR],
    ) {
        use std::arch::x86_64::*;
        let mut buf = [0.0f32; NR];
        for (i, row) in acc.iter().enumerate().take(t.nr) {
            // SAFETY: `buf` holds two vectors.
            unsafe {
                _mm512_storeu_ps(buf.as_mut_ptr(), row[0]);
                _mm512_storeu_ps(buf.as_mut_ptr().add(LANES), row[1]);
            }
            let o = (t.r0 + i - r.0) * self.n_cols + t.c0;
            r.1[o..o + t.nc].copy_from_slice(&buf[..t.nc]);
        }
    }
}

/// The full similarity matrix `a · bᵀ`, `(n_a, n_b)`, for moderate sizes (dense matching,
/// tests); the same values as the fused pass sees.
pub fn similarity_matrix(a: &Dict, b: &Dict) -> Result<Vec<f32>> {
    same_width(a, b)?;
    let packed = PackedCols::new(&b.rows, b.d, Sel::All(b.n));
    let e = StoreEpilogue { n_cols: b.n };
    let (_, rows) = kernel::run(
        &a.rows,
        Sel::All(a.n),
        &packed,
        blocks(Blocking::default()),
        &e,
    );
    Ok(rows.into_iter().flat_map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::random_dict;

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

    fn backends() -> Vec<Backend> {
        let mut all = vec![Backend::Portable];
        if Backend::detect() != Backend::Portable {
            all.push(Backend::detect());
        }
        all
    }

    /// The product as the kernel computes it, `(n_a, n_b)`.
    fn product(backend: Backend, a: &Dict, b: &Dict) -> Vec<f32> {
        let packed = PackedCols::new(&b.rows, b.d, Sel::All(b.n));
        let e = StoreEpilogue { n_cols: b.n };
        let blk = blocks(Blocking { rows: 20, cols: 64 });
        let (_, rows) = kernel::run_on(backend, &a.rows, Sel::All(a.n), &packed, blk, &e);
        rows.into_iter().flat_map(|(_, r)| r).collect()
    }

    /// Row `src` of `x` copied over row `dst`, which makes ties.
    fn copy_row(x: &mut Dict, src: usize, dst: usize) {
        if src < x.n && dst < x.n {
            let row = x.row(src).to_vec();
            x.rows[dst * x.d..(dst + 1) * x.d].copy_from_slice(&row);
        }
    }

    /// The best `k` of `(index, value)` pairs: larger value first, then smaller index.
    fn best(mut xs: Vec<(u32, f32)>, k: usize) -> Vec<(u32, f32)> {
        xs.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        xs.truncate(k);
        xs
    }

    #[test]
    fn fused_pass_is_exact_on_odd_shapes_for_every_kernel() {
        // Shapes that leave partial tiles (14 rows, 32 columns) and widths that are not
        // whole vectors; copied rows make ties inside one tile and across tiles.
        let shapes = [
            (1, 1, 1),
            (13, 31, 7),
            (15, 33, 17),
            (29, 67, 37),
            (60, 95, 130),
            (200, 70, 16),
        ];
        for backend in backends() {
            for (n_a, n_b, d) in shapes {
                let mut a = random_dict(n_a, d, 1).unwrap();
                let mut b = random_dict(n_b, d, 2).unwrap();
                // Row 0 of `a` is also columns 3, 5, 19, 35 and 40 of `b` (other lanes, the
                // same lane in the other half of the tile and in the next tile) and rows 5, 16
                // and `n_a - 1` of `a`: the maxima of those rows and columns tie.
                if n_b > 3 {
                    let a0 = a.row(0).to_vec();
                    b.rows[3 * d..4 * d].copy_from_slice(&a0);
                }
                for j in [5, 19, 35, 40] {
                    copy_row(&mut b, 3, j);
                }
                for i in [5, 16, n_a - 1] {
                    copy_row(&mut a, 0, i);
                }
                let c = product(backend, &a, &b);
                for i in 0..n_a {
                    for j in 0..n_b {
                        let want: f64 = a
                            .row(i)
                            .iter()
                            .zip(b.row(j))
                            .map(|(x, y)| f64::from(*x) * f64::from(*y))
                            .sum();
                        assert!((f64::from(c[i * n_b + j]) - want).abs() < 1e-5);
                    }
                }
                let blockings = [
                    Blocking::default(),
                    Blocking { rows: 3, cols: 5 },
                    Blocking { rows: 20, cols: 64 },
                ];
                for blocking in blockings {
                    for k in [0, 3] {
                        let case = format!("{backend:?} {n_a}x{n_b} d {d} k {k} {blocking:?}");
                        let s = scan_on(backend, &a, &b, &ScanOptions { top_k: k, blocking });
                        for i in 0..n_a {
                            let row: Vec<(u32, f32)> =
                                (0..n_b).map(|j| (j as u32, c[i * n_b + j])).collect();
                            let want = best(row, k.max(1));
                            assert_eq!((s.row_arg[i], s.row_max[i]), want[0], "{case} row {i}");
                            if let Some(t) = &s.row_top {
                                assert_eq!(t.get(i).collect::<Vec<_>>(), want, "{case} row {i}");
                            }
                        }
                        for j in 0..n_b {
                            let col: Vec<(u32, f32)> =
                                (0..n_a).map(|i| (i as u32, c[i * n_b + j])).collect();
                            let want = best(col, k.max(1));
                            assert_eq!((s.col_arg[j], s.col_max[j]), want[0], "{case} col {j}");
                            if let Some(t) = &s.col_top {
                                assert_eq!(t.get(j).collect::<Vec<_>>(), want, "{case} col {j}");
                            }
                        }
                    }
                }
            }
        }
    }
}
