//! Training throughput on synthetic rows: the Rust side of the speed comparison with
//! `benches/peers/train_torch.py` (same math, fp32, same threads, same batch).
//!
//! `cargo run --release -p concord-train --example throughput -- [arch] [d] [ratios] [batch]
//! [steps] [threads] [saes] [sparse_max_density]`, e.g. `relu-l1-faithful 576 4,8,32 2048 6 2
//! 1 0.05`. Prints one JSON line per ratio with SAE-tokens per second (tokens times SAEs;
//! `saes` SAEs of that shape train together; density 0 turns the sparse kernels off).

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
    let sparse_max_density: f64 = arg(7, "0.05").parse()?;
    tch::set_num_threads(threads);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let data: Vec<Vec<f32>> = (0..2)
        .map(|_| {
            (0..batch * d)
                .map(|_| StandardNormal.sample(&mut rng))
                .collect()
        })
        .collect();
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
        let step = |t: &mut Trainer, s: usize| -> Result<(), concord_train::Error> {
            t.step(&[Batch {
                stream: 0,
                width: d,
                rows: &data[s % 2],
            }])
            .map(|_| ())
        };
        step(&mut trainer, 0)?;
        let start = Instant::now();
        for s in 0..steps {
            step(&mut trainer, s + 1)?;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{{\"arch\": \"{arch}\", \"d\": {d}, \"ratio\": {ratio}, \"batch\": {batch}, \"threads\": {threads}, \"saes\": {saes}, \"sparse_max_density\": {sparse_max_density}, \"steps\": {steps}, \"tokens_per_s\": {:.1}}}",
            (steps * batch * saes) as f64 / secs
        );
    }
    Ok(())
}
