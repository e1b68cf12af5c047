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

import os
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


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins a multi-process run through `jax.distributed.initialize`, before any JAX work.

  Arguments default to $RNNJAX_COORDINATOR (host:port of process 0), $RNNJAX_NUM_PROCESSES
  and $RNNJAX_PROCESS_ID. Nothing given: a single-process run (returns False). On CPUs the
  processes talk through gloo.
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
  if not host or not port.isdigit():
    raise ParallelError(f"coordinator address must be HOST:PORT, got {coordinator!r}")
  # JAX's coordinator listens on every interface by default; a loopback coordinator (one
  # machine, as in the tests) listens on loopback only.
  bind = coordinator if host in ("127.0.0.1", "localhost", "[::1]") else None
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id, coordinator_bind_address=bind)
  return True


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
