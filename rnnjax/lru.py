"""The Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks
for Long Sequences") and a small deep model of it.

One LRU layer, input `u_t <[H]>`, complex state `x_t <[N]>`::

    lambda = exp(-exp(nu) + i exp(theta))                  (|lambda| < 1: stable)
    x_t = lambda * x_{t-1} + exp(gamma) * (B u_t)          (elementwise in N; x_0 = 0)
    y_t = Re(C x_t) + D * u_t

The recurrence is linear, so its input `B u_t` and its readout `C x_t` are matmuls over all
steps at once, outside it, in real arithmetic (XLA's CPU backend runs complex matmuls at a
fraction of the real rate). What remains step by step is `x_t = lambda x_{t-1} + b_t`, a
few element-wise operations per step (`linear_recurrence`): a plain `lax.scan` on a CPU, or
`jax.lax.associative_scan` with `(a1, b1) . (a2, b2) = (a2 a1, a2 b1 + b2)` in O(log T)
parallel depth elsewhere; both are tested against the complex loop
(`lru_states_sequential`). `gamma = log sqrt(1 - |lambda|^2)` normalises the input so that
every state keeps unit variance at initialisation.

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


RECURRENCES = ("auto", "sequential", "associative")


def _combine(left, right):
  """The associative operator of `x_t = a_t x_{t-1} + b_t` over the time axis (0), complex
  numbers as (real, imaginary) pairs: `(a1, b1) . (a2, b2) = (a2 a1, a2 b1 + b2)`."""
  a1r, a1i, b1r, b1i = left
  a2r, a2i, b2r, b2i = right
  return (a2r * a1r - a2i * a1i, a2r * a1i + a2i * a1r,
          a2r * b1r - a2i * b1i + b2r, a2r * b1i + a2i * b1r + b2i)


def linear_recurrence(lam_re, lam_im, b, method: str = "auto"):
  """Every state of `x_t = lam * x_{t-1} + b_t` from `x_0 = 0`, in real arithmetic, complex
  numbers as their real parts then their imaginary parts: `lam = lam_re + i lam_im <[N]>`,
  time-major `b <[T, B, 2N]>` -> `x <[T, B, 2N]>` (`x[..., :N]` real, `x[..., N:]`
  imaginary). That layout lets one matmul make every `b` and one read every `x`.

  `method`: `sequential`, a `lax.scan` of T steps, each a few element-wise operations on
  `[B, 2N]`; `associative`, `lax.associative_scan` (log T parallel depth, but each level
  reads and writes the whole sequence); `auto`, the sequential scan on a CPU, where it was
  measured faster (docs/performance.md), and the associative scan elsewhere."""
  if method not in RECURRENCES:
    raise ValueError(f"method must be one of {RECURRENCES}, got {method!r}")
  if method == "auto":
    method = "sequential" if jax.default_backend() == "cpu" else "associative"
  n = lam_re.shape[-1]
  if method == "associative":
    shape = b[..., :n].shape
    a = (jnp.broadcast_to(lam_re, shape), jnp.broadcast_to(lam_im, shape))
    x_re, x_im = jax.lax.associative_scan(_combine, (*a, b[..., :n], b[..., n:]), axis=0)[2:]
    return jnp.concatenate([x_re, x_im], axis=-1)
  # [x_re | x_im] -> [lam_re x_re - lam_im x_im | lam_re x_im + lam_im x_re]: the state
  # times (lam_re | lam_re), plus its halves swapped times (-lam_im | lam_im).
  same = jnp.concatenate([lam_re, lam_re])
  swapped = jnp.concatenate([-lam_im, lam_im])

  def step(x, b_t):
    x = same * x + swapped * jnp.roll(x, n, axis=-1) + b_t
    return x, x

  return jax.lax.scan(step, jnp.zeros_like(b[0]), b)[1]


def lru_states(lam: jax.Array, bu: jax.Array, method: str = "auto") -> jax.Array:
  """`linear_recurrence` in complex numbers, batch-major: `lam <complex[N]>`, `bu
  <complex[batch, T, N]>` -> every state `<complex[batch, T, N]>`."""
  b = jnp.swapaxes(bu, 0, 1)
  n = lam.shape[-1]
  x = linear_recurrence(lam.real, lam.imag, jnp.concatenate([b.real, b.imag], -1), method)
  return jnp.swapaxes(x[..., :n] + 1j * x[..., n:], 0, 1)


def lru_states_sequential(lam: jax.Array, bu: jax.Array) -> jax.Array:
  """The same states as `lru_states`, one complex step at a time (the reference it is
  tested against)."""
  def step(x, b):
    x = lam * x + b
    return x, x
  _, states = jax.lax.scan(step, jnp.zeros_like(bu[:, 0]), jnp.swapaxes(bu, 0, 1))
  return jnp.swapaxes(states, 0, 1)


class LRU(nn.Module):
  """One LRU layer over time-major `u <[T, batch, H]>` -> `<[T, batch, H]>` (see the module
  docstring), in real arithmetic: `B u` as one real matmul over all steps at once (to the
  real and imaginary parts side by side), the recurrence by `linear_recurrence(method=
  recurrence)`, `Re(C x) = C_re x_re - C_im x_im` as one more."""

  state_size: int
  r_min: float = 0.9
  r_max: float = 0.999
  max_phase: float = 2 * math.pi
  recurrence: str = "auto"

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
    phase = jnp.exp(theta_log)
    gamma = jnp.exp(gamma_log)[:, None]
    w_in = jnp.concatenate([b_re * gamma, b_im * gamma]).T  # [H, 2N]: b_t = u_t @ w_in
    w_out = jnp.concatenate([c_re, -c_im], axis=1).T  # [2N, H]: Re(C x_t) = x_t @ w_out
    x = linear_recurrence(lam_abs * jnp.cos(phase), lam_abs * jnp.sin(phase), u @ w_in,
                          self.recurrence)
    return x @ w_out + d * u


class LRUBlock(nn.Module):
  """Layer norm, LRU, GELU, a gated linear unit, dropout, and the residual connection."""

  state_size: int
  dropout: float = 0.0
  recurrence: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    h = x.shape[-1]
    y = LRU(self.state_size, recurrence=self.recurrence,
            name="lru")(nn.LayerNorm(name="norm")(x))
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
  recurrence: str = "auto"
  head_init: str = "lecun"

  @nn.compact
  def __call__(self, inputs: jax.Array, all_steps: bool = False,
               train: bool = False) -> jax.Array:
    # Time-major inside, so that each step of the recurrence reads and writes contiguous
    # [batch, 2N] slices; the dense layers act on every step alike.
    x = nn.Dense(self.d_model, name="encoder")(jnp.swapaxes(inputs, 0, 1))
    for k in range(self.num_blocks):
      x = LRUBlock(self.state_size, self.dropout, self.recurrence,
                   name=f"block_{k}")(x, train)
    head = models.dense_head(self.num_classes, self.d_model, self.head_init)
    return models.read_out(head, x, self.readout, all_steps, time_axis=0)


def from_config(config) -> LRUClassifier:
  """The model a `Config` with `cell="lru"` describes: width `hidden_size`, `num_layers`
  blocks of state `state_size` (its registration, `rnnjax.config.CELLS`)."""
  return LRUClassifier(d_model=config.hidden_size, state_size=config.state_size,
                       num_blocks=config.num_layers, num_classes=config.num_classes,
                       dropout=config.dropout, readout=config.readout,
                       head_init=config.head_init)
