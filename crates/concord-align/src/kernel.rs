//! The packed microkernel behind the fused passes: `A · Bᵀ` one register tile at a time,
//! each tile handed straight to an epilogue that folds it into running state (maxima, top-k
//! candidates, pricing violations), so the product is never written to memory.
//!
//! `b`'s rows are packed once into column panels of [`NR`] columns, `(d, NR)` row-major and
//! zero-padded; each worker packs its block of `a` into row panels of [`MR`] rows, `(d, MR)`.
//! A tile is `MR x NR` dot products over the whole width `d`, accumulated in order
//! `p = 0, 1, ..., d - 1` with one fused multiply-add per step: every entry of the product is
//! computed by the same sequence of operations wherever it lies, so two passes over the same
//! pair (the scan and a pricing round) see bit-identical cosines.
//!
//! On x86-64 CPUs with AVX-512 the tile lives in 28 `zmm` registers (14 rows by two vectors
//! of 16 columns) and the epilogues reduce it with vector compares, masks and blends; other
//! CPUs run a portable version of the same loops (same tiles, same visiting order, so the
//! same maxima and tie rule, with their own rounding).
//!
//! Row blocks run in parallel on rayon. Within a block, column panels are visited in
//! increasing order, and within a column chunk the row panels too, so every row sees its
//! columns in increasing order and every column its rows in increasing order: an epilogue
//! that keeps the first of equal values keeps the smallest index.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m512;

/// Rows of `a` per register tile.
pub(crate) const MR: usize = 14;
/// Columns of `b` per register tile (two vectors of 16).
pub(crate) const NR: usize = 32;
/// Lanes of one vector.
pub(crate) const LANES: usize = 16;

/// Which rows of a row-major `(n, d)` matrix take part: the first `n`, or a list.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Sel<'a> {
    All(usize),
    List(&'a [u32]),
}

impl Sel<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Sel::All(n) => *n,
            Sel::List(l) => l.len(),
        }
    }

    #[inline]
    fn get(&self, k: usize) -> usize {
        match self {
            Sel::All(_) => k,
            Sel::List(l) => l[k] as usize,
        }
    }
}

/// A zeroed `f32` buffer whose first element is 64-byte aligned (one cache line, one vector).
#[derive(Debug, Default)]
struct Aligned {
    raw: Vec<f32>,
    off: usize,
    len: usize,
}

impl Aligned {
    /// Makes room for `len` floats; the contents are unspecified.
    fn reserve(&mut self, len: usize) {
        if self.raw.len() < len + LANES {
            self.raw = vec![0.0; len + LANES];
        }
        let addr = self.raw.as_ptr() as usize;
        self.off = (64 - addr % 64) % 64 / 4;
        self.len = len;
    }

    fn as_slice(&self) -> &[f32] {
        &self.raw[self.off..self.off + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

/// Packs the rows `sel` of `src` `(·, d)` into panels of `w` rows, panel `q` being the
/// `(d, w)` row-major transpose of rows `q w .. q w + w`; missing rows are zero.
fn pack(src: &[f32], d: usize, sel: Sel<'_>, first: usize, w: usize, out: &mut [f32]) {
    for (q, panel) in out.chunks_exact_mut(w * d).enumerate() {
        for t in 0..w {
            let k = first + q * w + t;
            if k < sel.len() {
                let r = sel.get(k);
                let row = &src[r * d..(r + 1) * d];
                for (p, &x) in row.iter().enumerate() {
                    panel[p * w + t] = x;
                }
            } else {
                for p in 0..d {
                    panel[p * w + t] = 0.0;
                }
            }
        }
    }
}

/// The right-hand side of the product, packed once: `n` rows of `b` in column panels.
#[derive(Debug)]
pub(crate) struct PackedCols {
    /// Columns (selected rows of `b`).
    pub n: usize,
    pub d: usize,
    buf: Aligned,
}

impl PackedCols {
    /// Packs rows `sel` of the row-major `(·, d)` matrix `src`.
    pub(crate) fn new(src: &[f32], d: usize, sel: Sel<'_>) -> PackedCols {
        let n = sel.len();
        let panels = n.div_ceil(NR);
        let mut buf = Aligned::default();
        buf.reserve(panels * NR * d);
        if d > 0 {
            buf.as_mut_slice()
                .par_chunks_mut(NR * d)
                .enumerate()
                .for_each(|(q, panel)| pack(src, d, sel, q * NR, NR, panel));
        }
        PackedCols { n, d, buf }
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    fn panel(&self, q: usize) -> &[f32] {
        &self.buf.as_slice()[q * NR * self.d..(q + 1) * NR * self.d]
    }
}

/// Where a register tile lies: rows `r0 .. r0 + nr` of the selected rows of `a`, columns
/// `c0 .. c0 + nc` of the packed columns; entries past `nr` rows or `nc` columns are padding
/// and must be ignored.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tile {
    pub r0: usize,
    pub c0: usize,
    pub nr: usize,
    pub nc: usize,
}

/// What to do with each tile of the product.
///
/// `Shared` is state over all columns (one per rayon fold, merged by the caller), `Rows` state
/// over one row block (returned in row order).
pub(crate) trait Epilogue: Sync {
    type Shared: Send;
    type Rows: Send;

    fn shared(&self) -> Self::Shared;

    /// State for the selected rows `r0 .. r1`.
    fn rows(&self, r0: usize, r1: usize) -> Self::Rows;

    /// Called before a fold starts a row block, e.g. to take in what other folds published.
    fn block_start(&self, _s: &mut Self::Shared) {}

    /// Called after a fold finished a row block.
    fn block_end(&self, _s: &mut Self::Shared) {}

    /// Folds a tile `c` `(MR, NR)` computed by the portable kernel.
    fn visit(&self, s: &mut Self::Shared, r: &mut Self::Rows, t: Tile, c: &[[f32; NR]; MR]);

    /// Folds a tile held in registers: `acc[i][h]` is row `i`, columns `16 h .. 16 h + 16`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn visit_avx512(
        &self,
        s: &mut Self::Shared,
        r: &mut Self::Rows,
        t: Tile,
        acc: &[[__m512; 2]; MR],
    );
}

/// Which kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Backend {
    /// The fastest kernel this CPU supports.
    pub(crate) fn detect() -> Backend {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Backend::Avx512;
        }
        Backend::Portable
    }
}

/// Rows and columns of `a` and `b` per cache block, rounded to whole panels.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Blocks {
    /// Rows of `a` per block (a worker's unit; its packed panels stay in L2).
    pub rows: usize,
    /// Columns of `b` per chunk: each row panel runs over a chunk's column panels before the
    /// next row panel starts.
    pub cols: usize,
}

/// One fold's result: its shared state and its row blocks by number.
type Part<E> = (<E as Epilogue>::Shared, Vec<(usize, <E as Epilogue>::Rows)>);

/// Runs `e` over every tile of `A[sel] · Bᵀ` with the fastest kernel; `a` is row-major
/// `(·, b.d)`. Returns the fold states and the row-block states in row order.
pub(crate) fn run<E: Epilogue>(
    a: &[f32],
    sel: Sel<'_>,
    b: &PackedCols,
    blocks: Blocks,
    e: &E,
) -> (Vec<E::Shared>, Vec<E::Rows>) {
    run_on(Backend::detect(), a, sel, b, blocks, e)
}

/// [`run`] on a chosen kernel.
pub(crate) fn run_on<E: Epilogue>(
    backend: Backend,
    a: &[f32],
    sel: Sel<'_>,
    b: &PackedCols,
    blocks: Blocks,
    e: &E,
) -> (Vec<E::Shared>, Vec<E::Rows>) {
    let d = b.d;
    let n_a = sel.len();
    let panels = n_a.div_ceil(MR);
    let threads = rayon::current_num_threads().max(1);
    // Blocks of about `blocks.rows` rows, their number a multiple of the thread count so that
    // the threads finish together, then spread evenly over the panels.
    let per = blocks.rows.div_ceil(MR).max(1);
    let nblocks = panels
        .div_ceil(per)
        .div_ceil(threads)
        .saturating_mul(threads)
        .clamp(1, panels.max(1));
    let bounds = |k: usize| (k * panels / nblocks * MR).min(n_a);
    let chunk = blocks.cols.div_ceil(NR).max(1);
    let min_len = nblocks.div_ceil(threads * 2).max(1);
    let parts: Vec<Part<E>> = (0..nblocks)
        .into_par_iter()
        .with_min_len(min_len)
        .fold(
            || (e.shared(), Vec::new(), Aligned::default()),
            |(mut s, mut rs, mut apack), k| {
                let (r0, r1) = (bounds(k), bounds(k + 1));
                let mut r = e.rows(r0, r1);
                e.block_start(&mut s);
                let np = (r1 - r0).div_ceil(MR);
                apack.reserve(np * MR * d);
                pack(a, d, sel, r0, MR, apack.as_mut_slice());
                let job = Job {
                    e,
                    apack: apack.as_slice(),
                    r0,
                    r1,
                    b,
                    chunk,
                };
                match backend {
                    Backend::Portable => job.portable(&mut s, &mut r),
                    // SAFETY: `Backend::Avx512` is only chosen when the CPU has AVX-512F.
                    #[cfg(target_arch = "x86_64")]
                    Backend::Avx512 => unsafe { job.avx512(&mut s, &mut r) },
                }
                e.block_end(&mut s);
                rs.push((k, r));
                (s, rs, apack)
            },
        )
        .map(|(s, rs, _)| (s, rs))
        .collect();
    let mut shared = Vec::with_capacity(parts.len());
    let mut rows: Vec<(usize, E::Rows)> = Vec::with_capacity(nblocks);
    for (s, rs) in parts {
        shared.push(s);
        rows.extend(rs);
    }
    rows.sort_by_key(|(k, _)| *k);
    (shared, rows.into_iter().map(|(_, r)| r).collect())
}

/// One row block's work.
struct Job<'a, E> {
    e: &'a E,
    /// The block's rows packed in panels of `MR`.
    apack: &'a [f32],
    r0: usize,
    r1: usize,
    b: &'a PackedCols,
    /// Column panels per chunk.
    chunk: usize,
}

impl<E: Epilogue> Job<'_, E> {
    /// Calls `f(row panel, column panel, tile)` in the visiting order.
    #[inline(always)]
    fn for_tiles(&self, mut f: impl FnMut(usize, usize, Tile)) {
        let (np, nq) = ((self.r1 - self.r0).div_ceil(MR), self.b.panels());
        let mut q0 = 0;
        while q0 < nq {
            let q1 = (q0 + self.chunk).min(nq);
            for p in 0..np {
                for q in q0..q1 {
                    let r0 = self.r0 + p * MR;
                    let c0 = q * NR;
                    let t = Tile {
                        r0,
                        c0,
                        nr: (self.r1 - r0).min(MR),
                        nc: (self.b.n - c0).min(NR),
                    };
                    f(p, q, t);
                }
            }
            q0 = q1;
        }
    }

    fn portable(&self, s: &mut E::Shared, r: &mut E::Rows) {
        let d = self.b.d;
        self.for_tiles(|p, q, t| {
            let ap = &self.apack[p * MR * d..(p + 1) * MR * d];
            let bp = self.b.panel(q);
            let mut c = [[0.0f32; NR]; MR];
            for k in 0..d {
                let bk = &bp[k * NR..(k + 1) * NR];
                for (i, ci) in c.iter_mut().enumerate() {
                    let x = ap[k * MR + i];
                    for (cij, &y) in ci.iter_mut().zip(bk) {
                        *cij += x * y;
                    }
                }
            }
            self.e.visit(s, r, t, &c);
        });
    }

    /// # Safety
    /// The CPU must support AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(&self, s: &mut E::Shared, r: &mut E::Rows) {
        let d = self.b.d;
        self.for_tiles(|p, q, t| {
            // SAFETY: both panels hold `d` steps of `MR` (resp. `NR`) floats.
            let acc = unsafe {
                tile_avx512(
                    self.apack.as_ptr().add(p * MR * d),
                    self.b.panel(q).as_ptr(),
                    d,
                )
            };
            // SAFETY: the caller guarantees AVX-512F.
            unsafe { self.e.visit_avx512(s, r, t, &acc) };
        });
    }
}

/// One `MR x NR` tile: `acc[i][h][l] = sum_k a[k MR + i] b[k NR + 16 h + l]`, in order of `k`.
///
/// # Safety
/// `a` must point to `d MR` floats and `b` to `d NR` floats; the CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_avx512(a: *const f32, b: *const f32, d: usize) -> [[__m512; 2]; MR] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for k in 0..d {
        // SAFETY: `k < d`, inside both panels.
        unsafe {
            let b0 = _mm512_loadu_ps(b.add(k * NR));
            let b1 = _mm512_loadu_ps(b.add(k * NR + LANES));
            let ak = a.add(k * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*ak.add(i));
                row[0] = _mm512_fmadd_ps(x, b0, row[0]);
                row[1] = _mm512_fmadd_ps(x, b1, row[1]);
            }
        }
    }
    acc
}

/// The mask of the valid lanes of vector `h` of a tile with `nc` valid columns.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn lane_mask(nc: usize, h: usize) -> u16 {
    let n = nc.saturating_sub(h * LANES).min(LANES);
    if n == LANES {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

/// The columns of a register row (two vectors, [`NR`] columns) whose value is at least `lo`'s
/// in the same lane, among the valid lanes `masks`: bit `l` is column `l`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn lanes_at_least(row: [__m512; 2], lo: [__m512; 2], masks: [u16; 2]) -> u32 {
    use std::arch::x86_64::{_CMP_GE_OQ, _mm512_mask_cmp_ps_mask};
    let g0 = _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(masks[0], row[0], lo[0]);
    let g1 = _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(masks[1], row[1], lo[1]);
    u32::from(g0) | (u32::from(g1) << LANES)
}

/// A register row's [`NR`] values in memory.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn spill(row: &[__m512; 2]) -> [f32; NR] {
    use std::arch::x86_64::_mm512_storeu_ps;
    let mut buf = [0.0f32; NR];
    // SAFETY: `buf` holds two vectors.
    unsafe {
        _mm512_storeu_ps(buf.as_mut_ptr(), row[0]);
        _mm512_storeu_ps(buf.as_mut_ptr().add(LANES), row[1]);
    }
    buf
}

/// Calls `f(l, value)` for each set bit `l` of `lanes`, in increasing order, with the row's
/// value in column `l`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn for_each_lane(row: &[__m512; 2], mut lanes: u32, mut f: impl FnMut(usize, f32)) {
    if lanes == 0 {
        return;
    }
    let buf = spill(row);
    while lanes != 0 {
        let l = lanes.trailing_zeros() as usize;
        lanes &= lanes - 1;
        f(l, buf[l]);
    }
}
