"""Recurrent cells that Flax lacks, as Flax cells that `nn.RNN` scans, and the LSTM's
gate initialisations. Each cell is registered once, in `rnnjax.config.CELLS`.

Both are discretised second-order dynamics with a carry of two states, `(z, y)`, and emit
`y`; each is written from its paper's equations (and checked against a float64 NumPy
version of them, tests/helpers/reference.py).

* `LEMCell`, Long Expressive Memory (Rusch, Mishra, Erichson and Mahoney, ICLR 2022): two
  learned, input-dependent time steps in (0, dt) mix a fast and a slow state::

      dt_bar = dt * sigmoid(W_1 x + b_1 + V_1 y)      dt_z = dt * sigmoid(W_2 x + b_2 + V_2 y)
      z' = (1 - dt_z) * z + dt_z * tanh(W_z x + b_z + V_z y)
      y' = (1 - dt_bar) * y + dt_bar * tanh(W_y x + b_y + U z')

* `CoRNNCell`, the coupled oscillatory RNN (Rusch and Mishra, ICLR 2021): a network of
  damped, driven oscillators, stepped by an implicit-explicit scheme::

      z' = z + dt * (tanh(W x + b + W_z z + W_y y) - gamma * y - epsilon * z)
      y' = y + dt * z'

Parameters (`params[...]` under the layer's `cell`), input features F, hidden H:

    LEM:   input/{kernel <[F, 4H]>, bias <[4H]>}   (x -> dt_bar, dt_z, z-update, y-update)
           hidden/{kernel <[H, 3H]>, bias <[3H]>}  (y -> dt_bar, dt_z, z-update)
           z/{kernel <[H, H]>, bias <[H]>}         (z' -> y-update)
    coRNN: input/{kernel <[F, H]>, bias <[H]>}, z/kernel <[H, H]>, y/kernel <[H, H]>

Initialisation as in the authors' code: every LEM weight and bias uniform in
(-1/sqrt(H), 1/sqrt(H)); coRNN's one linear map over [x, z, y] as PyTorch initialises it,
uniform in (-1/sqrt(F + 2H), 1/sqrt(F + 2H)).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LEM_DT = 0.21  # the authors' sequential-MNIST setting
CORNN_DT, CORNN_GAMMA, CORNN_EPSILON = 0.042, 2.7, 4.7  # theirs for sequential MNIST


def uniform(scale: float):
  """Initializer: uniform in (-scale, scale)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


class _TwoStateCell(nn.RNNCellBase):
  """A carry `(z, y)` of two `[batch, H]` states, zero at the start; output `y`."""

  features: int

  def initialize_carry(self, rng: Any, input_shape: tuple[int, ...]):
    zeros = jnp.zeros((*input_shape[:-1], self.features), jnp.float32)
    return zeros, zeros

  @property
  def num_feature_axes(self) -> int:
    return 1


class LEMCell(_TwoStateCell):
  """Long Expressive Memory (see the module docstring); `dt` is the largest time step."""

  dt: float = LEM_DT

  @nn.compact
  def __call__(self, carry, x):
    z, y = carry
    h = self.features
    init = uniform(1 / math.sqrt(h))
    dense = lambda n, name: nn.Dense(n, kernel_init=init, bias_init=init, name=name)  # noqa
    i_dt_bar, i_dt_z, i_z, i_y = jnp.split(dense(4 * h, "input")(x), 4, axis=-1)
    h_dt_bar, h_dt_z, h_z = jnp.split(dense(3 * h, "hidden")(y), 3, axis=-1)
    dt_bar = self.dt * nn.sigmoid(i_dt_bar + h_dt_bar)
    dt_z = self.dt * nn.sigmoid(i_dt_z + h_dt_z)
    z = (1 - dt_z) * z + dt_z * jnp.tanh(i_z + h_z)
    y = (1 - dt_bar) * y + dt_bar * jnp.tanh(dense(h, "z")(z) + i_y)
    return (z, y), y


class CoRNNCell(_TwoStateCell):
  """Coupled oscillatory RNN (see the module docstring)."""

  dt: float = CORNN_DT
  gamma: float = CORNN_GAMMA
  epsilon: float = CORNN_EPSILON

  @nn.compact
  def __call__(self, carry, x):
    z, y = carry
    init = uniform(1 / math.sqrt(x.shape[-1] + 2 * self.features))
    drive = (nn.Dense(self.features, kernel_init=init, bias_init=init, name="input")(x)
             + nn.Dense(self.features, use_bias=False, kernel_init=init, name="z")(z)
             + nn.Dense(self.features, use_bias=False, kernel_init=init, name="y")(y))
    z = z + self.dt * (jnp.tanh(drive) - self.gamma * y - self.epsilon * z)
    y = y + self.dt * z
    return (z, y), y


def identity_init(key, shape, dtype=jnp.float32):
  """`<dtype>[n, n]` identity matrix (IRNN's recurrent kernel); `key` is unused."""
  del key
  if len(shape) != 2 or shape[0] != shape[1]:
    raise ValueError(f"identity_init needs a square 2-D shape, got {shape}")
  return jnp.eye(shape[0], dtype=dtype)


def irnn_cell(features: int, **kwargs) -> nn.SimpleCell:
  """IRNN (Le, Jaitly and Hinton 2015, "A Simple Way to Initialize Recurrent Networks of
  Rectified Linear Units"): `nn.SimpleCell` with ReLU, the recurrent kernel initialised to
  the identity and the input kernel to N(0, 0.001^2)."""
  return nn.SimpleCell(features, activation_fn=nn.relu,
                       kernel_init=nn.initializers.normal(1e-3),
                       recurrent_kernel_init=identity_init, **kwargs)


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


def lstm_gate_init(params: Any, key: jax.Array, steps: int, forget_bias: float = 0.0,
                   chrono_init: bool = False) -> Any:
  """The LSTM cells' initialisation options (`Config.forget_bias`, `Config.chrono_init`)
  applied to freshly initialised `params`; `steps` is the sequence length."""
  params = with_forget_bias(params, forget_bias)
  return with_chrono_init(params, key, steps) if chrono_init else params
