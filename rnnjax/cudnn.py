"""LSTM layers on an NVIDIA GPU through cuDNN's fused RNN: `CudnnLSTM`, an
`nn.RNN(nn.OptimizedLSTMCell)` with the same fields, parameters and call, run by
`jax.experimental.rnn.lstm` (one cuDNN call per layer and direction, forward and backward).
`Config.rnn_kernel` `cudnn` asks for it; `auto` picks it on a GPU.

cuDNN reads a layer's weights as one flat vector: W_ih `[4H, I]` and W_hh `[4H, H]`, then
the biases b_ih and b_hh `[4H]`, gates in the order i, f, g, o (PyTorch's layout, as
`jax.experimental.rnn.unpack_lstm_weights` reads it). Flax's cell has one bias per gate:
it goes whole into b_hh, and b_ih is zeros. `pack` builds the vector from the cell's
parameters inside the jitted step (transposes and concatenations, differentiable), so the
parameters, their paths and the checkpoints are exactly the scan's; `unpack` is its
inverse.

`jax.experimental.rnn.lstm_ref` is JAX's pure-JAX reference of the same call, on any
backend. With `RNNJAX_CUDNN=reference` every `CudnnLSTM` runs through it instead of cuDNN,
on any device: the packing, the layer, the model and the training loop are then tested on
a CPU, everything but the cuDNN call itself (`benchmarks/gpu.sh --dry`).
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import rnn

from rnnjax.cpu_kernel import KernelUnavailable
from rnnjax.kernel_layers import KernelRNN

REFERENCE_ENV = "RNNJAX_CUDNN"  # "reference": lstm_ref in place of cuDNN, on any device
GATES_I = ("ii", "if", "ig", "io")
GATES_H = ("hi", "hf", "hg", "ho")


def reference_mode() -> bool:
  return os.environ.get(REFERENCE_ENV) == "reference"


def status() -> tuple[bool, str]:
  """(whether `CudnnLSTM` can run in this process, why not / what runs it)."""
  if reference_mode():
    return True, f"jax.experimental.rnn.lstm_ref in place of cuDNN (${REFERENCE_ENV})"
  backend = jax.default_backend()
  if backend != "gpu":
    return False, f"cuDNN needs an NVIDIA GPU; JAX runs on {backend}"
  if jax.device_count() != 1:
    return False, (f"{jax.device_count()} devices: the cuDNN layer runs the whole batch on "
                   "one device")
  return True, f"cuDNN on {jax.devices()[0].device_kind}"


def check() -> None:
  """Raises KernelUnavailable, with the cause, where `CudnnLSTM` cannot run."""
  ok, why = status()
  if not ok:
    raise KernelUnavailable(f"rnn_kernel 'cudnn' cannot run here: {why}. Use 'auto' (cuDNN "
                            "on a GPU, else the CPU kernel or the scan) or 'xla'.")


def pack(cell_params) -> jax.Array:
  """`nn.OptimizedLSTMCell`'s parameters as cuDNN's flat weight vector (one layer, one
  direction): W_ih, W_hh, b_ih (zeros), b_hh."""
  w_ih = jnp.concatenate([cell_params[k]["kernel"] for k in GATES_I], axis=1).T
  w_hh = jnp.concatenate([cell_params[k]["kernel"] for k in GATES_H], axis=1).T
  b_hh = jnp.concatenate([cell_params[k]["bias"] for k in GATES_H])
  return jnp.concatenate([w_ih.ravel(), w_hh.ravel(), jnp.zeros_like(b_hh), b_hh])


def unpack(weights: jax.Array, input_size: int, hidden_size: int) -> dict:
  """cuDNN's flat weight vector (one layer, one direction) as `nn.OptimizedLSTMCell`'s
  parameters; the two biases are added, as the cell has one."""
  w_ih, w_hh, b_ih, b_hh = (d[0] for d in rnn.unpack_lstm_weights(
      weights, input_size, hidden_size, 1, False))
  bias = b_ih + b_hh
  out = {}
  for k, (gi, gh) in enumerate(zip(GATES_I, GATES_H)):
    rows = slice(k * hidden_size, (k + 1) * hidden_size)
    out[gi] = {"kernel": w_ih[rows].T}
    out[gh] = {"kernel": w_hh[rows].T, "bias": bias[rows]}
  return out


def lstm(weights: jax.Array, x: jax.Array, h0: jax.Array, c0: jax.Array):
  """One layer, one direction: batch-major `x <f32>[B, T, I]` from `(h0, c0) <f32>[B, H]`
  -> (outputs `[B, T, H]`, h_T, c_T), by cuDNN (or `lstm_ref` in reference mode)."""
  batch, steps, inputs = x.shape
  hidden = h0.shape[-1]
  lengths = jnp.full((batch,), steps, jnp.int32)
  if reference_mode():
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, inputs, hidden, 1, False)
    y, h, c = rnn.lstm_ref(x, h0[None], c0[None], w_ih, w_hh, b_ih, b_hh, lengths, inputs,
                           hidden, 1, 0.0, False)
  else:
    y, h, c = rnn.lstm(x, h0[None], c0[None], weights, lengths, inputs, hidden, 1, 0.0, False)
  return y, h[0], c[0]


class CudnnLSTM(KernelRNN):
  """`nn.RNN(nn.OptimizedLSTMCell(H))`, run by cuDNN.

  A drop-in for the `nn.RNN` it subclasses, as `kernel_layers.KernelLSTM` is: the same
  fields and parameters (`cell/ii/kernel`, ...), the same call (`initial_carry`,
  `init_key`, `return_carry`, `time_major`, `reverse`, `keep_order`), so
  `nn.Bidirectional` takes it as is and stacked layers are a stack of it. `init` runs
  `nn.RNN`'s own scan, so parameters are created exactly as there. `seq_lengths` needs the
  scan (`rnn_kernel="xla"`).
  """

  CELL = nn.OptimizedLSTMCell

  def _require(self):
    check()

  def _run(self, x, carry, cell_params):
    c0, h0 = carry
    y, _, c_t = lstm(pack(cell_params), jnp.swapaxes(x, 0, 1), h0, c0)
    return jnp.concatenate([h0[None], jnp.swapaxes(y, 0, 1)]), c_t
