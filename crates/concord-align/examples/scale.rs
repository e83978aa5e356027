//! Times the fused pass and the certified matching on an SAE-like pair at a chosen size:
//! `cargo run --release -p concord-align --example scale -- N [D] [N_B]` (defaults 16384, 512).
//! Memory: the pass holds only blocks; the matching holds the candidate graph.

use std::time::Instant;

use concord_align::synth::{SaeLike, sae_like_pair};
use concord_align::{MatchOptions, ScanOptions, match_dicts, scan};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let n = args.first().copied().unwrap_or(16_384);
    let d = args.get(1).copied().unwrap_or(512);
    let n_b = args.get(2).copied().unwrap_or(n);
    let t = Instant::now();
    let (a, b) = sae_like_pair(n, n_b, d, &SaeLike::default(), 0)?;
    eprintln!(
        "generate {n} x {n_b} (d = {d}): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let defaults = MatchOptions::default();
    let opts = MatchOptions {
        dense_limit: 0,
        tied_dense_limit: 0,
        top_k: env("CONCORD_TOP_K", defaults.top_k),
        pricing_k: env("CONCORD_PRICING_K", defaults.pricing_k),
        add_per_row: env("CONCORD_ADD_PER_ROW", defaults.add_per_row),
        ..defaults
    };
    let t = Instant::now();
    let sc = scan(
        &a,
        &b,
        &ScanOptions {
            top_k: opts.scan_k(),
            blocking: opts.blocking,
        },
    )?;
    let t_scan = t.elapsed().as_secs_f64();
    eprintln!(
        "scan (MMCS both ways + top-{}): {t_scan:.2} s, mmcs {:.4} / {:.4}",
        opts.scan_k(),
        sc.mmcs_a_to_b(),
        sc.mmcs_b_to_a()
    );
    let t = Instant::now();
    let m = match_dicts(&a, &b, Some(&sc), &opts)?;
    let t_match = t.elapsed().as_secs_f64();
    eprintln!(
        "matching: {t_match:.2} s, mean cos {:.6}, optimal {}, certificate {:?}",
        m.objective / m.pairs.len() as f64,
        m.optimal,
        m.certificate
    );
    eprintln!("total {:.2} s", t_scan + t_match);
    Ok(())
}
