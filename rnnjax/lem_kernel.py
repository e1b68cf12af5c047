"""A hand-written LEM layer for CPUs: `KernelLEM`, an `nn.RNN(cells.LEMCell)` with the same
fields, parameters and call, run by the C++ kernel that runs `lstm_kernel.KernelLSTM`
(rnnjax/csrc/lstm_cpu.cc, built and loaded by `rnnjax.lstm_kernel`; `Config.lstm_kernel`
chooses for both cells, and `models.make_rnn` picks it where `lstm_kernel.resolve` says it
can run).

Same parameters, same equations (`rnnjax.cells`), float32::

    p = [x_t | y | 1] [input[:, :3H]; hidden; input_bias[:3H] + hidden_bias]
    dt_bar = dt * sigmoid(p_1),  dt_z = dt * sigmoid(p_2)
    z' = (1 - dt_z) * z + dt_z * tanh(p_3)
    y' = (1 - dt_bar) * y + dt_bar * tanh(z' @ z_kernel + z_bias + x_t @ input[:, 3H:]
                                          + input_bias[3H:])

Per time step two matmuls (the second needs z') and two fused loops; the input's share
of the y-update is one matmul over every step before the recurrence starts. The backward
pass runs the recurrence in reverse for the cotangents of the pre-activations, then gets
every weight gradient as one matmul over all time steps and batch rows. Outputs and
gradients agree with the scan to float32 rounding (tests/test_lem_kernel.py). Reverse mode
only (a `jax.custom_vjp`), as the LSTM kernel.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import cells
from rnnjax import lstm_kernel as kernel_lib


def _shape(*dims):
  return jax.ShapeDtypeStruct(dims, jnp.float32)


def _weights(p):
  """LEMCell's parameters as the kernel's arguments: wx, bx, wh, bh, wz, bz."""
  return (p["input"]["kernel"], p["input"]["bias"], p["hidden"]["kernel"], p["hidden"]["bias"],
          p["z"]["kernel"], p["z"]["bias"])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _layer(dt, x, wx, bx, wh, bh, wz, bz, z0, y0):
  """Time-major x [T,B,F] -> (ys [T+1,B,H] with ys[0] = y0, z_T [B,H])."""
  t, batch, _ = x.shape
  h = wz.shape[0]
  return jax.ffi.ffi_call("rnnjax_lem_infer", (_shape(t + 1, batch, h), _shape(batch, h)),
                          vmap_method="sequential")(x, wx, bx, wh, bh, wz, bz, z0, y0,
                                                    dt=np.float32(dt))


def _layer_fwd(dt, *primals):
  (x, wx, bx, wh, bh, wz, bz, z0, y0), with_dx = kernel_lib.primal_values(*primals)
  t, batch, f = x.shape
  h = wz.shape[0]
  ys, zs, xy, p, s = jax.ffi.ffi_call(
      "rnnjax_lem_fwd", (_shape(t + 1, batch, h), _shape(t + 1, batch, h),
                         _shape(t, batch, f + h + 1), _shape(t, batch, 3 * h),
                         _shape(t, batch, h)),
      vmap_method="sequential")(x, wx, bx, wh, bh, wz, bz, z0, y0, dt=np.float32(dt))
  return (ys, zs[-1]), (x, wx, wh, wz, xy, zs, p, s, with_dx)


def _layer_bwd(dt, res, cotangents):
  x, wx, wh, wz, xy, zs, p, s, with_dx = res
  d_ys, d_z = map(kernel_lib.dense, cotangents)
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


_layer.defvjp(_layer_fwd, _layer_bwd, symbolic_zeros=True)


class KernelLEM(kernel_lib.KernelRNN):
  """`nn.RNN(cells.LEMCell(H))`, run by the CPU kernel: a drop-in as `lstm_kernel.KernelLSTM`
  is for the LSTM (same fields, parameters and call; `init` runs `nn.RNN`'s own scan)."""

  CELL = cells.LEMCell

  def _run(self, x, carry, cell_params):
    return _layer(float(self.cell.dt), x, *_weights(cell_params), *carry)
