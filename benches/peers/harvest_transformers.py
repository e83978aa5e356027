"""Peer for the harvest benchmark: transformers' eager forward, truncated at the hooked depth.

Measures tokens/s of `transformers` on batches of 16 x 256 tokens with 2 threads (as the
project's harvest runs), for SmolLM2-135M up to `blocks.6` (the first 7 decoder layers) and
MiniLM-L6 up to `blocks.5` (all 6 layers), in fp32 and bf16. The text is the Shakespeare corpus,
packed as the study does (EOS-joined for SmolLM2; [CLS] + 255 tokens for MiniLM).

    .venv/bin/python benches/peers/harvest_transformers.py [--iters 4] [--threads 2] [--attn sdpa|eager]

Prints one JSON line per (model, dtype): {"model", "dtype", "tokens_per_s",
"products_tokens_per_s", "fraction_of_products", "attention_tokens_per_s", "bound_tokens_per_s",
"bound_workers_tokens_per_s"}: the best of `--iters` rounds of the forward and, interleaved with
it, of the same blocks' matrix products alone and of their attention alone (so a loaded machine
hurts all alike); the bounds are the rates if nothing but those products and that attention took
time, on all threads at once and as one-thread workers on every thread.
"""

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "data" / "cache" / "models"
CORPUS = ROOT / "data" / "cache" / "corpus" / "shakespeare.jsonl"
BATCH, SEQ = 16, 256


def packed_ids(tok, n_windows, causal):
    ids = []
    need = n_windows * SEQ
    for line in CORPUS.open():
        text = json.loads(line)["text"]
        if causal:
            ids.append(tok.eos_token_id)
        ids.extend(tok(text, add_special_tokens=False)["input_ids"])
        if not causal:
            ids.append(tok.sep_token_id)
        if len(ids) >= need:
            break
    if causal:
        return torch.tensor(ids[:need]).reshape(n_windows, SEQ)
    body = torch.tensor(ids[: n_windows * (SEQ - 1)]).reshape(n_windows, SEQ - 1)
    return torch.cat([torch.full((n_windows, 1), tok.cls_token_id), body], dim=1)


def block_products(config, name):
    """The `(in, out)` shapes of one block's matrix products."""
    d, m = config.hidden_size, config.intermediate_size
    if name.startswith("smollm2"):
        kv = config.num_key_value_heads * (d // config.num_attention_heads)
        return [(d, d), (d, kv), (d, kv), (d, d), (d, m), (d, m), (m, d)]
    return [(d, d), (d, d), (d, d), (d, d), (d, m), (m, d)]


def attention_shape(config):
    """`(heads, head_dim)` of the model's attention."""
    heads = config.num_attention_heads
    return heads, config.hidden_size // heads


def bench(name, model, ids, dtype, iters, depth, quiet=False):
    """Best of `iters` rounds of the forward and, interleaved, of the products alone.

    Also times the blocks' attention alone (`scaled_dot_product_attention` on the same
    shapes, causal for the decoder), and the products plus that attention on one thread: the
    work of one harvest worker when everything else in the forward is free. Twice that rate is
    the most two one-thread workers could reach with libtorch's products and attention."""
    model = model.to(dtype).eval()
    xs = [(torch.randn(BATCH * SEQ, i, dtype=dtype), torch.randn(o, i, dtype=dtype))
          for i, o in block_products(model.config, name)]
    heads, hd = attention_shape(model.config)
    q, k, v = (torch.randn(BATCH, heads, SEQ, hd, dtype=dtype) for _ in range(3))
    causal = name.startswith("smollm2")

    def products():
        for _ in range(depth):
            for x, w in xs:
                torch.nn.functional.linear(x, w)

    def attention():
        for _ in range(depth):
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def timed(f):
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0

    best_fwd = best_mm = best_att = float("inf")
    with torch.inference_mode():
        model(input_ids=ids[:BATCH], attention_mask=torch.ones_like(ids[:BATCH]))  # warm-up
        products()
        attention()
        for i in range(iters):
            b = ids[(i % (len(ids) // BATCH)) * BATCH :][:BATCH]
            best_fwd = min(best_fwd, timed(lambda: model(input_ids=b, attention_mask=torch.ones_like(b))))
            best_mm = min(best_mm, timed(products))
            best_att = min(best_att, timed(attention))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        best_one = float("inf")
        for _ in range(max(2, iters // 2)):
            best_one = min(best_one, timed(products) + timed(attention))
        torch.set_num_threads(threads)
    tokens = BATCH * SEQ
    result = {"model": name, "dtype": str(dtype).removeprefix("torch."), "tokens_per_s": round(tokens / best_fwd),
              "products_tokens_per_s": round(tokens / best_mm), "fraction_of_products": round(best_mm / best_fwd, 3),
              "attention_tokens_per_s": round(tokens / best_att),
              "bound_tokens_per_s": round(tokens / (best_mm + best_att)),
              "bound_workers_tokens_per_s": round(threads * tokens / best_one)}
    if not quiet:
        print(json.dumps(result), flush=True)
    return result


def main():
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="smollm2-135m,minilm-l6")
    # transformers' default attention (sdpa) is the stronger peer; `eager` is its Python attention.
    ap.add_argument("--attn", default="sdpa")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        for dtype in (torch.float32, torch.bfloat16):
            if name == "smollm2-135m":
                folder, gguf = MODELS / name, "SmolLM2-135M-Instruct.Q4_1.gguf"
                tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
                lm = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, dtype=torch.float32,
                                                          attn_implementation=args.attn)
                model = lm.model
                model.layers = model.layers[:7]  # blocks.0 .. blocks.6
                ids = packed_ids(tok, BATCH * 2, causal=True)
            else:
                folder = MODELS / name
                tok = AutoTokenizer.from_pretrained(str(folder))
                model = AutoModel.from_pretrained(str(folder), dtype=torch.float32, attn_implementation=args.attn)
                ids = packed_ids(tok, BATCH * 2, causal=False)
            bench(name, model, ids, dtype, args.iters, 7 if name.startswith("smollm2") else 6)


if __name__ == "__main__":
    main()
