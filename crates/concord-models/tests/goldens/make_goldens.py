"""Makes the tiny goldens that concord-models' tests compare against (`transformers` is the reference).

Run from anywhere with the project's Python (it has torch, transformers, gguf, tokenizers):

    .venv/bin/python crates/concord-models/tests/goldens/make_goldens.py [GROUP ...]

GROUP is one of neox, gpt2, minilm, smollm2 (default: all of them, in that order); gpt2 reuses
the tokenizer in `tiny-neox/`, so make neox first on a fresh checkout.

It writes, next to itself:
- `tiny-neox/` and `tiny-neox-seq/`: two tiny random GPT-NeoX checkpoints (Hugging Face layout,
  `rotary_pct = 0.5`; the first with the parallel residual, the second without) sharing one small
  byte-level BPE tokenizer trained here on a few lines of text. Seeded, so reruns give the same files.
- `tiny-gpt2/`: a tiny random GPT-2 checkpoint (`GPT2LMHeadModel`, so the weights carry the
  `transformer.` prefix; Conv1D weights stored `[in, out]`; `n_inner` set to 2 * n_embd, `gelu_new`,
  `lm_head` tied to `wte`) with the tiny-neox tokenizer copied in. Seeded too.
- `<model>.safetensors` for `smollm2-135m` (from the GGUF, through transformers' GGUF loading),
  `minilm-l6`, `tiny-neox`, `tiny-neox-seq` and `tiny-gpt2`: for the batch of TEXTS tokenized together with
  right padding, `input_ids (batch, seq)`, `attention_mask (batch, seq)`, `offsets (batch, seq, 2)`
  as UTF-8 byte offsets, and for every hook kind at a few layers the first COLS channels of the
  activation, `(batch, seq, min(d, COLS))`, in float32. Causal models also get `loss (batch, seq - 1)`,
  the per-token next-token cross-entropy of the full forward.
- `<model>.json`: the texts and, per text tokenized alone, the ids and byte offsets.
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
MODELS = ROOT / "data" / "cache" / "models"
COLS = 128

TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "To be, or not to be: that is the question. h\u00e9llo \u2603 caf\u00e9",
    "Short one.",
]

KINDS = ["hook_resid_pre", "hook_attn_out", "mlp.hook_post", "hook_mlp_out", "hook_resid_post"]


def char_to_byte_offsets(text, offsets):
    """Python's tokenizers report offsets in characters; the Rust crate reports UTF-8 bytes."""
    starts = [0]
    for ch in text:
        starts.append(starts[-1] + len(ch.encode("utf-8")))
    return [(starts[a], starts[b]) for a, b in offsets]


def make_tiny_tokenizer(out_dirs):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    lines = [line for line in (MODELS.parent / "corpus" / "shakespeare.jsonl").open()][:200]
    texts = [json.loads(line)["text"] for line in lines]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    for out in out_dirs:
        tok.save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(
            json.dumps(
                {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
                 "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|padding|>"},
                indent=1,
            )
        )
    return tok.get_vocab_size()


def make_tiny_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    dirs = [HERE / "tiny-neox", HERE / "tiny-neox-seq"]
    for d in dirs:
        d.mkdir(exist_ok=True)
    vocab = make_tiny_tokenizer(dirs)
    for d, parallel in zip(dirs, [True, False]):
        torch.manual_seed(0)
        cfg = GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            rotary_pct=0.5,
            rotary_emb_base=10000,
            max_position_embeddings=64,
            use_parallel_residual=parallel,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=1,
            initializer_range=0.2,
        )
        model = GPTNeoXForCausalLM(cfg).eval()
        # Non-trivial LayerNorm parameters and biases so a wrong formula cannot hide.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "layernorm" in name or "final_layer_norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
                elif name.endswith(".bias"):
                    p.copy_(0.05 * torch.randn_like(p))
        model.save_pretrained(str(d))
    return dirs


def make_tiny_gpt2():
    """A tiny random GPT-2 sharing tiny-neox's tokenizer (copied, so each folder stands alone)."""
    import shutil

    from tokenizers import Tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    src, d = HERE / "tiny-neox", HERE / "tiny-gpt2"
    d.mkdir(exist_ok=True)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(src / f, d / f)
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    eos, pad = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|padding|>")
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_embd=32,
        n_layer=3,
        n_head=4,
        n_positions=128,
        # Not the default 4 * n_embd, so a loader that ignores `n_inner` fails on shapes.
        n_inner=64,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=pad,
        initializer_range=0.2,
    )
    model = GPT2LMHeadModel(cfg).eval()
    # Non-trivial LayerNorm parameters and biases so a wrong formula cannot hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
    model.save_pretrained(str(d), safe_serialization=True)
    return d


def hook_modules(model, arch, layer):
    """`kind -> (module, 'in' | 'out')`: where each hook kind is read in transformers' modules."""
    if arch == "llama":
        block = model.model.layers[layer]
        return {
            "hook_resid_pre": (block, "in"),
            "hook_attn_out": (block.self_attn.o_proj, "out"),
            "mlp.hook_post": (block.mlp.down_proj, "in"),
            "hook_mlp_out": (block.mlp, "out"),
            "hook_resid_post": (block, "out"),
        }
    if arch == "neox":
        block = model.gpt_neox.layers[layer]
        return {
            "hook_resid_pre": (block, "in"),
            "hook_attn_out": (block.attention.dense, "out"),
            "mlp.hook_post": (block.mlp.dense_4h_to_h, "in"),
            "hook_mlp_out": (block.mlp, "out"),
            "hook_resid_post": (block, "out"),
        }
    if arch == "gpt2":
        block = model.transformer.h[layer]
        return {
            "hook_resid_pre": (block, "in"),
            "hook_attn_out": (block.attn.c_proj, "out"),
            "mlp.hook_post": (block.mlp.c_proj, "in"),
            "hook_mlp_out": (block.mlp, "out"),
            "hook_resid_post": (block, "out"),
        }
    if arch == "bert":
        block = model.encoder.layer[layer]
        return {
            "hook_resid_pre": (block, "in"),
            "hook_attn_out": (block.attention.output.dense, "out"),
            "mlp.hook_post": (block.output.dense, "in"),
            "hook_mlp_out": (block.output.dense, "out"),
            "hook_resid_post": (block, "out"),
        }
    raise ValueError(arch)


def first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def capture(model, arch, layers, run):
    store, handles = {}, []
    for layer in layers:
        for kind, (module, where) in hook_modules(model, arch, layer).items():
            key = f"blocks.{layer}.{kind}"
            if where == "in":
                def pre(mod, args, kwargs, key=key):
                    x = args[0] if args else kwargs["hidden_states"]
                    store[key] = x.detach().clone()
                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:
                def post(mod, args, out, key=key):
                    store[key] = first(out).detach().clone()
                handles.append(module.register_forward_hook(post))
    try:
        out = run()
    finally:
        for h in handles:
            h.remove()
    return store, out


def golden(name, arch, tokenizer, model, layers, causal):
    model.eval()
    torch.set_grad_enabled(False)
    single = []
    for text in TEXTS:
        enc = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        single.append(
            {
                "text": text,
                "ids": enc["input_ids"],
                "offsets": char_to_byte_offsets(text, enc["offset_mapping"]),
                "special_tokens_mask": enc["special_tokens_mask"],
            }
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt", return_offsets_mapping=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    offsets = torch.tensor(
        [char_to_byte_offsets(t, o.tolist()) for t, o in zip(TEXTS, batch["offset_mapping"])],
        dtype=torch.int64,
    )
    store, out = capture(model, arch, layers, lambda: model(input_ids=ids, attention_mask=mask))
    tensors = {
        "input_ids": ids.to(torch.int64).contiguous(),
        "attention_mask": mask.to(torch.int64).contiguous(),
        "offsets": offsets.contiguous(),
    }
    for key, value in store.items():
        tensors[key] = value[..., :COLS].to(torch.float32).contiguous()
    if causal:
        logits = out.logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        ).reshape(ids.shape[0], -1)
        tensors["loss"] = loss.contiguous()
        tensors["logits"] = logits[..., :COLS].contiguous()
    save_file(tensors, str(HERE / f"{name}.safetensors"))
    (HERE / f"{name}.json").write_text(json.dumps({"layers": layers, "cols": COLS, "texts": single}, indent=1))
    print(name, {k: tuple(v.shape) for k, v in tensors.items() if not k.startswith("blocks")}, file=sys.stderr)


def main(groups):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    if "neox" in groups:
        for d in make_tiny_neox():
            tok = AutoTokenizer.from_pretrained(str(d))
            model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
            golden(d.name, "neox", tok, model, [0, 1], causal=True)

    if "gpt2" in groups:
        d = make_tiny_gpt2()
        tok = AutoTokenizer.from_pretrained(str(d))
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
        golden(d.name, "gpt2", tok, model, [0, 1, 2], causal=True)

    if "minilm" in groups:
        folder = MODELS / "minilm-l6"
        tok = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModel.from_pretrained(str(folder), dtype=torch.float32)
        golden("minilm-l6", "bert", tok, model, [0, 5], causal=False)

    if "smollm2" in groups:
        folder, gguf = MODELS / "smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf"
        tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, dtype=torch.float32)
        golden("smollm2-135m", "llama", tok, model, [0, 6, 29], causal=True)


GROUPS = ["neox", "gpt2", "minilm", "smollm2"]


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    unknown = [g for g in sys.argv[1:] if g not in GROUPS]
    if unknown:
        sys.exit(f"unknown group(s) {unknown}; expected some of {GROUPS}")
    main(sys.argv[1:] or GROUPS)
