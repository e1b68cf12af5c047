"""Throughput of rnnjax's real training and evaluation steps, optionally against PyTorch.

Command (from the repository root):

    python experiments/benchmark.py                       # every setting, rnnjax only
    python experiments/benchmark.py --compare-torch       # and PyTorch nn.LSTM, with ratios
    python experiments/benchmark.py --settings tutorial --json
    python experiments/benchmark.py --allocator tuned     # glibc malloc tunables, see below
    python experiments/benchmark.py --epoch               # whole epochs, see the end

Each figure comes from its own process (so that peak memory and allocator state belong to
one setting and one framework): warm-up, then `--windows` timed windows of about
`--window-seconds` each, with device synchronisation at both ends; images/s is reported as
the median, min and max over windows. With `--compare-torch` the rnnjax and PyTorch
processes of a setting are alive at once and take turns, window by window (the other one
waits, idle), so that both see the same moods of the machine; the ratio printed is the
median over the pairs of neighbouring windows of rnnjax's images/s over PyTorch's. rnnjax
trains as its loop does: `steps_per_call` (10) steps per call of the jitted
`train.jit_train_steps()`, on 10 different device-resident batches; PyTorch one step per
Python iteration, as its training loops run. Also: the first call's time (compilation
included; for rnnjax training, the call's 10 steps too),
the process's peak resident memory (CPU) or the device's peak bytes (GPU), the matmul FLOPs
per image (counted from the LSTM equations: 2 FLOPs per multiply-add; training = 3x the
forward pass) and the fraction of this machine's measured float32 matmul peak that the
throughput implies.

Settings: `tutorial` (train, batch 100, hidden 256, 28 rows of 28 pixels), `small` (train,
batch 128, hidden 128), `eval256` and `eval128` (evaluation at batch 1000), `seq` (train,
sequential MNIST: 784 steps of 1 pixel, hidden 128, batch 100).

`--allocator` sets GLIBC_TUNABLES for the measured processes of both frameworks alike:
`default` (none), `tuned` (arena_max=1, mmap_threshold=4 GiB, trim_threshold=64 GiB: freed
memory is kept instead of returned to the kernel), `hugetlb` (transparent huge pages for
malloc: what rnnjax's commands use by themselves, see rnnjax/allocator.py), `arena1` and
`keep` (the two halves of `tuned`), `tuned+hugetlb`; a comma-separated list or `all`
measures each in turn. Without the flag: `hugetlb`, or `default` under
RNNJAX_ALLOCATOR=system. torch is an optional extra (`pip install torch==2.13.0` gives a
CPU build here).

`--epoch` measures whole epochs of the tutorial preset on MNIST (the IDX files: --manual-dir,
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
from pathlib import Path
from typing import Callable, NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rnnjax import allocator  # noqa: E402  (light: no JAX)

# name -> (mode, batch, hidden, time steps, features)
SETTINGS = {
    "tutorial": ("train", 100, 256, 28, 28),
    "small": ("train", 128, 128, 28, 28),
    "eval256": ("eval", 1000, 256, 28, 28),
    "eval128": ("eval", 1000, 128, 28, 28),
    "seq": ("train", 100, 128, 784, 1),
}
ALLOCATORS = {
    "default": None,
    "tuned": "glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=4294967296:"
             "glibc.malloc.trim_threshold=68719476736",
    "hugetlb": "glibc.malloc.hugetlb=1",  # rnnjax's own setting (rnnjax/allocator.py)
    "arena1": "glibc.malloc.arena_max=1",
    "keep": "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=68719476736",
    "tuned+hugetlb": "glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=4294967296:"
                     "glibc.malloc.trim_threshold=68719476736:glibc.malloc.hugetlb=1",
}
CLASSES = 10


def flops_per_image(mode: str, hidden: int, steps: int, features: int) -> float:
  """Matmul FLOPs per image: per step x@W (F x 4H) and h@U (H x 4H), then the readout;
  a training step adds a backward pass of twice the forward."""
  forward = steps * 2 * (features + hidden) * 4 * hidden + 2 * hidden * CLASSES
  return 3 * forward if mode == "train" else forward


def calls_per_window(run, sync, window_seconds: float) -> int:
  """How many calls of `run()` fill about `window_seconds` (from one timed call)."""
  t = time.perf_counter()
  run()
  sync()
  return max(1, int(window_seconds / max(time.perf_counter() - t, 1e-6)))


def one_window(run, sync, calls: int, images_per_call: int) -> float:
  """images/s over `calls` calls of `run()`, synchronised at both ends."""
  sync()
  t = time.perf_counter()
  for _ in range(calls):
    run()
  sync()
  return calls * images_per_call / (time.perf_counter() - t)


def timed_windows(run, sync, images_per_call: int, windows: int, window_seconds: float):
  """Calls `run()` in windows of about `window_seconds`; images/s of each window."""
  calls = calls_per_window(run, sync, window_seconds)
  return [one_window(run, sync, calls, images_per_call) for _ in range(windows)]


def peak_rss_bytes() -> int:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# ----------------------------------------------------------------------------------------
# One setting in this process.

def measure_matmul_peak(windows: int = 5) -> float:
  """float32 GFLOP/s of XLA's 2048x2048 matmul on the default device."""
  import jax
  import jax.numpy as jnp
  n = 2048
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  rates = []
  for _ in range(windows):
    t = time.perf_counter()
    for _ in range(5):
      out = f(a)
    out.block_until_ready()
    rates.append(5 * 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
  return statistics.median(rates)


class Prepared(NamedTuple):
  """One setting, warmed up in this process: `run()` does one call of `images_per_call`
  images, `sync()` waits for it, `info()` gives the figures other than the throughput."""
  run: Callable[[], None]
  sync: Callable[[], None]
  images_per_call: int
  info: Callable[[], dict]


def bench_jax(name: str) -> Prepared:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from rnnjax import config as config_lib
  from rnnjax import models, steps, train

  mode, batch, hidden, t_steps, features = SETTINGS[name]
  cfg = config_lib.get_config("tutorial").replace(hidden_size=hidden, batch_size=batch)
  model = models.model_from_config(cfg)
  per_call = cfg.steps_per_call if mode == "train" else 1  # as the training loop calls it
  rng = np.random.default_rng(0)
  images = rng.random((per_call, batch, t_steps, features), dtype=np.float32)
  labels = rng.integers(0, CLASSES, (per_call, batch)).astype(np.int32)
  params = model.init(jax.random.key(0), jnp.asarray(images[0, :1]))["params"]
  state = steps.TrainState.create(apply_fn=model.apply, params=params,
                                  tx=steps.make_optimizer(cfg))
  _, eval_step = train.jit_steps()  # the loop's own jitted functions
  train_steps = train.jit_train_steps()
  holder = {"state": state}

  if mode == "train":
    batches = jax.device_put({"image": images, "label": labels})

    def run():
      holder["state"], holder["metrics"] = train_steps(holder["state"], batches)
  else:
    batch_dev = jax.device_put({"image": images[0], "label": labels[0],
                                "mask": np.ones(batch, np.float32)})

    def run():
      holder["metrics"] = eval_step(holder["state"], batch_dev)

  def sync():
    jax.block_until_ready(holder["metrics"])

  t = time.perf_counter()
  run()
  sync()
  first_call = time.perf_counter() - t

  def info():
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    return {
        "framework": "rnnjax", "device": f"{device.platform}:{device.device_kind}",
        "steps_per_call": per_call,
        "first_call_seconds": first_call,
        "peak_memory_bytes": (stats or {}).get("peak_bytes_in_use") or peak_rss_bytes(),
        "peak_memory_kind": "device peak bytes" if stats else "process peak RSS",
        "matmul_peak_gflops": measure_matmul_peak(),
    }
  return Prepared(run, sync, batch * per_call, info)


def bench_torch(name: str) -> Prepared:
  import torch

  mode, batch, hidden, t_steps, features = SETTINGS[name]
  torch.manual_seed(0)

  class Net(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.lstm = torch.nn.LSTM(features, hidden, batch_first=True)
      self.fc = torch.nn.Linear(hidden, CLASSES)

    def forward(self, x):
      out, _ = self.lstm(x)
      return self.fc(out[:, -1])

  net = Net()
  opt = torch.optim.Adam(net.parameters(), lr=1e-3)
  x = torch.rand(batch, t_steps, features)
  y = torch.randint(0, CLASSES, (batch,))
  loss_fn = torch.nn.CrossEntropyLoss()

  if mode == "train":
    def run():
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(net(x), y)
      loss.backward()
      opt.step()
  else:
    def run():
      with torch.no_grad():
        net(x).argmax(-1)

  t = time.perf_counter()
  run()
  first_call = time.perf_counter() - t
  return Prepared(run, lambda: None, batch, lambda: {
      "framework": f"torch {torch.__version__}", "device": "cpu",
      "first_call_seconds": first_call, "peak_memory_bytes": peak_rss_bytes(),
      "peak_memory_kind": "process peak RSS"})


def serve(prepared: Prepared, window_seconds: float) -> None:
  """A measured process's side of the driver's protocol: one JSON line per message on
  stdout. `{"ready": true}` once warmed up; then for each line `window` on stdin, one timed
  window, `{"rate": images/s, "start": t, "end": t}` (wall-clock seconds); for `done`, the
  figures of `prepared.info()`."""
  run, sync = prepared.run, prepared.sync
  calls = calls_per_window(run, sync, window_seconds)
  print(json.dumps({"ready": True}), flush=True)
  for line in sys.stdin:
    if line.strip() == "window":
      start = time.time()
      rate = one_window(run, sync, calls, prepared.images_per_call)
      print(json.dumps({"rate": rate, "start": start, "end": time.time()}), flush=True)
    elif line.strip() == "done":
      print(json.dumps(prepared.info()), flush=True)
      return


# ----------------------------------------------------------------------------------------
# Whole epochs: rnnjax's loop against its own step time, and against a plain loop.

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
  from rnnjax import config as config_lib
  from rnnjax import data, steps, train

  images, labels = epoch_images(synthetic, manual_dir)
  n = steps_limit * 100 if steps_limit else len(labels)
  train_split = data.Split(images[:n], labels[:n])
  test_split = data.Split(images[:1000], labels[:1000])
  cfg = config_lib.get_config("tutorial").replace(
      epochs=EPOCHS, progress=True, tensorboard=False, plots=False)
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
  manual_dir = args.manual_dir or os.environ.get("RNNJAX_MANUAL_DIR") or (
      str(REPO.parent / "shared" / "data" / "mnist"))
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


# ----------------------------------------------------------------------------------------
# The driver: one process per (setting, framework).

class Worker:
  """A measured process (this script with --worker), warmed up and waiting for the driver's
  `window` and `done` lines (see `serve`)."""

  def __init__(self, framework: str, name: str, window_seconds: float, env: dict):
    self.what = f"{framework} {name}"
    self.stderr = tempfile.TemporaryFile(mode="w+")
    self.proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", framework, "--settings", name,
         "--window-seconds", str(window_seconds)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env,
        cwd=REPO)
    self.spans = []  # (start, end) of each timed window
    self._read()  # {"ready": true}

  def _read(self) -> dict:
    while True:
      text = self.proc.stdout.readline()
      if not text:  # the process ended
        self.proc.wait()
        self.stderr.seek(0)
        tail = "\n".join(self.stderr.read().rstrip().splitlines()[-25:])
        raise RuntimeError(f"{self.what} failed (exit {self.proc.returncode}); the end of "
                           f"its output:\n{tail}")
      try:
        return json.loads(text)
      except ValueError:
        continue  # a library's own print

  def _ask(self, what: str) -> dict:
    self.proc.stdin.write(what + "\n")
    self.proc.stdin.flush()
    return self._read()

  def window(self) -> float:
    """One timed window; its images/s."""
    r = self._ask("window")
    self.spans.append((r["start"], r["end"]))
    return r["rate"]

  def finish(self) -> dict:
    return self._ask("done")

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
    self.proc.wait()
    self.stderr.close()


def summarize(name: str, result: dict) -> dict:
  mode, batch, hidden, t_steps, features = SETTINGS[name]
  rates = result.pop("images_per_second")
  flops = flops_per_image(mode, hidden, t_steps, features)
  out = {"setting": name, "mode": mode, "batch": batch, "hidden": hidden, "steps": t_steps,
         "features": features, **result,
         "images_per_second": {"median": statistics.median(rates), "min": min(rates),
                               "max": max(rates), "windows": len(rates)},
         "flops_per_image": flops}
  peak = result.get("matmul_peak_gflops")
  if peak:
    out["fraction_of_matmul_peak"] = statistics.median(rates) * flops / (peak * 1e9)
  return out


def main(argv=None) -> int:
  """The command; an unexpected failure ends with one `error:` line naming the file that
  holds its traceback, exit status 1 (a measured process's own failure is reported by the
  driver, with its output)."""
  try:
    return benchmark_main(argv)
  except Exception:  # noqa: BLE001 - the error boundary
    from rnnjax import reporting
    return reporting.unexpected_error("benchmark")


def benchmark_main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--settings", default=",".join(SETTINGS),
                 help=f"comma-separated, from {', '.join(SETTINGS)}")
  p.add_argument("--compare-torch", action="store_true",
                 help="also measure PyTorch nn.LSTM + nn.Linear + Adam (needs torch)")
  p.add_argument("--allocator", default=None,
                 help=f"GLIBC_TUNABLES for the measured processes (both frameworks): "
                      f"{', '.join(ALLOCATORS)}, a comma-separated list, or all "
                      "(default: hugetlb, rnnjax's own setting)")
  p.add_argument("--windows", type=int, default=7)
  p.add_argument("--window-seconds", type=float, default=2.0)
  p.add_argument("--json", action="store_true", help="one JSON object per setting")
  p.add_argument("--epoch", action="store_true",
                 help="whole epochs: rnnjax's loop vs its step time and vs a plain loop")
  p.add_argument("--repeats", type=int, default=1,
                 help="with --epoch: alternate the two loops this many times; medians")
  p.add_argument("--epoch-steps", type=int, default=0,
                 help="with --epoch: steps per epoch (0: all 600)")
  p.add_argument("--synthetic", action="store_true",
                 help="with --epoch: random images instead of MNIST")
  p.add_argument("--manual-dir", help="with --epoch: folder of the MNIST IDX files")
  p.add_argument("--steps-per-call",
                 help="with --epoch: rnnjax's steps per call (default: the preset's), or a "
                      "comma-separated list to alternate, e.g. 10,60")
  p.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
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
  if args.epoch:
    if args.epoch_steps < 0:
      p.error("--epoch-steps must be >= 0")
    if args.steps_per_call:
      try:
        ks = [int(k) for k in args.steps_per_call.split(",")]
      except ValueError:
        ks = []
      if not ks or min(ks) < 1 or len(set(ks)) != len(ks):
        p.error(f"--steps-per-call must be distinct positive integers separated by commas, "
                f"got {args.steps_per_call!r}")
    return run_epoch_benchmark(args, p)
  names = [n.strip() for n in args.settings.split(",") if n.strip()]
  unknown = [n for n in names if n not in SETTINGS]
  if unknown:
    p.error(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
  if args.windows < 1 or args.window_seconds <= 0:
    p.error("--windows must be >= 1 and --window-seconds > 0")

  if args.worker:  # inside a measured process: one setting, JSON lines on stdout
    bench = bench_jax if args.worker == "jax" else bench_torch
    serve(bench(names[0]), args.window_seconds)
    return 0

  if args.compare_torch:
    try:
      import torch  # noqa: F401
    except ImportError:
      p.error("--compare-torch needs PyTorch: pip install torch==2.13.0 (CPU build)")
  if args.allocator is None:
    try:
      allocators = ["hugetlb" if allocator.wanted() == "tuned" else "default"]
    except ValueError as e:
      p.error(str(e))
  elif args.allocator == "all":
    allocators = list(ALLOCATORS)
  else:
    allocators = [a.strip() for a in args.allocator.split(",") if a.strip()]
    bad = [a for a in allocators if a not in ALLOCATORS]
    if bad or not allocators:
      p.error(f"unknown --allocator {', '.join(bad) or args.allocator!r}; choose from "
              f"{', '.join(ALLOCATORS)} or all")

  for name in names:
    for alloc in allocators:
      env = dict(os.environ)
      env.pop("GLIBC_TUNABLES", None)
      if ALLOCATORS[alloc]:
        env["GLIBC_TUNABLES"] = ALLOCATORS[alloc]
      try:
        measure(name, alloc, args, env)
      except RuntimeError as e:  # a measured process failed: say which, and its stderr
        print(f"error: {e}", file=sys.stderr)
        return 1
  return 0


def measure(name: str, alloc: str, args, env: dict) -> None:
  """One setting under one allocator: rnnjax's process, and PyTorch's with --compare-torch,
  both alive at once and taking turns window by window, so that the two see the same moods
  of the machine (its speed drifts by tens of per cent between minutes)."""
  frameworks = ["jax", "torch"] if args.compare_torch else ["jax"]
  workers = []
  try:
    for framework in frameworks:
      workers.append(Worker(framework, name, args.window_seconds, env))
    rates = interleave(workers, args.windows)
    results = [summarize(name, {**w.finish(), "images_per_second": r})
               for w, r in zip(workers, rates)]
  finally:
    for w in workers:
      w.close()
  ours = results[0]
  ours["allocator"] = alloc
  if args.compare_torch:
    theirs = results[1]
    ours["torch"] = theirs
    pairs = [a / b for a, b in zip(*rates)]
    ours["speedup_vs_torch"] = statistics.median(pairs)
    ours["speedup_vs_torch_per_window_pair"] = pairs
    if "matmul_peak_gflops" in ours:
      theirs["fraction_of_matmul_peak"] = (theirs["images_per_second"]["median"]
                                           * theirs["flops_per_image"]
                                           / (ours["matmul_peak_gflops"] * 1e9))
  if args.json:
    print(json.dumps(ours), flush=True)
  else:
    print(line(ours), flush=True)


def interleave(workers: list[Worker], windows: int) -> list[list[float]]:
  """`windows` timed windows of each worker, taking turns; images/s per worker."""
  rates = [[] for _ in workers]
  for _ in range(windows):
    for w, r in zip(workers, rates):
      r.append(w.window())
  return rates


def line(r: dict) -> str:
  ips = r["images_per_second"]
  s = (f"{r['setting']:9s} {r['allocator']:13s} {r['mode']:5s} b{r['batch']} h{r['hidden']} "
       f"T{r['steps']} | "
       f"rnnjax {ips['median']:9,.0f} img/s (min {ips['min']:,.0f}, max {ips['max']:,.0f}) | "
       f"first call {r['first_call_seconds']:.2f}s | peak {r['peak_memory_bytes'] / 2**20:,.0f} "
       f"MiB | {r['flops_per_image'] / 1e6:.1f} MFLOP/img")
  if "fraction_of_matmul_peak" in r:
    s += (f" | {100 * r['fraction_of_matmul_peak']:.0f}% of {r['matmul_peak_gflops']:.0f} "
          "GFLOP/s")
  if "torch" in r:
    t = r["torch"]
    s += (f" | torch {t['images_per_second']['median']:9,.0f} img/s "
          f"({100 * t.get('fraction_of_matmul_peak', 0):.0f}%) | x{r['speedup_vs_torch']:.2f}")
  return s


if __name__ == "__main__":
  sys.exit(main())
