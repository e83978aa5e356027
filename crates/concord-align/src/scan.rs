//! The fused blocked pass over all pairs of two dictionaries: MMCS both ways and top-k
//! candidates without ever holding the `(n_a, n_b)` similarity matrix.
//!
//! The pass runs the packed microkernel of `kernel`: every register tile of `A · Bᵀ` goes
//! straight to an epilogue that folds it into running row and column state (lane-wise maxima
//! with their arguments, or top-k lists filtered against each row's and column's current
//! `k`-th value), so no block of the product is stored. Row blocks run in parallel on rayon;
//! every rayon fold keeps its own column state, merged at the end. Ties are broken towards
//! the smaller index everywhere, so results do not depend on the thread count.

use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m512;

use crate::Result;
use crate::dict::{Dict, same_width};
#[cfg(target_arch = "x86_64")]
use crate::kernel::lane_mask;
use crate::kernel::{self, Backend, Blocks, Epilogue, LANES, MR, NR, PackedCols, Sel, Tile};

/// Cache blocks of the fused pass: each worker takes `rows` rows of `a` at a time (rounded
/// to whole register tiles of 14) and runs them over `cols` columns of `b` (rounded to whole
/// panels of 32) before moving to the next columns. Results do not depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocking {
    pub rows: usize,
    pub cols: usize,
}

impl Default for Blocking {
    fn default() -> Self {
        // Blocks of 40 register tiles of `a` (its packed block, 1.1 MB at d = 512, stays in
        // L2) run over one column panel at a time, each panel (64 KB) serving all 40 tiles.
        Blocking {
            rows: 560,
            cols: 32,
        }
    }
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

/// Top-k candidates being collected for `n` items: per item an unsorted buffer of up to `2k`
/// offers and a threshold `kth`, a value that `k` offers already reach, so an offer below it
/// can never be among the best `k`. A full buffer is cut back to its best `k` by selection
/// (which raises the threshold to the `k`-th best value), so an offer costs O(1) amortised
/// instead of the O(k) of a sorted insertion. The result does not depend on the order of the
/// offers: it is the best `k` of all offers by (value descending, index ascending).
struct Collector {
    k: usize,
    len: Vec<u32>,
    /// `(n, 2k)` offers `(value, index)`.
    buf: Vec<(f32, u32)>,
    /// `(n)`, padded with `+inf` to `padded` so that padding never passes a filter.
    kth: Vec<f32>,
}

/// Larger value first, then smaller index.
fn order(x: &(f32, u32), y: &(f32, u32)) -> std::cmp::Ordering {
    y.0.total_cmp(&x.0).then(x.1.cmp(&y.1))
}

impl Collector {
    fn new(n: usize, k: usize, padded: usize) -> Collector {
        let mut kth = vec![f32::INFINITY; padded.max(n)];
        kth[..n].fill(f32::NEG_INFINITY);
        Collector {
            k,
            len: vec![0; n],
            buf: vec![(0.0, u32::MAX); n * 2 * k],
            kth,
        }
    }

    /// Offers `(v, id)` to item `slot`; the caller has checked `v >= kth[slot]`.
    #[inline]
    fn offer(&mut self, slot: usize, v: f32, id: u32) {
        let (k, cap) = (self.k, 2 * self.k);
        let len = self.len[slot] as usize;
        self.buf[slot * cap + len] = (v, id);
        let len = len + 1;
        self.len[slot] = len as u32;
        if len == k {
            // The first `k` offers: the smallest of them is reached by all `k`.
            let b = &self.buf[slot * cap..slot * cap + k];
            let low = b.iter().map(|e| e.0).fold(f32::INFINITY, f32::min);
            self.kth[slot] = self.kth[slot].max(low);
        } else if len == cap {
            self.cut(slot);
        }
    }

    /// Keeps the best `k` offers of item `slot`, unordered.
    fn cut(&mut self, slot: usize) {
        let (k, cap) = (self.k, 2 * self.k);
        let len = self.len[slot] as usize;
        if len <= k {
            return;
        }
        let b = &mut self.buf[slot * cap..slot * cap + len];
        b.select_nth_unstable_by(k - 1, order);
        // The threshold may come from elsewhere (another fold's `k` offers): never lower it.
        self.kth[slot] = self.kth[slot].max(b[k - 1].0);
        self.len[slot] = k as u32;
    }

    /// Item `slot`'s offers, unordered.
    fn offers(&self, slot: usize) -> &[(f32, u32)] {
        let cap = 2 * self.k;
        &self.buf[slot * cap..slot * cap + self.len[slot] as usize]
    }

    /// Offers everything `other` holds.
    fn absorb(&mut self, other: &Collector) {
        for slot in 0..self.len.len() {
            for &(v, id) in other.offers(slot) {
                if v >= self.kth[slot] {
                    self.offer(slot, v, id);
                }
            }
        }
    }

    /// The best `k` of each item, sorted.
    fn into_top(mut self) -> TopK {
        let n = self.len.len();
        let mut top = TopK::new(n, self.k);
        for slot in 0..n {
            self.cut(slot);
            let cap = 2 * self.k;
            let b = &mut self.buf[slot * cap..slot * cap + self.len[slot] as usize];
            b.sort_unstable_by(order);
            for (p, &(v, id)) in b.iter().enumerate() {
                top.value[slot * self.k + p] = v;
                top.index[slot * self.k + p] = id;
            }
        }
        top
    }
}

/// The candidates of a block of rows starting at `r0`.
struct RowTop {
    r0: usize,
    top: Collector,
}

/// Top-k candidates of each row and column: every value at least an item's threshold is
/// offered to its [`Collector`].
///
/// Each rayon fold collects its own column candidates, but a column's threshold in one fold
/// is also a valid threshold for the others (that fold holds `k` offers reaching it, and the
/// merged lists are the best `k` of all folds), so folds publish their column thresholds
/// after each row block and take the others' before the next: the columns are filtered
/// about as tightly as by a single fold.
struct TopEpilogue {
    n_cols: usize,
    k: usize,
    /// The highest column thresholds published, as order-preserving bits ([`ordered`]).
    published: Vec<AtomicU32>,
}

/// The bits of `x` as a `u32` with the order of `x` (for finite values and infinities).
fn ordered(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 { !b } else { b | (1 << 31) }
}

/// The inverse of [`ordered`].
fn from_ordered(b: u32) -> f32 {
    f32::from_bits(if b >> 31 == 1 { b & !(1 << 31) } else { !b })
}

impl Epilogue for TopEpilogue {
    type Shared = Collector;
    type Rows = RowTop;

    fn shared(&self) -> Collector {
        Collector::new(self.n_cols, self.k, self.n_cols.div_ceil(NR) * NR)
    }

    fn rows(&self, r0: usize, r1: usize) -> RowTop {
        RowTop {
            r0,
            top: Collector::new(r1 - r0, self.k, r1 - r0),
        }
    }

    fn block_start(&self, s: &mut Collector) {
        for (t, p) in s.kth.iter_mut().zip(&self.published) {
            *t = t.max(from_ordered(p.load(Relaxed)));
        }
    }

    fn block_end(&self, s: &mut Collector) {
        for (t, p) in s.kth.iter().zip(&self.published) {
            if *t > f32::NEG_INFINITY {
                p.fetch_max(ordered(*t), Relaxed);
            }
        }
    }

    fn visit(&self, s: &mut Collector, r: &mut RowTop, t: Tile, c: &[[f32; NR]; MR]) {
        for (i, ci) in c.iter().enumerate().take(t.nr) {
            let gi = t.r0 + i;
            let li = gi - r.r0;
            for (j, &v) in ci.iter().enumerate().take(t.nc) {
                let gj = t.c0 + j;
                if v >= r.top.kth[li] {
                    r.top.offer(li, v, gj as u32);
                }
                if v >= s.kth[gj] {
                    s.offer(gj, v, gi as u32);
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn visit_avx512(
        &self,
        s: &mut Collector,
        r: &mut RowTop,
        t: Tile,
        acc: &[[__m512; 2]; MR],
    ) {
        use std::arch::x86_64::*;
        let masks = [lane_mask(t.nc, 0), lane_mask(t.nc, 1)];
        for (i, row) in acc.iter().enumerate().take(t.nr) {
            let li = t.r0 + i - r.r0;
            let kth = _mm512_set1_ps(r.top.kth[li]);
            let g = kernel::lanes_at_least(*row, [kth, kth], masks);
            kernel::for_each_lane(row, g, |l, v| {
                // Offers may raise the threshold: the rest of the row is checked again.
                if v >= r.top.kth[li] {
                    r.top.offer(li, v, (t.c0 + l) as u32);
                }
            });
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
            let mut buf = [0.0f32; LANES];
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
                    if buf[l] >= s.kth[p + l] {
                        s.offer(p + l, buf[l], (t.r0 + i) as u32);
                    }
                }
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
    let e = TopEpilogue {
        n_cols: b.n,
        k,
        published: (0..b.n)
            .map(|_| AtomicU32::new(ordered(f32::NEG_INFINITY)))
            .collect(),
    };
    let (shared, rows) = kernel::run_on(backend, &a.rows, sel, &packed, blk, &e);
    let mut it = shared.into_iter();
    let mut col = it
        .next()
        .expect("a non-empty dictionary yields at least one fold");
    for other in it {
        col.absorb(&other);
    }
    let col = col.into_top();
    let col_max = (0..b.n).map(|j| col.value[j * k]).collect();
    let col_arg = (0..b.n).map(|j| col.index[j * k]).collect();
    let mut row_top = TopK {
        k,
        index: Vec::with_capacity(a.n * k),
        value: Vec::with_capacity(a.n * k),
    };
    for r in rows {
        let t = r.top.into_top();
        row_top.index.extend(t.index);
        row_top.value.extend(t.value);
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

/// The columns of each row at or above a threshold: per row `(column, value)` in no order,
/// cut back to the best `cap` whenever a list reaches `4 cap`.
struct AboveEpilogue {
    threshold: f32,
    cap: usize,
}

impl AboveEpilogue {
    fn push(&self, list: &mut Vec<(u32, f32)>, j: usize, v: f32) {
        list.push((j as u32, v));
        if list.len() >= 4 * self.cap {
            list.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
            list.truncate(self.cap);
        }
    }
}

impl Epilogue for AboveEpilogue {
    type Shared = ();
    type Rows = (usize, Vec<Vec<(u32, f32)>>);

    fn shared(&self) {}

    fn rows(&self, r0: usize, r1: usize) -> Self::Rows {
        (r0, vec![Vec::new(); r1 - r0])
    }

    fn visit(&self, _: &mut (), r: &mut Self::Rows, t: Tile, c: &[[f32; NR]; MR]) {
        for (i, ci) in c.iter().enumerate().take(t.nr) {
            let list = &mut r.1[t.r0 + i - r.0];
            for (j, &v) in ci.iter().enumerate().take(t.nc) {
                if v >= self.threshold {
                    self.push(list, t.c0 + j, v);
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
        r: &mut Self::Rows,
        t: Tile,
        acc: &[[__m512; 2]; MR],
    ) {
        use std::arch::x86_64::*;
        let masks = [lane_mask(t.nc, 0), lane_mask(t.nc, 1)];
        let th = _mm512_set1_ps(self.threshold);
        for (i, row) in acc.iter().enumerate().take(t.nr) {
            let g = kernel::lanes_at_least(*row, [th, th], masks);
            let list = &mut r.1[t.r0 + i - r.0];
            kernel::for_each_lane(row, g, |l, v| self.push(list, t.c0 + l, v));
        }
    }
}

/// For each row of `a` `(n_a, d)`, the rows of `b` `(n_b, d)` with cosine at least
/// `threshold`, as `(index, cosine)` in no order; lists longer than `4 cap` are cut back to
/// their best `cap` on the way (the caller keeps the best `cap` at the end).
pub(crate) fn rows_above(
    a: &Dict,
    b: &Dict,
    threshold: f32,
    cap: usize,
    blocking: Blocking,
) -> Vec<Vec<(u32, f32)>> {
    let packed = PackedCols::new(&b.rows, b.d, Sel::All(b.n));
    let e = AboveEpilogue {
        threshold,
        cap: cap.max(1),
    };
    let (_, rows) = kernel::run(&a.rows, Sel::All(a.n), &packed, blocks(blocking), &e);
    rows.into_iter().flat_map(|(_, r)| r).collect()
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
        for (i, row) in acc.iter().enumerate().take(t.nr) {
            let buf = kernel::spill(row);
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
    fn collector_keeps_best_with_ties_to_smaller_index() {
        let offers = [
            (5, 0.1),
            (2, 0.5),
            (7, 0.5),
            (1, 0.5),
            (3, 0.9),
            (0, 0.1),
            (9, 0.5),
        ];
        let mut c = Collector::new(1, 3, 1);
        for (i, v) in offers {
            if v >= c.kth[0] {
                c.offer(0, v, i);
            }
        }
        let t = c.into_top();
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
