"""Pure Flax modules: recurrent layers scanned by `nn.RNN`, and a dense readout.

On one CPU device, `nn.OptimizedLSTMCell` layers run on rnnjax's CPU kernel:
`lstm_kernel.KernelLSTM`, an `nn.RNN` with the same parameters (`make_rnn` picks the class).

Parameter paths are stable and documented, because interop code maps them to other
frameworks (see `SequenceClassifier`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax import cells
from rnnjax import lstm_kernel as kernel_lib

# Cells whose carry is `(c, h)`; the others carry `h` alone.
LSTM_CELLS = ("lstm", "lstm_cell")
TWO_STATE_CELLS = LSTM_CELLS + ("lem", "cornn")  # carry (memory, output)
KERNEL_CELLS = ("lstm", "lem")  # run by rnnjax's CPU kernel where it can (lstm_kernel.resolve)


def identity_init(key, shape, dtype=jnp.float32):
  """`<dtype>[n, n]` identity matrix (IRNN's recurrent kernel); `key` is unused."""
  del key
  if len(shape) != 2 or shape[0] != shape[1]:
    raise ValueError(f"identity_init needs a square 2-D shape, got {shape}")
  return jnp.eye(shape[0], dtype=dtype)


def make_cell(name: str, hidden_size: int, **options) -> nn.RNNCellBase:
  """The cell called `name` (see `rnnjax.config.CELLS`), unbound (`parent=None`) so that
  its parameters nest under the `nn.RNN` that scans it.

  * `lstm`: `nn.OptimizedLSTMCell` (the four gate matmuls fused into one).
  * `lstm_cell`: `nn.LSTMCell`: the same parameters and equations, unfused.
  * `gru`: `nn.GRUCell`: `r, z = sigmoid(...)`, `n = tanh(W_in x + b_in + r * (W_hn h +
    b_hn))`, `h' = (1 - z) * n + z * h`.
  * `tanh`: `nn.SimpleCell`: `h' = tanh(W_i x + b + W_h h)`.
  * `irnn`: the same with ReLU, the recurrent kernel initialised to the identity and the
    input kernel to N(0, 0.001^2) (Le, Jaitly and Hinton 2015, "A Simple Way to Initialize
    Recurrent Networks of Rectified Linear Units").
  * `lem`, `cornn`: `cells.LEMCell`, `cells.CoRNNCell` (their `options`: `dt`, and
    `gamma`, `epsilon` for coRNN; None takes the cell's default).
  """
  options = {k: v for k, v in options.items() if v is not None}
  if name == "lstm":
    return nn.OptimizedLSTMCell(hidden_size, parent=None)
  if name == "lstm_cell":
    return nn.LSTMCell(hidden_size, parent=None)
  if name == "gru":
    return nn.GRUCell(hidden_size, parent=None)
  if name == "tanh":
    return nn.SimpleCell(hidden_size, parent=None)
  if name == "irnn":
    return nn.SimpleCell(hidden_size, activation_fn=nn.relu,
                         kernel_init=nn.initializers.normal(1e-3),
                         recurrent_kernel_init=identity_init, parent=None)
  if name == "lem":
    return cells.LEMCell(hidden_size, **options, parent=None)
  if name == "cornn":
    return cells.CoRNNCell(hidden_size, **options, parent=None)
  raise ValueError(f"unknown cell {name!r}")


def make_rnn(cell: str, hidden_size: int, implementation: str = "xla",
             cell_options: dict | None = None, **kwargs) -> nn.RNN:
  """One recurrent layer: `nn.RNN(make_cell(cell, hidden_size, **cell_options), **kwargs)`,
  or, for `lstm` and `lem` with `implementation="cpu"`, `lstm_kernel.KernelLSTM` and
  `lem_kernel.KernelLEM`: the same layer (fields, parameters, call) run by rnnjax's CPU
  kernel; for `lstm` with `implementation="cudnn"`, `cudnn.CudnnLSTM`, run by cuDNN.
  `implementation` is `cpu`, `cudnn` or `xla` (`lstm_kernel.resolve` turns `auto` into one
  of them); other cells always run as the scan."""
  if implementation not in ("cpu", "cudnn", "xla"):
    raise ValueError(f"implementation must be 'cpu', 'cudnn' or 'xla' (resolve 'auto' "
                     f"first), got {implementation!r}")
  layer = nn.RNN
  if implementation == "cudnn" and cell == "lstm":
    from rnnjax import cudnn
    layer = cudnn.CudnnLSTM
  elif implementation == "cpu" and cell in KERNEL_CELLS:
    from rnnjax import lem_kernel
    layer = {"lstm": kernel_lib.KernelLSTM, "lem": lem_kernel.KernelLEM}[cell]
  return layer(make_cell(cell, hidden_size, **(cell_options or {})), **kwargs)


class SequenceClassifier(nn.Module):
  """Recurrent layers over a sequence, then a dense layer on the last (or mean) output.

  Each layer is `nn.RNN(cell)` scanning over the time axis (both ways with
  `bidirectional`, outputs concatenated); the default cell is `nn.OptimizedLSTMCell`.

  Attributes:
    hidden_size: units of each recurrent layer (per direction).
    num_layers: stacked layers; layer k>0 reads the outputs of layer k-1.
    num_classes: logits of the readout.
    cell: `lstm`, `lstm_cell`, `gru`, `tanh`, `irnn`, `lem` or `cornn` (see `make_cell`).
    bidirectional: each layer is `nn.Bidirectional` of a forward and a backward RNN.
    dropout: rate of the dropout on every recurrent layer's outputs (active only with
      `train=True`, which then needs a `'dropout'` rng).
    readout: `last` (the last step's output; bidirectional: the forward half of the last
      step and the backward half of the first, i.e. each direction's final state) or `mean`
      (the mean over time of the outputs).
    forget_bias: added to the forget-gate biases by `init_params` (LSTM cells only); the
      module itself only records it.
    chrono_init: `init_params` sets the forget-gate biases to log U(1, T - 1) and the
      input-gate biases to their negative, T the input's length (`with_chrono_init`; LSTM
      cells only; recorded, as `forget_bias`).
    lstm_kernel: how `lstm` layers run, both directions of bidirectional ones: `xla` (the
      `nn.RNN` scan), `cpu` (`lstm_kernel.KernelLSTM`, rnnjax's CPU kernel: same parameters
      and equations, one call per layer, direction and pass) or `auto` (the kernel where it
      can run: one CPU device, float32, the library built; else the scan).
      `model_from_config` resolves `auto` when it builds the model; a module built with
      `auto` directly resolves it at its first call (`lstm_kernel.resolve`).
    cell_dt, cornn_gamma, cornn_epsilon: the `lem` and `cornn` cells' constants
      (`rnnjax.cells`; `cell_dt` None: the cell's own default).

  Parameters (`params[...]`), LSTM cells, hidden H, input features I (H, or 2H when
  bidirectional, for k > 0) and classes C::

    rnn_{k}/cell/{ii,if,ig,io}/kernel   <f32>[I, H]   input -> gate
    rnn_{k}/cell/{hi,hf,hg,ho}/kernel   <f32>[H, H]   hidden -> gate
    rnn_{k}/cell/{hi,hf,hg,ho}/bias     <f32>[H]      one bias per gate
    head/kernel                         <f32>[H, C]   ([2H, C] when bidirectional)
    head/bias                           <f32>[C]

  Bidirectional layers hold `rnn_{k}/forward_rnn/cell/...` and `rnn_{k}/backward_rnn/cell/...`.
  GRU cells: `{ir,iz,in}/{kernel,bias}`, `{hr,hz}/kernel`, `hn/{kernel,bias}`; tanh and IRNN
  cells: `i/{kernel,bias}`, `h/kernel`; LEM and coRNN cells: see `rnnjax.cells`.

  LSTM gates: i input, f forget, g cell candidate, o output (PyTorch's order). The carry is
  `(c, h)`; `c' = f*c + i*g`, `h' = o*tanh(c')`, with sigmoid for i, f, o and tanh for g.
  """

  hidden_size: int = 256
  num_layers: int = 1
  num_classes: int = 10
  cell: str = "lstm"
  bidirectional: bool = False
  dropout: float = 0.0
  readout: str = "last"
  forget_bias: float = 0.0
  chrono_init: bool = False
  lstm_kernel: str = "auto"
  cell_dt: float | None = None
  cornn_gamma: float = cells.CORNN_GAMMA
  cornn_epsilon: float = cells.CORNN_EPSILON

  @nn.compact
  def __call__(self, inputs: jnp.ndarray, all_steps: bool = False,
               train: bool = False) -> jnp.ndarray:
    """`<float32>[batch, time, features]` -> logits `<float32>[batch, num_classes]`.

    With `all_steps=True`, the readout is applied after every time step instead:
    `<float32>[batch, time, num_classes]` (how the prediction evolves as the sequence is
    read: the output at t, or with `mean` readout the mean of the outputs up to t; the last
    step equals the usual logits for unidirectional models).
    """
    x = inputs
    implementation = (kernel_lib.resolve(self.lstm_kernel, x.dtype) if self.cell in KERNEL_CELLS
                      else "xla")
    options = {"lem": {"dt": self.cell_dt},
               "cornn": {"dt": self.cell_dt, "gamma": self.cornn_gamma,
                         "epsilon": self.cornn_epsilon}}.get(self.cell)
    for k in range(self.num_layers):
      carry = zero_carry(x, self.hidden_size, self.cell)
      if self.bidirectional:  # the backward RNN reads the sequence reversed, keeps order
        rnn = nn.Bidirectional(
            make_rnn(self.cell, self.hidden_size, implementation, options, parent=None),
            make_rnn(self.cell, self.hidden_size, implementation, options, parent=None),
            name=f"rnn_{k}")
        x = rnn(x, initial_carry=(carry, carry))
      else:
        rnn = make_rnn(self.cell, self.hidden_size, implementation, options, name=f"rnn_{k}")
        x = rnn(x, initial_carry=carry)
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    head = nn.Dense(self.num_classes, name="head")
    if self.readout == "mean":
      if all_steps:
        t = jnp.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
        return head(jnp.cumsum(x, axis=1) / t)
      return head(jnp.mean(x, axis=1))
    if all_steps:
      return head(x)
    if self.bidirectional:
      h = self.hidden_size
      return head(jnp.concatenate([x[:, -1, :h], x[:, 0, h:]], axis=-1))
    return head(x[:, -1])


def zero_carry(x: jnp.ndarray, hidden_size: int, cell: str = "lstm"):
  """Zero carry for `x <[batch, time, f]>`: `(c, h)` for LSTM cells (`(z, y)` for LEM and
  coRNN), else `h`; each
  `[batch, hidden]`.

  Derived from the input rather than made fresh, so that it has the input's dtype (float64
  under x64) and its batch sharding (a fresh zero carry is unsharded, which a scan over a
  batch-sharded input rejects under explicit mesh axes).
  """
  zeros = jnp.broadcast_to(jnp.zeros_like(x[:, 0, :1]), (x.shape[0], hidden_size))
  return (zeros, zeros) if cell in TWO_STATE_CELLS else zeros


def with_forget_bias(params: Any, value: float) -> Any:
  """`params` with `value` added to every forget-gate bias (`.../cell/hf/bias`)."""
  if value == 0:
    return params

  def add(path, leaf):
    names = [getattr(p, "key", None) for p in path]
    return leaf + value if names[-3:] == ["cell", "hf", "bias"] else leaf

  return jax.tree_util.tree_map_with_path(add, params)


def with_chrono_init(params: Any, key: jax.Array, steps: int) -> Any:
  """`params` with chrono initialisation (Tallec and Ollivier 2018, "Can recurrent neural
  networks warp time?"): every LSTM layer's forget-gate bias `.../cell/hf/bias` drawn as
  log(u), u ~ U(1, steps - 1) per unit, and its input-gate bias `.../cell/hi/bias` set to
  the negative. A unit's memory then starts out lasting about u steps, spread up to the
  sequence length, instead of the few steps a bias of 0 or 1 gives (sigmoid(1)^t).
  The other parameters are unchanged. Layer j of the sorted paths draws from
  `fold_in(key, j)`."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  names = {tuple(getattr(p, "key", None) for p in path): leaf for path, leaf in flat}
  forget = sorted(n for n in names if n[-3:] == ("cell", "hf", "bias"))
  biases = {}
  for j, name in enumerate(forget):
    leaf = names[name]
    u = jax.random.uniform(jax.random.fold_in(key, j), leaf.shape, leaf.dtype,
                           minval=1.0, maxval=max(steps - 1, 1.0))
    biases[name] = jnp.log(u)
    biases[name[:-2] + ("hi", "bias")] = -jnp.log(u)

  def replace(path, leaf):
    return biases.get(tuple(getattr(p, "key", None) for p in path), leaf)

  return jax.tree_util.tree_map_with_path(replace, params)


def init_params(model: SequenceClassifier, key: jax.Array, inputs: jnp.ndarray) -> Any:
  """`model.init(key, inputs)['params']`, with the model's forget-gate bias or chrono
  initialisation applied (LSTM cells; chrono draws from `fold_in(key, 1)`)."""
  params = model.init(key, inputs)["params"]
  if getattr(model, "forget_bias", 0) and model.cell in LSTM_CELLS:
    params = with_forget_bias(params, model.forget_bias)
  if getattr(model, "chrono_init", False) and model.cell in LSTM_CELLS:
    params = with_chrono_init(params, jax.random.fold_in(key, 1), inputs.shape[1])
  return params


def model_from_config(config) -> nn.Module:
  """The one bridge from a `Config` to the model's arguments; `lstm_kernel="auto"` is
  resolved here, once (`cpu` or `xla`, `lstm_kernel.resolve`). The `lru` cell's model is
  `lru.LRUClassifier`, every other cell's `SequenceClassifier`."""
  if config.cell == "lru":
    from rnnjax import lru
    return lru.LRUClassifier(
        d_model=config.hidden_size, state_size=config.state_size,
        num_blocks=config.num_layers, num_classes=config.num_classes,
        dropout=config.dropout, readout=config.readout)
  return SequenceClassifier(
      hidden_size=config.hidden_size, num_layers=config.num_layers,
      num_classes=config.num_classes, cell=config.cell, bidirectional=config.bidirectional,
      dropout=config.dropout, readout=config.readout, forget_bias=config.forget_bias,
      chrono_init=config.chrono_init,
      lstm_kernel=kernel_lib.resolve(config.lstm_kernel) if config.cell in KERNEL_CELLS
      else config.lstm_kernel, cell_dt=config.cell_dt, cornn_gamma=config.cornn_gamma,
      cornn_epsilon=config.cornn_epsilon)
