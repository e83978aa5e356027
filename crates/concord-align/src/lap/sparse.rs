//! The sparse shortest-augmenting-path solver: Dijkstra with a binary heap over a candidate
//! graph in CSR form, stopped at the first free column.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use super::{Assignment, Duals, LapSolution, NONE, Search, finish_row};

/// A bipartite candidate graph, rows to columns, in CSR form with minimisation costs.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Graph {
    pub rows: usize,
    pub cols: usize,
    /// `(rows + 1)` offsets into `col` and `cost`.
    pub start: Vec<usize>,
    pub col: Vec<u32>,
    pub cost: Vec<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Key(f64, u8, u32);

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .total_cmp(&other.0)
            .then(self.1.cmp(&other.1))
            .then(self.2.cmp(&other.2))
    }
}

/// Minimum-cost assignment of every row to a distinct column using only the graph's edges;
/// `None` when some row cannot be assigned.
#[cfg(test)]
pub(crate) fn solve(g: &Graph) -> Option<LapSolution> {
    solve_from(g, None)
}

/// [`solve`] starting from the solution of a subgraph of `g` (same rows and columns, fewer
/// edges): the warm start of a pricing round.
///
/// New edges may have negative reduced cost. Their rows are freed; a column freed with a
/// nonzero dual gets dual 0 (the invariant of free columns), which may make edges of other
/// matched rows negative: those rows are freed too, and so on. Freed rows then take the
/// smallest dual that keeps their edges feasible, and only they are augmented again.
pub(crate) fn solve_from(g: &Graph, start: Option<LapSolution>) -> Option<LapSolution> {
    let (rows, cols) = (g.rows, g.cols);
    let (mut u, mut v, mut col4row) = match start {
        Some(s) => (s.u, s.v, s.col4row),
        None => (vec![0.0f64; rows], vec![0.0f64; cols], vec![NONE; rows]),
    };
    let mut row4col = vec![NONE; cols];
    for (i, &j) in col4row.iter().enumerate() {
        if j != NONE {
            row4col[j as usize] = i as u32;
        }
    }
    let reduced =
        |e: usize, i: usize, u: &[f64], v: &[f64]| g.cost[e] - u[i] - v[g.col[e] as usize];
    let mut free_rows: Vec<u32> = Vec::new();
    if col4row.iter().any(|&j| j != NONE) {
        // Column adjacency, to find the rows a raised column dual affects.
        let mut cstart = vec![0usize; cols + 1];
        for &j in &g.col {
            cstart[j as usize + 1] += 1;
        }
        for j in 0..cols {
            cstart[j + 1] += cstart[j];
        }
        let mut fill = cstart.clone();
        let mut crow = vec![0u32; g.col.len()];
        let mut cedge = vec![0usize; g.col.len()];
        for i in 0..rows {
            for e in g.start[i]..g.start[i + 1] {
                let j = g.col[e] as usize;
                crow[fill[j]] = i as u32;
                cedge[fill[j]] = e;
                fill[j] += 1;
            }
        }
        let mut is_free = vec![false; rows];
        let mut stack: Vec<u32> = Vec::new();
        for i in 0..rows {
            let bad = col4row[i] == NONE
                || (g.start[i]..g.start[i + 1]).any(|e| reduced(e, i, &u, &v) < 0.0);
            if bad {
                is_free[i] = true;
                stack.push(i as u32);
            }
        }
        while let Some(i) = stack.pop() {
            let i = i as usize;
            free_rows.push(i as u32);
            let j = std::mem::replace(&mut col4row[i], NONE);
            if j == NONE {
                continue;
            }
            let j = j as usize;
            row4col[j] = NONE;
            if v[j] != 0.0 {
                v[j] = 0.0;
                for p in cstart[j]..cstart[j + 1] {
                    let i2 = crow[p] as usize;
                    if !is_free[i2] && reduced(cedge[p], i2, &u, &v) < 0.0 {
                        is_free[i2] = true;
                        stack.push(i2 as u32);
                    }
                }
            }
        }
        for &i in &free_rows {
            let i = i as usize;
            u[i] = (g.start[i]..g.start[i + 1])
                .map(|e| g.cost[e] - v[g.col[e] as usize])
                .fold(f64::INFINITY, f64::min);
            if !u[i].is_finite() {
                return None;
            }
        }
        free_rows.sort_unstable();
    } else {
        u.fill(0.0);
        v.fill(0.0);
        free_rows.extend(0..rows as u32);
    }
    let mut spc = vec![f64::INFINITY; cols];
    let mut path = vec![NONE; cols];
    let mut done = vec![false; cols];
    let mut touched: Vec<u32> = Vec::new();
    let mut scanned_rows: Vec<u32> = Vec::new();
    let mut scanned_cols: Vec<u32> = Vec::new();
    let mut heap: BinaryHeap<Reverse<Key>> = BinaryHeap::new();
    for &cur in &free_rows {
        let cur = cur as usize;
        for &j in &touched {
            spc[j as usize] = f64::INFINITY;
            done[j as usize] = false;
        }
        touched.clear();
        scanned_rows.clear();
        scanned_cols.clear();
        heap.clear();
        let mut min_val = 0.0f64;
        let mut i = cur;
        let sink = loop {
            scanned_rows.push(i as u32);
            for e in g.start[i]..g.start[i + 1] {
                let j = g.col[e] as usize;
                if done[j] {
                    continue;
                }
                let r = min_val + g.cost[e] - u[i] - v[j];
                if r < spc[j] {
                    if spc[j] == f64::INFINITY {
                        touched.push(j as u32);
                    }
                    spc[j] = r;
                    path[j] = i as u32;
                    heap.push(Reverse(Key(r, u8::from(row4col[j] != NONE), j as u32)));
                }
            }
            let j = loop {
                let Reverse(Key(r, _, j)) = heap.pop()?;
                let j = j as usize;
                if !done[j] && r == spc[j] {
                    break j;
                }
            };
            min_val = spc[j];
            done[j] = true;
            scanned_cols.push(j as u32);
            if row4col[j] == NONE {
                break j;
            }
            i = row4col[j] as usize;
        };
        finish_row(
            &mut Duals {
                u: &mut u,
                v: &mut v,
            },
            &mut Assignment {
                col4row: &mut col4row,
                row4col: &mut row4col,
            },
            &Search {
                cur,
                sink,
                min_val,
                spc: &spc,
                path: &path,
                scanned_rows: &scanned_rows,
                scanned_cols: &scanned_cols,
            },
        );
    }
    Some(LapSolution { col4row, u, v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infeasible_graph_is_none_and_complete_graph_matches_dense() {
        let g = Graph {
            rows: 2,
            cols: 2,
            start: vec![0, 1, 2],
            col: vec![0, 0],
            cost: vec![1.0, 2.0],
        };
        assert!(solve(&g).is_none());
        let c = [[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]];
        let g = Graph {
            rows: 3,
            cols: 3,
            start: vec![0, 3, 6, 9],
            col: vec![0, 1, 2, 0, 1, 2, 0, 1, 2],
            cost: c.iter().flatten().copied().collect(),
        };
        let s = solve(&g).unwrap();
        let total: f64 = s
            .col4row
            .iter()
            .enumerate()
            .map(|(i, &j)| c[i][j as usize])
            .sum();
        assert_eq!(total, 5.0);
    }
}
