"""Makes the alignment crate's numerical goldens with numpy and scipy.

Run from the repository root:
    .venv/bin/python crates/concord-align/tests/goldens/make_goldens.py
It writes goldens.json next to this file. Everything is seeded; inputs are stored in the
file so the Rust tests read the same numbers.
"""

import json
import pathlib

import numpy as np
from scipy import integrate
from scipy.optimize import linear_sum_assignment

rng = np.random.default_rng(20261125)
out = {}


def unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


cases = []
for name, (n_a, n_b, d) in {"square": (24, 24, 8), "tall": (31, 17, 6), "wide": (13, 40, 5)}.items():
    a = rng.standard_normal((n_a, d)).astype(np.float32)
    b = rng.standard_normal((n_b, d)).astype(np.float32)
    # Some shared directions so that the matching is not all noise.
    k = min(n_a, n_b) // 2
    b[:k] = a[:k] + 0.3 * rng.standard_normal((k, d)).astype(np.float32)
    an = unit_rows(a.astype(np.float64))
    bn = unit_rows(b.astype(np.float64))
    c = an @ bn.T
    rows, cols = linear_sum_assignment(c, maximize=True)
    cases.append({
        "name": name, "n_a": n_a, "n_b": n_b, "d": d,
        "a": a.ravel().tolist(), "b": b.ravel().tolist(),
        "mmcs_a_to_b": float(c.max(axis=1).mean()),
        "mmcs_b_to_a": float(c.max(axis=0).mean()),
        "objective": float(c[rows, cols].sum()),
        "pairs": [[int(r), int(s)] for r, s in zip(rows, cols)],
    })
out["matching"] = cases


def expected_max_cos(d, n):
    # E[max] = 1 - int_{-1}^{1} F(t)^n dt with the density of one coordinate of a uniform
    # unit vector, f(t) proportional to (1 - t^2)^((d - 3) / 2).
    from scipy.special import betainc
    def cdf(t):
        # P(T <= t) = I_{(1+t)/2}((d-1)/2, (d-1)/2).
        return betainc((d - 1) / 2, (d - 1) / 2, (1 + t) / 2)
    val, _ = integrate.quad(lambda t: cdf(t) ** n, -1, 1, limit=500, points=[0.0])
    return 1 - val


out["expected_max_cos"] = [
    {"d": d, "n": n, "value": expected_max_cos(d, n)}
    for d, n in [(8, 10), (64, 1000), (512, 16384), (768, 4096)]
]

# Activations: tokens x features, sparse nonnegative (ReLU-like), with correlated pairs.
t, n_a, n_b = 200, 12, 9
base = rng.standard_normal((t, 6))
acts_a = np.maximum(0, base @ rng.standard_normal((6, n_a)) - 1.0)
acts_b = np.maximum(0, base @ rng.standard_normal((6, n_b)) - 1.0)
acts_a[:, 3] = 0.0  # a dead feature on each side
acts_b[:, 5] = 0.0
acts_a = acts_a.astype(np.float32)
acts_b = acts_b.astype(np.float32)


def pearson_max(x, y):
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    ax = x.std(axis=0) > 0
    ay = y.std(axis=0) > 0
    xs = (x[:, ax] - x[:, ax].mean(0)) / x[:, ax].std(0)
    ys = (y[:, ay] - y[:, ay].mean(0)) / y[:, ay].std(0)
    r = xs.T @ ys / x.shape[0]
    return float(r.max(axis=1).mean()), float(r.max(axis=0).mean())


def study_zscore(small, big, eps=1e-5):
    # The study's compute_max_average_correlation, in float64 numpy.
    s = (small - small.mean(0, keepdims=True)) / (small.std(0, ddof=1, keepdims=True) + eps)
    b = (big - big.mean(0, keepdims=True)) / (big.std(0, ddof=1, keepdims=True) + eps)
    cov = s.T @ b
    den = np.sqrt((s ** 2).sum(0, keepdims=True).T * (b ** 2).sum(0, keepdims=True))
    r = cov / (den + eps)
    r = np.where(r == 0, -2000, r)
    m = r.max(axis=1)
    return float(m[m != -2000].mean())


def study_uncentred(small, big, eps=1e-5):
    cov = small.T @ big
    den = np.sqrt((small ** 2).sum(0, keepdims=True).T * (big ** 2).sum(0, keepdims=True))
    r = cov / (den + eps)
    r = np.where(r == 0, -2000, r)
    m = r.max(axis=1)
    return float(m[m != -2000].mean())


a64, b64 = acts_a.astype(np.float64), acts_b.astype(np.float64)
ab, ba = pearson_max(a64, b64)
prompts = [(0, 120), (120, 200)]
out["correlation"] = {
    "tokens": t, "n_a": n_a, "n_b": n_b,
    "a": acts_a.ravel().tolist(), "b": acts_b.ravel().tolist(),
    "pearson_a_to_b": ab, "pearson_b_to_a": ba,
    "prompts": prompts,
    "study_zscore": float(np.mean([study_zscore(a64[s:e], b64[s:e]) for s, e in prompts])),
    "study_uncentred": float(np.mean([study_uncentred(a64[s:e], b64[s:e]) for s, e in prompts])),
}

path = pathlib.Path(__file__).with_name("goldens.json")
path.write_text(json.dumps(out) + "\n")
print(f"wrote {path}")
