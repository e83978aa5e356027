//! The dense shortest-augmenting-path solver, `O(rows · cols)` per augmentation.

use super::{Assignment, Duals, LapSolution, NONE, Search, finish_row};

/// Minimum-cost assignment of every row to a distinct column for a dense cost `(rows, cols)`
/// given as a function, `rows <= cols`, all costs finite.
pub(crate) fn solve(rows: usize, cols: usize, cost: impl Fn(usize, usize) -> f64) -> LapSolution {
    assert!(
        rows <= cols,
        "dense solver needs rows <= cols, got {rows} > {cols}"
    );
    let mut u = vec![0.0f64; rows];
    let mut v = vec![0.0f64; cols];
    let mut col4row = vec![NONE; rows];
    let mut row4col = vec![NONE; cols];
    let mut spc = vec![f64::INFINITY; cols];
    let mut path = vec![NONE; cols];
    let mut remaining: Vec<u32> = Vec::with_capacity(cols);
    let mut scanned_rows: Vec<u32> = Vec::new();
    let mut scanned_cols: Vec<u32> = Vec::new();
    for cur in 0..rows {
        spc.fill(f64::INFINITY);
        remaining.clear();
        // Visiting columns in reverse keeps scipy's order of ties.
        remaining.extend((0..cols as u32).rev());
        scanned_rows.clear();
        scanned_cols.clear();
        let mut min_val = 0.0f64;
        let mut i = cur;
        let sink = loop {
            scanned_rows.push(i as u32);
            let mut lowest = f64::INFINITY;
            let mut index = usize::MAX;
            for (it, &j) in remaining.iter().enumerate() {
                let j = j as usize;
                let r = min_val + cost(i, j) - u[i] - v[j];
                if r < spc[j] {
                    path[j] = i as u32;
                    spc[j] = r;
                }
                if spc[j] < lowest || (spc[j] == lowest && row4col[j] == NONE) {
                    lowest = spc[j];
                    index = it;
                }
            }
            min_val = lowest;
            let j = remaining.swap_remove(index);
            scanned_cols.push(j);
            let owner = row4col[j as usize];
            if owner == NONE {
                break j as usize;
            }
            i = owner as usize;
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
    LapSolution { col4row, u, v }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_a_classic_instance() {
        // scipy.optimize.linear_sum_assignment([[4, 1, 3], [2, 0, 5], [3, 2, 2]]) -> cost 5.
        let c = [[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]];
        let s = solve(3, 3, |i, j| c[i][j]);
        let total: f64 = s
            .col4row
            .iter()
            .enumerate()
            .map(|(i, &j)| c[i][j as usize])
            .sum();
        assert_eq!(total, 5.0);
        let dual: f64 = s.u.iter().sum::<f64>() + s.v.iter().sum::<f64>();
        assert!((dual - total).abs() < 1e-12);
    }
}
