"""Measured at 5854821 (2026-11-27); historical, not maintained: the code has moved on since.

Experiment: the 2 cores as 2 XLA CPU devices, data parallel (each device half the batch,
gradients summed across them), against one device using both cores for each op.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python benchmarks/probes/two_devices.py BATCH HIDDEN [K]

Alternates, in one process, K steps per call of the loop's own `train.jit_train_steps()` on
one device and on a 2-device mesh (batch sharded as the loop shards it). Prints images/s
(median of 5 timed passes of 60 steps).
"""
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from rnnjax import presets, parallel, steps, train  # noqa: E402

B, H = int(sys.argv[1]), int(sys.argv[2])
K = int(sys.argv[3]) if len(sys.argv) > 3 else 10
N = 60
cfg = presets.get("tutorial").replace(hidden_size=H, batch_size=B)
rng = np.random.default_rng(0)
batch = {"image": rng.random((K, B, 28, 28), dtype=np.float32),
         "label": rng.integers(0, 10, (K, B)).astype(np.int32)}
many = train.jit_train_steps()
state0 = steps.create_train_state(cfg, jax.random.key(0))
setups = {}
dev0 = jax.devices()[0]
setups["1 device"] = (jax.device_put(state0, dev0), jax.device_put(batch, dev0))
if len(jax.devices()) > 1:
  mesh = parallel.make_mesh()
  setups[f"{mesh.size} devices"] = (parallel.replicate(state0, mesh),
                                    parallel.shard_batch(batch, mesh, stacked=True))


def run(name):
  st, b = setups[name]
  for _ in range(N // K):
    st, m = many(st, b)
  jax.block_until_ready(m)
  setups[name] = (st, b)


for name in setups:
  run(name)
rates = {name: [] for name in setups}
cores = {name: [] for name in setups}
for _ in range(5):
  for name in setups:
    c, t = time.process_time(), time.perf_counter()
    run(name)
    t = time.perf_counter() - t
    rates[name].append(N * B / t)
    cores[name].append((time.process_time() - c) / t)
for name, r in rates.items():
  print(f"B{B} H{H} K{K} {name}: {statistics.median(r):7.0f} img/s {[round(x) for x in r]}, "
        f"cores busy {statistics.median(cores[name]):.2f}")
