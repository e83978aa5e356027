"""Peer for the SAE training benchmark: a plain PyTorch loop of the same math as concord-train.

Trains `relu-l1-faithful` (the study's AnthropicSAE: untied, shift bias, decoder rows normalised
at use, MSE + l1 * mean L1, Adam lr 1e-3) or `topk` (unit-norm decoder with gradient
projection, AuxK off) with autograd, fp32 on CPU, on random rows, and prints one JSON line per
ratio: {"arch", "d", "ratio", "batch", "threads", "steps", "tokens_per_s"}.

Usage: train_torch.py [--arch relu-l1-faithful|topk] [--d 576] [--ratios 4,8,32]
                      [--batch 2048] [--steps 6] [--threads 2] [--k 32] [--autocast]

With --autocast the forward runs under `torch.autocast("cpu", torch.bfloat16)`: bf16 products,
fp32 weights, gradients and Adam, the usual mixed-precision recipe.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="relu-l1-faithful")
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--ratios", default="4,8,32")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--autocast", action="store_true",
                    help="bf16 autocast around the forward (fp32 weights and Adam): PyTorch's mixed precision")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d = args.d
    for ratio in [int(r) for r in args.ratios.split(",")]:
        n = ratio * d
        w_enc = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(n, d)))
        w_dec = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(n, d)))
        b_enc = torch.nn.Parameter(torch.zeros(n))
        b_dec = torch.nn.Parameter(torch.zeros(d))
        if args.arch == "topk":
            with torch.no_grad():
                w_dec.div_(w_dec.norm(dim=1, keepdim=True))
        opt = torch.optim.Adam([w_enc, w_dec, b_enc, b_dec], lr=1e-3)
        xs = [torch.randn(args.batch, d) for _ in range(2)]

        def forward(x):
            pre = (x - b_dec) @ w_enc.T + b_enc
            if args.arch == "topk":
                vals, idx = pre.relu().topk(args.k, dim=1, sorted=False)
                c = torch.zeros_like(pre).scatter(1, idx, vals)
                x_hat = c @ w_dec + b_dec
                return ((x_hat - x) ** 2).mean()
            c = F.relu(pre)
            x_hat = c @ F.normalize(w_dec, dim=1) + b_dec
            return ((x_hat - x) ** 2).mean() + 8e-4 * c.abs().sum(dim=1).mean()

        def step(x):
            # Autocast covers the forward only; the backward follows its casts.
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast):
                loss = forward(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.arch == "topk":
                with torch.no_grad():
                    w_dec.grad.sub_(w_dec * (w_dec.grad * w_dec).sum(dim=1, keepdim=True))
            opt.step()
            if args.arch == "topk":
                with torch.no_grad():
                    w_dec.div_(w_dec.norm(dim=1, keepdim=True))
            return loss.item()

        step(xs[0])  # warm-up
        t0 = time.perf_counter()
        for s in range(args.steps):
            step(xs[s % 2])
        dt = time.perf_counter() - t0
        print(json.dumps({"arch": args.arch, "d": d, "ratio": ratio, "batch": args.batch, "autocast": args.autocast,
                          "threads": args.threads, "steps": args.steps,
                          "tokens_per_s": args.steps * args.batch / dt}), flush=True)


if __name__ == "__main__":
    main()
