"""Interop checks against the field's own packages, run by `cargo test` (the `interop` test of
concord-cli) with the project's `.venv`, where `cargo xtask test` installs the pinned packages of
`requirements.txt`.

For every architecture `concord train` writes (relu-l1-faithful and relu-l1 as SAELens
`standard`, topk, batchtopk, jumprelu), on a tiny store harvested by the real binary:

- SAELens 6 loads the folder as it is, as the right class; its `encode` gives the codes
  `concord encode` writes, its `decode` our reconstruction, and its FVU and L0 are `concord eval`'s;
- `concord export` writes what sparsify's `Sae.load_from_disk` (TopK) and dictionary_learning's
  `from_pretrained` (every architecture) load, with the same codes; sparsify refuses the others
  with a one-line error naming what it supports;
- the reverse: SAEs made by sparsify, dictionary_learning and SAELens from seeded random weights
  load in `concord encode` and `concord eval` with the same codes, FVU and L0, and `concord align`
  finds each identical to the same weights written by another package (MMCS 1, correlation 1);
- the store opens with Hugging Face `datasets` and polars, row for row equal to our reader.

Codes agree "to 1e-5" in this sense: max |ours - theirs| <= 1e-5 * max |ours| over every entry
except those whose pre-activation lies within that same band of the encoder's cut (a JumpReLU
threshold, a TopK row's k-th value), where rounding may put a feature on either side; such
entries are counted and reported. A missing package is a failure, never a skip.

Usage: python interop.py --concord BIN --corpus FILE --work DIR
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PINS = {
    "sae_lens": "6.54.12",
    "sparsify": "1.3.3",
    "dictionary_learning": "0.1.0",
    "datasets": "5.2.0",
    "polars": "2.2.0",
}
RTOL = 1e-5
HOOK = "blocks.1.hook_mlp_out"
ROWS = 256
ARCHS = ["relu-l1-faithful", "relu-l1", "topk", "batchtopk", "jumprelu"]

failures = []
lines = []


def check(name, ok, detail=""):
    lines.append(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
    print(lines[-1], flush=True)
    if not ok:
        failures.append(name)


def imports():
    """The pinned packages, or a failing check naming what to install."""
    import importlib

    try:
        import torch

        # sparsify decodes with a Triton kernel whenever Triton imports (torch ships it), which
        # needs a GPU; its own switch selects the eager decoder.
        if not torch.cuda.is_available():
            os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    except Exception as e:  # noqa: BLE001 - reported below with the packages
        check("import torch", False, f"{type(e).__name__}: {e}")
    mods = {}
    for mod, version in PINS.items():
        try:
            m = importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 - any import failure is reported the same way
            check(f"import {mod}", False, f"{type(e).__name__}: {e}")
            continue
        got = getattr(m, "__version__", "?")
        check(f"import {mod} {version}", got == version, f"found {got}")
        mods[mod] = m
    if failures:
        sys.exit(
            "interop: the pinned packages of crates/concord-cli/tests/python/requirements.txt are "
            "missing from this Python; `cargo xtask test` installs them "
            "into .venv"
        )
    return mods


class Concord:
    def __init__(self, binary):
        self.binary = binary

    def __call__(self, *args, fail=False):
        out = subprocess.run([self.binary, *map(str, args)], capture_output=True, text=True)
        if not fail and out.returncode != 0:
            sys.exit(f"concord {' '.join(map(str, args))} failed:\n{out.stderr}")
        return out

    def encode(self, sae, acts, out, rows=ROWS):
        from safetensors.numpy import load_file

        self("encode", "--sae", sae, "--acts", acts, "--rows", rows, "--out", out)
        return load_file(str(out))

    def eval(self, sae, acts, out, rows=ROWS):
        self("eval", "--sae", sae, "--acts", acts, "--tokens", rows, "--out", out)
        return json.loads(Path(out).read_text())


# Numbers ------------------------------------------------------------------------------------


def rel_err(got, want):
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def pre_acts(w, xs, subtract_b_dec=True):
    """Pre-activations `(rows, d_sae)` in float64 from SAELens-layout weights."""
    import numpy as np

    x = xs.astype(np.float64) - (w["b_dec"] if subtract_b_dec else 0.0)
    return x @ w["W_enc"].astype(np.float64) + w["b_enc"]


def cut_band(pre, codes, threshold=None):
    """Entries where rounding may decide whether a feature fires: pre-activation within the
    band of the cut (a threshold, or each row's smallest kept value for TopK)."""
    import numpy as np

    band = RTOL * max(np.abs(codes).max(), 1e-30)
    if threshold is not None:
        return np.abs(pre - np.asarray(threshold, np.float64)) <= band
    kept = np.where(codes > 0, codes, np.inf).min(axis=1, keepdims=True)
    return np.isfinite(kept) & (np.abs(pre - kept) <= band)


def same_codes(name, got, want, pre=None, threshold=None, topk=False):
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        check(name, False, f"shape {got.shape} against ours {want.shape}")
        return
    scale = max(np.abs(want).max(), 1e-30)
    bad = np.abs(got - want) > RTOL * scale
    flips = 0
    if pre is not None and (threshold is not None or topk):
        at_cut = bad & cut_band(pre, want, threshold)
        flips = int(at_cut.sum())
        bad &= ~at_cut
        got = np.where(at_cut, want, got)
    err = rel_err(got, want)
    detail = f"max rel diff {err:.1e} ({int(bad.sum())} entries beyond 1e-5"
    detail += f", {flips} at the cut)" if flips else ")"
    check(name, not bad.any(), detail)
    return err


def fvu_l0(xs, codes, recon):
    """FVU and L0 as `concord eval` computes them."""
    import numpy as np

    x = xs.astype(np.float64)
    err = ((recon.astype(np.float64) - x) ** 2).sum()
    var = (x**2).sum() - (x.sum(0) ** 2).sum() / len(x)
    return err / var, float((codes > 0).sum(1).mean())


# The checks ---------------------------------------------------------------------------------


def store(concord, corpus, work):
    out = work / "store"
    concord(
        "harvest", "--model", "minilm-l6", "--hooks", HOOK, "--corpus", corpus, "--out", out,
        "--docs", "6", "--context-len", "64",
    )
    return out / HOOK


def train(concord, acts, work, arch):
    out = work / f"sae-{arch}"
    extra = ["--k", "8"] if arch in ("topk", "batchtopk") else []
    concord(
        "train", "--acts", acts, "--arch", arch, "--ratio", "2", "--batch", "128",
        "--tokens", "1024", "--out", out, *extra,
    )
    (folder,) = [p for p in out.iterdir() if (p / "cfg.json").exists()]
    return folder


SAELENS_CLASS = {
    "relu-l1-faithful": "StandardSAE",
    "relu-l1": "StandardSAE",
    "topk": "TopKSAE",
    "batchtopk": "JumpReLUSAE",
    "jumprelu": "JumpReLUSAE",
}
DL_CLASS = {
    "relu-l1-faithful": "AutoEncoder",
    "relu-l1": "AutoEncoder",
    "topk": "AutoEncoderTopK",
    "batchtopk": "BatchTopKSAE",
    "jumprelu": "JumpReluAutoEncoder",
}


def dl_class(m, name):
    import dictionary_learning.dictionary as d
    import dictionary_learning.trainers.batch_top_k as b
    import dictionary_learning.trainers.top_k as t

    return {"AutoEncoder": d.AutoEncoder, "JumpReluAutoEncoder": d.JumpReluAutoEncoder,
            "AutoEncoderTopK": t.AutoEncoderTopK, "BatchTopKSAE": b.BatchTopKSAE}[name]


def ours_to_saelens(m, concord, acts, work, arch, summary):
    """A folder `concord train` wrote: SAELens, sparsify and dictionary_learning read it."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file

    sae_lens, sparsify = m["sae_lens"], m["sparsify"]
    folder = train(concord, acts, work, arch)
    ours = concord.encode(folder, acts, work / f"codes-{arch}.safetensors")
    ev = concord.eval(folder, acts, work / f"eval-{arch}.json")
    xs, codes, recon = ours["xs"], ours["codes"], ours["recon"]
    w = load_file(str(folder / "sae_weights.safetensors"))
    threshold = w.get("threshold")
    pre = pre_acts(w, xs)
    topk = arch == "topk"
    x = torch.from_numpy(xs)

    sae = sae_lens.SAE.load_from_disk(str(folder))
    cls = type(sae).__name__
    check(f"{arch}: SAELens loads it as {SAELENS_CLASS[arch]}", cls == SAELENS_CLASS[arch], cls)
    with torch.no_grad():
        theirs = sae.encode(x).numpy()
        back = sae.decode(torch.from_numpy(codes)).numpy()
    err = same_codes(f"{arch}: SAELens encode = concord encode", theirs, codes, pre, threshold, topk)
    check(f"{arch}: SAELens decode = our reconstruction", rel_err(back, recon) <= RTOL,
          f"{rel_err(back, recon):.1e}")
    fvu, l0 = fvu_l0(xs, theirs, sae.decode(torch.from_numpy(theirs)).detach().numpy())
    check(f"{arch}: SAELens FVU, L0 = concord eval's",
          abs(fvu - ev["fvu"]) <= 1e-4 * max(ev["fvu"], 1e-9) and abs(l0 - ev["l0"]) <= 1e-3,
          f"FVU {fvu:.5f} vs {ev['fvu']:.5f}, L0 {l0:.2f} vs {ev['l0']:.2f}")
    summary[arch] = {"saelens_class": cls, "saelens_max_rel_diff": err, "fvu": ev["fvu"],
                     "fvu_saelens": fvu, "l0": ev["l0"], "l0_saelens": l0}

    # sparsify: TopK only; the others are refused on one line naming what it supports.
    sp_out = work / f"sparsify-{arch}" / HOOK
    res = concord("export", "--format", "sparsify", "--sae", folder, "--out", sp_out, fail=True)
    if topk:
        check(f"{arch}: export --format sparsify", res.returncode == 0, res.stderr.strip())
        coder = sparsify.Sae.load_from_disk(sp_out)
        with torch.no_grad():
            top_acts, top_idx, _ = coder.encode(x)
            dense = torch.zeros(len(xs), coder.num_latents).scatter_(1, top_idx, top_acts)
            back = coder.decode(torch.from_numpy(np.take_along_axis(codes, top_idx.numpy(), 1)),
                                top_idx).numpy()
        e = same_codes(f"{arch}: sparsify encode = ours", dense.numpy(), codes, pre, topk=True)
        check(f"{arch}: sparsify decode = our reconstruction", rel_err(back, recon) <= RTOL,
              f"{rel_err(back, recon):.1e}")
        summary[arch]["sparsify_max_rel_diff"] = e
    else:
        line = res.stderr.strip()
        check(f"{arch}: export --format sparsify refused on one line",
              res.returncode != 0 and line.count("\n") == 0 and "topk SAEs only" in line, line)

    dl_out = work / f"dl-{arch}"
    concord("export", "--format", "dictionary-learning", "--sae", folder, "--out", dl_out)
    name = json.loads((dl_out / "config.json").read_text())["trainer"]["dict_class"]
    check(f"{arch}: dictionary_learning class {DL_CLASS[arch]}", name == DL_CLASS[arch], name)
    ae = dl_class(m, name).from_pretrained(str(dl_out / "ae.pt"))
    with torch.no_grad():
        theirs = ae.encode(x).numpy()
        back = ae.decode(torch.from_numpy(codes)).numpy()
    e = same_codes(f"{arch}: dictionary_learning encode = ours", theirs, codes, pre, threshold,
                   topk)
    check(f"{arch}: dictionary_learning decode = our reconstruction", rel_err(back, recon) <= RTOL,
          f"{rel_err(back, recon):.1e}")
    summary[arch]["dictionary_learning_max_rel_diff"] = e
    return folder


def seeded(shape, gen, scale=1.0):
    import torch

    return torch.randn(*shape, generator=gen) * scale


def theirs_to_ours(m, concord, acts, work, summary):
    """SAEs the packages make from seeded random weights load in concord with the same codes."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file

    sae_lens, sparsify = m["sae_lens"], m["sparsify"]
    d_in = load_file(str(work / "codes-topk.safetensors"))["xs"].shape[1]
    d_sae, k = 2 * d_in, 8
    xs = torch.from_numpy(load_file(str(work / "codes-topk.safetensors"))["xs"])
    gen = torch.Generator().manual_seed(17)
    W_dec = torch.nn.functional.normalize(seeded((d_sae, d_in), gen), dim=1)
    W_enc = W_dec.T.clone() + seeded((d_in, d_sae), gen, 0.02)
    b_enc = seeded((d_sae,), gen, 0.05)
    b_dec = seeded((d_in,), gen, 0.1)
    threshold = seeded((d_sae,), gen, 0.02).abs() + 0.01
    made = {}

    # sparsify: a run folder with one SAE per hook point, as its trainer writes.
    cfg = sparsify.SparseCoderConfig(k=k, num_latents=d_sae)
    coder = sparsify.SparseCoder(d_in, cfg, dtype=torch.float32)
    with torch.no_grad():
        coder.encoder.weight.copy_(W_enc.T)
        coder.encoder.bias.copy_(b_enc)
        coder.W_dec.copy_(W_dec)
        coder.b_dec.copy_(b_dec)
    run = work / "sparsify-run"
    coder.save_to_disk(run / HOOK)
    coder.save_to_disk(run / "blocks.2.hook_mlp_out")
    with torch.no_grad():
        a, i, _ = coder.encode(xs)
        codes = torch.zeros(len(xs), d_sae).scatter_(1, i, a)
        made["sparsify"] = (run / HOOK, codes, coder.decode(a, i), "topk")
    res = concord("encode", "--sae", run, "--acts", acts, "--out", work / "x.safetensors",
                  fail=True)
    line = res.stderr.strip()
    check("sparsify run folder: concord names its hook folders",
          res.returncode != 0 and HOOK in line and "name one" in line, line)

    # dictionary_learning: the four classes, saved as its training saves them.
    dl = work / "dl-made"
    ae = dl_class(m, "AutoEncoder")(d_in, d_sae)
    topk_ae = dl_class(m, "AutoEncoderTopK")(d_in, d_sae, k)
    batch = dl_class(m, "BatchTopKSAE")(d_in, d_sae, k)
    jump = dl_class(m, "JumpReluAutoEncoder")(d_in, d_sae)
    with torch.no_grad():
        ae.encoder.weight.copy_(W_enc.T)
        ae.encoder.bias.copy_(b_enc)
        ae.decoder.weight.copy_(W_dec.T * 0.5)  # not unit norm: read as saved
        ae.bias.copy_(b_dec)
        for mod in (topk_ae, batch):
            mod.encoder.weight.copy_(W_enc.T)
            mod.encoder.bias.copy_(b_enc)
            mod.decoder.weight.copy_(W_dec.T)
            mod.b_dec.copy_(b_dec)
        batch.threshold.fill_(0.3)
        jump.W_enc.copy_(W_enc)
        jump.b_enc.copy_(b_enc)
        jump.W_dec.copy_(W_dec)
        jump.b_dec.copy_(b_dec)
        jump.threshold.copy_(threshold)
    for name, mod, arch in [("AutoEncoder", ae, "standard"), ("AutoEncoderTopK", topk_ae, "topk"),
                            ("BatchTopKSAE", batch, "jumprelu"),
                            ("JumpReluAutoEncoder", jump, "jumprelu")]:
        folder = dl / name
        folder.mkdir(parents=True)
        torch.save(mod.state_dict(), folder / "ae.pt")
        (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": name}}))
        with torch.no_grad():
            c = mod.encode(xs)
            made[f"dictionary_learning {name}"] = (folder / "ae.pt", c, mod.decode(c), arch)

    # SAELens: its own classes from the same weights, saved with save_model.
    for cls, cfg_cls, extra, state in [
        ("StandardSAE", "StandardSAEConfig", {}, {}),
        ("TopKSAE", "TopKSAEConfig", {"k": k}, {}),
        # As dictionary_learning's JumpReluAutoEncoder: b_dec not subtracted before encoding.
        ("JumpReLUSAE", "JumpReLUSAEConfig", {"apply_b_dec_to_input": False},
         {"threshold": threshold}),
    ]:
        sae = getattr(sae_lens, cls)(getattr(sae_lens, cfg_cls)(d_in=d_in, d_sae=d_sae, **extra))
        sae.load_state_dict({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec,
                             **state})
        folder = work / "saelens-made" / cls
        sae.save_model(folder)
        with torch.no_grad():
            c = sae.encode(xs)
            made[f"SAELens {cls}"] = (folder, c, sae.decode(c), None)

    for name, (path, codes, recon, _) in made.items():
        tag = name.replace(" ", "-")
        ours = concord.encode(path, acts, work / f"made-{tag}.safetensors", rows=len(xs))
        w = load_sae_weights(m, path)
        pre = pre_acts(w, ours["xs"], w["subtract"])
        same_codes(f"{name}: concord encode = the package's", ours["codes"], codes.numpy(), pre,
                   w.get("threshold"), topk="TopK" in name or "sparsify" in name)
        check(f"{name}: concord's reconstruction = the package's",
              rel_err(ours["recon"], recon.numpy()) <= RTOL,
              f"{rel_err(ours['recon'], recon.numpy()):.1e}")
        ev = concord.eval(path, acts, work / f"eval-{tag}.json", rows=len(xs))
        fvu, l0 = fvu_l0(ours["xs"], codes.numpy(), recon.numpy())
        check(f"{name}: concord eval's FVU, L0 = the package's",
              abs(fvu - ev["fvu"]) <= 1e-4 * max(fvu, 1e-9) and abs(l0 - ev["l0"]) <= 1e-3,
              f"FVU {ev['fvu']:.5f} vs {fvu:.5f}, L0 {ev['l0']:.2f} vs {l0:.2f}")
        summary.setdefault("reverse", {})[name] = {"fvu": ev["fvu"], "l0": ev["l0"]}

    # align: each package's file against the same weights as another package wrote them.
    pairs = [("sparsify", "SAELens TopKSAE"),
             ("dictionary_learning AutoEncoderTopK", "SAELens TopKSAE"),
             ("dictionary_learning JumpReluAutoEncoder", "SAELens JumpReLUSAE")]
    for a, b in pairs:
        out = work / f"align-{a.replace(' ', '-')}.json"
        concord("align", "--a", made[a][0], "--b", made[b][0], "--acts-a", acts, "--acts-b", acts,
                "--acts-tokens", len(xs), "--out", out)
        v = json.loads(out.read_text())
        mm, corr = v["mmcs"]["decoder"]["a_to_b"], v["correlation"]["centred"]["a_to_b"]
        match = v["matching"]["decoder"]["mean_cos"]
        same_dead = v["correlation"]["dead_a"] == v["correlation"]["dead_b"]
        check(f"align {a} vs {b}: identical",
              mm > 1 - 1e-5 and match > 1 - 1e-5 and corr > 1 - 1e-4 and same_dead,
              f"decoder MMCS {mm:.6f}, matching {match:.6f}, correlation {corr:.6f}, dead "
              f"{v['correlation']['dead_a']} / {v['correlation']['dead_b']}")


def load_sae_weights(m, path):
    """SAELens-layout float64 weights of any of the three packages' files, read in Python."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file

    path = Path(path)
    if path.suffix == ".pt":
        sd = {k: v.double().numpy() for k, v in torch.load(path).items()}
        if "W_enc" in sd:
            return {**sd, "subtract": False}
        out = {"W_enc": sd["encoder.weight"].T, "b_enc": sd["encoder.bias"],
               "b_dec": sd.get("b_dec", sd.get("bias")), "subtract": True}
        if "threshold" in sd and float(sd["threshold"]) >= 0:
            out["threshold"] = np.full(sd["encoder.bias"].shape, float(sd["threshold"]))
        return out
    if (path / "sae.safetensors").exists():
        sd = load_file(str(path / "sae.safetensors"))
        return {"W_enc": sd["encoder.weight"].T, "b_enc": sd["encoder.bias"],
                "b_dec": sd["b_dec"], "subtract": True}
    sd = load_file(str(path / "sae_weights.safetensors"))
    return {**sd, "subtract": True}


def store_readers(m, concord, acts, sae, work, summary):
    """The store through Hugging Face `datasets` and polars, row for row our reader's."""
    import numpy as np

    datasets, pl = m["datasets"], m["polars"]
    manifest = json.loads((acts / "manifest.json").read_text())
    files = [str(acts / s["file"]) for s in manifest["shards"]]
    rows = sum(s["rows"] for s in manifest["shards"])
    ours = concord.encode(sae, acts, work / "all-rows.safetensors", rows=rows)["xs"]
    ds = datasets.load_dataset("parquet", data_files=files, split="train",
                               cache_dir=str(work / "hf-cache"))
    hf = np.asarray(ds.with_format("numpy")["act"], np.float32)
    frame = pl.read_parquet(files)
    po = frame["act"].to_numpy().astype(np.float32)
    check("store: datasets reads our rows", hf.shape == ours.shape and np.array_equal(hf, ours),
          f"{hf.shape[0]} rows of {hf.shape[1]}")
    check("store: polars reads our rows", po.shape == ours.shape and np.array_equal(po, ours),
          f"{po.shape[0]} rows")
    meta = ["doc", "pos", "seq", "token", "byte_start", "byte_end"]
    same = all(np.array_equal(np.asarray(ds[c]), frame[c].to_numpy()) for c in meta)
    check("store: datasets and polars agree on the row keys", same, ", ".join(meta))
    summary["store_rows"] = rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--concord", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--summary", help="write the measured numbers here (JSON)")
    args = ap.parse_args()
    start = time.time()
    m = imports()
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    concord = Concord(args.concord)
    acts = store(concord, args.corpus, work)
    summary = {}
    folders = {arch: ours_to_saelens(m, concord, acts, work, arch, summary) for arch in ARCHS}
    theirs_to_ours(m, concord, acts, work, summary)
    store_readers(m, concord, acts, folders["relu-l1"], work, summary)
    summary["seconds"] = round(time.time() - start, 1)
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1))
    print(f"interop: {len(lines) - len(failures)} checks passed, {len(failures)} failed in "
          f"{summary['seconds']} s")
    if failures:
        sys.exit("interop: failed: " + "; ".join(failures))


if __name__ == "__main__":
    main()
