"""Measured at 5cb070a (2026-11-27); historical, not maintained: the code has moved on since.

Experiment (not adopted, see docs/lab/2026-11-speed-notes.md): a whole LSTM layer as one
function with a hand-written backward pass.

`lstm_layer` computes exactly the recurrence of `nn.RNN(nn.OptimizedLSTMCell)` on the same
parameters, but is organised the way cuDNN and oneDNN organise it, which is what makes it
faster than differentiating the scan automatically:

* forward: the input projection `x @ W_i` of all time steps is one large matmul before the
  scan; only `h @ W_h` and the gate nonlinearities stay inside it;
* backward (`jax.custom_vjp`): the reverse scan carries `(dc, dh)` and does only the
  recurrent matmul `dz @ W_h.T` per step; the weight gradients `dW_h = sum_t h_{t-1}^T dz_t`,
  `dW_i = sum_t x_t^T dz_t` and the input gradient are each one large matmul after it,
  instead of 28 small ones accumulated inside the loop.

Shapes (B batch, T time, F features, H hidden; gates packed as [i | f | g | o], each H)::

    x   <f>[B, T, F]      w_i <f>[F, 4H]    w_h <f>[H, 4H]    b <f>[4H]
    c0, h0 <f>[B, H]  ->  (c_T, h_T), hs <f>[B, T, H]

The forward adds in the cell's order, `(h @ W_h + b) + x @ W_i`, so that logits match the
Flax cell's; gradients differ from automatic differentiation only by summation order
(custom_vjp_compare.py prints both).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _gates(z: jnp.ndarray):
  i, f, g, o = jnp.split(z, 4, axis=-1)
  return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def _forward(w_i, w_h, b, x, c0, h0, unroll, keep):
  """The scan; with `keep`, also the per-step values the backward pass needs."""
  xw = _matmul_time_major(x, w_i)  # all time steps at once: <f>[T, B, 4H]

  def step(carry, xw_t):
    c, h = carry
    i, f, g, o = _gates((h @ w_h + b) + xw_t)
    c = f * c + i * g
    tc = jnp.tanh(c)
    h = o * tc
    out = (h, jnp.concatenate([i, f, g, o], -1), c, tc) if keep else h
    return (c, h), out

  (c, h), out = jax.lax.scan(step, (c0, h0), xw, unroll=unroll)
  return (c, h), out


def _matmul_time_major(x, w):
  """`x <[B, T, F]> @ w <[F, G]>` as `<[T, B, G]>`: the transpose first and a plain 2-D
  matmul, which XLA's CPU backend runs several times faster than the same einsum with a
  transposed output layout (measured: 3 ms against 17 ms at B=100, T=28, G=1024)."""
  b, t, f = x.shape
  return (jnp.swapaxes(x, 0, 1).reshape(t * b, f) @ w).reshape(t, b, w.shape[1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def lstm_layer(w_i, w_h, b, x, c0, h0, unroll: int = 1):
  (c, h), hs = _forward(w_i, w_h, b, x, c0, h0, unroll, keep=False)
  return (c, h), jnp.swapaxes(hs, 0, 1)


def _lstm_fwd(w_i, w_h, b, x, c0, h0, unroll):
  (c, h), (hs, acts, cs, tcs) = _forward(w_i, w_h, b, x, c0, h0, unroll, keep=True)
  return ((c, h), jnp.swapaxes(hs, 0, 1)), (w_i, w_h, x, c0, h0, hs, acts, cs, tcs)


def _lstm_bwd(unroll, res, cotangents):
  w_i, w_h, x, c0, h0, hs, acts, cs, tcs = res
  (dc_T, dh_T), dhs = cotangents
  dhs = jnp.swapaxes(dhs, 0, 1)  # [T, B, H]
  c_prev = jnp.concatenate([c0[None], cs[:-1]], 0)
  w_h_t = w_h.T

  def step(carry, inputs):
    dc, dh = carry
    dh_t, act, c_p, tc = inputs
    i, f, g, o = jnp.split(act, 4, axis=-1)
    dh = dh + dh_t
    dc = dc + dh * o * (1 - tc * tc)
    dz = jnp.concatenate([dc * g * i * (1 - i), dc * c_p * f * (1 - f),
                          dc * i * (1 - g * g), dh * tc * o * (1 - o)], -1)
    return (dc * f, dz @ w_h_t), dz

  (dc0, dh0), dz = jax.lax.scan(step, (dc_T, dh_T), (dhs, acts, c_prev, tcs),
                                reverse=True, unroll=unroll)
  t, b, g = dz.shape
  dz = dz.reshape(t * b, g)
  h_prev = jnp.concatenate([h0[None], hs[:-1]], 0).reshape(t * b, -1)
  x_t = jnp.swapaxes(x, 0, 1).reshape(t * b, -1)
  d_w_h = h_prev.T @ dz
  d_w_i = x_t.T @ dz
  d_b = dz.sum(0)
  d_x = jnp.swapaxes((dz @ w_i.T).reshape(t, b, -1), 0, 1)
  return d_w_i, d_w_h, d_b, d_x, dc0, dh0


lstm_layer.defvjp(_lstm_fwd, _lstm_bwd)
