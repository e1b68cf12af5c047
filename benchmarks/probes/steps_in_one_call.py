"""Measured at 7d3e4b7 (2026-11-27); historical, not maintained: the code has moved on since.

Experiment: the loop's own jitted functions, `train.jit_train_steps()` (K steps per call,
a `lax.scan` over K stacked batches) against `train.jit_steps()` (one step per call), on 60
device-resident batches per timed pass, alternating in one process (median of 5).

    python benchmarks/probes/steps_in_one_call.py BATCH HIDDEN 1,10,30,60

Results: docs/lab/2026-11-speed-notes.md, items 8 (measured with an earlier version of this
script that built its own copy of the same model and step) and 12.
"""
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from rnnjax import presets, steps, train  # noqa: E402

B, H = int(sys.argv[1]), int(sys.argv[2])
Ks = [int(k) for k in sys.argv[3].split(",")]
N = 60
cfg = presets.get("tutorial").replace(hidden_size=H, batch_size=B)
rng = np.random.default_rng(0)
xs = rng.random((N, B, 28, 28), dtype=np.float32)
ys = rng.integers(0, 10, (N, B)).astype(np.int32)
one, _ = train.jit_steps()
many = train.jit_train_steps()
stacked = {K: jax.device_put({"image": xs[:K], "label": ys[:K]}) for K in Ks if K > 1}
single = [jax.device_put({"image": xs[i], "label": ys[i]}) for i in range(N)]
states = {K: steps.create_train_state(cfg, jax.random.key(0)) for K in Ks}


def run(K, st):
  if K == 1:
    for i in range(N):
      st, m = one(st, single[i])
  else:
    for _ in range(N // K):
      st, m = many(st, stacked[K])
  jax.block_until_ready(m)
  return st


for K in Ks:
  states[K] = run(K, states[K])  # compile
rates = {K: [] for K in Ks}
for _ in range(5):
  for K in Ks:
    t = time.perf_counter()
    states[K] = run(K, states[K])
    rates[K].append(N * B / (time.perf_counter() - t))
for K in Ks:
  print(f"B{B} H{H} {K:3d} per call: {statistics.median(rates[K]):7.0f} img/s "
        f"{[round(r) for r in rates[K]]}")
