"""The Flax layers that rnnjax's CPU kernel runs: `KernelLSTM` (an
`nn.RNN(nn.OptimizedLSTMCell)`) and `KernelLEM` (an `nn.RNN(cells.LEMCell)`), each with the
same fields, parameters and call as the `nn.RNN` it subclasses, so `nn.Bidirectional`
takes them as they are. `init` runs `nn.RNN`'s own scan, so parameters are created exactly
as there; every other call is one kernel call forward and one backward (XLA FFI;
`rnnjax.cpu_kernel` builds and loads the library on a layer's first call).
`models.make_rnn` picks these classes where `models.resolve` says the kernel can run
(`Config.rnn_kernel`). `tanh_recurrence` runs the LMU's hidden state once its memory is
computed in parallel (`rnnjax.lmu`).

Same parameters, same equations, float32. LSTM::

    z_t = x_t @ W_i + h_{t-1} @ W_h + b        W_i = [ii|if|ig|io], W_h = [hi|hf|hg|ho]
    i, f, o = sigmoid(z_t[gate]), g = tanh(z_t[g])
    c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t)

per time step one matmul `[x_t | h_{t-1} | 1] [W_i; W_h; b]` and one fused loop. LEM
(`rnnjax.cells.LEMCell`)::

    p = [x_t | y | 1] [input[:, :3H]; hidden; input_bias[:3H] + hidden_bias]
    dt_bar = dt * sigmoid(p_1),  dt_z = dt * sigmoid(p_2)
    z' = (1 - dt_z) * z + dt_z * tanh(p_3)
    y' = (1 - dt_bar) * y + dt_bar * tanh(z' @ z_kernel + z_bias + x_t @ input[:, 3H:]
                                          + input_bias[3H:])

per time step two matmuls (the second needs z') and two fused loops; the input's share of
the y-update is one matmul over every step before the recurrence starts.

Why the kernel exists (docs/performance.md, "How LSTM layers run"): XLA's CPU backend
spends a large share of the scan's step in some 20 small element-wise fusions per time step
and runs the backward pass's transposed matmul below its forward speed. The kernel's cores
(XLA's own intra-op threads) each run the whole recurrence for their share of the batch
(batch rows are independent until the weight gradients: each core adds up its rows' share
step by step, and the shares are summed at the end). The backward pass runs the recurrence
in reverse for the cotangents of the pre-activations; where the layer's input is not
differentiated (a model's first layer reading data), it skips that cotangent.

Outputs and gradients agree with the scan to float32 rounding (tests/test_lstm_kernel.py,
tests/test_lem_kernel.py). The layers define reverse-mode derivatives only (a
`jax.custom_vjp`): `jax.grad` and `jax.vjp` work, forward mode (`jax.jvp`, `jax.hessian`)
needs `rnn_kernel="xla"`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import cells, cpu_kernel


def _shape(*dims):
  return jax.ShapeDtypeStruct(dims, jnp.float32)


def _primal_values(*primals):
  """The values of a `custom_vjp` forward rule's arguments under `symbolic_zeros=True`, and
  a residual that tells the backward rule whether the first (a layer's input) is
  differentiated: `()` if so, else None (a data input's cotangent, a matmul over every step,
  is then skipped)."""
  return [p.value for p in primals], () if primals[0].perturbed else None


def _dense(cotangent):
  """A cotangent as an array (`symbolic_zeros=True` passes a zero one as `SymbolicZero`)."""
  if isinstance(cotangent, jax.custom_derivatives.SymbolicZero):
    return jnp.zeros(cotangent.shape, cotangent.dtype)
  return cotangent


class KernelRNN(nn.RNN):
  """An `nn.RNN` whose calls (not its `init`) run on a fused kernel: the shared part of
  `KernelLSTM`, `KernelLEM` and `cudnn.CudnnLSTM`. A subclass names the cell it runs
  (`CELL`), `_require()` (raises `cpu_kernel.KernelUnavailable` saying why where its kernel
  cannot run; a layer built by hand loads its kernel there, on first use) and
  `_run(x, carry, cell_params)`: time-major x and the cell's carry `(memory, output)` ->
  (the outputs with the initial one in front `[T+1, B, H]`, the final memory)."""

  CELL: type = nn.RNNCellBase

  def _require(self) -> None:
    raise NotImplementedError

  def _run(self, x, carry, cell_params):
    raise NotImplementedError

  def __call__(self, inputs, *, initial_carry=None, init_key=None, seq_lengths=None,
               return_carry=None, time_major=None, reverse=None, keep_order=None):
    if self.is_initializing():
      return super().__call__(inputs, initial_carry=initial_carry, init_key=init_key,
                              seq_lengths=seq_lengths, return_carry=return_carry,
                              time_major=time_major, reverse=reverse, keep_order=keep_order)
    pick = lambda given, field: field if given is None else given  # noqa: E731
    return_carry, time_major = pick(return_carry, self.return_carry), pick(time_major,
                                                                           self.time_major)
    reverse, keep_order = pick(reverse, self.reverse), pick(keep_order, self.keep_order)
    name, cell = type(self).__name__, self.CELL.__name__
    if seq_lengths is not None:
      raise NotImplementedError(f"{name} reads whole sequences; for seq_lengths use "
                                "nn.RNN (rnn_kernel='xla')")
    if not isinstance(self.cell, self.CELL) or inputs.ndim != 3:
      raise ValueError(f"{name} runs {cell} on [batch, time, features] inputs; got "
                       f"{type(self.cell).__name__} on shape {inputs.shape}")
    if inputs.dtype != jnp.float32:
      raise cpu_kernel.KernelUnavailable(f"{name} computes in float32, the input is "
                                         f"{inputs.dtype}; use rnn_kernel 'xla'")
    self._require()
    x = inputs if time_major else jnp.swapaxes(inputs, 0, 1)  # [time, batch, features]
    if reverse:
      x = jnp.flip(x, 0)
    if initial_carry is None:
      key = jax.random.key(0) if init_key is None else init_key
      initial_carry = self.cell.initialize_carry(key, x.shape[1:])
    hs, memory = self._run(x, initial_carry, self.variables["params"]["cell"])
    outputs = jnp.flip(hs[1:], 0) if reverse and keep_order else hs[1:]
    outputs = outputs if time_major else jnp.swapaxes(outputs, 0, 1)
    return ((memory, hs[-1]), outputs) if return_carry else outputs



# LSTM

@jax.custom_vjp
def _lstm_layer(x, wi, wh, b, c0, h0):
  """Time-major x [T,B,F] -> (hs [T+1,B,H] with hs[0] = h0, c_T [B,H])."""
  t, batch, _ = x.shape
  h = wh.shape[0]
  return jax.ffi.ffi_call("rnnjax_lstm_infer", (_shape(t + 1, batch, h), _shape(batch, h)),
                          vmap_method="sequential")(x, wi, wh, b, c0, h0)


def _lstm_fwd(*primals):
  (x, wi, wh, b, c0, h0), with_dx = _primal_values(*primals)
  t, batch, f = x.shape
  h = wh.shape[0]
  hs, cs, xh, acts = jax.ffi.ffi_call(
      "rnnjax_lstm_fwd", (_shape(t + 1, batch, h), _shape(t + 1, batch, h),
                          _shape(t, batch, f + h + 1), _shape(t, batch, 4 * h)),
      vmap_method="sequential")(x, wi, wh, b, c0, h0)
  return (hs, cs[-1]), (wi, wh, xh, cs, acts, with_dx)


def _lstm_bwd(res, cotangents):
  wi, wh, xh, cs, acts, with_dx = res
  d_hs, d_c = map(_dense, cotangents)
  t, batch, _ = xh.shape
  f, h = wi.shape[0], wh.shape[0]
  dx, dwi, dwh, db, dc0, dh0 = jax.ffi.ffi_call(
      "rnnjax_lstm_bwd", (_shape(t if with_dx is not None else 0, batch, f), _shape(f, 4 * h),
                          _shape(h, 4 * h), _shape(4 * h), _shape(batch, h), _shape(batch, h)),
      vmap_method="sequential")(wi, wh, xh, cs, acts, d_hs[1:], d_c)
  return dx if with_dx is not None else None, dwi, dwh, db, dc0, dh0 + d_hs[0]


_lstm_layer.defvjp(_lstm_fwd, _lstm_bwd, symbolic_zeros=True)


def _lstm_weights(cell_params):
  """`nn.OptimizedLSTMCell`'s parameters as the kernel's fused W_i, W_h, b."""
  wi = jnp.concatenate([cell_params[k]["kernel"] for k in ("ii", "if", "ig", "io")], axis=1)
  wh = jnp.concatenate([cell_params[k]["kernel"] for k in ("hi", "hf", "hg", "ho")], axis=1)
  b = jnp.concatenate([cell_params[k]["bias"] for k in ("hi", "hf", "hg", "ho")])
  return wi, wh, b


def lstm(cell_params, x: jax.Array, carry: tuple[jax.Array, jax.Array]):
  """`nn.RNN(nn.OptimizedLSTMCell)` with parameters `cell_params` (its `cell` subtree) on
  batch-major `x <f32>[B, T, F]` from `carry = (c0, h0)`: outputs `<f32>[B, T, H]`.

  Needs `status()[0]` (the library is loaded there)."""
  hs, _ = _lstm_layer(jnp.swapaxes(x, 0, 1), *_lstm_weights(cell_params), *carry)
  return jnp.swapaxes(hs[1:], 0, 1)


class KernelLSTM(KernelRNN):
  """`nn.RNN(nn.OptimizedLSTMCell(H))`, run by the CPU kernel.

  A drop-in for the `nn.RNN` it subclasses: the same fields and parameters (`cell/ii/kernel`,
  ...), the same call (`initial_carry`, `init_key`, `return_carry`, `time_major`, `reverse`,
  `keep_order`), so `nn.Bidirectional` takes it as is. `init` runs `nn.RNN`'s own scan, so
  parameters are created exactly as there. Inputs are `<f32>[batch, time, features]` (time
  first with `time_major`); `seq_lengths` needs the scan (`rnn_kernel="xla"`).
  """

  CELL = nn.OptimizedLSTMCell

  def _require(self):
    cpu_kernel.require()

  def _run(self, x, carry, cell_params):
    return _lstm_layer(x, *_lstm_weights(cell_params), *carry)


# LEM

def _lem_weights(p):
  """LEMCell's parameters as the kernel's arguments: wx, bx, wh, bh, wz, bz."""
  return (p["input"]["kernel"], p["input"]["bias"], p["hidden"]["kernel"], p["hidden"]["bias"],
          p["z"]["kernel"], p["z"]["bias"])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lem_layer(dt, x, wx, bx, wh, bh, wz, bz, z0, y0):
  """Time-major x [T,B,F] -> (ys [T+1,B,H] with ys[0] = y0, z_T [B,H])."""
  t, batch, _ = x.shape
  h = wz.shape[0]
  return jax.ffi.ffi_call("rnnjax_lem_infer", (_shape(t + 1, batch, h), _shape(batch, h)),
                          vmap_method="sequential")(x, wx, bx, wh, bh, wz, bz, z0, y0,
                                                    dt=np.float32(dt))


def _lem_fwd(dt, *primals):
  (x, wx, bx, wh, bh, wz, bz, z0, y0), with_dx = _primal_values(*primals)
  t, batch, f = x.shape
  h = wz.shape[0]
  ys, zs, xy, p, s = jax.ffi.ffi_call(
      "rnnjax_lem_fwd", (_shape(t + 1, batch, h), _shape(t + 1, batch, h),
                         _shape(t, batch, f + h + 1), _shape(t, batch, 3 * h),
                         _shape(t, batch, h)),
      vmap_method="sequential")(x, wx, bx, wh, bh, wz, bz, z0, y0, dt=np.float32(dt))
  return (ys, zs[-1]), (x, wx, wh, wz, xy, zs, p, s, with_dx)


def _lem_bwd(dt, res, cotangents):
  x, wx, wh, wz, xy, zs, p, s, with_dx = res
  d_ys, d_z = map(_dense, cotangents)
  t, batch, f = x.shape
  h = wz.shape[0]
  dx, dw1, dwxy, dbu, dwz, dz0, dy0 = jax.ffi.ffi_call(
      "rnnjax_lem_bwd", (_shape(t if with_dx is not None else 0, batch, f),
                         _shape(f + h + 1, 3 * h), _shape(f, h), _shape(h), _shape(h, h),
                         _shape(batch, h), _shape(batch, h)),
      vmap_method="sequential")(x, wx, wh, wz, xy, zs, p, s, d_ys[1:], d_z,
                                dt=np.float32(dt))
  d_wx = jnp.concatenate([dw1[:f], dwxy], axis=1)
  d_bx = jnp.concatenate([dw1[f + h], dbu])
  return (dx if with_dx is not None else None, d_wx, d_bx, dw1[f:f + h], dw1[f + h], dwz,
          dbu, dz0, dy0 + d_ys[0])


_lem_layer.defvjp(_lem_fwd, _lem_bwd, symbolic_zeros=True)


class KernelLEM(KernelRNN):
  """`nn.RNN(cells.LEMCell(H))`, run by the CPU kernel: a drop-in as `KernelLSTM`
  is for the LSTM (same fields, parameters and call; `init` runs `nn.RNN`'s own scan)."""

  CELL = cells.LEMCell

  def _require(self):
    cpu_kernel.require()

  def _run(self, x, carry, cell_params):
    return _lem_layer(float(self.cell.dt), x, *_lem_weights(cell_params), *carry)


# The LMU's hidden recurrence

@jax.custom_vjp
def tanh_recurrence(drive, w, h0):
  """`rnnjax.lmu.tanh_recurrence` on the CPU kernel: `h_t = tanh(drive_t + h_{t-1} @ w)` from
  `h0 <f32>[B, H]` over time-major `drive <f32>[T, B, H]` -> every `h_t`, `<f32>[T, B, H]`.
  Backward: one matmul per step for the cotangents, `w`'s gradient summed as it goes.

  Needs `status()[0]` (`cpu_kernel.require()` loads the library)."""
  return _tanh_fwd(drive, w, h0)[0]


def _tanh_fwd(drive, w, h0):
  t, batch, h = drive.shape
  hs = jax.ffi.ffi_call("rnnjax_tanh_fwd", _shape(t + 1, batch, h),
                        vmap_method="sequential")(drive, w, h0)
  return hs[1:], (w, hs)


def _tanh_bwd(res, d_hs):
  w, hs = res
  t, batch, h = d_hs.shape
  return tuple(jax.ffi.ffi_call(
      "rnnjax_tanh_bwd", (_shape(t, batch, h), _shape(h, h), _shape(batch, h)),
      vmap_method="sequential")(w, hs, d_hs))


tanh_recurrence.defvjp(_tanh_fwd, _tanh_bwd)
