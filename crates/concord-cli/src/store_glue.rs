//! Small bridges from the alignment crate's records to the store's parquet tables.

use std::path::Path;

use anyhow::Result;
use concord_align::Pair;
use concord_store::MatchTable;

/// Writes the per-feature match table (`a`, `b`, `cos`, and frequencies when known).
pub fn write_matches(
    path: &Path,
    pairs: &[Pair],
    freq_a: Option<&[f32]>,
    freq_b: Option<&[f32]>,
) -> Result<()> {
    let pick = |f: Option<&[f32]>, idx: &dyn Fn(&Pair) -> u32| {
        f.map(|f| {
            pairs
                .iter()
                .map(|p| f.get(idx(p) as usize).copied().unwrap_or(f32::NAN))
                .collect()
        })
    };
    let table = MatchTable {
        a: pairs.iter().map(|p| p.a).collect(),
        b: pairs.iter().map(|p| p.b).collect(),
        cos: pairs.iter().map(|p| p.cos).collect(),
        freq_a: pick(freq_a, &|p| p.a),
        freq_b: pick(freq_b, &|p| p.b),
        metadata: Default::default(),
    };
    table.write(path)?;
    Ok(())
}
