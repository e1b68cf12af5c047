"""Measured at 7d3e4b7 (2026-11-27); historical, not maintained: the code has moved on since.

Profile of the loop's jitted train step (`train.jit_steps()`, tutorial preset): the
milliseconds per step spent in each XLA CPU operation, from a jax.profiler trace of 20
steps.

    python benchmarks/probes/profile_step.py BATCH HIDDEN

Result (docs/lab/2026-11-speed-notes.md, item 9, measured with an earlier version of this script
that built its own copy of the same model and step): about two thirds of the step in
matmuls, the rest in some 20 small element-wise fusions, stacking copies and buffer
initialisation.
"""
import collections
import glob
import gzip
import json
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from rnnjax import presets, steps, train  # noqa: E402

B, H = int(sys.argv[1]), int(sys.argv[2])
cfg = presets.get("tutorial").replace(hidden_size=H, batch_size=B)
rng = np.random.default_rng(0)
batch = jax.device_put({"image": rng.random((B, 28, 28), dtype=np.float32),
                        "label": rng.integers(0, 10, B).astype(np.int32)})
step, _ = train.jit_steps()
state = steps.create_train_state(cfg, jax.random.key(0))
for _ in range(10):
  state, m = step(state, batch)
jax.block_until_ready(m)
trace_dir = tempfile.mkdtemp(prefix="rnnjax_profile_")
jax.profiler.start_trace(trace_dir)
t = time.perf_counter()
for _ in range(20):
  state, m = step(state, batch)
jax.block_until_ready(m)
print(f"step {(time.perf_counter() - t) / 20 * 1000:.1f} ms")
jax.profiler.stop_trace()
trace = json.load(gzip.open(sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz",
                                             recursive=True))[-1]))
total, calls = collections.Counter(), collections.Counter()
for e in trace["traceEvents"]:
  if e.get("ph") == "X":
    total[e["name"]] += e["dur"]
    calls[e["name"]] += 1
for name, us in total.most_common(40):
  print(f"{us / 20 / 1000:8.2f} ms/step  {calls[name] / 20:6.1f}/step  {name[:100]}")
