"""Alignment on real SAEs: pairs of SAEs that `concord train` makes from a real model.

A store of SmolLM2-135M's `blocks.6.hook_resid_post` (d = 576) is harvested, and two pairs
of SAEs at 1:8 (4,608 features) are trained on it, each pair in one pass and differing only
in the init seed: `relu-l1-faithful` (the study's SAE) and `topk` (k = 32).
`CONCORD_BENCH_REAL_TOKENS` training tokens (default 131,072 = 64 steps; 0 skips this script).
Then, side by side:

- weight space, each pair: the whole `concord align --a A --b B` command at its defaults
  (MMCS both ways and the certified matching, decoders and encoders; fastest of 3 runs)
  against numpy's MMCS plus scipy's `linear_sum_assignment` on the same weights;
- activation space: both SAEs' codes on the store's tokens are computed here with numpy
  (f32, as the SAEs encode) and written as CSR files; our streamed centred Pearson
  (`correlate`, both ways, through the `correlate_files` example of concord-align, batches
  of 2,048 tokens, median of 5) against scipy's sparse `A^T B` alone on the same codes
  (median of 5, or 3 for the dense codes). The TopK pair's codes on 65,536 tokens (L0 32);
  the ReLU pair's on 4,096 (these SAEs are short-trained and their codes dense: L0 ~800).
  For the dense codes, also a bound that is not a program: libtorch's dense f32 product of
  the same codes, what any method that multiplies every pair cannot beat.

Appends records to $CONCORD_BENCH_RESULTS/align-real.jsonl (groups `align` and
`correlation`).

    CONCORD_BIN=target/release/concord \\
    CONCORD_CORRELATE_FILES=target/release/examples/correlate_files \\
    python benches/peers/align_real.py
"""

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import run

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HOOK = "blocks.6.hook_resid_post"


def main():
    tokens = int(os.environ.get("CONCORD_BENCH_REAL_TOKENS", 131072))
    if tokens <= 0:
        return
    try:
        import pyarrow.parquet as pq
        import scipy.sparse as sp
        from safetensors.numpy import load_file
        from scipy.optimize import linear_sum_assignment
    except ImportError as e:
        print(f"peer: align_real skipped ({e})")
        return
    binary = str(Path(os.environ.get("CONCORD_BIN", ROOT / "target" / "release" / "concord")))
    kernel = Path(os.environ.get("CONCORD_CORRELATE_FILES",
                                 ROOT / "target" / "release" / "examples" / "correlate_files"))
    results = Path(os.environ.get("CONCORD_BENCH_RESULTS", ROOT / "target" / "bench-results"))
    results.mkdir(parents=True, exist_ok=True)
    out = results / "align-real.jsonl"

    def record(group, case, impl, seconds, peer, note=""):
        line = {"group": group, "case": case, "impl": impl, "seconds": seconds, "peer": peer,
                "note": note}
        with out.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)

    corpus = ROOT / "data" / "cache" / "corpus" / "shakespeare.jsonl"
    with tempfile.TemporaryDirectory(prefix="concord-align-real-") as tmp:
        tmp = Path(tmp)
        store = tmp / "store"
        run([binary, "harvest", "--model", "smollm2-135m", "--hooks", HOOK, "--corpus",
             str(corpus), "--out", str(store), "--tokens", str(tokens)])
        pairs = {}
        for arch, extra in (("relu-l1-faithful", []), ("topk", ["--k", "32"])):
            dest = tmp / arch
            run([binary, "train", "--acts", str(store / HOOK), "--arch", arch, "--ratio", "8",
                 "--init-seed", "0,1", "--out", str(dest), "--tokens", str(tokens), *extra])
            pairs[arch] = sorted(p for p in dest.iterdir() if p.is_dir())

        weights = {}
        for arch, (a, b) in pairs.items():
            report = tmp / f"{arch}.json"
            t_ours = min(run([binary, "align", "--a", str(a), "--b", str(b), "--out", str(report)])
                         for _ in range(3))
            got = json.loads(report.read_text())
            wa = load_file(str(a / "sae_weights.safetensors"))
            wb = load_file(str(b / "sae_weights.safetensors"))
            weights[arch] = (wa, wb)
            n_sae, d = wa["W_dec"].shape
            case = (f"real SAEs {n_sae}x{n_sae}, d {d} (SmolLM2 {HOOK}, {arch} 1:8, init seeds 0 "
                    f"and 1, {tokens} tokens), decoder + encoder")
            record("align", case, "concord align (whole command)", t_ours, False,
                   f"decoder mean cos {got['matching']['decoder']['mean_cos']:.4f}, "
                   f"optimal {got['matching']['decoder']['optimal']}")
            total, notes = 0.0, []
            for kind, rows in (("decoder", lambda w: w["W_dec"]), ("encoder", lambda w: w["W_enc"].T)):
                x, y = (rows(w).astype(np.float32) for w in (wa, wb))
                x = x / np.linalg.norm(x, axis=1, keepdims=True)
                y = y / np.linalg.norm(y, axis=1, keepdims=True)
                t = time.perf_counter()
                c = x @ y.T
                c.max(axis=1).mean(), c.max(axis=0).mean()
                t_mmcs = time.perf_counter() - t
                t = time.perf_counter()
                r, s = linear_sum_assignment(c.astype(np.float64), maximize=True)
                t_lsa = time.perf_counter() - t
                total += t_mmcs + t_lsa
                notes.append(f"{kind}: mmcs {t_mmcs:.2f} s, lsa {t_lsa:.2f} s, mean cos {c[r, s].mean():.4f}")
            record("align", case, "numpy MMCS + scipy linear_sum_assignment", total, True,
                   "; ".join(notes))

        if not kernel.exists():
            print(f"peer: {kernel} not built; real-code correlation skipped")
            return
        table = pq.read_table(sorted((store / HOOK).glob("part-*.parquet")), columns=["act"])
        acts = np.stack(table.column("act").to_numpy(zero_copy_only=False)).astype(np.float32)
        for arch, n_tokens, reps in (("topk", 65536, 5), ("relu-l1-faithful", 4096, 3)):
            xs = acts[:n_tokens]
            codes = []
            for w in weights[arch]:
                pre = np.maximum((xs - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0.0, dtype=np.float32)
                if arch == "topk":
                    keep = np.argpartition(-pre, 32, axis=1)[:, :32]
                    z = np.zeros_like(pre)
                    np.put_along_axis(z, keep, np.take_along_axis(pre, keep, 1), 1)
                    pre = z
                c = sp.csr_matrix(pre)
                c.sort_indices()
                codes.append(c)
            files = tmp / f"codes-{arch}"
            files.mkdir()
            for side, c in zip("ab", codes):
                c.indptr.astype("<u8").tofile(files / f"{side}_indptr.u64")
                c.indices.astype("<u4").tofile(files / f"{side}_indices.u32")
                c.data.astype("<f4").tofile(files / f"{side}_values.f32")
            n_sae = codes[0].shape[1]
            ours = json.loads(subprocess.run(
                [str(kernel), str(files), str(n_sae), str(n_sae), "5"],
                check=True, capture_output=True, text=True).stdout)
            ca, cb = codes
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                ca.T @ cb
                times.append(time.perf_counter() - t)
            l0 = (ca.nnz / ca.shape[0], cb.nnz / cb.shape[0])
            case = (f"real {arch} 1:8 SAEs' codes (SmolLM2 {HOOK}), {xs.shape[0]} tokens, "
                    f"{n_sae} x {n_sae} features, L0 {l0[0]:.0f} and {l0[1]:.0f}")
            record("correlation", case, "concord streamed Pearson (both ways)", ours["median"], False,
                   f"{ours['products'] / ours['median'] / 1e6:.0f} M products/s "
                   f"({ours['products']} products); a to b {ours['a_to_b']:.4f}, "
                   f"b to a {ours['b_to_a']:.4f}")
            record("correlation", case, "scipy sparse A^T B (the co-occurrence product alone)",
                   float(np.median(times)), True, f"median of {reps}")
            if arch != "topk":
                dense_bound(record, case, ca, cb, reps)


def dense_bound(record, case, ca, cb, reps):
    """Not a program: libtorch's dense f32 product of the same codes (both as dense arrays,
    on all cores), the ceiling of anything that multiplies every pair: at
    these densities a sparse method has no shortcut left."""
    try:
        import torch
    except ImportError:
        return
    da, db = (torch.from_numpy(c.toarray()) for c in (ca, cb))
    da.T @ db  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        da.T @ db
        times.append(time.perf_counter() - t)
    seconds = float(np.median(times))
    flops = 2.0 * da.shape[0] * da.shape[1] * db.shape[1]
    record("correlation", case, "bound: dense f32 A^T B (libtorch sgemm, all pairs)", seconds, False,
           f"median of {reps}; {flops / seconds / 1e9:.0f} GFLOP/s; "
           f"density {ca.nnz / np.prod(ca.shape):.3f} and {cb.nnz / np.prod(cb.shape):.3f}")


if __name__ == "__main__":
    main()
