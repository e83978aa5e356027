"""Tests of the `concord_align` Python module against numpy, scipy and the `concord` binary.

Run by `cargo xtask test` after installing the package (`pip install crates/concord-align-py`)
into a fresh virtual environment with numpy, scipy and pytest. `compare` is checked against
`concord align` itself: the binary named by $CONCORD_BIN (xtask passes the one `cargo test`
built), else target/debug/concord or target/release/concord.
"""

import json
import os
import pathlib
import struct
import subprocess
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment

import concord_align as ca

ROOT = pathlib.Path(__file__).resolve().parents[3]


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def scipy_objective(a, b):
    """The optimum of scipy's exact solver on the float64 cosines of the unit rows."""
    c = unit(a) @ unit(b).T
    r, s = linear_sum_assignment(c, maximize=True)
    return c, float(c[r, s].sum())


def check_matching(m, a, b):
    """`m` is a one-to-one matching of the smaller side whose cosines are the true ones, and
    its objective is scipy's optimum to 1e-6 (relative)."""
    c, best = scipy_objective(a, b)
    k = min(len(a), len(b))
    assert len(m) == k and m.rows.shape == m.cols.shape == m.cosines.shape == (k,)
    assert m.rows.dtype == np.int64 and m.cols.dtype == np.int64 and m.cosines.dtype == np.float32
    assert len(set(m.rows.tolist())) == k and len(set(m.cols.tolist())) == k
    assert np.all(np.diff(m.rows) > 0)
    np.testing.assert_allclose(m.cosines, c[m.rows, m.cols], atol=2e-6)
    assert abs(m.objective - best) <= 1e-6 * abs(best), (m.objective, best)
    assert m.mean_cos == pytest.approx(m.objective / k, rel=1e-12)
    assert m.optimal
    return c


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mmcs_is_numpys(dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 48)).astype(dtype) * 3.0
    b = rng.standard_normal((500, 48)).astype(dtype)
    a[7] = 0.0  # a zero row has cosine 0 with everything
    c = unit(a) @ unit(b).T
    ab, ba = ca.mmcs(a, b)
    assert ab == pytest.approx(c.max(axis=1).mean(), abs=1e-6)
    assert ba == pytest.approx(c.max(axis=0).mean(), abs=1e-6)
    # Strided views are read as the arrays they show.
    ab2, _ = ca.mmcs(np.asfortranarray(a), b)
    assert ab2 == pytest.approx(ab, abs=1e-7)


@pytest.mark.parametrize("n_a,n_b", [(200, 200), (150, 260), (260, 150)])
def test_match_is_scipys_on_random_dictionaries(n_a, n_b):
    rng = np.random.default_rng(n_a + n_b)
    a = rng.standard_normal((n_a, 32))
    b = rng.standard_normal((n_b, 32)).astype(np.float32)
    m = ca.match(a, b)
    check_matching(m, a, b)
    assert m.method == "dense"
    c = unit(a) @ unit(b).T
    assert m.mmcs[0] == pytest.approx(c.max(axis=1).mean(), abs=1e-6)


def test_match_is_scipys_on_a_4096_sae_like_pair():
    """The acceptance case: 4,096 x 4,096 at d 512, solved sparse and certified."""
    a, b = ca.sae_like_pair(4096, 4096, 512, seed=3)
    assert a.shape == b.shape == (4096, 512) and a.dtype == np.float32
    m = ca.match(a, b)
    assert m.method == "sparse"
    cert = m.certificate
    assert cert["gap_bound"] <= 1e-9 * abs(cert["primal"]) + 1e-12
    check_matching(m, a, b)
    # SAE-like: the shared features are found (cosines of the noisy copies near 0.85).
    assert (m.cosines > 0.5).mean() > 0.5


def test_sae_like_pairs_are_seeded():
    a1, b1 = ca.sae_like_pair(64, 80, 16, seed=5)
    a2, b2 = ca.sae_like_pair(64, 80, 16, seed=5)
    a3, _ = ca.sae_like_pair(64, 80, 16, seed=6)
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2) and not np.array_equal(a1, a3)
    np.testing.assert_allclose(np.linalg.norm(b1, axis=1), 1.0, atol=1e-6)


def dense_pearson(x, y):
    """Centred Pearson both ways as the crate defines it (population moments, live features
    only): mean of row maxima, and the best partner of each live feature."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    t = x.shape[0]
    mx, my = x.mean(0), y.mean(0)
    vx, vy = (x * x).mean(0) - mx * mx, (y * y).mean(0) - my * my
    lx = vx > 1e-12 * (x * x).mean(0)
    ly = vy > 1e-12 * (y * y).mean(0)
    cov = x.T @ y / t - np.outer(mx, my)
    rho = cov / np.outer(np.sqrt(np.where(lx, vx, 1)), np.sqrt(np.where(ly, vy, 1)))
    rho = rho[np.ix_(lx, ly)]
    return rho, lx, ly


def sparse_codes(tokens, n, density, seed):
    rng = np.random.default_rng(seed)
    m = sp.random(tokens, n, density=density, format="csr", random_state=rng, dtype=np.float32)
    m.data += 0.1
    return m


def test_correlate_is_numpys_pearson():
    a = sparse_codes(3000, 120, 0.05, 1)
    b = sparse_codes(3000, 90, 0.05, 2)
    # b shares a few of a's features, and one feature of b is never active.
    b = sp.hstack([b, a[:, :10] * 2.0, sp.csr_matrix((3000, 1), dtype=np.float32)]).tocsr()
    r = ca.correlate(a, b)
    rho, la, lb = dense_pearson(a.toarray(), b.toarray())
    assert r["tokens"] == 3000
    assert (r["alive_a"], r["dead_a"]) == (la.sum(), 120 - la.sum())
    assert (r["alive_b"], r["dead_b"]) == (lb.sum(), 101 - lb.sum())
    assert r["dead_b"] >= 1
    assert r["a_to_b"] == pytest.approx(rho.max(axis=1).mean(), abs=1e-6)
    assert r["b_to_a"] == pytest.approx(rho.max(axis=0).mean(), abs=1e-6)
    assert r["best_a"].shape == (120,) and r["best_rho_b"].shape == (101,)
    # Features 0..9 of a are copied into b (columns 90..99): they find each other.
    assert r["best_a"][:10].tolist() == list(range(90, 100))
    np.testing.assert_allclose(r["best_rho_a"][:10], 1.0, atol=1e-5)
    assert r["best_b"][100] == -1 and np.isnan(r["best_rho_b"][100])
    # Dense arrays, CSC and CSR with duplicate entries give the same result.
    dense = ca.correlate(a.toarray(), b.toarray().astype(np.float64))
    assert dense["a_to_b"] == pytest.approx(r["a_to_b"], abs=1e-12)
    assert ca.correlate(a.tocsc(), b)["b_to_a"] == pytest.approx(r["b_to_a"], abs=1e-12)
    coo = a.tocoo()
    dup = sp.csr_matrix(
        (np.concatenate([coo.data / 2, coo.data / 2]),
         (np.concatenate([coo.row, coo.row]), np.concatenate([coo.col, coo.col]))),
        shape=a.shape,
    )
    dup.has_canonical_format = False
    nnz = dup.nnz
    assert ca.correlate(dup, b)["a_to_b"] == pytest.approx(r["a_to_b"], abs=1e-6)
    assert dup.nnz == nnz, "the caller's matrix was changed"


def write_sae(folder, w_enc, w_dec, cfg_extra=None):
    """A SAELens-layout folder: cfg.json and sae_weights.safetensors (written by hand, so the
    test needs no safetensors package)."""
    folder.mkdir(parents=True)
    d_in, d_sae = w_enc.shape
    rng = np.random.default_rng(d_sae)
    tensors = {
        "W_enc": w_enc.astype(np.float32),
        "b_enc": rng.standard_normal(d_sae).astype(np.float32),
        "W_dec": w_dec.astype(np.float32),
        "b_dec": rng.standard_normal(d_in).astype(np.float32),
    }
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        raw = np.ascontiguousarray(t).astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(folder / "sae_weights.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    cfg = {"d_in": d_in, "d_sae": d_sae, "architecture": "standard", "dtype": "float32",
           "hook_name": "blocks.0.hook_resid_post", "model_name": "test", **(cfg_extra or {})}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return tensors


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    """Three SAELens folders of width 96: a and b of 2,304 features (5.3 M pairs: the sparse
    solver), c of 640 (families, dense)."""
    root = tmp_path_factory.mktemp("saes")
    d = 96
    dec_a, dec_b = ca.sae_like_pair(2304, 2304, d, seed=11)
    _, dec_c = ca.sae_like_pair(2304, 640, d, seed=12)
    rng = np.random.default_rng(0)
    out = {}
    for name, dec in (("a", dec_a), ("b", dec_b), ("c", dec_c)):
        dec = dec * rng.uniform(0.5, 2.0, (len(dec), 1)).astype(np.float32)
        enc = dec.T + 0.3 * rng.standard_normal(dec.T.shape).astype(np.float32)
        dec[5] = 0.0  # a dead feature: counted in zero_features
        out[name] = (root / name, write_sae(root / name, enc, dec))
    return out


def concord_bin():
    env = os.environ.get("CONCORD_BIN")
    if env:
        return pathlib.Path(env)
    for profile in ("debug", "release"):
        p = ROOT / "target" / profile / "concord"
        if p.exists():
            return p
    pytest.fail("no concord binary: set CONCORD_BIN or build it (cargo build -p concord-cli)")


def concord_align(a, b, tmp, *extra):
    out = tmp / "align.json"
    subprocess.run(
        [str(concord_bin()), "align", "--a", str(a), "--b", str(b), "--out", str(out), *extra],
        check=True,
    )
    return json.loads(out.read_text())


@pytest.mark.parametrize("pair,nulls", [(("a", "b"), 0), (("a", "c"), 2)])
def test_compare_is_concord_align(saes, tmp_path, pair, nulls):
    a, b = saes[pair[0]][0], saes[pair[1]][0]
    extra = ("--null", str(nulls)) if nulls else ()
    want = concord_align(a, b, tmp_path, *extra)
    got = ca.compare(str(a), str(b), null_seeds=nulls)
    assert got["seconds"] > 0
    del want["seconds"], got["seconds"]
    assert got == want
    m = got["matching"]["decoder"]
    assert m["optimal"] and len(m["shared_curve"]) == 21
    assert got["zero_features"]["decoder"] == {"a": 1, "b": 1}
    assert (got["families"] is None) == (pair == ("a", "b"))
    assert bool(got["null"]) == (nulls > 0)
    # Path objects name the folders as strings do.
    assert ca.compare(a, b, null_seeds=nulls)["mmcs"] == got["mmcs"]


@pytest.mark.parametrize("fmt,arch", [("dictionary-learning", "standard"), ("sparsify", "topk")])
def test_compare_reads_the_other_packages_files(saes, tmp_path, fmt, arch):
    """An SAE exported by `concord export` (sparsify's hook folder, dictionary_learning's
    ae.pt) compares as its SAELens folder does, and as `concord align` compares it."""
    _, t = saes["c"]
    src = tmp_path / "src"
    write_sae(src, t["W_enc"], t["W_dec"], {"architecture": arch, "k": 16} if arch == "topk" else None)
    out = tmp_path / "out"
    subprocess.run(
        [str(concord_bin()), "export", "--format", fmt, "--sae", str(src), "--out", str(out)],
        check=True,
    )
    path = out / "ae.pt" if fmt == "dictionary-learning" else out
    other = saes["a"][0]
    got = ca.compare(path, other)
    want = concord_align(path, other, tmp_path)
    del want["seconds"], got["seconds"]
    assert got == want
    ref = ca.compare(src, other)
    for key in ("mmcs", "matching", "families", "zero_features"):
        assert got[key] == ref[key], key
    assert np.array_equal(ca.load_sae(path)["W_dec"], t["W_dec"])


def test_compare_matches_scipy_on_the_decoders(saes):
    (a, ta), (b, tb) = saes["a"], saes["b"]
    got = ca.compare(a, b)
    _, best = scipy_objective(ta["W_dec"], tb["W_dec"])
    assert got["matching"]["decoder"]["mean_cos"] == pytest.approx(best / 2304, rel=1e-6)


def test_load_sae_returns_the_folders_arrays(saes):
    folder, t = saes["c"]
    s = ca.load_sae(folder)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert s[name].dtype == np.float32 and np.array_equal(s[name], t[name]), name
    assert s["threshold"] is None
    assert s["cfg"]["d_sae"] == 640 and s["cfg"]["hook_name"] == "blocks.0.hook_resid_post"


def test_bad_input_raises_the_crates_one_line_errors(tmp_path, saes):
    cases = [
        (lambda: ca.match(np.ones((3, 4)), np.ones((3, 5))),
         ValueError, "dimension mismatch: a has d = 4, b has d = 5"),
        (lambda: ca.mmcs(np.array([[1.0, np.nan]]), np.ones((2, 2))),
         ValueError, "a: non-finite value at row 0, column 1"),
        (lambda: ca.mmcs(np.ones((2, 2)), np.zeros((3, 2))),
         ValueError, "b: all 3 rows are zero: no feature has a direction"),
        (lambda: ca.mmcs(np.ones(3), np.ones((3, 3))),
         ValueError, "a: expected a 2-D float32 or float64 array, got a 1-D float64 array of shape (3,)"),
        (lambda: ca.match(np.ones((0, 3)), np.ones((2, 3))),
         ValueError, "a is empty (0 rows of width 3)"),
        (lambda: ca.correlate(sparse_codes(10, 4, 0.5, 0), sparse_codes(12, 4, 0.5, 1)),
         ValueError, "activation batch 0: 10 tokens for a but 12 for b"),
        (lambda: ca.correlate(sp.csr_matrix(np.eye(3, dtype=np.int64)), np.ones((3, 2))),
         ValueError, "codes_a: data is not float32 or float64"),
        (lambda: ca.correlate(np.array([[1.0, np.inf]]), np.ones((1, 2))),
         ValueError, "batch 0, token 0: feature 1 is not finite"),
        (lambda: ca.compare(tmp_path / "missing", saes["a"][0]),
         FileNotFoundError, f"cannot read SAE {tmp_path / 'missing'}: {tmp_path / 'missing'}: no such file or folder"),
        (lambda: ca.load_sae(tmp_path),
         ValueError, f"cannot read SAE {tmp_path}: "),
    ]
    for f, kind, text in cases:
        with pytest.raises(kind) as e:
            f()
        assert text in str(e.value), (str(e.value), text)
        assert "\n" not in str(e.value)
    # Widths differ: the folders are named.
    (tmp_path / "narrow").mkdir()
    write_sae(tmp_path / "narrow" / "s", np.ones((8, 16)), np.ones((16, 8)))
    with pytest.raises(ValueError, match=r"dimension mismatch: .*a has d_in = 96, .*s has d_in = 8"):
        ca.compare(saes["a"][0], tmp_path / "narrow" / "s")


def test_the_gil_is_released_while_matching():
    """Another Python thread keeps running while a match is being computed."""
    a, b = ca.sae_like_pair(4096, 4096, 256, seed=1)
    span, ticks = [], []

    def work():
        span.append(time.perf_counter())
        ca.match(a, b)
        span.append(time.perf_counter())

    t = threading.Thread(target=work)
    t.start()
    while t.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    t.join()
    start, end = span
    inside = [start] + [x for x in ticks if start < x < end] + [end]
    # Had the worker held the GIL through the call, this thread would have stopped for its
    # whole length: one gap as long as the call. Scheduling on a loaded machine leaves
    # shorter gaps.
    gap = max(np.diff(inside))
    assert len(inside) > 10 and gap < 0.5 * (end - start), (len(inside), gap, end - start)
