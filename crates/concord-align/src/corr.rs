//! Activation correlation between the features of two SAEs on the same tokens, streamed over
//! sparse batches, and token alignment by byte spans for two tokenizers.
//!
//! The accumulator [`CoStats`] keeps per-feature sums, sums of squares and counts, and the
//! co-occurrence sums `S_ij = sum_t a_ti b_tj` over tokens where both are active. A dense
//! `tokens x features` matrix is never formed.
//!
//! # The kernel
//! Scattering `S_ij += a_ti b_tj` into an `(n_a, n_b)` matrix batch by batch is bound by
//! memory traffic: a batch of a few thousand tokens touches every row of `S` a few times,
//! so each batch streams the whole matrix through memory for little work. Instead, batches
//! are kept pending (sparse): `a`'s nonzeros grouped by tile of `S` (a block of rows of
//! about 1 MiB of `f64` sums, so it stays in a core's L2 cache), batch by batch, in token
//! order within a tile (8 bytes each: value, and token and row packed in 32 bits), and `b`
//! as one CSR over all pending tokens (6 bytes per nonzero when `b` has at most 65,536
//! features, else 8). A tile is computed in one go: for each pending `a_ti` of its rows, `b`'s row `t`
//! (contiguous) is scattered into row `i`. Fetching those rows of `b` is what costs (each is
//! needed once per nonzero of `a` on its token), so they are read in token order, ascending
//! addresses that the hardware prefetchers stream, and prefetched a few nonzeros ahead; this
//! was 12 % faster than a feature-major order that kept row `i` in L1 but fetched `b`'s rows
//! from anywhere. Tiles are the unit of rayon's parallel work.
//!
//! The pending buffer is multiplied into the stored sums when it passes its memory limit
//! (by default the size of the dense sums, 4 MiB to 256 MiB); [`pearson`] builds each tile
//! from the stored sums plus the pending batches and folds it straight into the row maxima
//! and running column maxima, so a stream that fits the buffer never allocates `(n_a, n_b)`
//! at all. Stored sums are a dense matrix up to [`DENSE_CROSS_LIMIT`] entries and otherwise
//! only the pairs that were ever co-active. Every `S_ij` is summed in `f64` in token order,
//! so the sums do not depend on batching, buffering or threads.
//!
//! Where the time goes (65,536 tokens, 4,096 x 4,096 features, L0 32, 2 cores): about two
//! thirds in the tiles' products, which wait on memory (the scattered sums in L2, `b`'s rows
//! from L3); the rest in `add` (the input check, moments, and copying both sides into the
//! pending buffer, whose fresh pages cost about as much as the copying). Grouping `a` by
//! tile with one counting pass per batch, instead of a growing list per tile, made `add`
//! about twice as fast. Tried and not kept: AVX-512 gathers and scatters for the products
//! (the same time: memory, not instructions, bounds them), other prefetch distances and
//! hints, tiles of 256 KiB to 2 MiB. Huge pages for `b`'s rows (`madvise`) made the products
//! about 15 % faster (fewer TLB misses: every tile touches every page of `b`), but faulting
//! them in made `add` slower and more variable; not kept. A huge page for the tile itself
//! changed nothing. Bucketing a batch's two halves of tokens on the two threads made `add`
//! slower (the threads' page faults contend), and so did writing the runs without zeroing
//! them first (pages then fault in scattered order).

use std::borrow::Cow;
use std::ops::Range;

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
        // One vectorised pass over each array; the token loop below only runs to name the
        // first bad entry.
        // Past `u32::MAX` features every `u32` index is in range.
        let bad_feature = u32::try_from(n).is_ok_and(|limit| {
            self.indices
                .iter()
                .fold(false, |bad, &j| bad | (j >= limit))
        });
        let bad_value = self
            .values
            .iter()
            .fold(false, |bad, v| bad | !v.is_finite());
        if !bad_feature && !bad_value {
            return Ok(());
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
///
/// [`CoStats::add`] validates a batch, updates the per-feature moments and appends the batch
/// to a pending buffer; the co-occurrence sums `S = AᵀB` of pending batches are computed
/// later, tile by tile (see the module's notes on the kernel), either when the buffer passes
/// its memory limit (it is then multiplied into the stored sums) or by [`pearson`] and
/// [`CoStats::cross_rows`], which read the stored sums plus the pending batches without
/// storing anything. Every `S_ij` is the sum of `a_ti b_tj` in token order in `f64` (each
/// product of two `f32` is exact in `f64`), whatever the batching and buffering.
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
    /// The sums of the batches already multiplied.
    sums: Sums,
    /// The batches not multiplied yet.
    pending: Pending,
    /// Bytes the pending buffer may hold before it is multiplied into `sums`.
    pending_limit: usize,
}

/// The stored co-occurrence sums.
#[derive(Clone, Debug, PartialEq)]
enum Sums {
    /// A dense `(n_a, n_b)` matrix, feature-by-feature (never token-by-feature); empty
    /// until the first flush.
    Dense(Vec<f64>),
    /// Per feature of `a`, the co-active features of `b` with `S_ij`, sorted by `j` (used
    /// above [`DENSE_CROSS_LIMIT`]).
    Sparse(Vec<Vec<(u32, f64)>>),
}

/// A pending nonzero of `a`: its `value` at a pending token for feature `row` of its tile
/// (the tile's first feature plus `row`), with `key = token << shift | row` so that an
/// entry takes 8 bytes (the pending buffer holds at most `2^(32 - shift)` tokens).
#[derive(Clone, Copy, Debug, PartialEq)]
struct AEntry {
    key: u32,
    value: f32,
}

/// A pending nonzero of `b`: 8 bytes, or 6 (a 16-bit feature index, unaligned value) when
/// `b` has at most 65,536 features. The multiply reads a row of them per nonzero of `a`, from
/// wherever the row sits in memory: that read is its cost, so its bytes count.
trait BEntry: Copy + Send + Sync {
    fn new(feature: u32, value: f32) -> Self;
    fn feature(self) -> usize;
    fn value(self) -> f32;
}

/// A nonzero of `b` with a `u16` or `u32` feature index, packed (6 or 8 bytes).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, packed)]
struct Packed<I> {
    feature: I,
    value: f32,
}

impl<I> BEntry for Packed<I>
where
    I: Copy + Send + Sync + TryFrom<u32> + Into<u64>,
{
    #[inline(always)]
    fn new(feature: u32, value: f32) -> Self {
        // `add` checked the feature against `n_b`, which chose an index type that holds it.
        let feature = I::try_from(feature)
            .ok()
            .expect("a feature index within the entry's width");
        Packed { feature, value }
    }
    #[inline(always)]
    fn feature(self) -> usize {
        self.feature.into() as usize
    }
    #[inline(always)]
    fn value(self) -> f32 {
        self.value
    }
}

/// The pending nonzeros of `b`, in the entry size `b`'s width allows.
#[derive(Clone, Debug, PartialEq)]
enum BEntries {
    Narrow(Vec<Packed<u16>>),
    Wide(Vec<Packed<u32>>),
}

impl BEntries {
    fn new(n_b: usize) -> BEntries {
        if n_b <= 1 << 16 {
            BEntries::Narrow(Vec::new())
        } else {
            BEntries::Wide(Vec::new())
        }
    }

    fn bytes(&self) -> usize {
        match self {
            BEntries::Narrow(v) => size_of_val(v.as_slice()),
            BEntries::Wide(v) => size_of_val(v.as_slice()),
        }
    }

    fn clear(&mut self) {
        match self {
            BEntries::Narrow(v) => v.clear(),
            BEntries::Wide(v) => v.clear(),
        }
    }

    /// Appends a batch's nonzeros (features already checked against `n_b`).
    fn extend(&mut self, features: &[u32], values: &[f32]) {
        fn push<E: BEntry>(v: &mut Vec<E>, features: &[u32], values: &[f32]) {
            v.extend(features.iter().zip(values).map(|(&j, &x)| E::new(j, x)));
        }
        match self {
            BEntries::Narrow(v) => push(v, features, values),
            BEntries::Wide(v) => push(v, features, values),
        }
    }
}

/// Batches added but not yet multiplied: `a`'s nonzeros by tile, in token order; `b` as CSR
/// over all pending tokens. Tiles are blocks of `1 << shift` features of `a`.
#[derive(Clone, Debug, PartialEq)]
struct Pending {
    shift: u32,
    /// `a`'s nonzeros, batch by batch, each batch's grouped by tile (in token order within
    /// a tile).
    a: Vec<AEntry>,
    /// Per tile, the ranges of `a` that hold its entries, in token order.
    ranges: Vec<Vec<Range<usize>>>,
    /// `(pending tokens + 1)`.
    b_ptr: Vec<usize>,
    b: BEntries,
}

impl Pending {
    fn new(n_a: usize, n_b: usize) -> Pending {
        // Tiles of `rows x n_b` f64 sums of about TILE_BYTES: the unit of parallel work, of
        // the flush and of the summary, small enough to stay in a core's L2 cache.
        // A power of two of rows, so that a feature's tile is a shift away.
        let most = (TILE_BYTES / (8 * n_b.max(1))).clamp(1, n_a.max(1).next_power_of_two());
        let shift = most.ilog2();
        Pending {
            shift,
            a: Vec::new(),
            ranges: vec![Vec::new(); n_a.div_ceil(1 << shift)],
            b_ptr: vec![0],
            b: BEntries::new(n_b),
        }
    }

    fn rows(&self) -> usize {
        1 << self.shift
    }

    fn tokens(&self) -> usize {
        self.b_ptr.len() - 1
    }

    /// Most pending tokens: their numbers share an entry's `key` with the row.
    fn max_tokens(&self) -> usize {
        1 << (32 - self.shift)
    }

    /// Appends tokens `range` of `a`, grouped by tile: a counting pass sizes each tile's
    /// run, then each entry is written to its place. The runs of one batch lie within a few
    /// hundred kilobytes, so the scattered stores stay in the core's cache (one growing
    /// list per tile was twice as slow: as many streams of stores to memory as tiles).
    /// `t0` is the number of the first pending token of `range`.
    fn push_a(
        out: &mut Vec<AEntry>,
        ranges: &mut [Vec<Range<usize>>],
        shift: u32,
        t0: usize,
        a: &SparseBatch,
        range: Range<usize>,
    ) {
        let mask = (1u32 << shift) - 1;
        let mut next = vec![0usize; ranges.len()];
        for &i in &a.indices[a.indptr[range.start]..a.indptr[range.end]] {
            next[(i >> shift) as usize] += 1;
        }
        let mut end = out.len();
        for (n, tile) in next.iter_mut().zip(ranges.iter_mut()) {
            let start = end;
            end += *n;
            *n = start;
            if end > start {
                tile.push(start..end);
            }
        }
        out.resize(end, AEntry { key: 0, value: 0.0 });
        for t in range.clone() {
            // `add` keeps pending token numbers below `max_tokens`.
            let token = ((t0 + t - range.start) as u32) << shift;
            for (i, value) in a.row(t) {
                let at = &mut next[(i >> shift) as usize];
                out[*at] = AEntry {
                    key: token | (i & mask),
                    value,
                };
                *at += 1;
            }
        }
    }

    /// Appends tokens `range` of both batches.
    fn push(&mut self, a: &SparseBatch, b: &SparseBatch, range: Range<usize>) {
        let t0 = self.tokens();
        Pending::push_a(
            &mut self.a,
            &mut self.ranges,
            self.shift,
            t0,
            a,
            range.clone(),
        );
        Pending::push_b(&mut self.b_ptr, &mut self.b, b, range);
    }

    /// Appends tokens `range` of `b` to the CSR (call after [`Pending::push_a`] for the same
    /// tokens).
    fn push_b(
        b_ptr: &mut Vec<usize>,
        entries: &mut BEntries,
        b: &SparseBatch,
        range: Range<usize>,
    ) {
        let (lo, hi) = (b.indptr[range.start], b.indptr[range.end]);
        entries.extend(&b.indices[lo..hi], &b.values[lo..hi]);
        let base = *b_ptr.last().expect("b_ptr starts with 0");
        b_ptr.extend(
            b.indptr[range.start + 1..=range.end]
                .iter()
                .map(|p| base + p - lo),
        );
    }

    fn bytes(&self) -> usize {
        self.a.len() * size_of::<AEntry>()
            + self.ranges.iter().map(Vec::len).sum::<usize>() * size_of::<Range<usize>>()
            + self.b.bytes()
            + self.b_ptr.len() * size_of::<usize>()
    }

    fn is_empty(&self) -> bool {
        self.tokens() == 0
    }

    fn clear(&mut self) {
        self.a.clear();
        self.ranges.iter_mut().for_each(Vec::clear);
        self.b_ptr.truncate(1);
        self.b.clear();
    }

    /// Number of tiles.
    fn blocks(&self) -> usize {
        self.ranges.len()
    }

    /// Whether tile `blk` has pending products.
    fn has_work(&self, blk: usize) -> bool {
        !self.ranges[blk].is_empty()
    }

    /// Adds tile `blk`'s pending products to `tile`, its `(rows, n_b)` sums, in token order:
    /// the rows of `b` are then read in ascending order of address, which the hardware
    /// prefetchers stream (and software prefetches a few nonzeros ahead), while the tile of
    /// sums stays in the core's L2 cache. Each sum still adds its products in token order.
    fn multiply(&self, blk: usize, tile: &mut [f64], n_b: usize) {
        match &self.b {
            BEntries::Narrow(b) => self.multiply_with(b, blk, tile, n_b),
            BEntries::Wide(b) => self.multiply_with(b, blk, tile, n_b),
        }
    }

    fn multiply_with<E: BEntry>(&self, b: &[E], blk: usize, tile: &mut [f64], n_b: usize) {
        let entries = || self.ranges[blk].iter().flat_map(|r| &self.a[r.clone()]);
        let (shift, mask) = (self.shift, (1u32 << self.shift) - 1);
        let row_of = |key: u32| {
            let t = (key >> shift) as usize;
            &b[self.b_ptr[t]..self.b_ptr[t + 1]]
        };
        let mut soon = entries().skip(PREFETCH_AHEAD);
        for e in entries() {
            if let Some(f) = soon.next() {
                prefetch(row_of(f.key));
            }
            let av = f64::from(e.value);
            let row = &mut tile[(e.key & mask) as usize * n_b..][..n_b];
            for &x in row_of(e.key) {
                // SAFETY: `add` checked every feature of `b` against `n_b` (`validate`), and
                // `row` has `n_b` entries.
                let s = unsafe { row.get_unchecked_mut(x.feature()) };
                *s += av * f64::from(x.value());
            }
        }
    }
}

/// Asks the cache for the lines of `row`.
#[inline(always)]
fn prefetch<E>(row: &[E]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let bytes = size_of_val(row);
        let p: *const i8 = row.as_ptr().cast();
        let mut off = 0;
        while off < bytes {
            // SAFETY: a prefetch only hints the cache; the address is inside `row`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
            off += 64;
        }
        if bytes > 0 {
            // The row's last cache line, when the row does not start on a line.
            // SAFETY: as above.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(bytes - 1)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Target size of one tile of sums (`f64`), a share of a core's L2 cache.
const TILE_BYTES: usize = 1 << 20;

/// How many nonzeros of `a` ahead the row of `b` they need is prefetched: enough to cover a
/// memory latency, few enough to stay within the core's outstanding misses.
const PREFETCH_AHEAD: usize = 16;

/// Largest `n_a · n_b` stored densely (256 MB of `f64`); above it the stored sums hold only
/// pairs that were ever co-active.
pub const DENSE_CROSS_LIMIT: usize = 1 << 25;

/// Most bytes the pending buffer holds by default: as much as the dense sums would take,
/// between 4 MiB and 256 MiB.
fn default_pending_limit(n_a: usize, n_b: usize) -> usize {
    n_a.saturating_mul(n_b)
        .saturating_mul(8)
        .clamp(1 << 22, 1 << 28)
}

/// Adds a batch's nonzeros to per-feature sums, sums of squares and counts.
fn add_moments(x: &SparseBatch, sum: &mut [f64], sq: &mut [f64], count: &mut [u64]) {
    for (&j, &v) in x.indices.iter().zip(&x.values) {
        let v = f64::from(v);
        sum[j as usize] += v;
        sq[j as usize] += v * v;
        count[j as usize] += 1;
    }
}

impl CoStats {
    pub fn new(n_a: usize, n_b: usize) -> CoStats {
        let sums = if n_a.saturating_mul(n_b) <= DENSE_CROSS_LIMIT {
            Sums::Dense(Vec::new())
        } else {
            Sums::Sparse(vec![Vec::new(); n_a])
        };
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
            sums,
            pending: Pending::new(n_a, n_b),
            pending_limit: default_pending_limit(n_a, n_b),
        }
    }

    /// [`CoStats::new`] with sparse stored sums whatever the sizes (the ones used above
    /// [`DENSE_CROSS_LIMIT`]).
    pub fn new_sparse(n_a: usize, n_b: usize) -> CoStats {
        let mut s = CoStats::new(n_a, n_b);
        s.sums = Sums::Sparse(vec![Vec::new(); n_a]);
        s
    }

    /// Sets how many bytes of pending batches are kept before they are multiplied into the
    /// stored sums (by default as many as the dense sums would take, between 4 MiB and
    /// 256 MiB; 0 multiplies every batch as it comes). Results do not depend on it.
    pub fn with_pending_limit(mut self, bytes: usize) -> CoStats {
        self.pending_limit = bytes;
        self.flush_if_over();
        self
    }

    fn flush_if_over(&mut self) {
        if self.pending.bytes() > self.pending_limit {
            self.flush();
        }
    }

    /// Multiplies the pending batches into the stored sums.
    fn flush(&mut self) {
        if self.pending.is_empty() || self.n_b == 0 {
            self.pending.clear();
            return;
        }
        let (n_b, rows, pending) = (self.n_b, self.pending.rows(), &self.pending);
        match &mut self.sums {
            Sums::Dense(d) => {
                if d.is_empty() {
                    *d = vec![0.0; self.n_a * n_b];
                }
                d.par_chunks_mut(rows * n_b)
                    .enumerate()
                    .for_each(|(blk, tile)| pending.multiply(blk, tile, n_b));
            }
            Sums::Sparse(cross) => {
                cross.par_chunks_mut(rows).enumerate().for_each_init(
                    Vec::new,
                    |tile, (blk, block)| {
                        if !pending.has_work(blk) {
                            return;
                        }
                        tile.clear();
                        tile.resize(block.len() * n_b, 0.0);
                        scatter_rows(block, tile, n_b);
                        pending.multiply(blk, tile, n_b);
                        for (row, t) in block.iter_mut().zip(tile.chunks(n_b)) {
                            *row = nonzeros(t);
                        }
                    },
                );
            }
        }
        self.pending.clear();
    }

    /// Block `blk`'s rows of the sums, stored plus pending, `(rows, n_b)`: borrowed from the
    /// stored dense sums when nothing is pending for the block, else built in `buf`.
    fn tile<'s>(&'s self, blk: usize, buf: &'s mut Vec<f64>) -> &'s [f64] {
        let n_b = self.n_b;
        let r0 = blk * self.pending.rows();
        let r1 = (r0 + self.pending.rows()).min(self.n_a);
        let todo = self.pending.has_work(blk);
        buf.clear();
        match &self.sums {
            Sums::Dense(d) if !d.is_empty() => {
                let stored = &d[r0 * n_b..r1 * n_b];
                if !todo {
                    return stored;
                }
                buf.extend_from_slice(stored);
            }
            Sums::Dense(_) => buf.resize((r1 - r0) * n_b, 0.0),
            Sums::Sparse(cross) => {
                buf.resize((r1 - r0) * n_b, 0.0);
                scatter_rows(&cross[r0..r1], buf, n_b);
            }
        }
        if todo {
            self.pending.multiply(blk, buf, n_b);
        }
        buf
    }

    /// The co-occurrence sums `S_ij != 0` per feature of `a`, sorted by `j`.
    pub fn cross_rows(&self) -> Cow<'_, [Vec<(u32, f64)>]> {
        if let Sums::Sparse(cross) = &self.sums
            && self.pending.is_empty()
        {
            return Cow::Borrowed(cross);
        }
        if self.n_b == 0 {
            return Cow::Owned(vec![Vec::new(); self.n_a]);
        }
        let blocks: Vec<Vec<Vec<(u32, f64)>>> = (0..self.pending.blocks())
            .into_par_iter()
            .map_init(Vec::new, |buf, blk| {
                self.tile(blk, buf).chunks(self.n_b).map(nonzeros).collect()
            })
            .collect();
        Cow::Owned(blocks.into_iter().flatten().collect())
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
        let (ok_a, ok_b) = rayon::join(
            || a.validate(batch, self.n_a),
            || b.validate(batch, self.n_b),
        );
        ok_a?;
        ok_b?;
        let room = self.pending.max_tokens() - self.pending.tokens();
        if a.tokens() <= room {
            // The usual case: the scattered pushes into `a`'s lists cost the most, so both
            // moments and `b`'s entries go to the other thread.
            let CoStats {
                sum_a,
                sq_a,
                count_a,
                sum_b,
                sq_b,
                count_b,
                pending,
                ..
            } = self;
            let t0 = pending.tokens();
            let Pending {
                shift,
                a: entries_a,
                ranges,
                b_ptr,
                b: entries,
            } = pending;
            rayon::join(
                || Pending::push_a(entries_a, ranges, *shift, t0, a, 0..a.tokens()),
                || {
                    add_moments(a, sum_a, sq_a, count_a);
                    add_moments(b, sum_b, sq_b, count_b);
                    Pending::push_b(b_ptr, entries, b, 0..b.tokens());
                },
            );
        } else {
            // More tokens than the pending buffer numbers: in pieces, flushing between them.
            add_moments(a, &mut self.sum_a, &mut self.sq_a, &mut self.count_a);
            add_moments(b, &mut self.sum_b, &mut self.sq_b, &mut self.count_b);
            let mut lo = 0;
            while lo < a.tokens() {
                if self.pending.tokens() == self.pending.max_tokens() {
                    self.flush();
                }
                let hi = a
                    .tokens()
                    .min(lo + self.pending.max_tokens() - self.pending.tokens());
                self.pending.push(a, b, lo..hi);
                lo = hi;
            }
        }
        self.tokens += a.tokens() as u64;
        self.batches += 1;
        self.flush_if_over();
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
}

/// Writes sparse rows into their dense `(rows.len(), n_b)` tile (zeroed).
fn scatter_rows(rows: &[Vec<(u32, f64)>], tile: &mut [f64], n_b: usize) {
    for (row, t) in rows.iter().zip(tile.chunks_mut(n_b)) {
        for &(j, s) in row {
            t[j as usize] = s;
        }
    }
}

/// The nonzeros of a dense row, `(j, s)` sorted by `j`.
fn nonzeros(row: &[f64]) -> Vec<(u32, f64)> {
    row.iter()
        .enumerate()
        .filter(|(_, s)| **s != 0.0)
        .map(|(j, &s)| (j as u32, s))
        .collect()
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

/// A feature's most correlated feature on the other side and `rho` (`None` when dead).
type Best = Option<(u32, f32)>;

/// Running column maxima of `rho` over the rows seen: value and row (`inf`: none). The row
/// is kept as an `f64` (exact below `2^53`) so that the update vectorises with the value.
struct ColumnBest {
    value: Vec<f64>,
    row: Vec<f64>,
}

impl ColumnBest {
    fn new(n: usize) -> ColumnBest {
        ColumnBest {
            value: vec![f64::NEG_INFINITY; n],
            row: vec![f64::INFINITY; n],
        }
    }

    /// Keeps the larger value per column, the smaller row on ties.
    fn merge(mut self, other: &ColumnBest) -> ColumnBest {
        for j in 0..self.value.len() {
            let (v, r) = (other.value[j], other.row[j]);
            if v > self.value[j] || (v == self.value[j] && r < self.row[j]) {
                self.value[j] = v;
                self.row[j] = r;
            }
        }
        self
    }
}

/// Per-column terms of `rho_ij = S_ij c_i u_j - x_i w_j + pen_j` with `c_i = 1 / (N sd_i)`,
/// `x_i = m_i / sd_i`, `u_j = 1 / sd_j`, `w_j = m_j / sd_j`, and `pen_j = -inf` for dead
/// columns (`u_j = w_j = 0` there), `0` otherwise.
struct Columns {
    u: Vec<f64>,
    w: Vec<f64>,
    pen: Vec<f64>,
}

impl Columns {
    fn new(m: &Moments) -> Columns {
        let live = |j: usize| m.sd[j] > 0.0;
        let n = m.sd.len();
        Columns {
            u: (0..n)
                .map(|j| if live(j) { 1.0 / m.sd[j] } else { 0.0 })
                .collect(),
            w: (0..n)
                .map(|j| if live(j) { m.mean[j] / m.sd[j] } else { 0.0 })
                .collect(),
            pen: (0..n)
                .map(|j| if live(j) { 0.0 } else { f64::NEG_INFINITY })
                .collect(),
        }
    }
}

/// One row of sums `s` (`(n_b)`) of live row feature `i`: writes `rho_ij` into `rho`, folds
/// it into the column maxima and returns the row's best `(j, rho)` (smallest `j` on ties;
/// `None` when every column is dead).
fn scan_row(
    s: &[f64],
    row: (usize, f64, f64),
    cols: &Columns,
    rho: &mut [f64],
    best: &mut ColumnBest,
) -> Option<(u32, f32)> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { scan_row_avx2(s, row, cols, rho, best) };
    }
    scan_row_any(s, row, cols, rho, best)
}

/// [`scan_row`] compiled for AVX2: the column update vectorises (four `f64` lanes, masked
/// stores), which the x86-64 baseline build does not do. The arithmetic is the same (no
/// fused multiply-add), so results are identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scan_row_avx2(
    s: &[f64],
    row: (usize, f64, f64),
    cols: &Columns,
    rho: &mut [f64],
    best: &mut ColumnBest,
) -> Option<(u32, f32)> {
    scan_row_any(s, row, cols, rho, best)
}

/// The body of [`scan_row`], inlined into each compiled variant.
#[inline(always)]
fn scan_row_any(
    s: &[f64],
    (i, c, x): (usize, f64, f64),
    cols: &Columns,
    rho: &mut [f64],
    best: &mut ColumnBest,
) -> Option<(u32, f32)> {
    let n = s.len();
    let (u, w, pen) = (&cols.u[..n], &cols.w[..n], &cols.pen[..n]);
    let (bv, br) = (&mut best.value[..n], &mut best.row[..n]);
    let rho = &mut rho[..n];
    let fi = i as f64;
    for j in 0..n {
        let r = s[j] * (c * u[j]) - x * w[j] + pen[j];
        rho[j] = r;
        let gt = r > bv[j];
        bv[j] = if gt { r } else { bv[j] };
        br[j] = if gt { fi } else { br[j] };
    }
    // Eight independent running maxima so that the reduction vectorises.
    let mut m = [f64::NEG_INFINITY; 8];
    let mut chunks = rho.chunks_exact(8);
    for ch in &mut chunks {
        for k in 0..8 {
            m[k] = if ch[k] > m[k] { ch[k] } else { m[k] };
        }
    }
    let top = chunks
        .remainder()
        .iter()
        .chain(&m)
        .fold(f64::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    if top == f64::NEG_INFINITY {
        return None;
    }
    let j = rho
        .iter()
        .position(|&r| r == top)
        .expect("the maximum is in the row");
    Some((j as u32, top as f32))
}

/// [`scan_row`] on four live rows at once, for CPUs with AVX-512: each column's `u`, `w`,
/// `pen` and running maxima are loaded once for the four rows, and each row's maximum is
/// kept per lane (value and first column), so `rho` is never stored. The arithmetic and the
/// order of the comparisons are those of [`scan_row`] (rows in order per column, strict
/// `>`), so the maxima are the same; a row's value is `rho` at its chosen column.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn scan_rows4_avx512(
    s: [&[f64]; 4],
    rows: [(usize, f64, f64); 4],
    cols: &Columns,
    best: &mut ColumnBest,
) -> [Option<(u32, f32)>; 4] {
    use std::arch::x86_64::*;
    let n = cols.u.len();
    assert!(s.iter().all(|r| r.len() == n) && best.value.len() == n && best.row.len() == n);
    let fi = rows.map(|(i, _, _)| _mm512_set1_pd(i as f64));
    let c = rows.map(|(_, c, _)| _mm512_set1_pd(c));
    let x = rows.map(|(_, _, x)| _mm512_set1_pd(x));
    let mut top = [_mm512_set1_pd(f64::NEG_INFINITY); 4];
    let mut at = [_mm512_set1_pd(f64::INFINITY); 4];
    let step = _mm512_set1_pd(8.0);
    let mut jv = _mm512_setr_pd(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0);
    let mut j = 0;
    while j < n {
        let m: __mmask8 = if n - j >= 8 {
            0xff
        } else {
            (1u8 << (n - j)) - 1
        };
        // SAFETY: lanes `j..j + 8` past `n` are masked off in every load and store.
        unsafe {
            let u = _mm512_maskz_loadu_pd(m, cols.u.as_ptr().add(j));
            let w = _mm512_maskz_loadu_pd(m, cols.w.as_ptr().add(j));
            let pen = _mm512_maskz_loadu_pd(m, cols.pen.as_ptr().add(j));
            let mut bv = _mm512_maskz_loadu_pd(m, best.value.as_ptr().add(j));
            let mut br = _mm512_maskz_loadu_pd(m, best.row.as_ptr().add(j));
            for k in 0..4 {
                let sv = _mm512_maskz_loadu_pd(m, s[k].as_ptr().add(j));
                let r = _mm512_add_pd(
                    _mm512_sub_pd(
                        _mm512_mul_pd(sv, _mm512_mul_pd(c[k], u)),
                        _mm512_mul_pd(x[k], w),
                    ),
                    pen,
                );
                let gt = _mm512_mask_cmp_pd_mask::<_CMP_GT_OQ>(m, r, bv);
                bv = _mm512_mask_blend_pd(gt, bv, r);
                br = _mm512_mask_blend_pd(gt, br, fi[k]);
                let up = _mm512_mask_cmp_pd_mask::<_CMP_GT_OQ>(m, r, top[k]);
                top[k] = _mm512_mask_blend_pd(up, top[k], r);
                at[k] = _mm512_mask_blend_pd(up, at[k], jv);
            }
            _mm512_mask_storeu_pd(best.value.as_mut_ptr().add(j), m, bv);
            _mm512_mask_storeu_pd(best.row.as_mut_ptr().add(j), m, br);
        }
        jv = _mm512_add_pd(jv, step);
        j += 8;
    }
    std::array::from_fn(|k| {
        let (mut v, mut a) = ([0.0f64; 8], [0.0f64; 8]);
        // SAFETY: both arrays hold eight `f64`.
        unsafe {
            _mm512_storeu_pd(v.as_mut_ptr(), top[k]);
            _mm512_storeu_pd(a.as_mut_ptr(), at[k]);
        }
        // The largest value, then the first column holding it.
        let t = v
            .iter()
            .fold(f64::NEG_INFINITY, |m, &x| if x > m { x } else { m });
        if t == f64::NEG_INFINITY {
            return None;
        }
        let (col, val) = (0..8)
            .filter(|&l| v[l] == t)
            .map(|l| (a[l], v[l]))
            .fold((f64::INFINITY, t), |b, x| if x.0 < b.0 { x } else { b });
        Some((col as u32, val as f32))
    })
}

/// [`pearson`]'s maxima both ways from dense tiles of the sums (stored plus pending), one
/// pass: each tile's rows give `a`'s maxima, and its columns fold into running column
/// maxima, merged over rayon's folds (the smaller index wins ties, so results do not depend
/// on the thread count). Every pair is visited, never-co-active ones (`S_ij = 0`) included:
/// `n_a · n_b` evaluations of `rho`, vectorised, held in cache a tile at a time.
fn best_pearson_tiles(
    stats: &CoStats,
    ma: &Moments,
    mb: &Moments,
    n: f64,
) -> (Vec<Best>, Vec<Best>) {
    let (n_a, n_b) = (stats.n_a, stats.n_b);
    let mut best_a = vec![None; n_a];
    if n_a == 0 || n_b == 0 {
        return (best_a, vec![None; n_b]);
    }
    let cols = Columns::new(mb);
    let rows = stats.pending.rows();
    let best = best_a
        .par_chunks_mut(rows)
        .enumerate()
        .fold(
            || (ColumnBest::new(n_b), Vec::new(), vec![0.0; n_b]),
            |(mut best, mut buf, mut rho), (blk, out)| {
                let tile = stats.tile(blk, &mut buf);
                let live = |k: usize| {
                    let i = blk * rows + k;
                    let sd = ma.sd[i];
                    (sd > 0.0).then(|| (i, 1.0 / (n * sd), ma.mean[i] / sd))
                };
                let mut todo: Vec<(usize, (usize, f64, f64))> = (0..out.len())
                    .filter_map(|k| live(k).map(|r| (k, r)))
                    .collect();
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx512f") {
                    let mut quads = todo.chunks_exact(4);
                    for q in &mut quads {
                        let s = std::array::from_fn(|l| &tile[q[l].0 * n_b..][..n_b]);
                        // SAFETY: the CPU has AVX-512F, checked just above.
                        let got = unsafe {
                            scan_rows4_avx512(s, std::array::from_fn(|l| q[l].1), &cols, &mut best)
                        };
                        for (l, g) in got.into_iter().enumerate() {
                            out[q[l].0] = g;
                        }
                    }
                    todo = quads.remainder().to_vec();
                }
                for (k, row) in todo {
                    out[k] = scan_row(&tile[k * n_b..][..n_b], row, &cols, &mut rho, &mut best);
                }
                (best, buf, rho)
            },
        )
        .map(|(best, _, _)| best)
        .reduce_with(|x, y| x.merge(&y))
        .unwrap_or_else(|| ColumnBest::new(n_b));
    let best_b = (0..n_b)
        .map(|j| (best.row[j].is_finite()).then(|| (best.row[j] as u32, best.value[j] as f32)))
        .collect();
    (best_a, best_b)
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
    let (best_a, best_b) = best_pearson_tiles(stats, &ma, &mb, n);
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

impl StudyVariant {
    /// The variant's label in reports (each says it is the study's, not ours).
    pub fn label(self) -> &'static str {
        match self {
            StudyVariant::ZScore => {
                "study-faithful: per-prompt z-score (eps 1e-5), zeros masked, a to b"
            }
            StudyVariant::Uncentred => {
                "study-faithful: uncentred cosine of activations, zeros masked, a to b"
            }
        }
    }
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

/// One prompt's score under each of `variants` (`None` when every row is masked), from one
/// pass over dense tiles of its sums.
fn study_prompt(s: &CoStats, variants: &[StudyVariant]) -> Vec<Option<f64>> {
    let t = s.tokens as f64;
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
    let (sa, sb) = (stats(&s.sum_a, &s.sq_a), stats(&s.sum_b, &s.sq_b));
    // Row `i`'s best from its dense row of sums.
    let best = |variant: StudyVariant, i: usize, row: &[f64]| -> Option<f64> {
        match variant {
            // Over co-active pairs only (`S_ij != 0`).
            StudyVariant::Uncentred => row
                .iter()
                .enumerate()
                .filter(|(_, sij)| **sij != 0.0)
                .map(|(j, &sij)| sij / ((s.sq_a[i] * s.sq_b[j]).sqrt() + STUDY_EPS))
                .filter(|&r| r != 0.0)
                .max_by(f64::total_cmp),
            StudyVariant::ZScore => {
                let (mi, vi, ki) = sa[i];
                let mut best: Option<f64> = None;
                for (&sij, &(mj, vj, kj)) in row.iter().zip(&sb) {
                    let cov = ki * kj * (sij - t * mi * mj);
                    let r = cov / ((ki * ki * vi * kj * kj * vj).sqrt() + STUDY_EPS);
                    if r != 0.0 && r.is_finite() && best.is_none_or(|b| r > b) {
                        best = Some(r);
                    }
                }
                best
            }
        }
    };
    if s.n_b == 0 {
        return vec![None; variants.len()];
    }
    // Dense tiles of the sums (stored plus pending), as `pearson` reads them: never the
    // whole matrix, nor a list of every co-active pair. Per tile and variant: the sum and
    // count of the rows' bests.
    let rows = s.pending.rows();
    let per_tile: Vec<Vec<(f64, usize)>> = (0..s.pending.blocks())
        .into_par_iter()
        .map_init(Vec::new, |buf, blk| {
            let tile = s.tile(blk, buf);
            variants
                .iter()
                .map(|&v| {
                    tile.chunks(s.n_b)
                        .enumerate()
                        .filter_map(|(k, row)| best(v, blk * rows + k, row))
                        .fold((0.0, 0), |(sum, n), r| (sum + r, n + 1))
                })
                .collect()
        })
        .collect();
    (0..variants.len())
        .map(|v| {
            let (sum, n) = per_tile
                .iter()
                .fold((0.0, 0), |(s, c), t| (s + t[v].0, c + t[v].1));
            (n > 0).then(|| sum / n as f64)
        })
        .collect()
}

/// The study's correlation variant over prompts: each item is one prompt's `(a, b)`
/// activations.
pub fn study_variant<'x>(
    n_a: usize,
    n_b: usize,
    prompts: impl IntoIterator<Item = (&'x SparseBatch, &'x SparseBatch)>,
    variant: StudyVariant,
) -> Result<StudyScore> {
    Ok(study_variants(n_a, n_b, prompts, &[variant])?.remove(0))
}

/// [`study_variant`] for several variants at once: each prompt's sums are computed once.
pub fn study_variants<'x>(
    n_a: usize,
    n_b: usize,
    prompts: impl IntoIterator<Item = (&'x SparseBatch, &'x SparseBatch)>,
    variants: &[StudyVariant],
) -> Result<Vec<StudyScore>> {
    let mut acc = vec![(0.0, 0usize, 0usize); variants.len()];
    for (a, b) in prompts {
        let s = CoStats::from_batches(n_a, n_b, [(a, b)])?;
        for (got, (total, used, empty)) in study_prompt(&s, variants).into_iter().zip(&mut acc) {
            match got {
                Some(v) => {
                    *total += v;
                    *used += 1;
                }
                None => *empty += 1,
            }
        }
    }
    Ok(variants
        .iter()
        .zip(acc)
        .map(|(&variant, (total, used, empty))| StudyScore {
            variant,
            label: variant.label().to_owned(),
            value: if used == 0 {
                f64::NAN
            } else {
                total / used as f64
            },
            prompts: used + empty,
            empty_prompts: empty,
        })
        .collect())
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
