//! Sparse decoder kernels for the CPU: when few features are active (TopK, BatchTopK, or a
//! ReLU SAE once its L1 penalty has made the codes sparse), the decoder product, the gradient
//! of the active codes and both weight gradients cost `O(nnz * d_in)` instead of
//! `O(batch * d_sae * d_in)`; only the encoder product stays dense.
//!
//! Codes are held in compressed rows (CSR). Every output element is written by one task in a
//! fixed order (rows in ascending order within a feature), so results do not depend on thread
//! scheduling and CPU runs stay bitwise repeatable.

use rayon::prelude::*;

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

    /// The positive entries of a dense row-major `(rows, n)` matrix.
    pub fn from_dense(dense: &[f32], n: usize) -> Codes {
        let rows: Vec<(Vec<u32>, Vec<f32>)> = dense
            .par_chunks(n)
            .map(|row| {
                let mut c = Vec::new();
                let mut v = Vec::new();
                for (j, &x) in row.iter().enumerate() {
                    if x > 0.0 {
                        c.push(j as u32);
                        v.push(x);
                    }
                }
                (c, v)
            })
            .collect();
        Codes::from_rows(n, &rows)
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
    pub fn decode(&self, w: &[f32], d: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * d];
        out.par_chunks_mut(d).enumerate().for_each(|(b, o)| {
            for e in self.row_ptr[b]..self.row_ptr[b + 1] {
                let j = self.col[e] as usize;
                let v = self.val[e];
                o.iter_mut()
                    .zip(&w[j * d..(j + 1) * d])
                    .for_each(|(o, w)| *o += v * w);
            }
        });
        out
    }

    /// `(nnz)`: for each entry `(b, j)`, `<a[b], w[j]>` with `a (rows, d)`, `w (n, d)`.
    pub fn row_dots(&self, a: &[f32], w: &[f32], d: usize) -> Vec<f32> {
        let per_row: Vec<Vec<f32>> = (0..self.rows)
            .into_par_iter()
            .map(|b| {
                let ab = &a[b * d..(b + 1) * d];
                (self.row_ptr[b]..self.row_ptr[b + 1])
                    .map(|e| {
                        let j = self.col[e] as usize;
                        dot(ab, &w[j * d..(j + 1) * d])
                    })
                    .collect()
            })
            .collect();
        per_row.concat()
    }

    /// Transposed products: for each `(coef (nnz), a (rows, d))` pair, the `(n, d)` matrix
    /// whose row `j` is `sum_{(b, j)} coef_bj * a[b]`, added into `outs`.
    pub fn accumulate_t(&self, terms: &[(&[f32], &[f32])], d: usize, outs: &mut [Vec<f32>]) {
        // Counting sort of the entries by feature (stable: rows stay ascending).
        let mut col_ptr = vec![0usize; self.n + 1];
        for &c in &self.col {
            col_ptr[c as usize + 1] += 1;
        }
        for j in 0..self.n {
            col_ptr[j + 1] += col_ptr[j];
        }
        let mut fill = col_ptr.clone();
        let mut order = vec![(0u32, 0u32); self.nnz()];
        for b in 0..self.rows {
            for e in self.row_ptr[b]..self.row_ptr[b + 1] {
                let c = self.col[e] as usize;
                order[fill[c]] = (b as u32, e as u32);
                fill[c] += 1;
            }
        }
        for ((coef, a), out) in terms.iter().zip(outs.iter_mut()) {
            out.par_chunks_mut(d).enumerate().for_each(|(j, o)| {
                for &(b, e) in &order[col_ptr[j]..col_ptr[j + 1]] {
                    let c = coef[e as usize];
                    let b = b as usize;
                    o.iter_mut()
                        .zip(&a[b * d..(b + 1) * d])
                        .for_each(|(o, a)| *o += c * a);
                }
            });
        }
    }

    /// `(n)`: the sum of `coef (nnz)` per feature.
    pub fn column_sums(&self, coef: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; self.n];
        for (&c, &v) in self.col.iter().zip(coef) {
            out[c as usize] += v;
        }
        out
    }
}

/// Rows per task of the dense column passes; partial results are combined in block order,
/// so sums do not depend on how rayon schedules the blocks.
const BLOCK_ROWS: usize = 64;

/// `(n)` counts of positive entries per column of a dense `(rows, n)` matrix, and the sum of
/// all its positive entries (the L1 norm of ReLU codes).
pub(crate) fn column_stats(dense: &[f32], n: usize) -> (Vec<u32>, f64) {
    let parts: Vec<(Vec<u32>, f64)> = dense
        .par_chunks(n * BLOCK_ROWS)
        .map(|block| {
            let mut counts = vec![0u32; n];
            let mut sum = 0.0f64;
            for row in block.chunks_exact(n) {
                let mut row_sum = 0.0f32;
                for (c, &x) in counts.iter_mut().zip(row) {
                    *c += u32::from(x > 0.0);
                    row_sum += x.max(0.0);
                }
                sum += f64::from(row_sum);
            }
            (counts, sum)
        })
        .collect();
    let mut counts = vec![0u32; n];
    let mut sum = 0.0;
    for (c, s) in parts {
        counts.iter_mut().zip(&c).for_each(|(a, b)| *a += b);
        sum += s;
    }
    (counts, sum)
}

/// ReLU's backward pass fused with the bias gradient: zeroes `grad (rows, n)` where
/// `acts (rows, n)` is not positive, in place, and returns the column sums `(n)` of the result.
pub(crate) fn relu_backward_column_sums(grad: &mut [f32], acts: &[f32], n: usize) -> Vec<f32> {
    let parts: Vec<Vec<f32>> = grad
        .par_chunks_mut(n * BLOCK_ROWS)
        .zip(acts.par_chunks(n * BLOCK_ROWS))
        .map(|(g, a)| {
            let mut sums = vec![0.0f32; n];
            for (grow, arow) in g.chunks_exact_mut(n).zip(a.chunks_exact(n)) {
                for ((g, &a), s) in grow.iter_mut().zip(arow).zip(sums.iter_mut()) {
                    if a <= 0.0 {
                        *g = 0.0;
                    }
                    *s += *g;
                }
            }
            sums
        })
        .collect();
    let mut out = vec![0.0f32; n];
    for p in parts {
        out.iter_mut().zip(&p).for_each(|(o, v)| *o += v);
    }
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums let the compiler vectorise without reassociation flags.
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for l in 0..8 {
            acc[l] += a[i * 8 + l] * b[i * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_dense_products() {
        // (rows 3, n 4), d 2.
        let dense = [
            0.0, 2.0, 0.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0f32,
        ];
        let c = Codes::from_dense(&dense, 4);
        assert_eq!(
            (c.row_ptr.clone(), c.col.clone()),
            (vec![0, 2, 3, 3], vec![1, 3, 0])
        );
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0f32];
        assert_eq!(c.decode(&w, 2), vec![13.0, 16.0, 0.5, 1.0, 0.0, 0.0]);
        let a = [1.0, -1.0, 2.0, 0.0, 9.0, 9.0f32];
        assert_eq!(c.row_dots(&a, &w, 2), vec![-1.0, -1.0, 2.0]);
        let mut outs = vec![vec![0.0f32; 8]];
        c.accumulate_t(&[(&c.val, &a)], 2, &mut outs);
        assert_eq!(outs[0], vec![1.0, 0.0, 2.0, -2.0, 0.0, 0.0, 1.0, -1.0]);
        assert_eq!(c.column_sums(&c.val), vec![0.5, 2.0, 0.0, 1.0]);
        assert_eq!(column_stats(&dense, 4), (vec![1, 1, 0, 1], 3.5));
        let mut g = [1.0f32; 12];
        assert_eq!(
            relu_backward_column_sums(&mut g, &dense, 4),
            vec![1.0, 1.0, 0.0, 1.0]
        );
        assert_eq!(g[..4], [0.0, 1.0, 0.0, 1.0]);
        let t = Codes::from_topk(&[3, 1, 0, 2], &[1.0, 2.0, 0.5, 0.0], 2, 4);
        assert_eq!((t.col, t.val), (vec![1, 3, 0], vec![2.0, 1.0, 0.5]));
        let f = Codes::from_flat(&[4, 3, 1], &[0.5, 1.0, 2.0], 3, 4);
        assert_eq!((f.row_ptr, f.col), (vec![0, 2, 3, 3], vec![1, 3, 0]));
    }
}
