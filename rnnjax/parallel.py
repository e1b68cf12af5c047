"""Data parallelism over every device of every process, with jax.sharding.

One mesh axis, `data`, over all devices (`jax.devices()`: every process's, in a multi-host
run). What is where::

    batches (image, label, mask)      sharded along the batch: device k holds rows
                                      [k * b / n, (k + 1) * b / n) of the global batch b
    parameters, Adam state, step      replicated on every device
    metrics (sums, counts)            replicated scalars

The jitted steps are the same functions as on one device: XLA partitions them by the
shardings of their inputs, and the batch mean of the gradient becomes a sum across devices
(GSPMD). The global batch is the config's `batch_size`, whatever the device count, so a run
computes the same thing on 1 or 8 devices up to float summation order.

Multi-host: every process runs the same command with its own process id; the coordinator is
process 0's address (see `initialize`). Each process reads only its own rows of every batch
(`data.train_batches(..., shard=...)`) and `make_array_from_process_local_data` assembles
the global array.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
ENV = {"coordinator": "RNNJAX_COORDINATOR", "num_processes": "RNNJAX_NUM_PROCESSES",
       "process_id": "RNNJAX_PROCESS_ID"}


class ParallelError(Exception):
  """The device or process setup cannot run this config; the message says what to change."""


class JoinFailed(Exception):
  """Not every process of a multi-process run joined in time; the message names them."""


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout: float = 300) -> bool:
  """Joins a multi-process run through `jax.distributed.initialize`, before any JAX work.

  Arguments default to $RNNJAX_COORDINATOR (host:port of process 0), $RNNJAX_NUM_PROCESSES
  and $RNNJAX_PROCESS_ID. Nothing given: a single-process run (returns False). On CPUs the
  processes talk through gloo.

  Before JAX's own start, the processes meet on the next port (PORT + 1) of process 0
  (`Watch`): process 0 waits up to `timeout` seconds for every other process and names those
  that did not come (JoinFailed; JAX itself would abort the process without a word). The
  connections stay open for the run, so that the loss of any process ends the others at
  once with one line instead of a collective's traceback and an abort.
  """
  coordinator = coordinator or os.environ.get(ENV["coordinator"]) or None
  if num_processes is None and os.environ.get(ENV["num_processes"]):
    num_processes = _int_env("num_processes")
  if process_id is None and os.environ.get(ENV["process_id"]):
    process_id = _int_env("process_id")
  given = [x is not None for x in (coordinator, num_processes, process_id)]
  if not any(given):
    return False
  if not all(given):
    raise ParallelError(
        "a multi-process run needs all three of the coordinator address (host:port of "
        "process 0), the number of processes and this process's id (--coordinator, "
        "--num-processes, --process-id, or $RNNJAX_COORDINATOR, $RNNJAX_NUM_PROCESSES, "
        "$RNNJAX_PROCESS_ID)")
  if not 0 <= process_id < num_processes:
    raise ParallelError(f"process id {process_id} is not in [0, {num_processes})")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  host, _, port = coordinator.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65535:
    raise ParallelError(f"coordinator address must be HOST:PORT (a port below 65535), got "
                        f"{coordinator!r}")
  # JAX's coordinator listens on every interface by default; a loopback coordinator (one
  # machine, as in the tests) listens on loopback only.
  loopback = host in ("127.0.0.1", "localhost", "[::1]")
  bind = coordinator if loopback else None
  global _watch
  if num_processes > 1:
    _watch = Watch(host.strip("[]"), int(port) + 1, num_processes, process_id, loopback)
    _watch.join(timeout)
  with _service_in_child(process_id, timeout):
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, coordinator_bind_address=bind,
                               initialization_timeout=max(30, int(timeout)))
  if _watch is not None:
    _watch.start()
  return True


_watch = None

# How long JAX's coordination service outlives a process 0 that died without shutting it
# down: long enough for every other process's Watch to see the loss and end with its line,
# short enough that rerunning the command soon finds the port free again.
SERVICE_LINGER_S = 10

_SERVICE = """
import json, sys, time
try:
  from jax._src.lib import _jax
  service = _jax.get_distributed_runtime_service(*json.loads(sys.argv[1]),
                                                    **json.loads(sys.argv[2]))
except Exception as e:
  print("error", type(e).__name__ + ":", " ".join(str(e).split())[:400], flush=True)
  sys.exit(1)
print("ready", flush=True)
if sys.stdin.readline().strip() != "stop":  # process 0 ended without shutting us down
  time.sleep(float(sys.argv[3]))
service.shutdown()
"""


class _ServiceProcess:
  """JAX's coordination service, hosted by a small child of process 0 (see `_service_in_child`).

  The child stops when `shutdown` says so (JAX's own shutdown, at exit). If process 0 dies
  instead, its pipe closes and the child lingers `SERVICE_LINGER_S` seconds before it stops.
  """

  def __init__(self, timeout: float, args: tuple, kwargs: dict):
    self.child = subprocess.Popen(
        [sys.executable, "-c", _SERVICE, json.dumps(args), json.dumps(kwargs),
         str(SERVICE_LINGER_S)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True)  # a Ctrl-C in the terminal is process 0's to handle
    ready = threading.Thread(target=lambda: setattr(self, "word", self.child.stdout.readline()),
                             daemon=True)
    self.word = ""
    ready.start()
    ready.join(max(30.0, timeout))
    if self.word.strip() != "ready":
      ended = self.child.poll()
      self.child.kill()
      why = (self.word.strip()[6:] or (f"it ended with exit status {ended} before it listened"
                                       if ended is not None else "it did not start in time"))
      raise ParallelError(f"could not start the run's coordination service at {args[0]} "
                          f"({why}). Is another run using that port? Choose another "
                          "--coordinator port.")

  def shutdown(self) -> None:
    if self.child.poll() is None:
      try:
        self.child.stdin.write("stop\n")
        self.child.stdin.flush()
      except OSError:
        pass
      try:
        self.child.wait(30)
      except subprocess.TimeoutExpired:
        self.child.kill()


@contextlib.contextmanager
def _service_in_child(process_id: int, timeout: float):
  """Process 0 hosts JAX's coordination service in a child process instead of in itself.

  When process 0 is killed, the service in it would vanish at once, and JAX's client in
  every other process, which polls the service for errors, would abort its process (SIGABRT,
  "Terminating process because the JAX distributed service detected fatal errors") in a race
  with the Watch's one-line message and exit status 1. A service in its own process outlives
  process 0 long enough that the Watch always speaks first. This swaps the factory JAX's
  `initialize` calls (a private name); where a JAX version lacks it, the service stays in
  process 0, as JAX makes it.
  """
  from jax._src import distributed
  real = getattr(distributed, "_jax", None)
  if process_id != 0 or not hasattr(real, "get_distributed_runtime_service"):
    yield
    return

  class Factory:
    def __getattr__(self, name):
      return getattr(real, name)

    def get_distributed_runtime_service(self, *args, **kwargs):
      return _ServiceProcess(timeout, args, kwargs)

  distributed._jax = Factory()
  try:
    yield
  finally:
    distributed._jax = real


class Watch:
  """The processes' own meeting point and liveness channel, beside JAX's coordinator.

  Process 0 listens on `port`; every other process connects and says its id. After the
  meeting, one thread per connection waits for the other side's last word: `done` (it
  finished), `error TEXT` (it stopped with that error), or nothing at all (the connection
  closed: killed, crashed, its machine gone). Anything but `done` ends this process at once
  with one line and exit status 1; its last good checkpoint is on disk (saves are atomic).
  """

  def __init__(self, host: str, port: int, n: int, me: int, loopback: bool):
    self.host, self.port, self.n, self.me, self.loopback = host, port, n, me, loopback
    self.peers: dict[int, Any] = {}  # id -> socket
    self.finished = False
    self.lost = threading.Event()

  def join(self, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if self.me == 0:
      server = socket.create_server(("127.0.0.1" if self.loopback else "", self.port))
      say(f"waiting for {self.n - 1} more process(es) at {self.host}:{self.port - 1} "
          f"(up to {timeout:.0f} s)")
      try:
        while len(self.peers) < self.n - 1:
          left = deadline - time.monotonic()
          if left <= 0:
            raise JoinFailed(self._missing(timeout))
          server.settimeout(left)
          try:
            conn, _ = server.accept()
          except socket.timeout:
            continue
          conn.settimeout(max(1.0, deadline - time.monotonic()))
          try:
            k, n = map(int, conn.makefile().readline().split())
          except (OSError, ValueError):
            conn.close()
            continue
          problem = (f"process {k} was started with --num-processes {n}, process 0 with "
                     f"{self.n}" if n != self.n else
                     f"two processes were started with --process-id {k}"
                     if k in self.peers or k == 0 else None)
          if problem:  # the newcomer is told, and says it in its own terminal
            conn.sendall(f"refused {problem}\n".encode())
            conn.close()
            say(f"warning: refused a process: {problem}")
            continue
          self.peers[k] = conn
        for conn in self.peers.values():
          conn.sendall(b"go\n")
          conn.settimeout(None)
      finally:
        server.close()
      return
    while True:  # the other processes: reach process 0, say who we are, wait for "go"
      try:
        conn = socket.create_connection((self.host, self.port), timeout=2)
        break
      except OSError:
        if time.monotonic() > deadline:
          raise JoinFailed(
              f"could not reach process 0 at {self.host}:{self.port - 1} (its meeting port "
              f"{self.port}) within {timeout:.0f} s. Start process 0 (--process-id 0) with "
              "the same command, or check --coordinator.") from None
        time.sleep(0.5)
    conn.sendall(f"{self.me} {self.n}\n".encode())
    conn.settimeout(max(1.0, deadline - time.monotonic()))
    try:
      answer = conn.makefile().readline().strip()
    except OSError:
      answer = ""
    if answer.startswith("refused "):
      raise JoinFailed(f"process 0 at {self.host}:{self.port - 1} refused this process: "
                       f"{answer[8:]}. Start every process with the same --num-processes "
                       "and its own --process-id.")
    if answer != "go":
      raise JoinFailed(f"process 0 at {self.host}:{self.port - 1} did not start the run within "
                       f"{timeout:.0f} s (some other process did not join; its terminal says "
                       "which).")
    conn.settimeout(None)
    self.peers[0] = conn

  def _missing(self, timeout: float) -> str:
    missing = [k for k in range(1, self.n) if k not in self.peers]
    names = ", ".join(map(str, missing))
    return (f"process(es) {names} of {self.n} did not join the run at "
            f"{self.host}:{self.port - 1} within {timeout:.0f} s. Start each with the same "
            "command and its own --process-id, or raise --join-timeout.")

  def start(self) -> None:
    for k, conn in self.peers.items():
      threading.Thread(target=self._watch, args=(k, conn), daemon=True,
                       name=f"rnnjax-watch-{k}").start()

  def _watch(self, k: int, conn) -> None:
    try:
      word = conn.makefile(errors="replace").readline().strip()
    except OSError:
      word = ""
    if word == "done" or self.finished:
      return
    self.lost.set()
    why = (f"stopped with an error: {word[6:]}" if word.startswith("error ") else
           "is gone (its connection closed without a word: killed, crashed, or its machine "
           "lost)")
    from rnnjax import reporting
    try:
      sys.stdout.flush()
      print(f"error: process {k} of this run {why}; process {self.me} stops too. Its last "
            "checkpoint is intact: rerun the same command in every process to resume.",
            file=reporting.console(), flush=True)
    finally:
      os._exit(1)  # a collective would wait for the lost process, then JAX would abort

  def finish(self, error: str | None = None) -> None:
    self.finished = True
    word = ("error " + " ".join(error.split())[:500]) if error else "done"
    for conn in self.peers.values():
      try:
        conn.sendall(f"{word}\n".encode())
      except OSError:
        pass


def finish(error: str | None = None) -> None:
  """Tells the other processes that this one finished (or stopped with `error`)."""
  if _watch is not None:
    _watch.finish(error)


def peer_lost(wait: float = 0.0) -> bool:
  """Whether another process of this run was lost (waits up to `wait` seconds to know)."""
  return _watch is not None and _watch.lost.wait(wait)


def devices() -> list:
  """`jax.devices()`, or ParallelError saying that JAX could not start the platform asked
  for (JAX_PLATFORMS naming one this machine lacks, say)."""
  try:
    return jax.devices()
  except (RuntimeError, AssertionError) as e:
    asked = os.environ.get("JAX_PLATFORMS") or getattr(jax.config, "jax_platforms", None)
    lines = str(e).strip().splitlines()
    why = f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
    raise ParallelError(
        "JAX could not start " + (f"the platform JAX_PLATFORMS={asked!r} asks for" if asked
                                   else "a backend") + f" ({why}). Unset JAX_PLATFORMS (or "
        "set it to cpu) to run on the CPU, or install JAX for that platform (for NVIDIA "
        "GPUs: pip install -U 'jax[cuda13]').") from None


def _int_env(key: str) -> int:
  name = ENV[key]
  try:
    return int(os.environ[name])
  except ValueError:
    raise ParallelError(f"${name} must be an integer, got {os.environ[name]!r}") from None


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: all of every process) with the `data` axis.

  Auto axis type: jax 0.10's default (Explicit) would put shardings into the types, which
  linen's scan carry does not follow.
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices, (AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Sharded along the batch: axis 0, or axis 1 of `stacked` batches `[steps, batch, ...]`."""
  return NamedSharding(mesh, P(None, AXIS) if stacked else P(AXIS))


def check_batch_sizes(config, mesh: Mesh) -> None:
  """Each global batch must split evenly over the devices (and so over the processes)."""
  n = mesh.size
  for field in ("batch_size", "eval_batch_size"):
    b = getattr(config, field)
    if b % n:
      lower, upper = max(n, b - b % n), b - b % n + n
      raise ParallelError(
          f"{field} {b} does not divide evenly over the {n} devices of this run "
          f"({jax.process_count()} process(es)); use a multiple of {n}, e.g. {lower} or "
          f"{upper} (--{field.replace('_', '-')}).")


def process_rows(global_batch: int) -> tuple[int, int]:
  """(first row, number of rows) of every global batch that this process feeds."""
  local = global_batch // jax.process_count()
  return jax.process_index() * local, local


def shard_batch(local: dict[str, np.ndarray], mesh: Mesh,
                stacked: bool = False) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays sharded along the batch (axis 1 when
  `stacked`: several batches `[steps, rows, ...]`, as `steps.train_steps` takes them)."""
  sharding = batch_sharded(mesh, stacked)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Host or single-device values (identical in every process) -> replicated global arrays."""
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) or x.is_fully_addressable else x
    if isinstance(x, np.ndarray):
      return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    return x
  return jax.tree.map(put, tree)


def abstract_replicated(tree: Any, mesh: Mesh) -> Any:
  """Shape/dtype/sharding structs to restore a checkpoint straight onto this mesh (any
  earlier topology: Orbax reshards)."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      tree)


def to_host(tree: Any) -> Any:
  """Replicated (or single-device) arrays -> NumPy, in every process."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(get, tree)


def is_main_process() -> bool:
  """Process 0 prints, writes metrics, plots and TensorBoard events."""
  return jax.process_index() == 0
