//! Minimum-cost rectangular assignment (every row gets a distinct column, `rows <= cols`)
//! by shortest augmenting paths with `f64` dual variables, dense and sparse.
//!
//! Both solvers follow the successive-shortest-path scheme that scipy's
//! `linear_sum_assignment` uses (Crouse 2016, after Jonker and Volgenant): each row in turn is
//! joined to the matching along a shortest augmenting path in reduced costs (Dijkstra with the
//! dual potentials), stopping as soon as a free column is reached. The duals `u` (rows) and
//! `v` (columns) stay feasible, `u_i + v_j <= c_ij`, with `v_j <= 0` and `v_j = 0` for columns
//! left free, so `sum u + sum v` equals the cost of the final assignment: the duals are an
//! optimality certificate, which the sparse driver extends to all pairs by pricing.

pub(crate) mod dense;
pub(crate) mod sparse;

/// A solved assignment with its dual variables (minimisation form).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LapSolution {
    /// The column of each row, `(rows)`.
    pub col4row: Vec<u32>,
    /// Row duals, `(rows)`.
    pub u: Vec<f64>,
    /// Column duals, `(cols)`.
    pub v: Vec<f64>,
}

pub(crate) const NONE: u32 = u32::MAX;

/// The dual variables being updated.
pub(crate) struct Duals<'a> {
    pub u: &'a mut [f64],
    pub v: &'a mut [f64],
}

/// The assignment being grown, in both directions.
pub(crate) struct Assignment<'a> {
    pub col4row: &'a mut [u32],
    pub row4col: &'a mut [u32],
}

/// The outcome of one row's shortest-path search.
pub(crate) struct Search<'a> {
    /// The row joined to the matching.
    pub cur: usize,
    /// The free column the shortest path reached.
    pub sink: usize,
    /// The path's length in reduced costs.
    pub min_val: f64,
    /// Shortest-path costs to each column, `(cols)`.
    pub spc: &'a [f64],
    /// The row each column was reached from, `(cols)`.
    pub path: &'a [u32],
    pub scanned_rows: &'a [u32],
    pub scanned_cols: &'a [u32],
}

/// Ends one row's step, shared by both solvers: moves the duals of every scanned row and
/// column so they stay feasible with the new tight edges, then flips the augmenting path from
/// `sink` back to `cur`.
pub(crate) fn finish_row(d: &mut Duals<'_>, a: &mut Assignment<'_>, s: &Search<'_>) {
    d.u[s.cur] += s.min_val;
    for &i in s.scanned_rows {
        let i = i as usize;
        if i != s.cur {
            d.u[i] += s.min_val - s.spc[a.col4row[i] as usize];
        }
    }
    for &j in s.scanned_cols {
        let j = j as usize;
        d.v[j] -= s.min_val - s.spc[j];
    }
    let mut j = s.sink;
    loop {
        let i = s.path[j] as usize;
        a.row4col[j] = i as u32;
        let prev = std::mem::replace(&mut a.col4row[i], j as u32);
        if i == s.cur {
            break;
        }
        j = prev as usize;
    }
}
