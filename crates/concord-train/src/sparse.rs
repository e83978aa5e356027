//! Sparse decoder kernels for the CPU: when few features are active (TopK, BatchTopK, or a
//! ReLU SAE once its L1 penalty has made the codes sparse), the decoder product, the gradient
//! of the active codes and both weight gradients cost `O(nnz * d_in)` instead of
//! `O(batch * d_sae * d_in)`; only the encoder product stays dense.
//!
//! Codes are built once per step in compressed rows ([`Codes`], CSR: decoding, one row of
//! `x_hat` per token) and transposed once into compressed columns ([`ByFeature`], CSC: the
//! gradient of the active codes and both weight gradients, one row of `(d_sae, d_in)` per
//! feature). Each active entry then costs row-length vector work on contiguous rows
//! ([`simd`]: AVX-512 when the CPU has it), and the loops are tiled so that the gathered rows
//! come from the L2 cache: decoding walks the features in tiles of ~1 MiB of decoder rows for
//! a block of tokens; the by-feature kernels walk the tokens in tiles of ~1 MiB of token rows
//! for a block of features.
//!
//! Every output element is written by one task, summing its terms in ascending order (features
//! within a token, tokens within a feature) whatever the tiling, so results do not depend on
//! thread scheduling and CPU runs stay bitwise repeatable.

mod simd;

use rayon::prelude::*;

pub(crate) use simd::{Isa, wide};

/// Tokens per parallel task of the by-token kernels.
const TASK_ROWS: usize = 64;
/// Features per parallel task of the by-feature kernels.
const TASK_FEATURES: usize = 64;
/// Bytes of gathered rows per tile: half a core's 2 MiB L2, leaving room for the outputs.
const TILE_BYTES: usize = 1 << 20;

/// Rows of `d` f32 values per tile of gathered rows.
fn tile_rows(d: usize) -> usize {
    (TILE_BYTES / (4 * d.max(1))).max(16)
}

/// Sparse codes `(rows, n)` in CSR form.
#[derive(Debug, Default)]
pub(crate) struct Codes {
    pub rows: usize,
    pub n: usize,
    /// `(rows + 1)`: row `b`'s entries are `row_ptr[b]..row_ptr[b + 1]`.
    pub row_ptr: Vec<usize>,
    pub col: Vec<u32>,
    pub val: Vec<f32>,
}

impl Codes {
    fn from_rows(n: usize, rows: &[(Vec<u32>, Vec<f32>)]) -> Codes {
        let mut row_ptr = Vec::with_capacity(rows.len() + 1);
        row_ptr.push(0);
        let nnz = rows.iter().map(|r| r.0.len()).sum();
        let (mut col, mut val) = (Vec::with_capacity(nnz), Vec::with_capacity(nnz));
        for (c, v) in rows {
            col.extend_from_slice(c);
            val.extend_from_slice(v);
            row_ptr.push(col.len());
        }
        Codes {
            rows: rows.len(),
            n,
            row_ptr,
            col,
            val,
        }
    }

    /// The positive entries of a dense row-major `(rows, n)` matrix whose rows hold
    /// `row_counts (rows)` positive entries each (from [`column_stats`]).
    pub fn from_dense(isa: Isa, dense: &[f32], n: usize, row_counts: &[u32]) -> Codes {
        let rows = row_counts.len();
        let mut row_ptr = Vec::with_capacity(rows + 1);
        row_ptr.push(0);
        for &c in row_counts {
            row_ptr.push(row_ptr[row_ptr.len() - 1] + c as usize);
        }
        let nnz = row_ptr[rows];
        let (mut col, mut val) = (vec![0u32; nnz], vec![0.0f32; nnz]);
        if n > 0 {
            // Each task fills the entries of its rows, a contiguous part of `col` and `val`.
            let mut parts = Vec::new();
            let (mut cr, mut vr) = (col.as_mut_slice(), val.as_mut_slice());
            for b0 in (0..rows).step_by(TASK_ROWS) {
                let b1 = (b0 + TASK_ROWS).min(rows);
                let len = row_ptr[b1] - row_ptr[b0];
                let (c, c_rest) = cr.split_at_mut(len);
                let (v, v_rest) = vr.split_at_mut(len);
                (cr, vr) = (c_rest, v_rest);
                parts.push((b0, b1, c, v));
            }
            parts.into_par_iter().for_each(|(b0, b1, c, v)| {
                let mut k = 0;
                for b in b0..b1 {
                    let len = row_counts[b] as usize;
                    let got = simd::compress_positive(
                        isa,
                        &dense[b * n..(b + 1) * n],
                        &mut c[k..k + len],
                        &mut v[k..k + len],
                    );
                    assert_eq!(got, len, "row {b}: positive entries changed while counted");
                    k += len;
                }
            });
        }
        Codes {
            rows,
            n,
            row_ptr,
            col,
            val,
        }
    }

    /// Per-row top-k selections `idx, val (rows, k)`; entries with `val <= 0` are inactive.
    pub fn from_topk(idx: &[i64], val: &[f32], k: usize, n: usize) -> Codes {
        let rows: Vec<(Vec<u32>, Vec<f32>)> = idx
            .chunks(k)
            .zip(val.chunks(k))
            .map(|(i, v)| {
                let mut pairs: Vec<(u32, f32)> = i
                    .iter()
                    .zip(v)
                    .filter(|(_, v)| **v > 0.0)
                    .map(|(&i, &v)| (i as u32, v))
                    .collect();
                pairs.sort_unstable_by_key(|p| p.0);
                pairs.into_iter().unzip()
            })
            .collect();
        Codes::from_rows(n, &rows)
    }

    /// Selections by flat index `row * n + col` over the whole batch (BatchTopK).
    pub fn from_flat(idx: &[i64], val: &[f32], rows: usize, n: usize) -> Codes {
        let mut pairs: Vec<(i64, f32)> = idx
            .iter()
            .zip(val)
            .filter(|(_, v)| **v > 0.0)
            .map(|(&i, &v)| (i, v))
            .collect();
        pairs.sort_unstable_by_key(|p| p.0);
        let mut out = vec![(Vec::new(), Vec::new()); rows];
        for (i, v) in pairs {
            let (r, c) = ((i as usize) / n, (i as usize) % n);
            out[r].0.push(c as u32);
            out[r].1.push(v);
        }
        Codes::from_rows(n, &out)
    }

    pub fn nnz(&self) -> usize {
        self.col.len()
    }

    /// `(rows, d)`: row `b` is `sum_j val_bj * w[j]` with `w (n, d)` row-major.
    pub fn decode(&self, isa: Isa, w: &[f32], d: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * d];
        if d == 0 {
            return out;
        }
        let ft = tile_rows(d);
        out.par_chunks_mut(d * TASK_ROWS)
            .enumerate()
            .for_each(|(task, o)| {
                let b0 = task * TASK_ROWS;
                let mut cur: Vec<usize> = self.row_ptr[b0..b0 + o.len() / d].to_vec();
                for f1 in tile_ends(self.n, ft) {
                    for (i, o) in o.chunks_exact_mut(d).enumerate() {
                        let (s, end) = (cur[i], self.row_ptr[b0 + i + 1]);
                        let e = s + self.col[s..end].partition_point(|&c| (c as usize) < f1);
                        simd::axpy_gather(isa, o, w, &self.col[s..e], &self.val[s..e]);
                        cur[i] = e;
                    }
                }
            });
        out
    }

    /// The same entries ordered by feature.
    pub fn by_feature(&self) -> ByFeature {
        // Entries per feature: partial counts per block of rows, summed (integers: any order).
        let partial: Vec<Vec<u32>> = self
            .row_ptr
            .par_windows(2)
            .chunks(TASK_ROWS * 4)
            .map(|rows| {
                let mut counts = vec![0u32; self.n];
                if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
                    for &c in &self.col[first[0]..last[1]] {
                        counts[c as usize] += 1;
                    }
                }
                counts
            })
            .collect();
        let mut col_ptr = vec![0usize; self.n + 1];
        for j in 0..self.n {
            let c: usize = partial.iter().map(|p| p[j] as usize).sum();
            col_ptr[j + 1] = col_ptr[j] + c;
        }
        let nnz = self.nnz();
        let (mut row, mut val) = (vec![0u32; nnz], vec![0.0f32; nnz]);
        // Each task fills the columns of one block of features, a contiguous part of `row`
        // and `val`, scanning the tokens in order (so tokens ascend within a feature).
        let mut parts = Vec::new();
        let (mut rr, mut vr) = (row.as_mut_slice(), val.as_mut_slice());
        for j0 in (0..self.n).step_by(TASK_FEATURES * 4) {
            let j1 = (j0 + TASK_FEATURES * 4).min(self.n);
            let len = col_ptr[j1] - col_ptr[j0];
            let (r, r_rest) = rr.split_at_mut(len);
            let (v, v_rest) = vr.split_at_mut(len);
            (rr, vr) = (r_rest, v_rest);
            parts.push((j0, j1, r, v));
        }
        parts.into_par_iter().for_each(|(j0, j1, r, v)| {
            let mut fill: Vec<usize> = col_ptr[j0..j1].iter().map(|p| p - col_ptr[j0]).collect();
            for b in 0..self.rows {
                let cols = &self.col[self.row_ptr[b]..self.row_ptr[b + 1]];
                let s = cols.partition_point(|&c| (c as usize) < j0);
                let e = cols.partition_point(|&c| (c as usize) < j1);
                for (k, &c) in cols[s..e].iter().enumerate() {
                    let f = &mut fill[c as usize - j0];
                    r[*f] = b as u32;
                    v[*f] = self.val[self.row_ptr[b] + s + k];
                    *f += 1;
                }
            }
        });
        ByFeature {
            rows: self.rows,
            n: self.n,
            col_ptr,
            row,
            val,
        }
    }
}

/// The ends of consecutive tiles of `tile` items covering `0..n`.
fn tile_ends(n: usize, tile: usize) -> impl Iterator<Item = usize> {
    (1..=n.div_ceil(tile)).map(move |t| (t * tile).min(n))
}

/// Sparse codes `(rows, n)` in CSC form: the entries of [`Codes`] ordered by feature, tokens
/// ascending within a feature.
#[derive(Debug, Default)]
pub(crate) struct ByFeature {
    pub rows: usize,
    pub n: usize,
    /// `(n + 1)`: feature `j`'s entries are `col_ptr[j]..col_ptr[j + 1]`.
    pub col_ptr: Vec<usize>,
    /// The token (row) of each entry.
    pub row: Vec<u32>,
    pub val: Vec<f32>,
}

impl ByFeature {
    /// `(n)`: active entries per feature, as f32.
    pub fn counts(&self) -> Vec<f32> {
        self.col_ptr
            .windows(2)
            .map(|w| (w[1] - w[0]) as f32)
            .collect()
    }

    /// The work of one block of features: for each tile of tokens (so that the gathered
    /// token rows stay in cache) and each feature `j` of `j0..j0 + len`, `f(j, entries)` with
    /// the range of `j`'s entries whose tokens fall in the tile.
    fn for_each_tile(
        &self,
        d: usize,
        j0: usize,
        len: usize,
        mut f: impl FnMut(usize, std::ops::Range<usize>),
    ) {
        let mut cur = self.col_ptr[j0..j0 + len].to_vec();
        for t1 in tile_ends(self.rows, tile_rows(d)) {
            for (i, c) in cur.iter_mut().enumerate() {
                let j = j0 + i;
                let (s, end) = (*c, self.col_ptr[j + 1]);
                let e = s + self.row[s..end].partition_point(|&b| (b as usize) < t1);
                f(j, s..e);
                *c = e;
            }
        }
    }

    /// `(nnz)`, in this layout's order: for each entry `(b, j)`, `<a[b], w[j]>` with
    /// `a (rows, d)`, `w (n, d)` row-major (the sampled product `a w^T`).
    pub fn sddmm(&self, isa: Isa, a: &[f32], w: &[f32], d: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; self.row.len()];
        let mut parts = Vec::new();
        let mut rest = out.as_mut_slice();
        for j0 in (0..self.n).step_by(TASK_FEATURES) {
            let j1 = (j0 + TASK_FEATURES).min(self.n);
            let (o, o_rest) = rest.split_at_mut(self.col_ptr[j1] - self.col_ptr[j0]);
            rest = o_rest;
            parts.push((j0, j1, o));
        }
        parts.into_par_iter().for_each(|(j0, j1, o)| {
            let base = self.col_ptr[j0];
            self.for_each_tile(d, j0, j1 - j0, |j, r| {
                let o = &mut o[r.start - base..r.end - base];
                simd::dot_gather(isa, &w[j * d..(j + 1) * d], a, &self.row[r], o);
            });
        });
        out
    }

    /// `out (n, d) += coef^T a`: row `j` of `out` gains `sum_{(b, j)} coef_bj * a[b]`, with
    /// `coef (nnz)` in this layout's order and `a (rows, d)` row-major.
    pub fn accumulate(&self, isa: Isa, coef: &[f32], a: &[f32], d: usize, out: &mut [f32]) {
        assert_eq!(coef.len(), self.row.len());
        if d == 0 {
            return;
        }
        out.par_chunks_mut(d * TASK_FEATURES)
            .enumerate()
            .for_each(|(task, o)| {
                let j0 = task * TASK_FEATURES;
                self.for_each_tile(d, j0, o.len() / d, |j, r| {
                    let o = &mut o[(j - j0) * d..(j - j0 + 1) * d];
                    simd::axpy_gather(isa, o, a, &self.row[r.clone()], &coef[r]);
                });
            });
    }

    /// `(n)`: the sum of `coef (nnz)` (this layout's order) per feature, tokens ascending.
    pub fn column_sums(&self, coef: &[f32]) -> Vec<f32> {
        self.col_ptr
            .par_windows(2)
            .map(|w| coef[w[0]..w[1]].iter().sum())
            .collect()
    }
}

/// Rows per task of the dense column passes; partial results are combined in block order,
/// so sums do not depend on how rayon schedules the blocks.
const BLOCK_ROWS: usize = 64;

/// What [`column_stats`] counts in a dense `(rows, n)` matrix.
#[derive(Debug)]
pub(crate) struct DenseStats {
    /// `(n)`: positive entries per column.
    pub col_counts: Vec<u32>,
    /// `(rows)`: positive entries per row.
    pub row_counts: Vec<u32>,
    /// The sum of all positive entries (the L1 norm of ReLU codes).
    pub sum: f64,
}

impl DenseStats {
    pub fn nnz(&self) -> u64 {
        self.row_counts.iter().map(|&c| u64::from(c)).sum()
    }
}

/// Counts the positive entries of a dense `(rows, n)` matrix per column and per row, and sums
/// them, in one pass.
pub(crate) fn column_stats(dense: &[f32], n: usize) -> DenseStats {
    let parts: Vec<(Vec<u32>, Vec<u32>, f64)> = dense
        .par_chunks(n * BLOCK_ROWS)
        .map(|block| simd::wide!(stats_block(block: &[f32], n: usize) -> (Vec<u32>, Vec<u32>, f64)))
        .collect();
    combine_stats(parts, n)
}

/// The per-block counts and sums of [`stats_block`], combined in block order.
fn combine_stats(parts: Vec<(Vec<u32>, Vec<u32>, f64)>, n: usize) -> DenseStats {
    let mut col_counts = vec![0u32; n];
    let mut row_counts = Vec::with_capacity(parts.iter().map(|p| p.1.len()).sum());
    let mut sum = 0.0;
    for (c, r, s) in parts {
        col_counts.iter_mut().zip(&c).for_each(|(a, b)| *a += b);
        row_counts.extend(r);
        sum += s;
    }
    DenseStats {
        col_counts,
        row_counts,
        sum,
    }
}

/// `dense (rows, n) <- ReLU(dense + bias)` in place, with `bias (n)` added to every row (NaN
/// stays NaN), then [`column_stats`] of the result, in one parallel pass.
pub(crate) fn bias_relu_stats(dense: &mut [f32], bias: &[f32]) -> DenseStats {
    let n = bias.len();
    assert!(
        n > 0 && dense.len().is_multiple_of(n),
        "codes and bias disagree"
    );
    let parts: Vec<(Vec<u32>, Vec<u32>, f64)> = dense
        .par_chunks_mut(n * BLOCK_ROWS)
        .map(|block| {
            simd::wide!(bias_relu_block(block: &mut [f32], bias: &[f32]) -> (Vec<u32>, Vec<u32>, f64))
        })
        .collect();
    combine_stats(parts, n)
}

/// [`bias_relu_stats`] of one block of rows (still in cache for the count).
#[inline(always)]
fn bias_relu_block(block: &mut [f32], bias: &[f32]) -> (Vec<u32>, Vec<u32>, f64) {
    for row in block.chunks_exact_mut(bias.len()) {
        for (x, b) in row.iter_mut().zip(bias) {
            let y = *x + b;
            *x = if y < 0.0 { 0.0 } else { y };
        }
    }
    stats_block(block, bias.len())
}

/// ReLU's backward pass fused with the bias gradient: zeroes `grad (rows, n)` where
/// `acts (rows, n)` is not positive and adds `add` (the L1 term's constant gradient)
/// elsewhere, in place, and returns the column sums `(n)` of the result.
pub(crate) fn relu_backward_column_sums(
    grad: &mut [f32],
    acts: &[f32],
    n: usize,
    add: f32,
) -> Vec<f32> {
    let parts: Vec<Vec<f32>> = grad
        .par_chunks_mut(n * BLOCK_ROWS)
        .zip(acts.par_chunks(n * BLOCK_ROWS))
        .map(|(g, a)| {
            simd::wide!(relu_backward_block(g: &mut [f32], a: &[f32], n: usize, add: f32) -> Vec<f32>)
        })
        .collect();
    let mut out = vec![0.0f32; n];
    for p in parts {
        out.iter_mut().zip(&p).for_each(|(o, v)| *o += v);
    }
    out
}

/// [`column_stats`] of one block of rows: counts per column and per row, and the sum.
#[inline(always)]
fn stats_block(block: &[f32], n: usize) -> (Vec<u32>, Vec<u32>, f64) {
    let mut counts = vec![0u32; n];
    let mut rows = Vec::with_capacity(BLOCK_ROWS);
    let mut sum = 0.0f64;
    for row in block.chunks_exact(n) {
        // Sixteen lanes of partial sums let the compiler vectorise in a fixed order.
        let mut lanes = [0.0f32; 16];
        let mut lane_counts = [0u32; 16];
        let full = n / 16 * 16;
        for (c, x) in counts[..full]
            .chunks_exact_mut(16)
            .zip(row[..full].chunks_exact(16))
        {
            for l in 0..16 {
                let pos = x[l] > 0.0;
                c[l] += u32::from(pos);
                lane_counts[l] += u32::from(pos);
                lanes[l] += x[l].max(0.0);
            }
        }
        for j in full..n {
            let pos = row[j] > 0.0;
            counts[j] += u32::from(pos);
            lane_counts[j - full] += u32::from(pos);
            lanes[j - full] += row[j].max(0.0);
        }
        rows.push(lane_counts.iter().sum());
        sum += f64::from(lanes.iter().sum::<f32>());
    }
    (counts, rows, sum)
}

/// [`relu_backward_column_sums`] of one block of rows.
#[inline(always)]
fn relu_backward_block(g: &mut [f32], a: &[f32], n: usize, add: f32) -> Vec<f32> {
    let mut sums = vec![0.0f32; n];
    for (grow, arow) in g.chunks_exact_mut(n).zip(a.chunks_exact(n)) {
        for ((g, &a), s) in grow.iter_mut().zip(arow).zip(sums.iter_mut()) {
            // A select rather than a branch, so that the loop vectorises.
            let kept = if a <= 0.0 { 0.0 } else { *g + add };
            *g = kept;
            *s += kept;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform values in `[-1, 1)` from a fixed xorshift stream.
    fn values(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Codes `(rows, n)` with about `density` positive entries, row 0 and column 1 empty.
    fn codes(seed: u64, rows: usize, n: usize, density: f32) -> Vec<f32> {
        let mut dense = values(seed, rows * n);
        for (i, x) in dense.iter_mut().enumerate() {
            let (b, j) = (i / n, i % n);
            if b == 0 || j == 1 {
                *x = -x.abs();
            } else if *x > 2.0 * density - 1.0 {
                *x = 0.0;
            } else {
                *x = *x + 1.0 + 0.1;
            }
        }
        dense
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * scale,
                "{what}[{i}]: {g} vs {w} (scale {scale})"
            );
        }
    }

    /// Every kernel against the dense products, on shapes with `d` not a multiple of 16,
    /// empty rows and columns, and (`d` large) several tiles of rows.
    #[test]
    fn kernels_match_dense_products() {
        let shapes = [
            (3, 4, 2, 0.5),
            (37, 29, 45, 0.3),
            (130, 300, 33, 0.1),
            (5, 7, 16, 0.9),
            (129, 17, 1, 0.2),
            (20, 40, 0, 0.5),
            (40, 50, 16_389, 0.3),
            (600, 400, 200, 0.3),
        ];
        for (seed, &(rows, n, d, density)) in shapes.iter().enumerate() {
            let seed = seed as u64;
            let dense = codes(seed, rows, n, density);
            let w = values(seed + 100, n * d);
            let a = values(seed + 200, rows * d);
            let coef = values(seed + 300, rows * n);
            let stats = column_stats(&dense, n);
            let pos = |b: usize, j: usize| dense[b * n + j] > 0.0;
            for j in 0..n {
                let want = (0..rows).filter(|&b| pos(b, j)).count() as u32;
                assert_eq!(stats.col_counts[j], want, "column {j} count");
            }
            for b in 0..rows {
                let want = (0..n).filter(|&j| pos(b, j)).count() as u32;
                assert_eq!(stats.row_counts[b], want, "row {b} count");
            }
            let sum: f64 = dense.iter().map(|&x| f64::from(x.max(0.0))).sum();
            assert!((stats.sum - sum).abs() <= 1e-5 * sum.max(1.0));
            // The dense products.
            let mut want_decode = vec![0.0f32; rows * d];
            let mut want_acc = vec![0.0f32; n * d];
            let mut want_sums = vec![0.0f32; n];
            for b in 0..rows {
                for j in (0..n).filter(|&j| pos(b, j)) {
                    let (v, c) = (dense[b * n + j], coef[b * n + j]);
                    want_sums[j] += c;
                    for k in 0..d {
                        want_decode[b * d + k] += v * w[j * d + k];
                        want_acc[j * d + k] += c * a[b * d + k];
                    }
                }
            }
            for isa in Isa::available() {
                let what = |k: &str| format!("{k} ({rows}, {n}, {d}) {isa:?}");
                let c = Codes::from_dense(isa, &dense, n, &stats.row_counts);
                let f = c.by_feature();
                let mut dots = vec![];
                let mut cf = vec![];
                for j in 0..n {
                    let entries = f.col_ptr[j]..f.col_ptr[j + 1];
                    let tokens: Vec<usize> =
                        f.row[entries.clone()].iter().map(|&b| b as usize).collect();
                    let want: Vec<usize> = (0..rows).filter(|&b| pos(b, j)).collect();
                    assert_eq!(tokens, want, "{}", what("feature tokens"));
                    for (&b, &v) in tokens.iter().zip(&f.val[entries]) {
                        assert_eq!(v, dense[b * n + j]);
                        cf.push(coef[b * n + j]);
                        let ab = &a[b * d..(b + 1) * d];
                        dots.push(
                            ab.iter()
                                .zip(&w[j * d..(j + 1) * d])
                                .map(|(x, y)| x * y)
                                .sum(),
                        );
                    }
                }
                assert_eq!(
                    f.counts(),
                    stats
                        .col_counts
                        .iter()
                        .map(|&c| c as f32)
                        .collect::<Vec<_>>()
                );
                close(&c.decode(isa, &w, d), &want_decode, &what("decode"));
                close(&f.sddmm(isa, &a, &w, d), &dots, &what("sddmm"));
                let mut acc = vec![0.0f32; n * d];
                f.accumulate(isa, &cf, &a, d, &mut acc);
                close(&acc, &want_acc, &what("accumulate"));
                close(&f.column_sums(&cf), &want_sums, &what("column sums"));
            }
        }
    }

    #[test]
    fn layouts_on_a_small_case() {
        // (rows 3, n 4), d 2.
        let dense = [
            0.0, 2.0, 0.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0f32,
        ];
        let stats = column_stats(&dense, 4);
        assert_eq!(
            (
                stats.col_counts.clone(),
                stats.row_counts.clone(),
                stats.sum
            ),
            (vec![1, 1, 0, 1], vec![2, 1, 0], 3.5)
        );
        for isa in Isa::available() {
            let c = Codes::from_dense(isa, &dense, 4, &stats.row_counts);
            assert_eq!(
                (c.row_ptr.clone(), c.col.clone()),
                (vec![0, 2, 3, 3], vec![1, 3, 0])
            );
            let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0f32];
            assert_eq!(c.decode(isa, &w, 2), vec![13.0, 16.0, 0.5, 1.0, 0.0, 0.0]);
            let f = c.by_feature();
            assert_eq!(
                (f.col_ptr.clone(), f.row.clone(), f.val.clone()),
                (vec![0, 1, 2, 2, 3], vec![1, 0, 0], vec![0.5, 2.0, 1.0])
            );
            let a = [1.0, -1.0, 2.0, 0.0, 9.0, 9.0f32];
            // Feature order: (1, 0), (0, 1), (0, 3).
            assert_eq!(f.sddmm(isa, &a, &w, 2), vec![2.0, -1.0, -1.0]);
            let mut out = vec![0.0f32; 8];
            f.accumulate(isa, &f.val, &a, 2, &mut out);
            assert_eq!(out, vec![1.0, 0.0, 2.0, -2.0, 0.0, 0.0, 1.0, -1.0]);
            assert_eq!(f.column_sums(&f.val), vec![0.5, 2.0, 0.0, 1.0]);
        }
        // Bias and ReLU in place, then the counts; NaN stays NaN and is not counted.
        let mut pre = [0.5, -3.0, f32::NAN, 1.0, -0.5, 0.25f32];
        let stats = bias_relu_stats(&mut pre, &[-1.0, 2.0, 0.0]);
        assert_eq!(pre[..2], [0.0, 0.0]);
        assert!(pre[2].is_nan());
        assert_eq!(pre[3..], [0.0, 1.5, 0.25]);
        assert_eq!(
            (stats.col_counts, stats.row_counts, stats.sum),
            (vec![0, 1, 1], vec![0, 2], 1.75)
        );
        let mut g = [1.0f32; 12];
        assert_eq!(
            relu_backward_column_sums(&mut g, &dense, 4, 0.5),
            vec![1.5, 1.5, 0.0, 1.5]
        );
        assert_eq!(g[..4], [0.0, 1.5, 0.0, 1.5]);
        let t = Codes::from_topk(&[3, 1, 0, 2], &[1.0, 2.0, 0.5, 0.0], 2, 4);
        assert_eq!((t.col, t.val), (vec![1, 3, 0], vec![2.0, 1.0, 0.5]));
        let f = Codes::from_flat(&[4, 3, 1], &[0.5, 1.0, 2.0], 3, 4);
        assert_eq!((f.row_ptr, f.col), (vec![0, 2, 3, 3], vec![1, 3, 0]));
    }
}
