"""PyTorch <-> rnnjax parameter conversion, on NumPy arrays (no torch import).

The PyTorch model this maps to::

    class Net(torch.nn.Module):
        def __init__(self, features=28, hidden=256, layers=1, classes=10):
            super().__init__()
            self.lstm = torch.nn.LSTM(features, hidden, layers, batch_first=True)
            self.fc = torch.nn.Linear(hidden, classes)
        def forward(self, x):                # x: [batch, time, features]
            out, (h, c) = self.lstm(x)
            return self.fc(out[:, -1])

Differences it bridges:
* PyTorch stacks the four gates' weights in rows, order i, f, g, o (the same gates as
  rnnjax's `ii/if/ig/io`, `hi/hf/hg/ho`), as `[4H, in]`; Flax kernels are `[in, H]` per gate.
* PyTorch has two biases (`bias_ih`, `bias_hh`); Flax one per gate (on the `h*` dense). The
  forward pass only sees their sum. `to_torch` puts the whole bias in `bias_ih` and zeros in
  `bias_hh`. Note that training both PyTorch biases moves their sum twice as fast as one
  Flax bias: optimisers agree only when one of the two is frozen.
* The carry: PyTorch `(h, c)` each `[layers, batch, H]`; Flax `(c, h)` per layer, `[batch, H]`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

GATES = "ifgo"


def from_torch(state_dict: Mapping[str, np.ndarray], lstm: str = "lstm",
               head: str = "fc") -> dict:
  """A PyTorch `state_dict` (values as NumPy arrays) -> rnnjax `params`."""
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  params = {}
  k = 0
  while f"{lstm}.weight_ih_l{k}" in sd:
    w_ih = np.split(sd[f"{lstm}.weight_ih_l{k}"], 4, axis=0)
    w_hh = np.split(sd[f"{lstm}.weight_hh_l{k}"], 4, axis=0)
    hidden = w_hh[0].shape[0]
    bias = np.zeros(4 * hidden, w_hh[0].dtype)
    for name in (f"{lstm}.bias_ih_l{k}", f"{lstm}.bias_hh_l{k}"):
      if name in sd:
        bias = bias + sd[name]
    b = np.split(bias, 4)
    cell = {}
    for j, g in enumerate(GATES):
      cell["i" + g] = {"kernel": w_ih[j].T.copy()}
      cell["h" + g] = {"kernel": w_hh[j].T.copy(), "bias": b[j]}
    params[f"rnn_{k}"] = {"cell": cell}
    k += 1
  if not params:
    raise KeyError(f"no '{lstm}.weight_ih_l0' in the state dict; keys: {sorted(sd)[:8]}...")
  params["head"] = {"kernel": sd[f"{head}.weight"].T.copy(), "bias": sd[f"{head}.bias"]}
  return params


def to_torch(params: Mapping, lstm: str = "lstm", head: str = "fc") -> dict[str, np.ndarray]:
  """rnnjax `params` -> a PyTorch `state_dict` of NumPy arrays (bias all in `bias_ih`)."""
  sd = {}
  k = 0
  while f"rnn_{k}" in params:
    cell = params[f"rnn_{k}"].get("cell", {})
    if "ii" not in cell:
      raise ValueError(
          f"to_torch maps unidirectional LSTM layers (cell lstm or lstm_cell) only; layer "
          f"rnn_{k} holds {sorted(params[f'rnn_{k}'])} / {sorted(cell)}")
    sd[f"{lstm}.weight_ih_l{k}"] = np.concatenate(
        [np.asarray(cell["i" + g]["kernel"]).T for g in GATES])
    sd[f"{lstm}.weight_hh_l{k}"] = np.concatenate(
        [np.asarray(cell["h" + g]["kernel"]).T for g in GATES])
    sd[f"{lstm}.bias_ih_l{k}"] = np.concatenate([np.asarray(cell["h" + g]["bias"])
                                                 for g in GATES])
    sd[f"{lstm}.bias_hh_l{k}"] = np.zeros_like(sd[f"{lstm}.bias_ih_l{k}"])
    k += 1
  sd[f"{head}.weight"] = np.asarray(params["head"]["kernel"]).T.copy()
  sd[f"{head}.bias"] = np.asarray(params["head"]["bias"])
  return sd


def carry_from_torch(h: np.ndarray, c: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
  """PyTorch `(h_n, c_n)`, each `[layers, batch, H]` -> Flax carries `[(c, h)]` per layer."""
  return [(np.asarray(c[k]), np.asarray(h[k])) for k in range(h.shape[0])]


def carry_to_torch(carries) -> tuple[np.ndarray, np.ndarray]:
  """Flax carries `[(c, h)]` per layer -> PyTorch `(h_n, c_n)`, each `[layers, batch, H]`."""
  return (np.stack([np.asarray(h) for _, h in carries]),
          np.stack([np.asarray(c) for c, _ in carries]))
