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
