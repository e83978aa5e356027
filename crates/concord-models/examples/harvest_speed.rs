//! Measures the forward pass of a harvest: tokens/s of `run_with_cache` on 16 x 256 packed
//! windows of the Shakespeare corpus, 2 threads, stopping at the hook's block, against the
//! matrix products of those blocks alone (same shapes, same dtype, same process, interleaved;
//! best of `iters` rounds each, so that load from other processes hurts both alike).
//!
//! `cargo run --release -p concord-models --example harvest_speed -- smollm2-135m blocks.6.hook_mlp_out f32 4`

use std::io::BufRead;
use std::time::Instant;

use concord_models::{
    Architecture, ComputeDtype, HookName, LoadOptions, Model, PackOptions, Packing, pack, resolve,
    to_batch,
};
use tch::{Kind, Tensor};

const BATCH: usize = 16;
const SEQ: usize = 256;

/// The `(in, out)` shapes of one block's matrix products.
fn block_products(model: &Model) -> Vec<(i64, i64)> {
    let c = model.config();
    let (d, m) = (c.d_model as i64, c.d_mlp as i64);
    match c.arch {
        Architecture::Llama => {
            let kv = (c.n_kv_heads * c.head_dim()) as i64;
            vec![(d, d + 2 * kv), (d, d), (d, 2 * m), (m, d)]
        }
        Architecture::GptNeox | Architecture::Bert | Architecture::Gpt2 => {
            vec![(d, 3 * d), (d, d), (d, m), (m, d)]
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_owned());
    let (name, hook, dtype) = (
        arg(0, "smollm2-135m"),
        arg(1, "blocks.6.hook_mlp_out"),
        arg(2, "f32"),
    );
    let iters: usize = arg(3, "4").parse()?;
    tch::set_num_threads(2);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data");
    let compute = dtype.parse::<ComputeDtype>()?;
    let t0 = Instant::now();
    let model = Model::load(
        &resolve(&name, &root)?,
        LoadOptions {
            dtype: compute,
            ..Default::default()
        },
    )?;
    let load_s = t0.elapsed().as_secs_f64();
    let corpus = std::fs::File::open(root.join("cache/corpus/shakespeare.jsonl"))?;
    let docs = std::io::BufReader::new(corpus)
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let v: serde_json::Value =
                serde_json::from_str(&l.expect("corpus line")).expect("json line");
            (i as u64, v["text"].as_str().unwrap_or_default().to_owned())
        });
    let opts = PackOptions {
        context_len: SEQ,
        packing: Packing::Packed,
    };
    let t0 = Instant::now();
    let windows: Vec<_> = pack(&model.tokenizer, model.info.is_causal, docs, opts)?
        .take(BATCH * 2)
        .collect::<Result<_, _>>()?;
    let pack_s = t0.elapsed().as_secs_f64();
    let hooks = HookName::parse_list(&hook)?;
    let depth = hooks.iter().map(|h| h.layer + 1).max().unwrap_or(1);
    let batches: Vec<_> = windows
        .chunks(BATCH)
        .map(|w| to_batch(w, 0))
        .collect::<Result<_, _>>()?;

    let kind = compute.kind();
    let xs: Vec<(Tensor, Tensor)> = block_products(&model)
        .into_iter()
        .map(|(i, o)| {
            (
                Tensor::randn([(BATCH * SEQ) as i64, i], (kind, tch::Device::Cpu)),
                Tensor::randn([o, i], (kind, tch::Device::Cpu)),
            )
        })
        .collect();
    let products = || {
        for _ in 0..depth {
            for (x, w) in &xs {
                let _ = x.linear::<Tensor>(w, None);
            }
        }
    };
    let forward = |i: usize| -> Result<(), concord_models::Error> {
        let (ids, mask) = &batches[i % batches.len()];
        let cache = model.run_with_cache(ids, mask, &hooks)?;
        // Bring the activations to f32 as a harvest does before writing them.
        for t in cache.values() {
            let _ = t.to_kind(Kind::Float).contiguous();
        }
        Ok(())
    };
    forward(0)?;
    products();
    let (mut best_fwd, mut best_mm) = (f64::INFINITY, f64::INFINITY);
    for i in 0..iters {
        let t0 = Instant::now();
        forward(i)?;
        best_fwd = best_fwd.min(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        products();
        best_mm = best_mm.min(t0.elapsed().as_secs_f64());
    }
    let tokens = (BATCH * SEQ) as f64;
    println!(
        "{{\"model\": \"{name}\", \"hook\": \"{hook}\", \"dtype\": \"{dtype}\", \"tokens_per_s\": {:.0}, \
         \"products_tokens_per_s\": {:.0}, \"fraction_of_products\": {:.3}, \"load_s\": {load_s:.2}, \
         \"pack_32_windows_s\": {pack_s:.3}}}",
        tokens / best_fwd,
        tokens / best_mm,
        best_mm / best_fwd
    );
    Ok(())
}
