//! Training throughput: the Rust side of the speed comparison with
//! `benches/peers/train_torch.py` (same math, fp32, same threads, same batch).
//!
//! `cargo run --release -p concord-train --example throughput -- [arch] [d] [ratios] [batch]
//! [steps] [threads] [saes] [sparse_max_density] [rows] [window]`, e.g. `relu-l1-faithful 576
//! 4,8,32 2048 6 2 1 0.15`. `saes` SAEs of each shape train together; density 0 turns the
//! sparse kernels off.
//!
//! - Without `rows` (or with `-`): random normal rows, one JSON line per ratio with SAE-tokens
//!   per second (tokens times SAEs) over `steps` steps after one warm-up step, and their mean
//!   code density (L0 / d_sae).
//! - With `rows`, a file of little-endian f32 rows of width `d` (real activations, shuffled;
//!   cycled when `steps` batches need more): every step is timed from the first, as training
//!   runs, and one JSON line per `window` steps (default 25) gives the mean code density
//!   (L0 / d_sae) and the SAE-tokens per second of that window; a last line sums the run. To
//!   make such a file from a store's hook dataset (`concord harvest`):
//!
//! ```text
//! .venv/bin/python -c "import sys, glob, numpy as np, pyarrow.parquet as pq; \
//!   c = pq.read_table(sorted(glob.glob(sys.argv[1] + '/*.parquet')), columns=['act']); \
//!   c = c.column('act').combine_chunks(); \
//!   a = c.flatten().to_numpy().astype('<f4').reshape(-1, c.type.list_size); \
//!   np.random.default_rng(0).shuffle(a); a.tofile(sys.argv[2])" STORE/HOOK rows.f32
//! ```
//!
//! (an f32 or f16 store; the rows are shuffled once, as the study's reader would).

use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use concord_train::{Arch, Batch, SaeSpec, TrainOptions, Trainer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_owned());
    let arch: Arch = arg(0, "relu-l1-faithful").parse()?;
    let d: usize = arg(1, "576").parse()?;
    let ratios: Vec<usize> = arg(2, "4,8,32")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let batch: usize = arg(3, "2048").parse()?;
    let steps: usize = arg(4, "6").parse()?;
    let threads: i32 = arg(5, "2").parse()?;
    let saes: usize = arg(6, "1").parse()?;
    let sparse_max_density: f64 =
        arg(7, &TrainOptions::default().sparse_max_density.to_string()).parse()?;
    let rows_file = arg(8, "-");
    let window: usize = arg(9, "25").parse::<usize>()?.max(1);
    tch::set_num_threads(threads);
    let real = rows_file != "-";
    let data: Vec<Vec<f32>> = if real {
        let bytes = std::fs::read(&rows_file)?;
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let batches: Vec<Vec<f32>> = values
            .chunks_exact(batch * d)
            .map(<[f32]>::to_vec)
            .collect();
        if batches.is_empty() {
            return Err(format!("{rows_file}: fewer than {batch} rows of width {d}").into());
        }
        batches
    } else {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        (0..2)
            .map(|_| {
                (0..batch * d)
                    .map(|_| StandardNormal.sample(&mut rng))
                    .collect()
            })
            .collect()
    };
    for ratio in ratios {
        let specs = (0..saes)
            .map(|s| {
                let mut spec = SaeSpec::new(arch, 0, "blocks.0.hook_mlp_out", "bench", d, ratio);
                spec.init_seed = s as u64;
                spec.name = spec.default_name();
                spec
            })
            .collect();
        let opts = TrainOptions {
            sparse_max_density,
            ..TrainOptions::default()
        };
        let mut trainer = Trainer::new(specs, opts)?;
        let d_sae = (d * ratio) as f64;
        let step = |t: &mut Trainer, s: usize| -> Result<f64, concord_train::Error> {
            t.step(&[Batch {
                stream: 0,
                width: d,
                rows: &data[s % data.len()],
            }])
            .map(|st| st.mean_l0() / d_sae)
        };
        let common = format!(
            "\"arch\": \"{arch}\", \"d\": {d}, \"ratio\": {ratio}, \"batch\": {batch}, \"threads\": {threads}, \"saes\": {saes}, \"sparse_max_density\": {sparse_max_density}"
        );
        let per_s = |n: usize, secs: f64| (n * batch * saes) as f64 / secs;
        if !real {
            step(&mut trainer, 0)?;
            let start = Instant::now();
            let mut density = 0.0;
            for s in 0..steps {
                density += step(&mut trainer, s + 1)?;
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{{{common}, \"steps\": {steps}, \"density\": {:.4}, \"tokens_per_s\": {:.1}}}",
                density / steps.max(1) as f64,
                per_s(steps, secs)
            );
            continue;
        }
        let (mut total, mut win_secs, mut win_density) = (0.0, 0.0, 0.0);
        for s in 0..steps {
            let start = Instant::now();
            let density = step(&mut trainer, s)?;
            let secs = start.elapsed().as_secs_f64();
            total += secs;
            win_secs += secs;
            win_density += density;
            let n = s % window + 1;
            if n == window || s + 1 == steps {
                println!(
                    "{{{common}, \"from\": {}, \"to\": {}, \"density\": {:.4}, \"tokens_per_s\": {:.1}}}",
                    s + 2 - n,
                    s + 1,
                    win_density / n as f64,
                    per_s(n, win_secs)
                );
                (win_secs, win_density) = (0.0, 0.0);
            }
        }
        println!(
            "{{{common}, \"from\": 1, \"to\": {steps}, \"total\": true, \"tokens_per_s\": {:.1}}}",
            per_s(steps, total)
        );
    }
    Ok(())
}
