"""The LMU's memory term for every step, `z[b, t, :] = sum_k u[b, t - k] K[k, :]`, three
ways, at keras-lmu's psMNIST shape (batch 100, 784 steps, 212 hidden units): the FFT
convolution rnnjax uses (`lmu.causal_convolution`), one matmul on the Toeplitz rows of u,
and blocks of 56 steps. Prints each one's forward and forward+backward time (the mean of 5
calls after one warm-up call, in this process) and its distance from the FFT's result.

    python benchmarks/lmu_memory.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from rnnjax import lmu

BATCH, STEPS, HIDDEN = 100, 784, 212
BLOCK = 56  # steps per block (784 = 14 x 56)


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
  g = jax.random.normal(keys[1], (1, STEPS, HIDDEN)) / 30
  cotangent = jax.random.normal(keys[2], (BATCH, STEPS, HIDDEN))
  want = jax.jit(lmu.causal_convolution)(u, g)
  for name, f in (("fft", lmu.causal_convolution), ("toeplitz", toeplitz),
                  (f"blocks of {BLOCK}", blocked)):
    got = jax.jit(f)(u, g)
    diff = float(jnp.abs(got - want).max() / jnp.abs(want).max())
    grad = jax.jit(jax.grad(lambda u, g, f=f: (f(u, g) * cotangent).sum(), argnums=(0, 1)))
    print(f"{name}: forward {milliseconds(jax.jit(f), u, g):.1f} ms, forward+backward "
          f"{milliseconds(grad, u, g):.1f} ms, relative difference from fft {diff:.1e}")


if __name__ == "__main__":
  main()
