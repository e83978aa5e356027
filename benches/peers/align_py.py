"""The `concord_align` Python package on the cases of benches/align.rs, beside numpy/scipy.

Our records (`"peer": false`) time the package's calls from Python, input copies included:
- mmcs: `concord_align.mmcs` on the numpy peer's float32 dictionaries (align_peers.py draws
  them with the same seed), median of 5;
- align: `concord_align.match` on the decoder and the encoder pair of the Rust bench's
  SAE-like dictionaries (read from $CONCORD_BENCH_RESULTS/align-data when the Rust bench wrote
  them, else drawn by `concord_align.sae_like_pair` with the Rust bench's seeds: the same
  pairs), timed once as the Rust bench times `compare_dicts`; its peers are align_peers.py's;
- align, 4,096 x 4,096 (the package's acceptance size): `match` against numpy's product plus
  scipy's `linear_sum_assignment`, both timed here (median of 3), with the objectives' gap;
- correlation: `concord_align.correlate` on the Rust bench's sparse codes as scipy CSR
  matrices, median of 5; its peers are align_peers.py's.
Sizes follow the Rust side's variables (CONCORD_BENCH_ALIGN_N, CONCORD_BENCH_ALIGN_ENCODER,
CONCORD_BENCH_D, CONCORD_BENCH_MMCS_N, CONCORD_BENCH_CORR_TOKENS, CONCORD_BENCH_CORR_N).
"""

import json
import os
import pathlib
import sys
import time

import numpy as np

from common import load_csr_pair

try:
    import concord_align as ca
except ImportError as e:
    sys.exit(
        f"align_py: cannot import concord_align ({e}); `cargo xtask bench` installs it "
        "(pip install crates/concord-align-py)"
    )

results = pathlib.Path(os.environ["CONCORD_BENCH_RESULTS"])
out = results / "align-py.jsonl"
data = results / "align-data"
d = int(os.environ.get("CONCORD_BENCH_D", 512))
IMPL = "concord_align (Python package)"


def record(group, case, impl, seconds, note="", peer=False):
    line = {"group": group, "case": case, "impl": impl, "seconds": seconds, "peer": peer, "note": note}
    with out.open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(f"align_py: {group} / {case} / {impl}: {seconds:.4f} s {note}", flush=True)


def median_time(f, runs):
    times, value = [], None
    for _ in range(runs):
        t = time.perf_counter()
        value = f()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), value


def mmcs():
    n = int(os.environ.get("CONCORD_BENCH_MMCS_N", 4096))
    if n == 0:
        return
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, d), dtype=np.float32)
    b = rng.standard_normal((n, d), dtype=np.float32)
    t, (ab, ba) = median_time(lambda: ca.mmcs(a, b), 5)
    record("mmcs", f"{n}x{n}, d {d}", f"{IMPL}: mmcs (both ways)", t, f"median of 5; {ab:.4f} / {ba:.4f}")


def sae_like(name, seed, n):
    """The Rust bench's pair `name` (`dec` seed 2, `enc` seed 3), as unit rows."""
    files = [data / f"{name}_{s}_{n}x{d}.f32" for s in ("a", "b")]
    if all(f.exists() for f in files):
        return [np.fromfile(f, dtype="<f4").reshape(n, d) for f in files]
    return ca.sae_like_pair(n, n, d, seed=seed)


def align():
    n = int(os.environ.get("CONCORD_BENCH_ALIGN_N", 16384))
    if n == 0:
        return
    encoder = int(os.environ.get("CONCORD_BENCH_ALIGN_ENCODER", 1)) != 0
    kinds = (("dec", 2), ("enc", 3)) if encoder else (("dec", 2),)
    case = f"sae-like {n}x{n}, d {d}, {'decoder + encoder' if encoder else 'decoder only'}"
    total, notes = 0.0, []
    for name, seed in kinds:
        a, b = sae_like(name, seed, n)
        t = time.perf_counter()
        m = ca.match(a, b)
        total += time.perf_counter() - t
        notes.append(f"{name}: optimal {m.optimal}, mean cos {m.mean_cos:.4f}")
    record("align", case, f"{IMPL}: match per kind (MMCS + certified matching)", total, "; ".join(notes))


def acceptance():
    from scipy.optimize import linear_sum_assignment

    n = 4096
    a, b = ca.sae_like_pair(n, n, d, seed=3)
    case = f"sae-like {n}x{n}, d {d}, decoder only"

    def scipy_match():
        c = (a @ b.T).astype(np.float64)
        r, s = linear_sum_assignment(c, maximize=True)
        return float(c[r, s].sum())

    t_peer, best = median_time(scipy_match, 3)
    record("align", case, "numpy product + scipy linear_sum_assignment", t_peer, "median of 3", peer=True)
    t, m = median_time(lambda: ca.match(a, b), 3)
    gap = abs(m.objective - best) / abs(best)
    record(
        "align",
        case,
        f"{IMPL}: match",
        t,
        f"median of 3; {m.method}, optimal {m.optimal}; objective {m.objective:.6f}, scipy's "
        f"{best:.6f} (relative gap {gap:.1e})",
    )


def correlation():
    tokens = int(os.environ.get("CONCORD_BENCH_CORR_TOKENS", 65536))
    nf = int(os.environ.get("CONCORD_BENCH_CORR_N", 4096))
    if tokens == 0 or nf == 0:
        return
    mats = load_csr_pair(data, tokens, nf, "align_py")
    if mats is None:
        return
    a, b = mats
    t, r = median_time(lambda: ca.correlate(a, b), 5)
    record(
        "correlation",
        f"{tokens} tokens, {nf} x {nf} features, L0 32",
        f"{IMPL}: correlate (scipy CSR input)",
        t,
        f"median of 5; a to b {r['a_to_b']:.4f}, b to a {r['b_to_a']:.4f}",
    )


if __name__ == "__main__":
    mmcs()
    correlation()
    acceptance()
    align()
