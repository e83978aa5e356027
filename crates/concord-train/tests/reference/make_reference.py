"""Reference training run for concord-train's `relu-l1-faithful` SAE (the study's AnthropicSAE).

Writes, next to this script:
- `sample.safetensors`: `acts (rows, d)` f32, a synthetic activation sample (sparse non-negative
  combinations of random unit directions plus noise, seeded), and `order (steps, batch)` i64, the
  row indices of every training step (one numpy permutation per epoch);
- `init.safetensors`: `W_enc (n, d)` and `W_dec (n, d)`, xavier-uniform as the study inits them;
- `reference.json`: the loss, mse and L0 of every step, and the final MSE, FVU and L0 over the
  whole sample;
- `ae.pt`: a tiny dictionary_learning state dict saved with `torch.save` (a plain dict), with an
  input row and its feature activations under `ae_pt` in `reference.json`;
- `ae_state_dict.pt`: the same weights saved from `nn.Module.state_dict()` (an `OrderedDict`),
  as dictionary_learning writes them.

Run: `.venv/bin/python crates/concord-train/tests/reference/make_reference.py`
(torch 2.13, CPU, fp32, one thread).
"""

import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS, D, N, BATCH, EPOCHS, L1, LR = 2048, 16, 64, 64, 6, 8e-3, 1e-3

torch.set_num_threads(1)
rng = np.random.default_rng(20240611)

# Sparse features in superposition: 48 true directions in 16 dimensions, each active with
# probability 0.06 at an exponential magnitude, plus a constant offset and a little noise.
true_dirs = rng.normal(size=(48, D))
true_dirs /= np.linalg.norm(true_dirs, axis=1, keepdims=True)
active = rng.random((ROWS, 48)) < 0.06
mags = rng.exponential(1.0, size=(ROWS, 48)) * active
acts = mags @ true_dirs + 0.5 + 0.05 * rng.normal(size=(ROWS, D))
acts = acts.astype(np.float32)
steps_per_epoch = ROWS // BATCH
order = np.concatenate([rng.permutation(ROWS) for _ in range(EPOCHS)]).reshape(-1, BATCH)

torch.manual_seed(0)
W_enc = torch.empty(N, D)
W_dec = torch.empty(N, D)
torch.nn.init.xavier_uniform_(W_enc)
torch.nn.init.xavier_uniform_(W_dec)

save_file({"acts": torch.from_numpy(acts), "order": torch.from_numpy(order.astype(np.int64))},
          os.path.join(HERE, "sample.safetensors"))
save_file({"W_enc": W_enc.clone(), "W_dec": W_dec.clone()}, os.path.join(HERE, "init.safetensors"))


class AnthropicSAE(torch.nn.Module):
    """The study's SAE: untied, shift bias, decoder rows normalised at use."""

    def __init__(self, W_enc, W_dec):
        super().__init__()
        self.W_enc = torch.nn.Parameter(W_enc.clone())
        self.W_dec = torch.nn.Parameter(W_dec.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(N))
        self.b_shift = torch.nn.Parameter(torch.zeros(D))

    def encode(self, x):
        return F.relu((x - self.b_shift) @ self.W_enc.T + self.b_enc)

    def decode(self, c):
        return c @ F.normalize(self.W_dec, dim=1) + self.b_shift


sae = AnthropicSAE(W_enc, W_dec)
opt = torch.optim.Adam(sae.parameters(), lr=LR)
x_all = torch.from_numpy(acts)
steps = []
for rows in order:
    x = x_all[torch.from_numpy(rows)]
    c = sae.encode(x)
    x_hat = sae.decode(c)
    mse = ((x_hat - x) ** 2).mean()
    loss = mse + L1 * c.abs().sum(dim=1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    steps.append({"loss": loss.item(), "mse": mse.item(),
                  "l0": (c > 0).float().sum(dim=1).mean().item()})

with torch.no_grad():
    c = sae.encode(x_all)
    x_hat = sae.decode(c)
    sq = ((x_hat - x_all) ** 2).sum(dim=1).double()
    var = ((x_all - x_all.mean(dim=0)) ** 2).sum(dim=1).double()
    final = {"mse": ((x_hat - x_all) ** 2).mean().item(),
             "fvu": (sq.sum() / var.sum()).item(),
             "l0": (c > 0).float().sum(dim=1).mean().item()}

# A dictionary_learning AutoEncoder state dict: encode(x) = relu(encoder(x - bias)).
g = torch.Generator().manual_seed(1)
ae = {"bias": torch.randn(4, generator=g), "encoder.weight": torch.randn(8, 4, generator=g),
      "encoder.bias": torch.randn(8, generator=g), "decoder.weight": torch.randn(4, 8, generator=g)}
torch.save(ae, os.path.join(HERE, "ae.pt"))
x = torch.randn(4, generator=g)
f = F.relu((x - ae["bias"]) @ ae["encoder.weight"].T + ae["encoder.bias"])


# The same weights as dictionary_learning really writes them, `torch.save(ae.state_dict())`:
# an `OrderedDict` (with `_metadata`) that libtorch's unpickler cannot read.
class AutoEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(4, 8)
        self.decoder = torch.nn.Linear(8, 4, bias=False)
        self.bias = torch.nn.Parameter(torch.zeros(4))


module = AutoEncoder()
module.load_state_dict(ae)
torch.save(module.state_dict(), os.path.join(HERE, "ae_state_dict.pt"))

out = {
    "rows": ROWS, "d": D, "n": N, "batch": BATCH, "epochs": EPOCHS, "l1": L1, "lr": LR,
    "steps": steps, "final": final,
    "ae_pt": {"x": x.tolist(), "features": f.tolist(),
              "x_hat": (f @ ae["decoder.weight"].T + ae["bias"]).tolist()},
}
with open(os.path.join(HERE, "reference.json"), "w") as fh:
    json.dump(out, fh, indent=1)
    fh.write("\n")
print(json.dumps({"first": steps[0], "last": steps[-1], "final": final}))
