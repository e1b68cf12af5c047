"""How fast is rnnjax's step? Throughput of its real training and evaluation steps,
optionally against PyTorch's `nn.LSTM` and keras-lmu's LMU.

Command (from the repository root; benchmarks/README.md says how to read the figures):

    python benchmarks/throughput.py                       # every setting, rnnjax only
    python benchmarks/throughput.py --compare-torch       # and PyTorch nn.LSTM, with ratios
    python benchmarks/throughput.py --settings seq_lmu --compare-torch --compare-keras-lmu
    python benchmarks/throughput.py --settings tutorial --json
    python benchmarks/throughput.py --allocator tuned     # glibc malloc tunables, see below
    python benchmarks/throughput.py --rnn-kernel cudnn   # on a GPU: cuDNN's fused LSTM

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
sequential MNIST: 784 steps of 1 pixel, hidden 128, batch 100), and `seq_gru`, `seq_lem`,
`seq_cornn`, `seq_lru`: each other cell at `seq`'s setting (the LRU: one block, 64 complex
states), `seq_lmu` (keras-lmu's psMNIST model: 212 hidden units, memory of order 256) and
`seq_plmu` (the parallel LMU's: 346 units, order 468), against PyTorch's nn.LSTM there. The default is the five LSTM settings. PyTorch
runs with denormals flushed to zero (`torch.set_flush_denormal(True)`), as XLA's CPU code does.

`--allocator` sets GLIBC_TUNABLES for the measured processes of both frameworks alike:
`default` (none), `tuned` (arena_max=1, mmap_threshold=4 GiB, trim_threshold=64 GiB: freed
memory is kept instead of returned to the kernel), `hugetlb` (transparent huge pages for
malloc: what rnnjax's commands use by themselves, see rnnjax/allocator.py), `arena1` and
`keep` (the two halves of `tuned`), `tuned+hugetlb`; a comma-separated list or `all`
measures each in turn. Without the flag: `hugetlb`, or `default` under
RNNJAX_ALLOCATOR=system. torch is an optional extra (`pip install torch==2.13.0` gives a
CPU build here); on a GPU both frameworks run there, PyTorch's nn.LSTM on cuDNN.
`--rnn-kernel` (`auto`, `cpu`, `cudnn`, `xla`) says how rnnjax's LSTM and LEM layers run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from harness import (ALLOCATORS, Prepared, Worker, allocator_env, error_boundary, interleave,
                     measure_matmul_peak, peak_rss_bytes, serve)

from rnnjax import presets
from rnnjax import allocator  # light: no JAX
from rnnjax.config import RNN_KERNELS

HERE = Path(__file__).resolve()

# name -> (mode, batch, hidden, time steps, features, cell)
SETTINGS = {
    "tutorial": ("train", 100, 256, 28, 28, "lstm"),
    "small": ("train", 128, 128, 28, 28, "lstm"),
    "eval256": ("eval", 1000, 256, 28, 28, "lstm"),
    "eval128": ("eval", 1000, 128, 28, 28, "lstm"),
    "seq": ("train", 100, 128, 784, 1, "lstm"),
    # Every other cell at `seq`'s setting (one layer; the LRU one block of 64 complex
    # states): PyTorch's peer is its nn.LSTM at the same batch, width and length.
    "seq_gru": ("train", 100, 128, 784, 1, "gru"),
    "seq_lem": ("train", 100, 128, 784, 1, "lem"),
    "seq_cornn": ("train", 100, 128, 784, 1, "cornn"),
    "seq_lru": ("train", 100, 128, 784, 1, "lru"),
    # keras-lmu's psMNIST model: 212 hidden units over a memory of order 256, window 784.
    "seq_lmu": ("train", 100, 212, 784, 1, "lmu"),
    # The parallel LMU's psMNIST model: 346 ReLU units over a memory of order 468.
    "seq_plmu": ("train", 100, 346, 784, 1, "plmu"),
}

CLASSES = 10
LMU_ORDER = {"lmu": 256, "plmu": 468}  # the memory's order in `seq_lmu` and `seq_plmu`
KERNEL_ENV = "RNNJAX_BENCH_RNN_KERNEL"  # --rnn-kernel, as the measured processes see it


def flops_per_image(mode: str, hidden: int, steps: int, features: int,
                    cell: str = "lstm", state: int = 64) -> float:
  """Matmul FLOPs per image, counted from the cell's equations (2 per multiply-add): per
  step the input and recurrent matmuls (LSTM: x@W (F x 4H) and h@U (H x 4H); the LRU: B u
  and C x in complex arithmetic, 4 real matmuls of H x N, and its gated linear unit, H x
  2H; the LMU, as its step-by-step equations read: the memory's update, d x d, and W_m m,
  W_x x, W_h h, although its parallel form does less; the parallel LMU, as it computes the
  last step: the memory as the sequence times the impulse response, T x d, then W_m), then
  the readout; a training step adds a backward pass of twice the forward."""
  f, h = features, hidden
  if cell == "plmu":
    d = LMU_ORDER[cell]
    forward = 2 * f * steps * d + 2 * d * h + 2 * hidden * CLASSES
    return 3 * forward if mode == "train" else forward
  d = LMU_ORDER["lmu"]
  per_step = {"lstm": 2 * (f + h) * 4 * h, "gru": 2 * (f + h) * 3 * h,
              "lem": 2 * (4 * f * h + 4 * h * h), "cornn": 2 * (f * h + 2 * h * h),
              "lru": 2 * f * h + 8 * h * state + 2 * 2 * h * h,
              "lmu": 2 * (f + d * (d + h) + f * h + h * h)}[cell]
  forward = steps * per_step + 2 * hidden * CLASSES
  return 3 * forward if mode == "train" else forward


def bench_jax(name: str) -> Prepared:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from rnnjax import models, steps, train

  mode, batch, hidden, t_steps, features, cell = SETTINGS[name]
  cfg = presets.get("tutorial").replace(
      hidden_size=hidden, batch_size=batch, cell=cell,
      rnn_kernel=os.environ.get(KERNEL_ENV, "auto"))
  if cell in LMU_ORDER:
    cfg = cfg.replace(lmu_order=LMU_ORDER[cell])
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
        "layers": models.describe(cfg),  # the kernel and its matmul engine, or the scan
        "steps_per_call": per_call,
        "first_call_seconds": first_call,
        "peak_memory_bytes": (stats or {}).get("peak_bytes_in_use") or peak_rss_bytes(),
        "peak_memory_kind": "device peak bytes" if stats else "process peak RSS",
        "matmul_peak_gflops": measure_matmul_peak(),
    }
  return Prepared(run, sync, batch * per_call, info)


def bench_torch(name: str) -> Prepared:
  import torch

  mode, batch, hidden, t_steps, features, _ = SETTINGS[name]  # always its nn.LSTM
  # XLA's CPU code flushes denormal floats to zero; PyTorch does not by default. Like for
  # like, PyTorch flushes them too: its 784-step LSTM backward creates denormals, which on
  # an Intel Xeon made it run about 10x slower (docs/performance.md).
  torch.set_flush_denormal(True)
  torch.manual_seed(0)

  class Net(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.lstm = torch.nn.LSTM(features, hidden, batch_first=True)
      self.fc = torch.nn.Linear(hidden, CLASSES)

    def forward(self, x):
      out, _ = self.lstm(x)
      return self.fc(out[:, -1])

  # On a GPU, nn.LSTM is cuDNN's fused RNN (PyTorch's default there).
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  net = Net().to(device)
  opt = torch.optim.Adam(net.parameters(), lr=1e-3)
  x = torch.rand(batch, t_steps, features, device=device)
  y = torch.randint(0, CLASSES, (batch,), device=device)
  loss_fn = torch.nn.CrossEntropyLoss()
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

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
  sync()
  first_call = time.perf_counter() - t
  on_gpu = device.type == "cuda"
  return Prepared(run, sync, batch, lambda: {
      "framework": f"torch {torch.__version__}",
      "device": f"cuda:{torch.cuda.get_device_name()}" if on_gpu else "cpu",
      "first_call_seconds": first_call,
      "peak_memory_bytes": torch.cuda.max_memory_allocated() if on_gpu else peak_rss_bytes(),
      "peak_memory_kind": "device peak bytes" if on_gpu else "process peak RSS"})


def bench_keras(name: str, fft: bool = False) -> Prepared:
  """keras-lmu's model of the setting's shape. `seq_lmu`: its psMNIST example,
  `RNN(LMUCell(memory_d=1, order=256, theta=T, hidden_cell=SimpleRNNCell(H),
  hidden_to_memory=False, memory_to_memory=False, input_to_hidden=True,
  kernel_initializer="ones"))`, step by step; with `fft`, the same arguments to its `LMU`
  layer, which then computes the memory by FFT and scans only the hidden cell (rnnjax's
  form of this model); `seq_plmu`: the parallel LMU, `LMUFeedforward(memory_d=1,
  order=468, theta=T, hidden_cell=Dense(H, relu), return_sequences=False)` (its memory by
  FFT); then `Dense(10)`, Adam, one `train_on_batch` per call (its notebook's `fit` runs
  the same step)."""
  import numpy as np
  import tensorflow as tf
  import keras_lmu

  mode, batch, hidden, t_steps, features, cell = SETTINGS[name]
  tf.random.set_seed(0)
  if cell == "plmu":
    layer = keras_lmu.LMUFeedforward(
        memory_d=1, order=LMU_ORDER[cell], theta=t_steps,
        hidden_cell=tf.keras.layers.Dense(hidden, activation="relu"),
        return_sequences=False)
  else:
    lmu = dict(memory_d=1, order=LMU_ORDER["lmu"], theta=t_steps,
               hidden_cell=tf.keras.layers.SimpleRNNCell(hidden), hidden_to_memory=False,
               memory_to_memory=False, input_to_hidden=True, kernel_initializer="ones")
    layer = (keras_lmu.LMU(**lmu) if fft
             else tf.keras.layers.RNN(keras_lmu.LMUCell(**lmu)))
  inputs = tf.keras.Input((t_steps, features))
  outputs = tf.keras.layers.Dense(CLASSES)(layer(inputs))
  model = tf.keras.Model(inputs, outputs)
  model.compile(optimizer="adam",
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  rng = np.random.default_rng(0)
  x = rng.random((batch, t_steps, features), dtype=np.float32)
  y = rng.integers(0, CLASSES, batch).astype(np.int32)

  def run():
    model.train_on_batch(x, y)

  t = time.perf_counter()
  run()
  first_call = time.perf_counter() - t
  return Prepared(run, lambda: None, batch, lambda: {
      "framework": f"keras-lmu {keras_lmu.__version__} (TensorFlow {tf.__version__})",
      "device": "cpu", "parameters": model.count_params(), "first_call_seconds": first_call,
      "peak_memory_bytes": peak_rss_bytes(), "peak_memory_kind": "process peak RSS"})


BENCHES = {"jax": bench_jax, "torch": bench_torch, "keras": bench_keras,
           "keras_fft": lambda name: bench_keras(name, fft=True)}
# A peer's framework -> its name in lines.
PEERS = {"torch": "torch", "keras": "keras-lmu", "keras_fft": "keras-lmu LMU (FFT memory)"}


def summarize(name: str, result: dict, framework: str = "jax") -> dict:
  mode, batch, hidden, t_steps, features, cell = SETTINGS[name]
  cell = "lstm" if framework == "torch" else cell  # PyTorch's peer is always its nn.LSTM
  rates = result.pop("images_per_second")
  flops = flops_per_image(mode, hidden, t_steps, features, cell)
  out = {"setting": name, "mode": mode, "cell": cell, "batch": batch, "hidden": hidden,
         "steps": t_steps,
         "features": features, **result,
         "images_per_second": {"median": statistics.median(rates), "min": min(rates),
                               "max": max(rates), "windows": len(rates)},
         "flops_per_image": flops}
  peak = result.get("matmul_peak_gflops")
  if peak:
    out["fraction_of_matmul_peak"] = statistics.median(rates) * flops / (peak * 1e9)
  return out


def main(argv=None) -> int:
  return error_boundary(lambda: benchmark_main(argv), "benchmark")


def benchmark_main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--settings", default="tutorial,small,eval256,eval128,seq",
                 help=f"comma-separated, from {', '.join(SETTINGS)}")
  p.add_argument("--compare-torch", action="store_true",
                 help="also measure PyTorch nn.LSTM + nn.Linear + Adam (needs torch)")
  p.add_argument("--compare-keras-lmu", action="store_true",
                 help="also measure keras-lmu's models at the LMU settings (needs "
                      "pip install keras-lmu==0.9.0 beside TensorFlow)")
  p.add_argument("--allocator", default=None,
                 help=f"GLIBC_TUNABLES for the measured processes (both frameworks): "
                      f"{', '.join(ALLOCATORS)}, a comma-separated list, or all "
                      "(default: hugetlb, rnnjax's own setting)")
  p.add_argument("--rnn-kernel", "--lstm-kernel", default="auto", choices=RNN_KERNELS,
                 help="how rnnjax's LSTM and LEM layers run (Config.rnn_kernel)")
  p.add_argument("--windows", type=int, default=7)
  p.add_argument("--window-seconds", type=float, default=2.0)
  p.add_argument("--json", action="store_true", help="one JSON object per setting")
  p.add_argument("--worker", choices=tuple(BENCHES), help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  names = [n.strip() for n in args.settings.split(",") if n.strip()]
  unknown = [n for n in names if n not in SETTINGS]
  if unknown:
    p.error(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
  if args.windows < 1 or args.window_seconds <= 0:
    p.error("--windows must be >= 1 and --window-seconds > 0")

  if args.worker:  # inside a measured process: one setting, JSON lines on stdout
    serve(BENCHES[args.worker](names[0]), args.window_seconds)
    return 0

  if args.compare_torch:
    try:
      import torch  # noqa: F401
    except ImportError:
      p.error("--compare-torch needs PyTorch: pip install torch==2.13.0 (CPU build)")
  if args.compare_keras_lmu:
    try:
      import keras_lmu  # noqa: F401
    except ImportError:
      p.error("--compare-keras-lmu needs keras-lmu: pip install keras-lmu==0.9.0")
    if any(SETTINGS[n][5] not in LMU_ORDER for n in names):
      p.error("--compare-keras-lmu measures the LMU settings only: "
              + ", ".join(n for n in SETTINGS if SETTINGS[n][5] in LMU_ORDER))
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
      try:
        measure(name, alloc, args, {**allocator_env(alloc), KERNEL_ENV: args.rnn_kernel})
      except RuntimeError as e:  # a measured process failed: say which, and its stderr
        print(f"error: {e}", file=sys.stderr)
        return 1
  return 0


def measure(name: str, alloc: str, args, env: dict) -> None:
  """One setting under one allocator: rnnjax's process, and PyTorch's with --compare-torch
  and keras-lmu's with --compare-keras-lmu, all alive at once and taking turns window by
  window, so that they see the same moods of the machine (its speed drifts by tens of per
  cent between minutes)."""
  frameworks = ["jax", *(["torch"] if args.compare_torch else []),
                *(["keras"] if args.compare_keras_lmu else []),
                *(["keras_fft"] if args.compare_keras_lmu and name == "seq_lmu" else [])]
  workers = []
  try:
    for framework in frameworks:
      workers.append(Worker(HERE, framework, name, args.window_seconds, env))
    rates = interleave(workers, args.windows)
    results = [summarize(name, {**w.finish(), "images_per_second": r}, framework)
               for w, r, framework in zip(workers, rates, frameworks)]
  finally:
    for w in workers:
      w.close()
  ours = results[0]
  ours["allocator"] = alloc
  for framework, theirs, their_rates in zip(frameworks[1:], results[1:], rates[1:]):
    ours[framework] = theirs
    pairs = [a / b for a, b in zip(rates[0], their_rates)]
    ours[f"speedup_vs_{framework}"] = statistics.median(pairs)
    ours[f"speedup_vs_{framework}_per_window_pair"] = pairs
    if "matmul_peak_gflops" in ours:
      theirs["fraction_of_matmul_peak"] = (theirs["images_per_second"]["median"]
                                           * theirs["flops_per_image"]
                                           / (ours["matmul_peak_gflops"] * 1e9))
  if args.json:
    print(json.dumps(ours), flush=True)
  else:
    print(line(ours), flush=True)


def line(r: dict) -> str:
  ips = r["images_per_second"]
  s = (f"{r['setting']:9s} {r['allocator']:13s} {r['mode']:5s} {r['cell']} b{r['batch']} "
       f"h{r['hidden']} "
       f"T{r['steps']} | "
       f"rnnjax {ips['median']:9,.0f} img/s (min {ips['min']:,.0f}, max {ips['max']:,.0f}) | "
       f"first call {r['first_call_seconds']:.2f}s | peak {r['peak_memory_bytes'] / 2**20:,.0f} "
       f"MiB | {r['flops_per_image'] / 1e6:.1f} MFLOP/img | {r['layers']}")
  if "fraction_of_matmul_peak" in r:
    s += (f" | {100 * r['fraction_of_matmul_peak']:.0f}% of {r['matmul_peak_gflops']:.0f} "
          "GFLOP/s")
  for framework, peer in PEERS.items():
    if framework in r:
      t = r[framework]
      s += (f" | {peer} {t['images_per_second']['median']:9,.0f} img/s "
            f"({100 * t.get('fraction_of_matmul_peak', 0):.0f}%) | "
            f"x{r[f'speedup_vs_{framework}']:.2f}")
  return s


if __name__ == "__main__":
  sys.exit(main())
