//! Convergence: how the consistency of seed pairs moves with training tokens, and whether it
//! has settled.
//!
//! Every SAE of a run with snapshots is saved after 1/2^j of its steps; the planner compares
//! each seed pair at every snapshot both SAEs have. A group is the pairs of one grid, model,
//! layer, architecture and ratio that differ in the same seed; its curve is the mean over
//! pairs of decoder MMCS (both directions averaged) and of the shared fraction above cosine
//! 0.7, against the tokens the SAEs saw. The group is converged when the last doubling of
//! tokens moved the first by at most [`MMCS_TOLERANCE`] and the second by at most
//! [`SHARED_TOLERANCE`] (absolute).

use std::collections::BTreeMap;

use concord_core::outputs::{AlignOutput, Interval};

use crate::assemble::Outputs;
use crate::plan::{Pair, Plan};

/// Largest change of decoder MMCS over the last doubling of tokens of a converged group.
pub const MMCS_TOLERANCE: f64 = 0.02;
/// Largest change of the shared fraction above 0.7 over the last doubling of a converged group.
pub const SHARED_TOLERANCE: f64 = 0.03;

/// A pair's two numbers at one point of training.
fn pair_point(al: &AlignOutput) -> Option<(f64, f64)> {
    let d = al.mmcs.get("decoder")?;
    let shared = al.matching.get("decoder")?.shared.get("0.7").copied()?;
    Some(((d.a_to_b + d.b_to_a) / 2.0, shared))
}

/// One point of a group's curve: the mean over its pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Training tokens of the pairs' first SAEs at this point.
    pub tokens: u64,
    pub mmcs: Interval,
    pub shared: Interval,
}

/// The pairs of one grid, model, layer, architecture and ratio that differ in one seed.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub grid: String,
    pub model: String,
    pub layer: usize,
    pub arch: String,
    pub ratio: u32,
    /// `init_seed` or `data_seed`.
    pub varies: String,
    pub pairs: usize,
    /// In increasing order of tokens; the last is the final SAEs.
    pub points: Vec<Point>,
}

/// What the last doubling of tokens did to a group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change {
    /// Tokens at the last two points.
    pub from: u64,
    pub to: u64,
    pub mmcs: f64,
    pub shared: f64,
}

impl Change {
    pub fn converged(&self) -> bool {
        self.mmcs.abs() <= MMCS_TOLERANCE && self.shared.abs() <= SHARED_TOLERANCE
    }
}

impl Group {
    /// `grid L15 topk 1:2, init-seed pairs`.
    pub fn label(&self) -> String {
        let what = match self.varies.as_str() {
            "init_seed" => "init-seed pairs",
            _ => "data-order pairs",
        };
        format!(
            "{} {} L{} {} 1:{}, {what}",
            self.grid, self.model, self.layer, self.arch, self.ratio
        )
    }

    /// The change over the last two points; `None` with fewer than two.
    pub fn last_change(&self) -> Option<Change> {
        let [.., a, b] = self.points.as_slice() else {
            return None;
        };
        Some(Change {
            from: a.tokens,
            to: b.tokens,
            mmcs: b.mmcs.mean - a.mmcs.mean,
            shared: b.shared.mean - a.shared.mean,
        })
    }

    /// Whether the group is converged; `None` when it has fewer than two points.
    pub fn converged(&self) -> Option<bool> {
        self.last_change().map(|c| c.converged())
    }
}

/// The groups of every seed pair with snapshots, in plan order.
pub fn groups(plan: &Plan, out: &Outputs) -> Vec<Group> {
    type Key = (String, String, usize, String, u32, String);
    let mut by_key: BTreeMap<Key, Vec<&Pair>> = BTreeMap::new();
    let mut order: Vec<Key> = Vec::new();
    for p in plan.pairs.iter().filter(|p| !p.snapshots.is_empty()) {
        let a = &plan.saes[p.a];
        let key = (
            p.grid.clone(),
            a.model.clone(),
            a.layer,
            a.arch.clone(),
            a.ratio,
            p.varies.clone(),
        );
        if !by_key.contains_key(&key) {
            order.push(key.clone());
        }
        by_key.entry(key).or_default().push(p);
    }
    order
        .into_iter()
        .map(|key| {
            let pairs = &by_key[&key];
            // Points: every snapshot step of the first pair, then the final SAEs.
            let first = pairs[0];
            let mut steps: Vec<u64> = first.snapshots.iter().map(|(at, _)| *at).collect();
            steps.push(plan.saes[first.a].steps);
            let points = steps
                .iter()
                .filter_map(|&at| {
                    let mut mmcs = Vec::new();
                    let mut shared = Vec::new();
                    for p in pairs {
                        let al = if at == plan.saes[p.a].steps {
                            out.align.get(&p.step)
                        } else {
                            p.snapshots
                                .iter()
                                .find(|(s, _)| *s == at)
                                .and_then(|(_, id)| out.snapshot_align.get(id))
                        };
                        if let Some((m, s)) = al.and_then(pair_point) {
                            mmcs.push(m);
                            shared.push(s);
                        }
                    }
                    if mmcs.is_empty() {
                        return None;
                    }
                    let tokens = out.tokens_at(plan, first.a, at);
                    Some(Point {
                        tokens,
                        mmcs: Interval::of(&mmcs),
                        shared: Interval::of(&shared),
                    })
                })
                .collect();
            let (grid, model, layer, arch, ratio, varies) = key;
            Group {
                grid,
                model,
                layer,
                arch,
                ratio,
                varies,
                pairs: pairs.len(),
                points,
            }
        })
        .collect()
}

/// Whether the init-seed groups of `grid` (all of them, or those of one architecture) are
/// converged: `Some(true)` when every one is, `Some(false)` when one is not, `None` when the
/// grid has no group with two points (no snapshots).
pub fn grid_converged(groups: &[Group], grid: &str, arch: Option<&str>) -> Option<bool> {
    let verdicts: Vec<bool> = groups
        .iter()
        .filter(|g| g.grid == grid && g.varies == "init_seed")
        .filter(|g| arch.is_none_or(|a| g.arch == a))
        .filter_map(Group::converged)
        .collect();
    (!verdicts.is_empty()).then(|| verdicts.iter().all(|&c| c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(tokens: u64, mmcs: f64, shared: f64) -> Point {
        Point {
            tokens,
            mmcs: Interval::of(&[mmcs]),
            shared: Interval::of(&[shared]),
        }
    }

    fn group(points: Vec<Point>) -> Group {
        Group {
            grid: "seeds".into(),
            model: "m".into(),
            layer: 3,
            arch: "topk".into(),
            ratio: 2,
            varies: "init_seed".into(),
            pairs: 1,
            points,
        }
    }

    #[test]
    fn converged_when_the_last_doubling_moves_both_numbers_little() {
        let g = group(vec![point(100, 0.5, 0.3), point(200, 0.70, 0.60)]);
        assert_eq!(g.converged(), Some(false));
        let g = group(vec![point(100, 0.69, 0.58), point(200, 0.70, 0.60)]);
        assert_eq!(g.converged(), Some(true));
        // Either number alone can fail it.
        let g = group(vec![point(100, 0.70, 0.55), point(200, 0.70, 0.60)]);
        assert_eq!(g.converged(), Some(false));
        let g = group(vec![point(200, 0.70, 0.60)]);
        assert_eq!(g.converged(), None);
        let c = group(vec![point(100, 0.69, 0.58), point(200, 0.70, 0.60)])
            .last_change()
            .unwrap();
        assert_eq!((c.from, c.to), (100, 200));
        assert!((c.mmcs - 0.01).abs() < 1e-12);
        let groups = [
            group(vec![point(1, 0.7, 0.6), point(2, 0.7, 0.6)]),
            Group {
                arch: "relu-l1".into(),
                ..group(vec![point(1, 0.5, 0.6), point(2, 0.7, 0.6)])
            },
        ];
        assert_eq!(grid_converged(&groups, "seeds", Some("topk")), Some(true));
        assert_eq!(grid_converged(&groups, "seeds", None), Some(false));
        assert_eq!(grid_converged(&groups, "other", None), None);
    }
}
