"""Training benchmark: the whole `concord train` command against a plain PyTorch loop.

A store of SmolLM2-135M's `blocks.6.hook_resid_post` (d = 576) is harvested once. For each case
our rate is 2N / (t(3N) - t(N)) of the release `concord train` reading that store at its
defaults (batch 2048, shuffled sequences, checkpoints every 25 steps), so start-up cancels. N is
32,768 tokens (16 steps) by default, so the difference covers steps 17-48: a ReLU SAE's codes are
dense for its first ~20 steps and then settle (docs/TRAINING.md), and a rate taken over the first
few steps would measure only that transient. The
peer is `train_torch.py` (autograd, Adam, same math, same threads, batch 2048) run right after.

Cases (seconds per 65,536 training tokens are recorded):
- `relu-l1-faithful` at ratios 4, 8, 32, each on its own;
- `topk` (k = 32) at ratios 8 and 32 with the sparse decoder kernels (the default) and with
  them off (`--sparse-max-density 0`): what TopK gains from a sparse decoder;
- the grid: ratios 4, 8, 32 in one pass over the store against the sum of the three runs
  one by one.

    CONCORD_BIN=target/release/concord python benches/peers/train_bench.py [--tokens N]
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import run

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
UNIT = 65536
HOOK = "blocks.6.hook_resid_post"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=int(os.environ.get("CONCORD_BENCH_TRAIN_TOKENS", 32768)))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.tokens <= 0:
        return
    n = args.tokens
    binary = Path(os.environ.get("CONCORD_BIN", ROOT / "target" / "release" / "concord"))
    python = os.environ.get("CONCORD_PYTHON", "python3")
    results = Path(os.environ.get("CONCORD_BENCH_RESULTS", ROOT / "target" / "bench-results"))
    results.mkdir(parents=True, exist_ok=True)
    out = results / "train.jsonl"

    def record(case, impl, seconds_per_token, peer, note=""):
        line = {"group": "train", "case": case, "impl": impl, "seconds": UNIT * seconds_per_token,
                "peer": peer, "note": note}
        with out.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)

    with tempfile.TemporaryDirectory(prefix="concord-train-bench-") as tmp:
        tmp = Path(tmp)
        store = tmp / "store"
        corpus = ROOT / "data" / "cache" / "corpus" / "shakespeare.jsonl"
        run([str(binary), "harvest", "--model", "smollm2-135m", "--hooks", HOOK, "--corpus", str(corpus),
             "--out", str(store), "--tokens", str(4 * n)])
        acts = str(store / HOOK)

        def ours(arch, ratios, extra=()):
            """Seconds per token of `concord train` from an N and a 3N run."""
            times = []
            for tokens in (n, 3 * n):
                dest = tmp / "saes"
                shutil.rmtree(dest, ignore_errors=True)
                times.append(run([str(binary), "train", "--acts", acts, "--arch", arch,
                                  "--ratio", ",".join(map(str, ratios)), "--out", str(dest),
                                  "--tokens", str(tokens), *extra]))
                shutil.rmtree(dest, ignore_errors=True)
            return (times[1] - times[0]) / (2 * n)

        def torch_peer(arch, ratio, extra=()):
            res = subprocess.run([python, str(HERE / "train_torch.py"), "--arch", arch, "--ratios", str(ratio),
                                  "--threads", str(args.threads), *extra],
                                 check=True, capture_output=True, text=True)
            return 1.0 / json.loads(res.stdout.strip().splitlines()[-1])["tokens_per_s"]

        singles = {}
        for ratio in (4, 8, 32):
            case = f"relu-l1-faithful, d 576, ratio 1:{ratio}, batch 2048"
            t_ours = ours("relu-l1-faithful", [ratio])
            singles[ratio] = t_ours
            t_peer = torch_peer("relu-l1-faithful", ratio)
            record(case, "pytorch loop (autograd, Adam)", t_peer, True, f"{1 / t_peer:.0f} tokens/s")
            record(case, "concord train (whole command, 3N - N)", t_ours, False,
                   f"{1 / t_ours:.0f} tokens/s; N = {n}")

        case = "relu-l1-faithful, d 576, ratios 1:4 + 1:8 + 1:32, batch 2048"
        t_grid = ours("relu-l1-faithful", [4, 8, 32])
        one_by_one = sum(singles.values())
        record(case, "concord train, one command per ratio (sum)", one_by_one, True)
        record(case, "concord train, the grid in one pass", t_grid, False,
               f"{one_by_one / t_grid:.2f}x the three runs one by one")

        # bf16 products (AMX): ours against our own f32 step and PyTorch's autocast step.
        for ratio in (2, 8):
            case = f"relu-l1-faithful, d 576, ratio 1:{ratio}, batch 2048, bf16 products"
            t_f32 = singles.get(ratio) or ours("relu-l1-faithful", [ratio])
            t_bf16 = ours("relu-l1-faithful", [ratio], ["--compute-dtype", "bf16"])
            t_auto = torch_peer("relu-l1-faithful", ratio, ["--autocast"])
            record(case, "pytorch loop, bf16 autocast (autograd, Adam)", t_auto, True,
                   f"{1 / t_auto:.0f} tokens/s")
            record(case, "concord train, f32 (--compute-dtype f32)", t_f32, True,
                   f"{1 / t_f32:.0f} tokens/s")
            record(case, "concord train, bf16 (--compute-dtype bf16)", t_bf16, False,
                   f"{1 / t_bf16:.0f} tokens/s; {t_f32 / t_bf16:.2f}x our f32, {t_auto / t_bf16:.2f}x autocast")

        for ratio in (8, 32):
            case = f"topk k 32, d 576, ratio 1:{ratio}, batch 2048"
            t_peer = torch_peer("topk", ratio, ["--k", "32"])
            t_dense = ours("topk", [ratio], ["--k", "32", "--sparse-max-density", "0"])
            t_sparse = ours("topk", [ratio], ["--k", "32"])
            record(case, "pytorch loop (autograd, Adam)", t_peer, True, f"{1 / t_peer:.0f} tokens/s")
            record(case, "concord train (whole command, 3N - N)", t_sparse, False,
                   f"{1 / t_sparse:.0f} tokens/s; sparse decoder kernels")
            case += ": sparse against dense decoder"
            record(case, "concord train, dense decoder (--sparse-max-density 0)", t_dense, True,
                   f"{1 / t_dense:.0f} tokens/s")
            record(case, "concord train, sparse decoder (default)", t_sparse, False,
                   f"{1 / t_sparse:.0f} tokens/s")


if __name__ == "__main__":
    main()
