//! Times the streamed centred Pearson summary (`correlate`) on two SAEs' sparse activations
//! stored as CSR files, so that it can be compared with a peer on exactly the same codes:
//! `DIR/{a,b}_indptr.u64`, `DIR/{a,b}_indices.u32`, `DIR/{a,b}_values.f32` (little-endian).
//!
//! `cargo run --release -p concord-align --example correlate_files -- DIR N_A N_B [REPS] [BATCH]`
//! streams batches of `BATCH` tokens (default 2048, as `concord align` does) and prints one
//! JSON line: the median and fastest of `REPS` (default 5) runs, the summary, the products.

use std::time::Instant;

use concord_align::corr::{SparseBatch, correlate};

fn read(dir: &str, side: &str, what: &str) -> Result<Vec<u8>, String> {
    let path = format!("{dir}/{side}_{what}");
    std::fs::read(&path).map_err(|e| format!("cannot read {path}: {e}"))
}

fn load(dir: &str, side: &str) -> Result<SparseBatch, String> {
    Ok(SparseBatch {
        indptr: read(dir, side, "indptr.u64")?
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")) as usize)
            .collect(),
        indices: read(dir, side, "indices.u32")?
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")))
            .collect(),
        values: read(dir, side, "values.f32")?
            .chunks_exact(4)
            .map(|w| f32::from_le_bytes(w.try_into().expect("4 bytes")))
            .collect(),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, n_a, n_b, rest @ ..] = args.as_slice() else {
        return Err("usage: correlate_files DIR N_A N_B [REPS] [BATCH]".into());
    };
    let (n_a, n_b): (usize, usize) = (n_a.parse()?, n_b.parse()?);
    let reps: usize = rest.first().map_or(Ok(5), |s| s.parse())?;
    let batch: usize = rest.get(1).map_or(Ok(2048), |s| s.parse())?;
    let (a, b) = (load(dir, "a")?, load(dir, "b")?);
    if a.tokens() != b.tokens() {
        return Err(format!("{dir}: a has {} tokens, b {}", a.tokens(), b.tokens()).into());
    }
    let tokens = a.tokens();
    let batches: Vec<(SparseBatch, SparseBatch)> = (0..tokens)
        .step_by(batch.max(1))
        .map(|s| {
            let rows: Vec<u32> = (s as u32..(s + batch).min(tokens) as u32).collect();
            (a.select(&rows), b.select(&rows))
        })
        .collect();
    let products: usize = (0..tokens)
        .map(|t| (a.indptr[t + 1] - a.indptr[t]) * (b.indptr[t + 1] - b.indptr[t]))
        .sum();
    let mut times = Vec::new();
    let mut summary = None;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        summary = Some(correlate(n_a, n_b, batches.iter().map(|(x, y)| (x, y)))?);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let s = summary.expect("at least one run");
    println!(
        "{{\"median\": {}, \"min\": {}, \"a_to_b\": {}, \"b_to_a\": {}, \"tokens\": {tokens}, \"products\": {products}}}",
        times[times.len() / 2],
        times[0],
        s.a_to_b,
        s.b_to_a
    );
    Ok(())
}
