"""Does rnnjax's loop waste time? Whole epochs of the tutorial preset: rnnjax's own loop
against its pure step time, and against a plain loop as a notebook would write it.

    python benchmarks/epoch.py                     # 2 epochs of each on MNIST; the second compared
    python benchmarks/epoch.py --repeats 3 --json  # alternate the loops 3 times; medians
    python benchmarks/epoch.py --steps-per-call 10,60

It measures whole epochs of the tutorial preset on MNIST (the IDX files: --manual-dir,
$RNNJAX_MANUAL_DIR or ../shared/data/mnist; `--synthetic` for random images): (1) rnnjax's
own loop, `train.train_and_evaluate`, with the allocator its commands use, and, in the same
process afterwards, its pure step time (its own jitted functions on device-resident
batches: `steps_per_call` steps per call, as the loop calls them, and one step per call for
comparison), so that the loop's overhead (input pipeline, metrics, progress,
logging) shows as a percentage; (2) a plain loop as a notebook would write it: `nn.RNN(
nn.OptimizedLSTMCell(256))` + `nn.Dense`, `optax.adam(1e-3)`, one `jax.jit` step without
donation, batches gathered from NumPy, losses fetched at the end of the epoch, no
allocator settings. Each runs 2 epochs in its own process; the second epoch (no
compilation) is compared.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from harness import REPO, error_boundary, timed_windows

from rnnjax import presets
from rnnjax import allocator  # light: no JAX

EPOCHS = 2  # the second one is compared: no compilation in it


def epoch_images(synthetic: bool, manual_dir: str | None):
  """(train images <uint8>[n, 28, 28], labels <int32>[n]) for the epoch benchmark."""
  import numpy as np
  from rnnjax import data
  if synthetic:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, 60000).astype(np.int32))
  split = data.load_split("train", "idx", manual_dir=manual_dir)
  return split.images, split.labels


def bench_epoch_rnnjax(steps_limit: int, synthetic: bool, manual_dir: str | None,
                       windows: int = 5, window_seconds: float = 2.0,
                       steps_per_call: int | None = None) -> dict:
  import jax
  import numpy as np
  from rnnjax import data, steps, train

  images, labels = epoch_images(synthetic, manual_dir)
  n = steps_limit * 100 if steps_limit else len(labels)
  train_split = data.Split(images[:n], labels[:n])
  test_split = data.Split(images[:1000], labels[:1000])
  cfg = presets.get("tutorial").replace(
      epochs=EPOCHS, progress=True, tensorboard=False, plots=False, validation_size=0)
  if steps_per_call:
    cfg = cfg.replace(steps_per_call=steps_per_call)
  lines = []
  with tempfile.TemporaryDirectory() as workdir:
    state, history = train.train_and_evaluate(cfg, workdir, splits=(train_split, test_split),
                                              log=lines.append)
  count = history[-1]["step"] - history[-2]["step"]
  epoch_seconds = [100 * (r["step"] - (history[k - 1]["step"] if k else 0))
                   / r["images_per_second"] for k, r in enumerate(history)]
  # Pure step time, same process, the loop's own jitted functions on device-resident
  # batches: `steps_per_call` steps per call (a scan) for the epoch's whole calls, one
  # step per call for the rest, as the loop runs them.
  per_call = cfg.steps_per_call
  train_step, _ = train.jit_steps()
  train_steps = train.jit_train_steps()
  host = list(itertools.islice(data.train_batches(train_split, 100, 0, 0), per_call))
  batch = jax.device_put(host[0])
  stacked = jax.device_put({k: np.stack([b[k] for b in host]) for k in host[0]})
  key = jax.random.key_data(steps.dropout_key(cfg))
  holder = {"state": state}

  def run_one():
    holder["state"], holder["m"] = train_step(holder["state"], batch, key)

  def run_many():
    holder["state"], holder["m"] = train_steps(holder["state"], stacked, key)

  sync = lambda: jax.block_until_ready(holder["m"])  # noqa: E731
  one = statistics.median(timed_windows(run_one, sync, 100, windows, window_seconds))
  many = (statistics.median(timed_windows(run_many, sync, 100 * per_call, windows,
                                          window_seconds))
          if per_call > 1 and len(host) == per_call else one)
  whole, rest = divmod(count, per_call) if per_call > 1 else (0, count)
  step_seconds = 100 * (whole * per_call / many + rest / one)
  return {"loop": "rnnjax", "steps_per_epoch": count, "epoch_seconds": epoch_seconds,
          "steps_per_call": per_call, "step_seconds": step_seconds,
          "step_images_per_second": count * 100 / step_seconds,
          "one_step_per_call_images_per_second": one,
          "allocator": os.environ.get("GLIBC_TUNABLES", "system defaults"),
          "test_accuracy": history[-1]["test_accuracy"]}


def bench_epoch_plain(steps_limit: int, synthetic: bool, manual_dir: str | None) -> dict:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax.training import train_state

  images, labels = epoch_images(synthetic, manual_dir)
  n = steps_limit * 100 if steps_limit else len(labels)

  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(10)(nn.RNN(nn.OptimizedLSTMCell(256))(x)[:, -1])

  model = Plain()
  state = train_state.TrainState.create(
      apply_fn=model.apply, params=model.init(jax.random.key(0), jnp.zeros((1, 28, 28))),
      tx=optax.adam(1e-3))

  @jax.jit
  def train_step(state, x, y):
    def loss_fn(params):
      logits = state.apply_fn(params, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  epoch_seconds = []
  for epoch in range(EPOCHS):
    t = time.perf_counter()
    perm = np.random.default_rng(epoch).permutation(n)
    losses = []
    for i in range(n // 100):
      idx = perm[i * 100:(i + 1) * 100]
      state, loss = train_step(state, images[idx].astype(np.float32) / 255, labels[idx])
      losses.append(loss)
    float(np.mean(jax.device_get(losses)))
    epoch_seconds.append(time.perf_counter() - t)
  return {"loop": "plain", "steps_per_epoch": n // 100, "epoch_seconds": epoch_seconds,
          "allocator": os.environ.get("GLIBC_TUNABLES", "system defaults")}


def run_epoch_benchmark(args, p) -> int:
  from rnnjax.data import sources
  manual_dir = args.manual_dir or sources.find_manual_dir("mnist")
  extra = ["--epoch-steps", str(args.epoch_steps), "--windows", str(args.windows),
           "--window-seconds", str(args.window_seconds)] + (
               ["--synthetic"] if args.synthetic else ["--manual-dir", manual_dir])
  # rnnjax once per --steps-per-call value (the preset's 10 when not given), then the plain
  # loop; the first value's figures are the run's headline ones.
  per_call = [int(k) for k in args.steps_per_call.split(",")] if args.steps_per_call else [0]
  loops = [("rnnjax", k) for k in per_call] + [("plain", 0)]
  runs = []
  for _ in range(args.repeats):  # alternating, so that all see the machine's same moods
    results = {}
    for loop, k in loops:
      env = dict(os.environ)
      env.pop("GLIBC_TUNABLES", None)
      if loop == "rnnjax" and allocator.wanted() == "tuned":
        env["GLIBC_TUNABLES"] = allocator.TUNABLES
      cmd = [sys.executable, __file__, "--epoch-worker", loop, *extra] + (
          ["--steps-per-call", str(k)] if k else [])
      r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
      if r.returncode != 0:
        print(f"error: the {loop} epoch run failed:\n{r.stderr[-3000:]}", file=sys.stderr)
        return 1
      results[(loop, k)] = json.loads(r.stdout.strip().splitlines()[-1])
    plain = results[("plain", 0)]
    by_k = {}
    for k in per_call:
      ours = results[("rnnjax", k)]
      epoch = ours["epoch_seconds"][-1]
      by_k[ours["steps_per_call"]] = {
          "rnnjax": ours, "loop_overhead": epoch / ours["step_seconds"] - 1,
          "speedup_vs_plain": plain["epoch_seconds"][-1] / epoch}
    first = next(iter(by_k.values()))
    runs.append({**first, "plain": plain,
                 **({"by_steps_per_call": by_k} if len(by_k) > 1 else {})})
  out = {"runs": runs,
         "loop_overhead": statistics.median(r["loop_overhead"] for r in runs),
         "speedup_vs_plain": statistics.median(r["speedup_vs_plain"] for r in runs)}
  if len(per_call) > 1:
    out["by_steps_per_call"] = {
        k: {"loop_overhead": statistics.median(r["by_steps_per_call"][k]["loop_overhead"]
                                               for r in runs),
            "speedup_vs_plain": statistics.median(
                r["by_steps_per_call"][k]["speedup_vs_plain"] for r in runs)}
        for k in runs[0]["by_steps_per_call"]}
  if args.json:
    print(json.dumps(out))
    return 0
  k = runs[0]["rnnjax"]["steps_per_epoch"]
  print(f"tutorial preset, {k} steps of batch 100 per epoch, epoch {EPOCHS} of {EPOCHS}"
        f"{f', {len(runs)} alternating runs' if len(runs) > 1 else ''}:")
  for n, run in enumerate(runs, 1):
    plain = run["plain"]
    if len(runs) > 1:
      print(f" run {n}:")
    for one in run.get("by_steps_per_call", {0: run}).values():
      ours = one["rnnjax"]
      print(f"  rnnjax loop  {ours['epoch_seconds'][-1]:7.2f} s  (malloc {ours['allocator']}"
            f"); pure step time {ours['step_seconds']:.2f} s "
            f"({ours['step_images_per_second']:,.0f} img/s, {ours['steps_per_call']} steps "
            f"per call): the loop costs {100 * one['loop_overhead']:+.1f}%; "
            f"{one['speedup_vs_plain']:.2f}x the plain loop")
      single = k * 100 / ours["one_step_per_call_images_per_second"]
      print(f"               one step per call would take {single:.2f} s "
            f"({ours['one_step_per_call_images_per_second']:,.0f} img/s)")
    print(f"  plain loop   {plain['epoch_seconds'][-1]:7.2f} s  (malloc {plain['allocator']})")
  if len(runs) > 1:
    for k, med in out.get("by_steps_per_call", {runs[0]["rnnjax"]["steps_per_call"]: out}
                          ).items():
      print(f"median over the runs, {k} steps per call: the loop costs "
            f"{100 * med['loop_overhead']:+.1f}% over its pure step time; rnnjax's epoch is "
            f"{med['speedup_vs_plain']:.2f}x the plain loop's")
  return 0


def main(argv=None) -> int:
  return error_boundary(lambda: epoch_main(argv), "benchmark")


def epoch_main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--repeats", type=int, default=1,
                 help="alternate the loops this many times; medians")
  p.add_argument("--epoch-steps", type=int, default=0, help="steps per epoch (0: all 600)")
  p.add_argument("--synthetic", action="store_true", help="random images instead of MNIST")
  p.add_argument("--manual-dir", help="folder of the MNIST IDX files (default: "
                 "$RNNJAX_MANUAL_DIR, else ../shared/data/mnist)")
  p.add_argument("--steps-per-call",
                 help="rnnjax's steps per call (default: the preset's), or a comma-separated "
                      "list to alternate, e.g. 10,60")
  p.add_argument("--windows", type=int, default=7, help="timed windows of the pure step")
  p.add_argument("--window-seconds", type=float, default=2.0)
  p.add_argument("--json", action="store_true", help="one JSON object")
  p.add_argument("--epoch-worker", choices=("rnnjax", "plain"), help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.epoch_worker:
    if args.epoch_worker == "rnnjax":
      result = bench_epoch_rnnjax(args.epoch_steps, args.synthetic, args.manual_dir,
                                  args.windows, args.window_seconds,
                                  int(args.steps_per_call or 0))
    else:
      result = bench_epoch_plain(args.epoch_steps, args.synthetic, args.manual_dir)
    print(json.dumps(result))
    return 0
  if args.epoch_steps < 0:
    p.error("--epoch-steps must be >= 0")
  if args.windows < 1 or args.window_seconds <= 0 or args.repeats < 1:
    p.error("--windows and --repeats must be >= 1 and --window-seconds > 0")
  if args.steps_per_call:
    try:
      ks = [int(k) for k in args.steps_per_call.split(",")]
    except ValueError:
      ks = []
    if not ks or min(ks) < 1 or len(set(ks)) != len(ks):
      p.error(f"--steps-per-call must be distinct positive integers separated by commas, "
              f"got {args.steps_per_call!r}")
  return run_epoch_benchmark(args, p)


if __name__ == "__main__":
  sys.exit(main())
