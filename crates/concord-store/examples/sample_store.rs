//! Writes a small sample store for `scripts/check_pyarrow.py`: three hooks of one synthetic
//! harvest, stored as f32, f16 and bf16, with values the script recomputes.
//!
//! `cargo run -p concord-store --example sample_store -- OUT`

use std::path::PathBuf;

use concord_store::{Dtype, ManifestSpec, Packing, RowMeta, StoreWriter};

const CONTEXT: usize = 16;
const WINDOWS: u64 = 10;
const HOOKS: [(&str, usize, Dtype); 3] = [
    ("blocks.0.hook_resid_post", 8, Dtype::F32),
    ("blocks.1.hook_mlp_out", 8, Dtype::F16),
    ("blocks.2.mlp.hook_post", 12, Dtype::Bf16),
];

/// Activation `j` of row `pos` of window `seq` for hook `h`: multiples of 1/8 in [-4, 4),
/// exact in every dtype (the script uses the same formula).
fn value(seq: u64, pos: u32, j: usize, h: usize) -> f32 {
    ((seq * 31 + u64::from(pos) * 7 + j as u64 * 3 + h as u64 * 11) % 64) as f32 / 8.0 - 4.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out: PathBuf = std::env::args()
        .nth(1)
        .ok_or("usage: sample_store OUT")?
        .into();
    let specs = HOOKS
        .iter()
        .map(|&(hook, d, dtype)| ManifestSpec {
            model: "synthetic".into(),
            hook: hook.parse().expect("a valid hook name"),
            d,
            dtype,
            tokenizer: "synthetic".into(),
            tokenizer_sha256: "00".repeat(32),
            corpus_sha256: "11".repeat(32),
            context_len: CONTEXT,
            packing: Packing::Packed,
            rows_per_shard: 4 * CONTEXT as u64,
            settings: serde_json::json!({"windows": WINDOWS}),
        })
        .collect();
    let mut w = StoreWriter::open(&out, specs)?;
    for seq in w.next_seq()..WINDOWS {
        let rows: Vec<RowMeta> = (0..CONTEXT as u32)
            .map(|pos| RowMeta {
                doc: seq / 3,
                pos,
                seq,
                token: 1000 + pos,
                byte_start: if pos == 0 { 0 } else { 5 * pos },
                byte_end: if pos == 0 { 0 } else { 5 * pos + 4 },
            })
            .collect();
        let acts: Vec<Vec<f32>> = HOOKS
            .iter()
            .enumerate()
            .map(|(h, &(_, d, _))| {
                rows.iter()
                    .flat_map(|r| (0..d).map(move |j| value(seq, r.pos, j, h)))
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = acts.iter().map(Vec::as_slice).collect();
        w.push_window(&rows, &refs)?;
    }
    w.finish()?;
    println!("{}", out.display());
    Ok(())
}
