"""Peers of benches/align.rs: numpy MMCS, scipy's exact matching, FAISS k=1 search.

Reads the SAE-like dictionaries written by the Rust bench (raw little-endian f32) and
appends JSON lines {"group","case","impl","seconds","peer":true,"note"} to
$CONCORD_BENCH_RESULTS/align-peers.jsonl, with the same group and case names as ours.
"""

import json
import os
import pathlib
import time

import numpy as np

from common import load_csr_pair

results = pathlib.Path(os.environ["CONCORD_BENCH_RESULTS"])
out = results / "align-peers.jsonl"
n = int(os.environ.get("CONCORD_BENCH_ALIGN_N", 16384))
d = int(os.environ.get("CONCORD_BENCH_D", 512))
n_mmcs = int(os.environ.get("CONCORD_BENCH_MMCS_N", 4096))
data = results / "align-data"


def record(group, case, impl, seconds, note=""):
    line = {"group": group, "case": case, "impl": impl, "seconds": seconds, "peer": True, "note": note}
    with out.open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(f"peer: {group} / {case} / {impl}: {seconds:.4f} s {note}", flush=True)


def load(name):
    x = np.fromfile(data / f"{name}_{n}x{d}.f32", dtype="<f4").reshape(n, d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_mmcs(a, b):
    c = a @ b.T
    return float(c.max(axis=1).mean()), float(c.max(axis=0).mean()), c


def main():
    try:
        import scipy
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        scipy = None
    try:
        import faiss
    except ImportError:
        faiss = None

    # mmcs group: numpy's one product plus the two max reductions, at the mmcs size.
    if n_mmcs == 0 or n == 0:
        return
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n_mmcs, d), dtype=np.float32)
    b = rng.standard_normal((n_mmcs, d), dtype=np.float32)
    case = f"{n_mmcs}x{n_mmcs}, d {d}"
    t = time.perf_counter()
    numpy_mmcs(a, b)
    record("mmcs", case, "numpy (product + max both ways)", time.perf_counter() - t)
    if faiss is not None:
        t = time.perf_counter()
        for x, y in ((a, b), (b, a)):
            index = faiss.IndexFlatIP(d)
            index.add(y)
            index.search(x, 1)
        record("mmcs", case, "faiss IndexFlatIP k=1 (both ways)", time.perf_counter() - t)

    # align group: numpy MMCS + scipy matching, decoder and encoder pairs (decoders only with
    # CONCORD_BENCH_ALIGN_ENCODER=0, as on the Rust side).
    if not (data / f"dec_a_{n}x{d}.f32").exists():
        print(f"peer: no align data for n = {n} in {data}; run the Rust bench first")
        return
    encoder = int(os.environ.get("CONCORD_BENCH_ALIGN_ENCODER", 1)) != 0
    kinds = ("dec", "enc") if encoder else ("dec",)
    case = f"sae-like {n}x{n}, d {d}, {'decoder + encoder' if encoder else 'decoder only'}"
    total, notes = 0.0, []
    for kind in kinds:
        a, b = load(f"{kind}_a"), load(f"{kind}_b")
        t = time.perf_counter()
        ab, ba, c = numpy_mmcs(a.astype(np.float32), b.astype(np.float32))
        t_mmcs = time.perf_counter() - t
        total += t_mmcs
        if scipy is not None:
            t = time.perf_counter()
            r, s = linear_sum_assignment(c.astype(np.float64), maximize=True)
            t_lsa = time.perf_counter() - t
            total += t_lsa
            notes.append(f"{kind}: mmcs {t_mmcs:.1f} s, lsa {t_lsa:.1f} s, mean cos {c[r, s].mean():.4f}")
        del c
    record("align", case, "numpy MMCS + scipy linear_sum_assignment", total, "; ".join(notes))


def median_time(f, runs=5):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def pearson_summary(a, b):
    """The same summary as ours: centred Pearson from the sparse product and the moments,
    mean of row maxima both ways over live (non-constant) features."""
    t = a.shape[0]
    s = (a.T @ b).toarray().astype(np.float64)
    stats = []
    for x in (a, b):
        m = np.asarray(x.sum(axis=0), dtype=np.float64).ravel() / t
        q = np.asarray(x.multiply(x).sum(axis=0), dtype=np.float64).ravel() / t
        var = q - m * m
        sd = np.where(var > 1e-12 * q, np.sqrt(np.maximum(var, 0.0)), 0.0)
        stats.append((m, sd))
    (ma, sa), (mb, sb) = stats
    la, lb = sa > 0, sb > 0
    rho = (s[np.ix_(la, lb)] / t - np.outer(ma[la], mb[lb])) / np.outer(sa[la], sb[lb])
    return float(rho.max(axis=1).mean()), float(rho.max(axis=0).mean())


def correlation():
    try:
        import scipy.sparse  # noqa: F401 (the peer needs scipy)
    except ImportError:
        return
    tokens = int(os.environ.get("CONCORD_BENCH_CORR_TOKENS", 65536))
    nf = int(os.environ.get("CONCORD_BENCH_CORR_N", 4096))
    if tokens == 0 or nf == 0:
        return
    mats = load_csr_pair(data, tokens, nf, "peer")
    if mats is None:
        return
    a, b = mats
    case = f"{tokens} tokens, {nf} x {nf} features, L0 32"
    record(
        "correlation",
        case,
        "scipy sparse A^T B (the co-occurrence product alone)",
        median_time(lambda: a.T @ b),
        "median of 5",
    )
    if nf <= 8192:
        ab, ba = pearson_summary(a, b)
        record(
            "correlation",
            case,
            "scipy A^T B + numpy dense Pearson (both ways)",
            median_time(lambda: pearson_summary(a, b)),
            f"median of 5; a to b {ab:.4f}, b to a {ba:.4f}",
        )


if __name__ == "__main__":
    correlation()
    main()
