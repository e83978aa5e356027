//! Benchmarks of the alignment kernels against their peers (run by `cargo xtask bench`).
//!
//! A size of 0 skips a group.
//!
//! - `mmcs`: the fused pass (MMCS both ways, no candidates) against one plain sgemm of the
//!   same shape, by libtorch (`tch`) and by the `gemm` crate. Size `CONCORD_BENCH_MMCS_N`
//!   (default 4096) at `d = CONCORD_BENCH_D` (default 512).
//! - `align`: the whole comparison at the CLI's defaults (MMCS and exact matching, decoder
//!   and encoder) on two SAE-like pairs of `CONCORD_BENCH_ALIGN_N` features (default 16384),
//!   timed once (a run takes tens of seconds); `CONCORD_BENCH_ALIGN_ENCODER=0` compares the
//!   decoders only (one pair: one fused pass, one matching, e.g. the 32,768 case).
//!   `benches/peers/align.sh` times numpy's MMCS plus scipy's `linear_sum_assignment` on the
//!   same dictionaries, written for it to `$CONCORD_BENCH_RESULTS/align-data/`.
//! - `correlation`: the streamed centred Pearson summary (both ways, dead features excluded)
//!   on synthetic sparse activations of two SAEs of `CONCORD_BENCH_CORR_N` features (default
//!   4096) on `CONCORD_BENCH_CORR_TOKENS` tokens (default 65536), about 32 active features
//!   per token, streamed in batches of 4096 tokens. The peer gets the same activations as
//!   two whole CSR matrices (written for it to `$CONCORD_BENCH_RESULTS/align-data/`) and is
//!   timed twice, median of 5 runs each: scipy's sparse `AᵀB` alone, which is narrower than
//!   our measurement (no moments, no Pearson, no maxima, no input checks), and that product
//!   plus the dense Pearson summary in numpy, the same work as ours. Our timing covers every
//!   step from the batches to the summary; only building the batches is outside it.

use std::cell::RefCell;
use std::time::Instant;

use concord_align::corr::{SparseBatch, correlate};
use concord_align::synth::{SaeLike, sae_like_pair};
use concord_align::{CompareOptions, Dict, ScanOptions, compare_dicts, scan};
use concord_benches::{Times, env_usize, record, write_f32};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const FILE: &str = "align.jsonl";

fn gemm_crate(a: &Dict, b: &Dict, out: &mut [f32]) {
    let (m, n, k) = (a.n, b.n, a.d);
    // SAFETY: `out` is `(m, n)` row-major; `a.rows` is `(m, k)` row-major; `b.rows` read as
    // the `(k, n)` matrix `Bᵀ` has element `(p, j)` at `j * k + p`, inside the slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.rows.as_ptr(),
            1,
            k as isize,
            b.rows.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

fn bench_mmcs(c: &mut Criterion) {
    let n = env_usize("CONCORD_BENCH_MMCS_N", 4096);
    let d = env_usize("CONCORD_BENCH_D", 512);
    if n == 0 {
        return;
    }
    let (a, b) = sae_like_pair(n, n, d, &SaeLike::default(), 1).expect("generator");
    let case = format!("{n}x{n}, d {d}");
    let flops = 2.0 * (n * n * d) as f64;
    let mut group = c.benchmark_group("mmcs");
    group.sample_size(10);
    let fused = RefCell::new(Times::default());
    group.bench_function("concord fused (both ways)", |bench| {
        bench.iter_custom(|iters| {
            fused
                .borrow_mut()
                .run(iters, || scan(&a, &b, &ScanOptions::default()).unwrap())
        })
    });
    let fused_k = RefCell::new(Times::default());
    group.bench_function("concord fused (both ways, top-32)", |bench| {
        bench.iter_custom(|iters| {
            fused_k.borrow_mut().run(iters, || {
                scan(
                    &a,
                    &b,
                    &ScanOptions {
                        top_k: 32,
                        ..ScanOptions::default()
                    },
                )
                .unwrap()
            })
        })
    });
    let mut out = vec![0.0f32; n * n];
    let gemm_t = RefCell::new(Times::default());
    group.bench_function("gemm crate sgemm (one product)", |bench| {
        bench.iter_custom(|iters| {
            gemm_t
                .borrow_mut()
                .run(iters, || gemm_crate(&a, &b, &mut out))
        })
    });
    drop(out);
    let ta = tch::Tensor::from_slice(&a.rows).reshape([n as i64, d as i64]);
    let tb = tch::Tensor::from_slice(&b.rows).reshape([n as i64, d as i64]);
    let torch_t = RefCell::new(Times::default());
    group.bench_function("libtorch sgemm (one product)", |bench| {
        bench.iter_custom(|iters| torch_t.borrow_mut().run(iters, || ta.matmul(&tb.tr())))
    });
    group.finish();
    let torch = torch_t.borrow().median();
    for (name, t) in [
        ("concord fused (both ways)", fused.borrow().median()),
        (
            "concord fused (both ways, top-32)",
            fused_k.borrow().median(),
        ),
        ("gemm crate sgemm (one product)", gemm_t.borrow().median()),
        ("libtorch sgemm (one product)", torch),
    ] {
        let note = format!(
            "{:.1} GFLOP/s, {:.2}x libtorch sgemm",
            flops / t / 1e9,
            t / torch
        );
        record(FILE, "mmcs", &case, name, t, &note);
    }
}

fn bench_align(_c: &mut Criterion) {
    let n = env_usize("CONCORD_BENCH_ALIGN_N", 16_384);
    let d = env_usize("CONCORD_BENCH_D", 512);
    let encoder = env_usize("CONCORD_BENCH_ALIGN_ENCODER", 1) != 0;
    if n == 0 {
        return;
    }
    let (dec_a, dec_b) = sae_like_pair(n, n, d, &SaeLike::default(), 2).expect("generator");
    let enc = encoder.then(|| sae_like_pair(n, n, d, &SaeLike::default(), 3).expect("generator"));
    let mut files = vec![("dec_a", &dec_a), ("dec_b", &dec_b)];
    if let Some((ea, eb)) = &enc {
        files.extend([("enc_a", ea), ("enc_b", eb)]);
    }
    for (name, m) in files {
        write_f32(&format!("{name}_{n}x{d}.f32"), &m.rows);
    }
    let kinds = if encoder {
        "decoder + encoder"
    } else {
        "decoder only"
    };
    let case = format!("sae-like {n}x{n}, d {d}, {kinds}");
    let t = Instant::now();
    let cmp = compare_dicts(
        &dec_a,
        &dec_b,
        enc.as_ref().map(|(x, y)| (x, y)),
        &CompareOptions {
            encoder,
            ..CompareOptions::default()
        },
    )
    .expect("compare");
    let secs = t.elapsed().as_secs_f64();
    let dec = &cmp.matching.decoder;
    let note = format!(
        "optimal {}, mean cos {:.4}, {} pricing rounds, process peak RSS {}",
        dec.optimal && cmp.matching.encoder.as_ref().is_none_or(|e| e.optimal),
        dec.mean_cos,
        dec.certificate.rounds,
        peak_rss()
    );
    record(
        FILE,
        "align",
        &case,
        "concord compare (fused pass + certified sparse matching)",
        secs,
        &note,
    );
}

/// The process's peak resident memory so far (`VmHWM`), as Linux reports it.
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Sparse activations `(tokens, n)` of two SAEs whose features are partly related: each active
/// feature `f` of `a` turns on feature `(7 f + 3) mod n` of `b` with probability 0.7.
fn sparse_pair(tokens: usize, n: usize, l0: usize, seed: u64) -> (SparseBatch, SparseBatch) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut a = SparseBatch {
        indptr: vec![0],
        ..SparseBatch::default()
    };
    let mut b = SparseBatch {
        indptr: vec![0],
        ..SparseBatch::default()
    };
    for _ in 0..tokens {
        let mut fa: Vec<(u32, f32)> = (0..l0)
            .map(|_| (rng.random_range(0..n as u32), rng.random::<f32>() + 0.1))
            .collect();
        fa.sort_by_key(|e| e.0);
        fa.dedup_by_key(|e| e.0);
        let mut fb: Vec<(u32, f32)> = Vec::new();
        for &(f, v) in &fa {
            if rng.random::<f32>() < 0.7 {
                fb.push(((7 * f + 3) % n as u32, v * rng.random_range(0.5f32..1.5)));
            }
        }
        fb.extend((0..l0 / 4).map(|_| (rng.random_range(0..n as u32), rng.random::<f32>() + 0.1)));
        fb.sort_by_key(|e| e.0);
        fb.dedup_by_key(|e| e.0);
        for (x, f) in [(&mut a, fa), (&mut b, fb)] {
            for (j, v) in f {
                x.indices.push(j);
                x.values.push(v);
            }
            x.indptr.push(x.indices.len());
        }
    }
    (a, b)
}

fn bench_correlation(c: &mut Criterion) {
    let tokens = env_usize("CONCORD_BENCH_CORR_TOKENS", 65_536);
    let n = env_usize("CONCORD_BENCH_CORR_N", 4096);
    if tokens == 0 || n == 0 {
        return;
    }
    let (a, b) = sparse_pair(tokens, n, 32, 4);
    for (name, x) in [("corr_a", &a), ("corr_b", &b)] {
        let ip: Vec<u8> = x
            .indptr
            .iter()
            .flat_map(|&p| (p as u64).to_le_bytes())
            .collect();
        let ix: Vec<u8> = x.indices.iter().flat_map(|&j| j.to_le_bytes()).collect();
        let dir = concord_benches::results_dir().join("align-data");
        let _ = std::fs::create_dir_all(&dir);
        let base = format!("{name}_{tokens}x{n}");
        let _ = std::fs::write(dir.join(format!("{base}_indptr.u64")), ip);
        let _ = std::fs::write(dir.join(format!("{base}_indices.u32")), ix);
        write_f32(&format!("{base}_values.f32"), &x.values);
    }
    // Stream in batches of 4096 tokens, as the CLI would from the stores.
    let batches: Vec<(SparseBatch, SparseBatch)> = (0..tokens)
        .step_by(4096)
        .map(|s| {
            let rows: Vec<u32> = (s as u32..(s + 4096).min(tokens) as u32).collect();
            (a.select(&rows), b.select(&rows))
        })
        .collect();
    let products: usize = (0..tokens)
        .map(|t| (a.indptr[t + 1] - a.indptr[t]) * (b.indptr[t + 1] - b.indptr[t]))
        .sum();
    let case = format!("{tokens} tokens, {n} x {n} features, L0 32");
    let mut group = c.benchmark_group("correlation");
    group.sample_size(10);
    let times = RefCell::new(Times::default());
    group.bench_function("concord streamed Pearson (both ways)", |bench| {
        bench.iter_custom(|iters| {
            times.borrow_mut().run(iters, || {
                correlate(n, n, batches.iter().map(|(x, y)| (x, y))).unwrap()
            })
        })
    });
    group.finish();
    let t = times.borrow().median();
    let summary = correlate(n, n, batches.iter().map(|(x, y)| (x, y))).unwrap();
    let note = format!(
        "{:.0} M products/s ({products} products); a to b {:.4}, b to a {:.4}",
        products as f64 / t / 1e6,
        summary.a_to_b,
        summary.b_to_a
    );
    record(
        FILE,
        "correlation",
        &case,
        "concord streamed Pearson (both ways)",
        t,
        &note,
    );
}

criterion_group!(benches, bench_mmcs, bench_align, bench_correlation);
criterion_main!(benches);
