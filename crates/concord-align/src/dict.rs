//! Dictionaries: row-major `(n, d)` matrices of feature directions with unit rows.

use rayon::prelude::*;

use crate::{Error, Result};

/// A dictionary of `n` feature directions of width `d`, stored row-major `(n, d)` with each
/// row scaled to unit length. Rows that were exactly zero stay zero (their cosine with
/// anything is 0) and are counted in `zero_rows`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dict {
    pub n: usize,
    pub d: usize,
    /// `(n, d)`.
    pub rows: Vec<f32>,
    pub zero_rows: usize,
}

impl Dict {
    /// Normalises the rows of `xs`, `(n, d)`; `what` names the matrix in errors.
    ///
    /// Norms are computed in `f64` so that rows of any scale come out unit length to within
    /// `f32` rounding.
    pub fn from_rows(what: &'static str, xs: &[f32], n: usize, d: usize) -> Result<Dict> {
        Dict::from_vec(what, xs.to_vec(), n, d)
    }

    /// [`Dict::from_rows`] on rows the caller owns, normalised in place (no copy).
    pub fn from_vec(what: &'static str, mut rows: Vec<f32>, n: usize, d: usize) -> Result<Dict> {
        if n == 0 || d == 0 {
            return Err(Error::Empty {
                what,
                rows: n,
                cols: d,
            });
        }
        if rows.len() != n * d {
            return Err(Error::BadShape {
                what,
                len: rows.len(),
                rows: n,
                cols: d,
            });
        }
        // A vectorised pass; the search for the first bad value runs only when there is one.
        let any_bad = rows.iter().fold(false, |bad, v| bad | !v.is_finite());
        if any_bad && let Some(pos) = rows.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what,
                row: pos / d,
                col: pos % d,
            });
        }
        // Rows are independent: normalised in parallel, each as it would be alone (the same
        // bits), in blocks of rows big enough to be worth a task.
        let zero_rows: usize = rows
            .par_chunks_exact_mut(d)
            .with_min_len((1 << 14) / d + 1)
            .map(|row| {
                let norm = row
                    .iter()
                    .map(|&v| f64::from(v) * f64::from(v))
                    .sum::<f64>()
                    .sqrt();
                if norm == 0.0 {
                    return 1;
                }
                for v in row.iter_mut() {
                    *v = (f64::from(*v) / norm) as f32;
                }
                0
            })
            .sum();
        if zero_rows == n {
            return Err(Error::Invalid {
                what,
                reason: format!("all {n} rows are zero: no feature has a direction"),
            });
        }
        Ok(Dict {
            n,
            d,
            rows,
            zero_rows,
        })
    }

    /// Wraps rows that the caller guarantees are already unit length (or zero), `(n, d)`.
    pub fn from_unit_rows(what: &'static str, rows: Vec<f32>, n: usize, d: usize) -> Result<Dict> {
        if n == 0 || d == 0 {
            return Err(Error::Empty {
                what,
                rows: n,
                cols: d,
            });
        }
        if rows.len() != n * d {
            return Err(Error::BadShape {
                what,
                len: rows.len(),
                rows: n,
                cols: d,
            });
        }
        Ok(Dict {
            n,
            d,
            rows,
            zero_rows: 0,
        })
    }

    /// Row `i`, `(d)`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.rows[i * self.d..(i + 1) * self.d]
    }

    /// The dictionary made of the rows `idx`, in that order.
    pub fn gather(&self, idx: &[u32]) -> Dict {
        let mut rows = Vec::with_capacity(idx.len() * self.d);
        for &i in idx {
            rows.extend_from_slice(self.row(i as usize));
        }
        Dict {
            n: idx.len(),
            d: self.d,
            rows,
            zero_rows: 0,
        }
    }
}

/// Checks that two dictionaries have the same width.
pub(crate) fn same_width(a: &Dict, b: &Dict) -> Result<()> {
    if a.d != b.d {
        return Err(Error::DimensionMismatch {
            a: "a",
            b: "b",
            d_a: a.d,
            d_b: b.d,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_unit_and_zero_rows_are_counted() {
        let d = Dict::from_rows("w", &[3.0, 4.0, 0.0, 0.0, 0.0, 2.0], 3, 2).unwrap();
        assert_eq!(d.rows, vec![0.6, 0.8, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(d.zero_rows, 1);
    }

    #[test]
    fn bad_input_is_named() {
        let err = Dict::from_rows("W_dec", &[1.0, f32::NAN], 1, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("W_dec") && err.contains("column 1"), "{err}");
        let err = Dict::from_rows("W_dec", &[1.0; 5], 2, 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("(2, 3)"), "{err}");
        assert!(Dict::from_rows("W_dec", &[], 0, 3).is_err());
        let err = Dict::from_rows("W_dec", &[0.0; 6], 2, 3)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("W_dec") && err.contains("all 2 rows are zero"),
            "{err}"
        );
    }
}
