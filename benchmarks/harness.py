"""The measuring harness the benchmarks share: timed windows, the machine's matmul peak,
and the protocol by which a driver makes measured processes take turns.

A measured process warms its one setting up, says `{"ready": true}` on stdout and then,
for each `window` line on stdin, times one window and answers `{"rate": images/s, "start":
t, "end": t}`; for `done`, it answers with its other figures (`serve`). The driver keeps
two such processes alive at once (rnnjax's and PyTorch's) and asks them in turn
(`Worker`, `interleave`), so that both see the same moods of the machine: its speed drifts
by tens of per cent between minutes, so figures taken minutes apart do not compare.
"""

from __future__ import annotations

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


def allocator_env(name: str) -> dict:
  """This process's environment with GLIBC_TUNABLES set to `ALLOCATORS[name]` (unset for
  `default`)."""
  env = dict(os.environ)
  env.pop("GLIBC_TUNABLES", None)
  if ALLOCATORS[name]:
    env["GLIBC_TUNABLES"] = ALLOCATORS[name]
  return env


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


class Worker:
  """A measured process (`script --worker FRAMEWORK --settings NAME`), warmed up and waiting
  for the driver's `window` and `done` lines (see `serve`)."""

  def __init__(self, script: Path, framework: str, name: str, window_seconds: float,
               env: dict):
    self.what = f"{framework} {name}"
    self.stderr = tempfile.TemporaryFile(mode="w+")
    self.proc = subprocess.Popen(
        [sys.executable, str(script), "--worker", framework, "--settings", name,
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


def interleave(workers: list[Worker], windows: int) -> list[list[float]]:
  """`windows` timed windows of each worker, taking turns; images/s per worker."""
  rates = [[] for _ in workers]
  for _ in range(windows):
    for w, r in zip(workers, rates):
      r.append(w.window())
  return rates


def error_boundary(main: Callable[[], int], name: str) -> int:
  """Runs `main()`; an unexpected failure ends with one `error:` line naming the file that
  holds its traceback, exit status 1 (a measured process's own failure is reported by the
  driver, with its output)."""
  try:
    return main()
  except Exception:  # noqa: BLE001 - the error boundary
    from rnnjax import reporting
    return reporting.unexpected_error(name)
