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
/// New edges may have negative reduced cost. Only their rows are freed; their columns keep
/// their duals for now, so every other row stays matched on a tight edge with all its edges
/// feasible, and the freed rows take the smallest feasible dual and are augmented again.
/// Augmenting paths may end at any free column, so a released column is usually refilled
/// (the new edge moved its row, a neighbour takes its place). Only a released column left
/// free with a nonzero dual breaks the rectangular invariant (free columns have dual 0): it
/// then gets dual 0, the rows this makes infeasible are freed in turn, and the loop repeats.
/// Resetting every released column at once (the eager form) frees about half the rows of an
/// SAE-like 16k problem for a handful of new edges; the lazy form frees few beyond the rows of
/// the new edges.
pub(crate) fn solve_from(g: &Graph, start: Option<LapSolution>) -> Option<LapSolution> {
    let (rows, cols) = (g.rows, g.cols);
    let warm = start
        .as_ref()
        .is_some_and(|s| s.col4row.iter().any(|&j| j != NONE));
    let (mut u, mut v, mut col4row) = match start {
        Some(s) if warm => (s.u, s.v, s.col4row),
        _ => (vec![0.0f64; rows], vec![0.0f64; cols], vec![NONE; rows]),
    };
    let mut row4col = vec![NONE; cols];
    for (i, &j) in col4row.iter().enumerate() {
        if j != NONE {
            row4col[j as usize] = i as u32;
        }
    }
    let reduced =
        |e: usize, i: usize, u: &[f64], v: &[f64]| g.cost[e] - u[i] - v[g.col[e] as usize];
    // The smallest dual of row `i` that keeps its edges feasible.
    let lowest = |i: usize, v: &[f64]| {
        (g.start[i]..g.start[i + 1])
            .map(|e| g.cost[e] - v[g.col[e] as usize])
            .fold(f64::INFINITY, f64::min)
    };
    let mut free_rows: Vec<u32> = Vec::new();
    // Columns unmatched by freeing their row, with the dual they had.
    let mut released: Vec<u32> = Vec::new();
    if warm {
        for (i, &j) in col4row.iter().enumerate() {
            let bad =
                j == NONE || (g.start[i]..g.start[i + 1]).any(|e| reduced(e, i, &u, &v) < 0.0);
            if bad {
                free_rows.push(i as u32);
            }
        }
    } else {
        free_rows.extend(0..rows as u32);
    }
    let mut cadj: Option<ColumnAdjacency> = None;
    let mut search = SearchBuffers::new(cols);
    let mut resets = 0usize;
    loop {
        for &i in &free_rows {
            let i = i as usize;
            let j = std::mem::replace(&mut col4row[i], NONE);
            if j != NONE {
                row4col[j as usize] = NONE;
                released.push(j);
            }
        }
        for &i in &free_rows {
            let i = i as usize;
            u[i] = if warm { lowest(i, &v) } else { 0.0 };
            if !u[i].is_finite() {
                return None;
            }
        }
        for &cur in &free_rows {
            augment(
                g,
                cur as usize,
                &mut u,
                &mut v,
                &mut col4row,
                &mut row4col,
                &mut search,
            )?;
        }
        free_rows.clear();
        released.retain(|&j| row4col[j as usize] == NONE && v[j as usize] != 0.0);
        if released.is_empty() {
            break;
        }
        resets += 1;
        if resets > rows.max(16) {
            // Not expected; a cold start always finishes.
            return solve_from(g, None);
        }
        let adj = cadj.get_or_insert_with(|| ColumnAdjacency::new(g));
        let mut stale = std::mem::take(&mut released);
        stale.sort_unstable();
        for &j in &stale {
            let j = j as usize;
            v[j] = 0.0;
            for p in adj.start[j]..adj.start[j + 1] {
                let i2 = adj.row[p] as usize;
                if col4row[i2] != NONE && reduced(adj.edge[p], i2, &u, &v) < 0.0 {
                    // Unmatched now, so that it is not freed twice; its column is checked
                    // again after the augmentations.
                    let j2 = std::mem::replace(&mut col4row[i2], NONE);
                    row4col[j2 as usize] = NONE;
                    free_rows.push(i2 as u32);
                    released.push(j2);
                }
            }
        }
        free_rows.sort_unstable();
    }
    Some(LapSolution { col4row, u, v })
}

/// Moves an optimal solution's duals to the optimal duals with the largest column duals
/// (in maximisation form: the lowest column prices and the highest row duals), keeping the
/// assignment, the tight edges, feasibility and the objective.
///
/// Raising `v_j` by `d_j` and lowering the dual of the row matched to `j` by the same amount
/// keeps that edge tight; an edge `(k, j)` stays feasible while `d_j <= r_kj + d_{m(k)}`
/// (`r` the reduced cost, `m(k)` the column of row `k`), and `v_j <= 0` caps `d_j` at `-v_j`,
/// so free columns (dual 0) stay put. The largest `d` is a shortest-path distance with the
/// caps as sources, found by one multi-source Dijkstra over the graph. Pricing profits: a
/// row needs a product only when its dual is below its `k`-th best cosine, and these are the
/// highest row duals of all optimal duals.
pub(crate) fn lower_prices(g: &Graph, sol: &mut LapSolution) {
    let (rows, cols) = (g.rows, g.cols);
    let mut row4col = vec![NONE; cols];
    for (i, &j) in sol.col4row.iter().enumerate() {
        if j != NONE {
            row4col[j as usize] = i as u32;
        }
    }
    let mut dist: Vec<f64> = sol.v.iter().map(|&v| (-v).max(0.0)).collect();
    let mut done = vec![false; cols];
    let mut heap: BinaryHeap<Reverse<Key>> = (0..cols)
        .filter(|&j| row4col[j] != NONE)
        .map(|j| Reverse(Key(dist[j], 0, j as u32)))
        .collect();
    // Free columns have distance 0 and no matched row to relax from: they are settled.
    while let Some(Reverse(Key(dj, _, j))) = heap.pop() {
        let j = j as usize;
        if done[j] || dj != dist[j] {
            continue;
        }
        done[j] = true;
        let k = row4col[j] as usize;
        for e in g.start[k]..g.start[k + 1] {
            let j2 = g.col[e] as usize;
            if done[j2] || row4col[j2] == NONE {
                continue;
            }
            let r = (g.cost[e] - sol.u[k] - sol.v[j2]).max(0.0);
            if dj + r < dist[j2] {
                dist[j2] = dj + r;
                heap.push(Reverse(Key(dist[j2], 0, j2 as u32)));
            }
        }
    }
    for i in 0..rows {
        let j = sol.col4row[i];
        if j != NONE {
            sol.u[i] -= dist[j as usize];
        }
    }
    for (v, d) in sol.v.iter_mut().zip(&dist) {
        if *d > 0.0 {
            *v += d;
        }
    }
}

/// The graph by columns: for each column the rows with an edge to it and that edge.
struct ColumnAdjacency {
    start: Vec<usize>,
    row: Vec<u32>,
    edge: Vec<usize>,
}

impl ColumnAdjacency {
    fn new(g: &Graph) -> ColumnAdjacency {
        let mut start = vec![0usize; g.cols + 1];
        for &j in &g.col {
            start[j as usize + 1] += 1;
        }
        for j in 0..g.cols {
            start[j + 1] += start[j];
        }
        let mut fill = start.clone();
        let mut row = vec![0u32; g.col.len()];
        let mut edge = vec![0usize; g.col.len()];
        for i in 0..g.rows {
            for e in g.start[i]..g.start[i + 1] {
                let j = g.col[e] as usize;
                row[fill[j]] = i as u32;
                edge[fill[j]] = e;
                fill[j] += 1;
            }
        }
        ColumnAdjacency { start, row, edge }
    }
}

/// The per-search arrays of the shortest-path searches, reset between rows through `touched`.
struct SearchBuffers {
    spc: Vec<f64>,
    path: Vec<u32>,
    done: Vec<bool>,
    touched: Vec<u32>,
    scanned_rows: Vec<u32>,
    scanned_cols: Vec<u32>,
    heap: BinaryHeap<Reverse<Key>>,
}

impl SearchBuffers {
    fn new(cols: usize) -> SearchBuffers {
        SearchBuffers {
            spc: vec![f64::INFINITY; cols],
            path: vec![NONE; cols],
            done: vec![false; cols],
            touched: Vec::new(),
            scanned_rows: Vec::new(),
            scanned_cols: Vec::new(),
            heap: BinaryHeap::new(),
        }
    }
}

/// Joins the free row `cur` to the matching along a shortest augmenting path; `None` when no
/// free column is reachable.
fn augment(
    g: &Graph,
    cur: usize,
    u: &mut [f64],
    v: &mut [f64],
    col4row: &mut [u32],
    row4col: &mut [u32],
    b: &mut SearchBuffers,
) -> Option<()> {
    for &j in &b.touched {
        b.spc[j as usize] = f64::INFINITY;
        b.done[j as usize] = false;
    }
    b.touched.clear();
    b.scanned_rows.clear();
    b.scanned_cols.clear();
    b.heap.clear();
    let mut min_val = 0.0f64;
    let mut i = cur;
    let sink = loop {
        b.scanned_rows.push(i as u32);
        for e in g.start[i]..g.start[i + 1] {
            let j = g.col[e] as usize;
            if b.done[j] {
                continue;
            }
            let r = min_val + g.cost[e] - u[i] - v[j];
            if r < b.spc[j] {
                if b.spc[j] == f64::INFINITY {
                    b.touched.push(j as u32);
                }
                b.spc[j] = r;
                b.path[j] = i as u32;
                b.heap
                    .push(Reverse(Key(r, u8::from(row4col[j] != NONE), j as u32)));
            }
        }
        let j = loop {
            let Reverse(Key(r, _, j)) = b.heap.pop()?;
            let j = j as usize;
            if !b.done[j] && r == b.spc[j] {
                break j;
            }
        };
        min_val = b.spc[j];
        b.done[j] = true;
        b.scanned_cols.push(j as u32);
        if row4col[j] == NONE {
            break j;
        }
        i = row4col[j] as usize;
    };
    finish_row(
        &mut Duals { u, v },
        &mut Assignment { col4row, row4col },
        &Search {
            cur,
            sink,
            min_val,
            spc: &b.spc,
            path: &b.path,
            scanned_rows: &b.scanned_rows,
            scanned_cols: &b.scanned_cols,
        },
    );
    Some(())
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

    /// A random sparse graph with `deg` edges per row (and every row's own column, so that
    /// a full assignment exists).
    fn random_graph(rows: usize, cols: usize, deg: usize, seed: u64) -> Graph {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut g = Graph {
            rows,
            cols,
            start: vec![0],
            ..Graph::default()
        };
        for i in 0..rows {
            let mut js: Vec<u32> = (0..deg).map(|_| (next() % cols as u64) as u32).collect();
            js.push(i as u32);
            js.sort_unstable();
            js.dedup();
            for j in js {
                g.col.push(j);
                g.cost.push((next() % 1000) as f64 / 1000.0 - 0.5);
            }
            g.start.push(g.col.len());
        }
        g
    }

    #[test]
    fn lower_prices_keeps_the_solution_and_raises_column_duals_to_a_limit() {
        for (rows, cols, seed) in [(40, 40, 1), (30, 50, 2), (60, 60, 3)] {
            let g = random_graph(rows, cols, 4, seed);
            let mut s = solve(&g).unwrap();
            let before = s.clone();
            lower_prices(&g, &mut s);
            assert_eq!(s.col4row, before.col4row);
            let total = |s: &LapSolution| s.u.iter().sum::<f64>() + s.v.iter().sum::<f64>();
            assert!((total(&s) - total(&before)).abs() < 1e-9);
            let mut tight_elsewhere = vec![false; cols];
            for i in 0..rows {
                for e in g.start[i]..g.start[i + 1] {
                    let j = g.col[e] as usize;
                    let r = g.cost[e] - s.u[i] - s.v[j];
                    assert!(r > -1e-9, "edge ({i}, {j}) infeasible: {r}");
                    if s.col4row[i] == j as u32 {
                        assert!(r.abs() < 1e-9, "matched edge ({i}, {j}) not tight");
                    } else if r.abs() < 1e-9 {
                        tight_elsewhere[j] = true;
                    }
                }
            }
            // Every column dual is at its cap (0) or held by a tight edge of another row.
            for (j, tight) in tight_elsewhere.iter().enumerate().take(cols) {
                assert!(s.v[j] <= 1e-12 && s.v[j] >= before.v[j] - 1e-12);
                assert!(s.v[j] > -1e-9 || *tight, "column {j} could rise");
            }
        }
    }

    #[test]
    fn warm_start_after_new_edges_equals_a_cold_solve() {
        for seed in 1..6 {
            let full = random_graph(50, 60, 6, seed);
            // The subgraph: every row's first two edges (its own column among them or not)
            // plus its own column, which keeps it feasible.
            let mut sub = Graph {
                rows: full.rows,
                cols: full.cols,
                start: vec![0],
                ..Graph::default()
            };
            for i in 0..full.rows {
                for e in full.start[i]..full.start[i + 1] {
                    if e < full.start[i] + 2 || full.col[e] == i as u32 {
                        sub.col.push(full.col[e]);
                        sub.cost.push(full.cost[e]);
                    }
                }
                sub.start.push(sub.col.len());
            }
            let mut first = solve(&sub).unwrap();
            lower_prices(&sub, &mut first);
            let warm = solve_from(&full, Some(first)).unwrap();
            let cold = solve(&full).unwrap();
            let cost = |s: &LapSolution| -> f64 {
                s.col4row
                    .iter()
                    .enumerate()
                    .map(|(i, &j)| {
                        let e = (full.start[i]..full.start[i + 1])
                            .find(|&e| full.col[e] == j)
                            .unwrap();
                        full.cost[e]
                    })
                    .sum()
            };
            assert!((cost(&warm) - cost(&cold)).abs() < 1e-9, "seed {seed}");
            let dual = warm.u.iter().sum::<f64>() + warm.v.iter().sum::<f64>();
            assert!(
                (dual - cost(&warm)).abs() < 1e-9,
                "seed {seed}: duals do not certify"
            );
        }
    }
}
