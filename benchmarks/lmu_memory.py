"""The LMU's memory term for every step, `z[b, t, :] = sum_k u[b, t - k] K[k, :]` with
`K = H W_m` (the memory's impulse response through W_m), four ways, at keras-lmu's psMNIST
shape (batch 100, 784 steps, order 256, 212 hidden units): the FFT convolution
(`lmu.causal_convolution`, `memory_method="fft"`), one matmul on the Toeplitz rows of u,
blocks of 56 steps by block distance, and the memory's own state at blocks of 16 steps
(`lmu.memory_drive_by_blocks`, what `LMUCell.sequence` uses by default). Prints each one's
forward and forward+backward time (gradients of u and W_m; the mean of 5 calls after one
warm-up call, in this process) and its distance from the FFT's result.

    python benchmarks/lmu_memory.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from rnnjax import lmu

BATCH, STEPS, HIDDEN = 100, 784, 212
BLOCK = 56  # steps per block (784 = 14 x 56)
ORDER, THETA = 256, 784.0  # the memory of keras-lmu's psMNIST model
STATE_BLOCK = 16  # `lmu.memory_drive_by_blocks`'s default


def toeplitz(u, g):
  """One `[B, T, T] x [T, H]` matmul on the lower-triangular Toeplitz rows of u."""
  lag = jnp.arange(STEPS)[:, None] - jnp.arange(STEPS)[None, :]  # t - k
  rows = jnp.where(lag >= 0, u[:, :, 0][:, jnp.clip(lag, 0)], 0.0)  # [B, T, T]
  return rows @ g[0]


def blocked(u, g):
  """Blocks of `BLOCK` steps: block c reads each block c - d through the `[L, L, H]` slice
  of the response at block distance d."""
  blocks = STEPS // BLOCK
  ub = u[:, :, 0].reshape(BATCH, blocks, BLOCK)
  lag = jnp.arange(BLOCK)[:, None] - jnp.arange(BLOCK)[None, :]  # i - j within a block pair
  out = jnp.zeros((BATCH, blocks, BLOCK, HIDDEN))
  for d in range(blocks):
    k = d * BLOCK + lag
    kd = jnp.where((k >= 0)[..., None], g[0][jnp.clip(k, 0, STEPS - 1)], 0.0)  # [L, L, H]
    out = out.at[:, d:].add(jnp.einsum("bcj,ijh->bcih", ub[:, :blocks - d], kd))
  return out.reshape(BATCH, STEPS, HIDDEN)


def milliseconds(f, *args, calls: int = 5) -> float:
  jax.block_until_ready(f(*args))
  start = time.perf_counter()
  for _ in range(calls):
    out = f(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / calls * 1e3


def main():
  keys = jax.random.split(jax.random.key(0), 3)
  u = jax.random.normal(keys[0], (BATCH, STEPS, 1))
  w_m = jax.random.normal(keys[1], (ORDER, HIDDEN)) / 16
  cotangent = jax.random.normal(keys[2], (BATCH, STEPS, HIDDEN))
  response = jnp.asarray(lmu.impulse_response(ORDER, THETA, STEPS), jnp.float32)

  def through(f):  # a method on the response through W_m, as a function of (u, W_m)
    return lambda u, w_m: f(u, (response @ w_m)[None])

  methods = (("fft", through(lmu.causal_convolution)), ("toeplitz", through(toeplitz)),
             (f"blocks of {BLOCK}", through(blocked)),
             (f"the state at blocks of {STATE_BLOCK}", lambda u, w_m: lmu.memory_drive_by_blocks(
                 u, w_m, ORDER, THETA, STATE_BLOCK)))
  want = jax.jit(methods[0][1])(u, w_m)
  for name, f in methods:
    got = jax.jit(f)(u, w_m)
    diff = float(jnp.abs(got - want).max() / jnp.abs(want).max())
    # The cotangent is an argument: closed over, XLA would fold it into the program.
    grad = jax.jit(jax.grad(lambda u, w, c, f=f: (f(u, w) * c).sum(), argnums=(0, 1)))
    print(f"{name}: forward {milliseconds(jax.jit(f), u, w_m):.1f} ms, forward+backward "
          f"{milliseconds(grad, u, w_m, cotangent):.1f} ms, relative difference from fft "
          f"{diff:.1e}")


if __name__ == "__main__":
  main()
