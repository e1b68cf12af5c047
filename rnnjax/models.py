"""Pure Flax modules: recurrent layers scanned by `nn.RNN`, and a dense readout.

A cell that registers a faster layer (`CellSpec.layers`) runs on it where it can: on one CPU
device, LSTM and LEM layers run on rnnjax's CPU kernel (`kernel_layers.KernelLSTM`,
`KernelLEM`: `nn.RNN`s with the same parameters), LSTM layers on one NVIDIA GPU on cuDNN
(`cudnn.CudnnLSTM`). `resolve` decides once how layers run (`Config.rnn_kernel`),
`make_rnn` picks the class, `describe` says it in words.

Parameter paths are stable and documented, because interop code maps them to other
frameworks (see `SequenceClassifier`).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax import cpu_kernel
from rnnjax.cells import uniform
from rnnjax.cpu_kernel import KernelUnavailable
from rnnjax.config import CELLS, HEAD_INITS, RNN_KERNELS, load

IMPLEMENTATIONS = ("cpu", "cudnn", "xla")  # how a layer runs, once `auto` is resolved


def make_cell(name: str, hidden_size: int, **options) -> nn.RNNCellBase:
  """The cell called `name` (a key of `rnnjax.config.CELLS`, which says what each is),
  unbound (`parent=None`) so that its parameters nest under the `nn.RNN` that scans it.

  `options` are the cell's own keywords (`dt=0.3` for `lem`); None values are left out, so
  that the cell's default holds."""
  spec = CELLS.get(name)
  if spec is None or spec.model:
    raise ValueError(f"unknown recurrent cell {name!r}; choose one of "
                     f"{[k for k, v in CELLS.items() if not v.model]}")
  kwargs = {k: v for k, v in options.items() if v is not None}
  return load(spec.make)(hidden_size, **kwargs, parent=None)


def cell_keywords(name: str, fields: dict[str, Any]) -> dict[str, Any]:
  """The cell's keywords from its `Config` fields (`CellSpec.options`: `cell_dt` -> `dt`)."""
  options = CELLS[name].options
  return {options[k]: v for k, v in fields.items() if k in options}


def make_rnn(cell: str, hidden_size: int, implementation: str = "xla",
             cell_options: dict | None = None, **kwargs) -> nn.RNN:
  """One recurrent layer: `nn.RNN(make_cell(cell, hidden_size, **cell_options), **kwargs)`,
  or, where the cell registers a layer for `implementation` (`CellSpec.layers`: `cpu` for
  rnnjax's CPU kernel, `cudnn` for cuDNN), that layer: the same fields, parameters and call.
  `implementation` is `cpu`, `cudnn` or `xla` (`resolve` turns `auto` into one
  of them); a cell without a layer for it runs as the scan."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS} (resolve 'auto' "
                     f"first), got {implementation!r}")
  layer = CELLS[cell].layers.get(implementation) if cell in CELLS else None
  layer = load(layer) if layer else nn.RNN
  return layer(make_cell(cell, hidden_size, **(cell_options or {})), **kwargs)


def describe(config) -> str:
  """How `config`'s recurrent layers run in this process, for the run's first line."""
  spec = CELLS[config.cell]
  if spec.model:  # a whole model, which says in its module how its layers run
    what = f"{spec.family}: its own model ({spec.make.split(':')[0]})"
    if "cpu" in spec.layers and resolve(config.rnn_kernel) == "cpu":
      engine = cpu_kernel.GEMM_NAMES[cpu_kernel.gemm_engine()]
      return f"{what}, its recurrence on rnnjax's CPU kernel ({engine})"
    return what
  layers = spec.layers  # the faster layers the cell registers, if any
  if not layers:
    return f"{config.cell} layers: nn.RNN scan"
  what = ("bidirectional " if config.bidirectional else "") + config.cell.upper()
  if config.rnn_kernel == "xla":
    return f"{what}: nn.RNN scan (--rnn-kernel xla)"
  from rnnjax import cudnn
  if config.rnn_kernel == "cudnn" and not cudnn.status()[0]:
    raise KernelUnavailable(f"--rnn-kernel cudnn cannot run here: {cudnn.status()[1]}. Use "
                            "auto (cuDNN on a GPU, else the CPU kernel or the nn.RNN scan) or "
                            "xla.")
  if config.rnn_kernel != "cpu" and resolve(config.rnn_kernel) == "cudnn":
    if "cudnn" in layers:
      return f"{what}: {cudnn.status()[1]}"
    return f"{what}: nn.RNN scan (cuDNN runs LSTM layers only)"
  ok, why = cpu_kernel.status()
  if ok:
    return f"{what}: rnnjax CPU kernel ({cpu_kernel.GEMM_NAMES[cpu_kernel.gemm_engine()]})"
  if config.rnn_kernel == "cpu":
    raise KernelUnavailable(f"--rnn-kernel cpu cannot run here: {why}. Use auto (the "
                            "nn.RNN scan where the kernel cannot run) or xla.")
  return f"{what}: nn.RNN scan ({why})"


def resolve(mode: str, dtype=jnp.float32) -> str:
  """`cpu`, `cudnn` or `xla` (`IMPLEMENTATIONS`): how a layer of a cell with fast layers
  (`CellSpec.layers`), computing in `dtype`, runs under `mode` (`config.RNN_KERNELS`).

  `auto` is `cudnn` on one NVIDIA GPU, `cpu` where `cpu_kernel.status()` allows, float32
  both, else `xla`; `cpu` or `cudnn` where it cannot run raises `KernelUnavailable` with the cause.
  `model_from_config` resolves the config's choice once, when it builds the model.
  (`cudnn` runs LSTM layers; under it, LEM layers run as the scan.)
  """
  if mode not in RNN_KERNELS:
    raise ValueError(f"rnn_kernel must be one of {RNN_KERNELS}, got {mode!r}")
  if mode == "xla":
    return "xla"
  from rnnjax import cudnn
  float32 = jnp.dtype(dtype) == jnp.float32
  if mode == "cudnn":
    cudnn.check()
    return "cudnn"
  if mode == "auto" and float32 and jax.default_backend() == "gpu" and cudnn.status()[0]:
    return "cudnn"
  ok, why = cpu_kernel.status()
  if ok and not float32:
    ok, why = False, f"the CPU kernel computes in float32, the input is {jnp.dtype(dtype)}"
  if not ok and mode == "cpu":
    raise KernelUnavailable(f"rnn_kernel 'cpu' cannot run here: {why}. Use 'auto' (the "
                            "scan where the kernel cannot run) or 'xla'.")
  return "cpu" if ok else "xla"


def cell_options(config) -> tuple[tuple[str, Any], ...]:
  """The `Config` fields `config.cell` reads, as `SequenceClassifier.cell_options`."""
  return tuple((k, getattr(config, k)) for k in CELLS[config.cell].reads())


class SequenceClassifier(nn.Module):
  """Recurrent layers over a sequence, then a dense layer on the last (or mean) output.

  Each layer is `nn.RNN(cell)` scanning over the time axis (both ways with
  `bidirectional`, outputs concatenated); the default cell is `nn.OptimizedLSTMCell`.

  Attributes:
    hidden_size: units of each recurrent layer (per direction).
    num_layers: stacked layers; layer k>0 reads the outputs of layer k-1.
    num_classes: logits of the readout.
    cell: a recurrent cell registered in `rnnjax.config.CELLS` (`lstm`, `gru`, `lem`, ...).
    bidirectional: each layer is `nn.Bidirectional` of a forward and a backward RNN.
    dropout: rate of the dropout on every recurrent layer's outputs (active only with
      `train=True`, which then needs a `'dropout'` rng).
    readout: `last` (the last step's output; bidirectional: the forward half of the last
      step and the backward half of the first, i.e. each direction's final state) or `mean`
      (the mean over time of the outputs).
    cell_options: the cell's options as `(Config field, value)` pairs (`cell_options`;
      `CellSpec.options` go to the cell, `CellSpec.init_options` to `init_params`).
    rnn_kernel: how layers of a cell with a fast layer (`CellSpec.layers`) run, both
      directions of bidirectional ones: `xla` (the `nn.RNN` scan), `cpu` (rnnjax's CPU
      kernel: same parameters and equations, one call per layer, direction and pass) or
      `cudnn` (cuDNN's fused LSTM), or `auto`: `model_from_config` resolves it once, when
      it builds the model (`resolve`); a model built by hand with `auto`
      resolves it when called, by the input's dtype too (float64 runs the scan).

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
  cell_options: tuple[tuple[str, Any], ...] = ()
  rnn_kernel: str = "auto"
  head_init: str = "lecun"

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
    implementation = self.rnn_kernel
    if implementation == "auto":  # built by hand: resolved here (`model_from_config` did it)
      implementation = (resolve("auto", x.dtype) if CELLS[self.cell].layers
                        else "xla")
    options = cell_keywords(self.cell, dict(self.cell_options))
    for k in range(self.num_layers):
      carry = zero_carry(x, make_cell(self.cell, self.hidden_size, **options))
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
    head = dense_head(self.num_classes, x.shape[-1], self.head_init)
    if self.bidirectional and self.readout == "last" and not all_steps:
      h = self.hidden_size
      return head(jnp.concatenate([x[:, -1, :h], x[:, 0, h:]], axis=-1))
    return read_out(head, x, self.readout, all_steps)


def dense_head(num_classes: int, fan_in: int, init: str = "lecun") -> nn.Dense:
  """The readout layer, named `head`, for inputs of `fan_in` features. `init` (one of
  `config.HEAD_INITS`): `lecun`, flax's `Dense` default (LeCun-normal weights, truncated;
  zero bias); `he`, He-normal weights (normal, std sqrt(2 / fan_in), not truncated) and a
  bias uniform in +-1/sqrt(fan_in): PyTorch's `kaiming_normal_` on an `nn.Linear`, how the
  LEM authors initialise their classifier. The larger readout sends larger gradients into
  the recurrence in the first steps; their recipe learns much faster with it (docs/lab/)."""
  if init == "lecun":
    return nn.Dense(num_classes, name="head")
  if init == "he":
    return nn.Dense(num_classes, name="head",
                    kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
                    bias_init=uniform(1 / math.sqrt(fan_in)))
  raise ValueError(f"unknown head init {init!r}; choose one of {HEAD_INITS}")


def read_out(head: nn.Module, x: jnp.ndarray, readout: str, all_steps: bool,
             time_axis: int = 1) -> jnp.ndarray:
  """`head` applied to the layers' outputs `x <[batch, time, H]>` (`<[time, batch, H]>` with
  `time_axis=0`): to the last step (`readout="last"`) or to the mean over time (`"mean"`);
  with `all_steps`, after every step (the output at t, or the mean of the outputs up to t),
  `<[batch, time, C]>`."""
  if readout == "mean":
    if not all_steps:
      return head(jnp.mean(x, axis=time_axis))
    shape = [1] * x.ndim
    shape[time_axis] = x.shape[time_axis]
    t = jnp.arange(1, x.shape[time_axis] + 1, dtype=x.dtype).reshape(shape)
    y = head(jnp.cumsum(x, axis=time_axis) / t)
  elif not all_steps:
    return head(jnp.take(x, -1, axis=time_axis))
  else:
    y = head(x)
  return jnp.moveaxis(y, time_axis, 1)


def zero_carry(x: jnp.ndarray, cell: nn.RNNCellBase):
  """The zero carry of `cell` for `x <[batch, time, f]>`, shaped as the cell's own
  `initialize_carry` makes it (`h`, or `(c, h)` for an LSTM, ...).

  Derived from the input rather than made fresh, so that it has the input's dtype (float64
  under x64) and its batch sharding (a fresh zero carry is unsharded, which a scan over a
  batch-sharded input rejects under explicit mesh axes).
  """
  shape = x[:, 0].shape
  shapes = jax.eval_shape(lambda: cell.initialize_carry(jax.random.key(0), shape))
  zero = jnp.zeros_like(x[:, 0, :1])
  return jax.tree.map(lambda s: jnp.broadcast_to(zero, s.shape), shapes)


def init_params(model: nn.Module, key: jax.Array, inputs: jnp.ndarray) -> Any:
  """`model.init(key, inputs)['params']`, then the cell's own initialisation where it
  registers one (`CellSpec.init`: the LSTM's forget-gate bias or chrono initialisation,
  drawing from `fold_in(key, 1)`)."""
  params = model.init(key, inputs)["params"]
  spec = CELLS.get(getattr(model, "cell", None))
  if spec is not None and spec.init:
    options = dict(getattr(model, "cell_options", ()))
    params = load(spec.init)(params, jax.random.fold_in(key, 1), inputs.shape[1],
                             **{k: options[k] for k in spec.init_options if k in options})
  return params


def model_from_config(config) -> nn.Module:
  """The one bridge from a `Config` to the model; `rnn_kernel="auto"` is resolved here,
  once (`resolve`). A cell registered as a whole model (`CellSpec.model`, as
  `lru`) builds itself from the config; every other cell's model is `SequenceClassifier`."""
  spec = CELLS[config.cell]
  if spec.model:
    return load(spec.make)(config)
  return SequenceClassifier(
      hidden_size=config.hidden_size, num_layers=config.num_layers,
      num_classes=config.num_classes, cell=config.cell, bidirectional=config.bidirectional,
      dropout=config.dropout, readout=config.readout, cell_options=cell_options(config),
      rnn_kernel=resolve(config.rnn_kernel) if spec.layers else "xla",
      head_init=config.head_init)
