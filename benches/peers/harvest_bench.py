"""Harvest benchmark: the whole `concord harvest` command against `transformers`, side by side.

For each (model, depth, dtype) case, interleaved so that a loaded machine hurts both sides:
- ours: the release `concord harvest` at its defaults (batches of 16 x 256, packed, 2 threads
  as libtorch picks on this machine), one hook at the deepest block, run for N and for 3N
  tokens into fresh stores; the rate is 2N / (t(3N) - t(N)), so start-up (loading the model,
  tokenizer set-up) cancels. The fastest N and the fastest 3N run of `--rounds` each.
- the peer: `harvest_transformers.bench` (transformers' forward truncated at the same depth,
  same threads, same batches), which also times the blocks' matrix products alone and their
  attention alone.
- a bound, not a program: the rate of one-thread workers on every thread if nothing but the
  blocks' products and attention (libtorch's, as concord and transformers both use) took time.

Appends records to $CONCORD_BENCH_RESULTS/harvest.jsonl: seconds per 65,536 tokens for each
side and for the bound, with tokens/s and the fraction of the products-only time in the notes.

    CONCORD_BIN=target/release/concord python benches/peers/harvest_bench.py [--tokens N]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harvest_transformers as peer  # noqa: E402

ROOT = peer.ROOT
UNIT = 65536  # tokens per reported "seconds"
CASES = [
    # (model, hook, transformers depth, dtype)
    ("smollm2-135m", "blocks.6.hook_resid_post", 7, "float32"),
    ("minilm-l6", "blocks.5.hook_resid_post", 6, "float32"),
    ("smollm2-135m", "blocks.6.hook_resid_post", 7, "bfloat16"),
]


def concord_seconds(binary, model, hook, dtype, tokens, scratch):
    out = scratch / f"store-{tokens}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(binary), "harvest", "--model", model, "--hooks", hook,
           "--corpus", str(peer.CORPUS), "--out", str(out), "--tokens", str(tokens)]
    if dtype == "bfloat16":
        cmd += ["--dtype", "bf16", "--compute-dtype", "bf16"]
    env = dict(os.environ, CONCORD_PROGRESS="0")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=int(os.environ.get("CONCORD_BENCH_HARVEST_TOKENS", 16384)))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="run the cases whose model and dtype contain this, "
                    "e.g. 'smollm2-135m bfloat16'")
    args = ap.parse_args()
    if args.tokens <= 0:
        return
    binary = Path(os.environ.get("CONCORD_BIN", ROOT / "target" / "release" / "concord"))
    results = Path(os.environ.get("CONCORD_BENCH_RESULTS", ROOT / "target" / "bench-results"))
    results.mkdir(parents=True, exist_ok=True)
    out = results / "harvest.jsonl"

    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    n = args.tokens
    with tempfile.TemporaryDirectory(prefix="concord-harvest-bench-") as tmp:
        scratch = Path(tmp)
        for model, hook, depth, dtype in CASES:
            if not all(w in f"{model} {dtype}" for w in args.only.split()):
                continue
            # The fastest N run and the fastest 3N run, each over the rounds: the best of the
            # differences would favour a round whose N run happened to be slow.
            t1 = t3 = float("inf")
            best_peer = None
            for _ in range(args.rounds):
                t1 = min(t1, concord_seconds(binary, model, hook, dtype, n, scratch))
                t3 = min(t3, concord_seconds(binary, model, hook, dtype, 3 * n, scratch))
            best_ours = (t3 - t1) / (2 * n)
            folder = peer.MODELS / model
            if model == "smollm2-135m":
                gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
                tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
                lm = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, dtype=torch.float32)
                net = lm.model
                net.layers = net.layers[:depth]
                ids = peer.packed_ids(tok, peer.BATCH * 2, causal=True)
            else:
                tok = AutoTokenizer.from_pretrained(str(folder))
                net = AutoModel.from_pretrained(str(folder), dtype=torch.float32)
                ids = peer.packed_ids(tok, peer.BATCH * 2, causal=False)
            best_peer = peer.bench(model, net, ids, getattr(torch, dtype), 4, depth, quiet=True)
            ours_rate = 1.0 / best_ours
            case = f"{model} to {hook.rsplit('.', 1)[0]}, {dtype}, batches 16x256"
            products = best_peer["products_tokens_per_s"]
            bound = best_peer["bound_workers_tokens_per_s"]
            lines = [
                {"group": "harvest", "case": case, "impl": "transformers forward (sdpa, truncated)",
                 "seconds": UNIT / best_peer["tokens_per_s"], "peer": True,
                 "note": f"{best_peer['tokens_per_s']} tokens/s, {best_peer['tokens_per_s'] / products:.2f} of products-only"},
                {"group": "harvest", "case": case, "impl": "concord harvest (whole command, 3N - N)",
                 "seconds": UNIT * best_ours, "peer": False,
                 "note": f"{ours_rate:.0f} tokens/s, {ours_rate / products:.2f} of products-only "
                         f"({products} tokens/s); N = {n}"},
                # Not a program: the ceiling of any harvest built on libtorch's products and
                # attention, as concord runs them (one-thread workers on every thread).
                {"group": "harvest", "case": case,
                 "impl": "bound: products + attention alone (libtorch, one-thread workers)",
                 "seconds": UNIT / bound, "peer": False,
                 "note": f"{bound} tokens/s; concord reaches {ours_rate / bound:.2f} of it, "
                         f"transformers {best_peer['tokens_per_s'] / bound:.2f}"},
            ]
            with out.open("a") as f:
                for line in lines:
                    f.write(json.dumps(line) + "\n")
            print(json.dumps(lines), flush=True)


if __name__ == "__main__":
    main()
