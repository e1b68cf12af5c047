"""Bounds checked before any work: the memory a config will need, against the machine's.

    from rnnjax import resources
    resources.estimate(config)          # {"parameters": n, "total_bytes": b, ...}
    resources.check_memory(config)      # ResourceError when it cannot fit

The estimate counts what grows with the config: the parameters with their gradients, Adam's
two moments and the copy a donated update keeps in flight (five float32 copies), the
activations one training step keeps for its backward pass, the stacked batches of one call
of the step function, and one evaluation batch's activations. It is an estimate, not a
measurement (XLA fuses and reuses buffers): its job is to refuse a run that cannot fit long
before the allocation, with the figure, instead of climbing toward the OOM killer. Light
to import: JAX is imported only to count a model's parameters.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from rnnjax.config import CELLS, SEQUENCE_SHAPES, Config

FLOAT32 = 4
STATE_COPIES = 5  # parameters, gradients, Adam's mu and nu, the donated update in flight
# Floats kept per unit per time step for the backward pass (gates, cell state, hidden
# state, tanh of the cell state and their gradients): generous, as XLA's scan keeps more
# than the equations need.
TRAIN_FLOATS_PER_UNIT = 12
EVAL_FLOATS_PER_UNIT = 6


class ResourceError(ValueError):
  """The run cannot fit this machine (or the given limit); the message has the estimate."""


def parameter_count(config: Config) -> int:
  """The model's parameters, counted on the model itself: `jax.eval_shape` of its `init`
  traces it without allocating anything (a second or so for the largest presets)."""
  import jax
  import jax.numpy as jnp

  from rnnjax import models
  model = models.model_from_config(config.replace(rnn_kernel="xla"))
  x = jax.ShapeDtypeStruct((1, *SEQUENCE_SHAPES[config.task]), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes["params"]))


def estimate(config: Config) -> dict[str, Any]:
  """Estimated bytes of a training run of `config`, by part (see the module docstring)."""
  time_steps, features = SEQUENCE_SHAPES[config.task]
  units = config.hidden_size * config.num_layers * (2 if config.bidirectional else 1)
  if CELLS[config.cell].units is not None:
    units = CELLS[config.cell].units(config)
  params = parameter_count(config)
  steps_in_call = min(config.steps_per_call, config.steps_per_epoch)
  parts = {
      "train_state": STATE_COPIES * params * FLOAT32,
      "activations": TRAIN_FLOATS_PER_UNIT * config.batch_size * time_steps * units * FLOAT32,
      "batches": 2 * steps_in_call * config.batch_size * time_steps * features * FLOAT32,
      "evaluation": (EVAL_FLOATS_PER_UNIT * config.eval_batch_size * time_steps * units
                     * FLOAT32),
  }
  return {"parameters": params, **{f"{k}_bytes": v for k, v in parts.items()},
          "total_bytes": sum(parts.values())}


def machine_memory_bytes() -> int | None:
  """Physical memory, or the cgroup's limit when that is smaller; None when unknown."""
  found = []
  try:
    found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  except (ValueError, OSError, AttributeError):
    pass
  for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
      text = Path(path).read_text().strip()
    except OSError:
      continue
    if text.isdigit() and int(text) < 2**60:  # "max" or a huge number: no limit
      found.append(int(text))
  return min(found) if found else None


def gib(n: float) -> str:
  return f"{n / 2**30:,.1f} GiB" if n < 2**30 * 1e6 else f"{n:.1e} bytes"


def check_memory(config: Config) -> dict[str, Any]:
  """Raises ResourceError when `config`'s estimate exceeds `config.memory_limit_gib` (or,
  without one, the machine's memory). Returns the estimate."""
  e = estimate(config)
  if config.memory_limit_gib is not None:
    limit, what = config.memory_limit_gib * 2**30, f"the limit of {config.memory_limit_gib} GiB"
  else:
    limit = machine_memory_bytes()
    what = f"this machine's {gib(limit)} of memory" if limit else ""
  if limit and e["total_bytes"] > limit:
    raise ResourceError(
        f"this run would need about {gib(e['total_bytes'])} ({e['parameters']:,} parameters: "
        f"{gib(e['train_state_bytes'])} for them with their gradients and Adam's moments, "
        f"{gib(e['activations_bytes'])} of activations per training step, "
        f"{gib(e['evaluation_bytes'])} per evaluation batch), more than {what}. Use a "
        "smaller --hidden-size, --num-layers, --batch-size or --eval-batch-size"
        + (", or raise --memory-limit" if config.memory_limit_gib is not None else
           " (or set --memory-limit GIB if you know better)") + ".")
  return e
