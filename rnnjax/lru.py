"""The Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks
for Long Sequences") and a small deep model of it, computed in parallel over time.

One LRU layer, input `u_t <[H]>`, complex state `x_t <[N]>`::

    lambda = exp(-exp(nu) + i exp(theta))                  (|lambda| < 1: stable)
    x_t = lambda * x_{t-1} + exp(gamma) * (B u_t)          (elementwise in N; x_0 = 0)
    y_t = Re(C x_t) + D * u_t

The recurrence is linear, so all T states come from `jax.lax.associative_scan` with the
operator `(a1, b1) . (a2, b2) = (a2 a1, a2 b1 + b2)` in O(log T) parallel depth instead of
T sequential steps (`lru_states`; `lru_states_sequential` is the plain loop it is tested
against). `gamma = log sqrt(1 - |lambda|^2)` normalises the input so that every state
keeps unit variance at initialisation.

`LRUClassifier`: a dense encoder to `d_model` features, `num_blocks` residual blocks (layer
norm, LRU, GELU, a gated linear unit, dropout, residual connection), the mean over time,
then a dense readout: the minimal deep model of the paper.

Parameters (`params[...]`), model width H (`d_model`), state N (`state_size`), input
features F, classes C::

    encoder/{kernel <[F, H]>, bias <[H]>}
    block_{k}/norm/{scale, bias} <[H]>
    block_{k}/lru/{nu_log, theta_log, gamma_log} <[N]>
    block_{k}/lru/{B_re, B_im} <[N, H]>, {C_re, C_im} <[H, N]>, D <[H]>
    block_{k}/out/{kernel <[H, 2H]>, bias <[2H]>}   (the gated linear unit)
    head/{kernel <[H, C]>, bias <[C]>}

Initialisation as the paper's: |lambda| uniform (in area) on the ring [r_min, r_max]
(defaults 0.9 and 0.999) with phases uniform in [0, max_phase] (default 2 pi), B and C
Gaussian scaled by 1/sqrt(2H) and 1/sqrt(N), D standard normal.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnjax import models


def _ring_init(r_min: float, r_max: float, max_phase: float):
  """Initializers of nu_log and theta_log: |lambda| uniform on the ring [r_min, r_max]
  (in area), phase uniform in [0, max_phase]."""
  def nu_log(key, shape, dtype=jnp.float32):
    u = jax.random.uniform(key, shape, dtype)
    return jnp.log(-0.5 * jnp.log(u * (r_max ** 2 - r_min ** 2) + r_min ** 2))

  def theta_log(key, shape, dtype=jnp.float32):
    return jnp.log(max_phase * jax.random.uniform(key, shape, dtype))

  return nu_log, theta_log


def _normal(scale: float):
  def init(key, shape, dtype=jnp.float32):
    return scale * jax.random.normal(key, shape, dtype)
  return init


def _combine(left, right):
  """The associative operator of `x_t = a_t x_{t-1} + b_t` over the time axis (1)."""
  a1, b1 = left
  a2, b2 = right
  return a2 * a1, a2 * b1 + b2


def lru_states(lam: jax.Array, bu: jax.Array) -> jax.Array:
  """All states of `x_t = lam * x_{t-1} + bu_t` from `x_0 = 0`, in parallel over time:
  `lam <complex[N]>`, `bu <complex[batch, T, N]>` -> `<complex[batch, T, N]>`."""
  a = jnp.broadcast_to(lam, bu.shape)
  _, states = jax.lax.associative_scan(_combine, (a, bu), axis=1)
  return states


def lru_states_sequential(lam: jax.Array, bu: jax.Array) -> jax.Array:
  """The same states as `lru_states`, one step at a time (the reference it is tested
  against)."""
  def step(x, b):
    x = lam * x + b
    return x, x
  _, states = jax.lax.scan(step, jnp.zeros_like(bu[:, 0]), jnp.swapaxes(bu, 0, 1))
  return jnp.swapaxes(states, 0, 1)


class LRU(nn.Module):
  """One LRU layer over `u <[batch, T, H]>` -> `<[batch, T, H]>` (see the module docstring)."""

  state_size: int
  r_min: float = 0.9
  r_max: float = 0.999
  max_phase: float = 2 * math.pi
  parallel: bool = True  # False: the sequential loop (the same numbers, for checking)

  @nn.compact
  def __call__(self, u: jax.Array) -> jax.Array:
    n, h = self.state_size, u.shape[-1]
    nu_init, theta_init = _ring_init(self.r_min, self.r_max, self.max_phase)
    nu_log = self.param("nu_log", nu_init, (n,))
    theta_log = self.param("theta_log", theta_init, (n,))
    lam_abs = jnp.exp(-jnp.exp(nu_log))
    gamma_log = self.param("gamma_log",
                           lambda key, shape: jnp.log(jnp.sqrt(1 - lam_abs ** 2)), (n,))
    b_re = self.param("B_re", _normal(1 / math.sqrt(2 * h)), (n, h))
    b_im = self.param("B_im", _normal(1 / math.sqrt(2 * h)), (n, h))
    c_re = self.param("C_re", _normal(1 / math.sqrt(n)), (h, n))
    c_im = self.param("C_im", _normal(1 / math.sqrt(n)), (h, n))
    d = self.param("D", _normal(1.0), (h,))
    lam = jnp.exp(-jnp.exp(nu_log) + 1j * jnp.exp(theta_log))
    b = (b_re + 1j * b_im) * jnp.exp(gamma_log)[:, None]
    bu = jnp.einsum("btf,nf->btn", u.astype(b.dtype), b)
    states = (lru_states if self.parallel else lru_states_sequential)(lam, bu)
    c = c_re + 1j * c_im
    return jnp.einsum("btn,fn->btf", states, c).real.astype(u.dtype) + d * u


class LRUBlock(nn.Module):
  """Layer norm, LRU, GELU, a gated linear unit, dropout, and the residual connection."""

  state_size: int
  dropout: float = 0.0
  parallel: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    h = x.shape[-1]
    y = LRU(self.state_size, parallel=self.parallel, name="lru")(nn.LayerNorm(name="norm")(x))
    y = nn.gelu(y)
    value, gate = jnp.split(nn.Dense(2 * h, name="out")(y), 2, axis=-1)
    y = value * nn.sigmoid(gate)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return x + y


class LRUClassifier(nn.Module):
  """Encoder, `num_blocks` LRU blocks, then the dense readout of the mean over time (or,
  `readout="last"`, of the last step) (module docstring).

  Called as `SequenceClassifier` is: `<[batch, T, F]>` -> logits `<[batch, C]>`; with
  `all_steps=True`, the readout after every step, `<[batch, T, C]>`.
  """

  d_model: int = 64
  state_size: int = 64
  num_blocks: int = 4
  num_classes: int = 10
  dropout: float = 0.0
  readout: str = "mean"
  parallel: bool = True

  @nn.compact
  def __call__(self, inputs: jax.Array, all_steps: bool = False,
               train: bool = False) -> jax.Array:
    x = nn.Dense(self.d_model, name="encoder")(inputs)
    for k in range(self.num_blocks):
      x = LRUBlock(self.state_size, self.dropout, self.parallel, name=f"block_{k}")(x, train)
    return models.read_out(nn.Dense(self.num_classes, name="head"), x, self.readout,
                           all_steps)


def from_config(config) -> LRUClassifier:
  """The model a `Config` with `cell="lru"` describes: width `hidden_size`, `num_layers`
  blocks of state `state_size` (its registration, `rnnjax.config.CELLS`)."""
  return LRUClassifier(d_model=config.hidden_size, state_size=config.state_size,
                       num_blocks=config.num_layers, num_classes=config.num_classes,
                       dropout=config.dropout, readout=config.readout)
