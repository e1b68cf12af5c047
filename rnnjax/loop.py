"""The training loop's host-side logic, as pure functions of the position: where each call
of the jitted step function ends, whether a checkpoint or a progress read falls there, and
the metrics read one call behind. No JAX, no files: tested on its own.

    for call in plan_epoch(first, steps_per_epoch, steps_per_call, base, checkpoint_every,
                           every):
      ...run steps [call.start, call.stop)...
      if call.read:
        reader.read(lag=not (call.last or call.save))

A resumed run starts at such a boundary, so it groups its steps exactly as the
uninterrupted run did: the same calls, the same updates, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator

import numpy as np


def call_end(i: int, steps_per_epoch: int, steps_per_call: int, base: int,
             checkpoint_every: int) -> int:
  """Where the call that starts at step `i` of an epoch ends (exclusive): the next multiple
  of `steps_per_call` within the epoch, cut short by the epoch's end and by the next
  periodic checkpoint (global step `base + j` a multiple of `checkpoint_every`)."""
  end = min((i // steps_per_call + 1) * steps_per_call, steps_per_epoch)
  if checkpoint_every > 0:
    end = min(end, ((base + i) // checkpoint_every + 1) * checkpoint_every - base)
  return end


@dataclasses.dataclass(frozen=True)
class Call:
  """One call of the jitted step function: epoch steps [start, stop)."""
  start: int
  stop: int
  scanned: bool  # a whole group of steps_per_call > 1 steps: one `train_steps` scan
  save: bool     # a periodic checkpoint falls at `stop`, inside the epoch
  read: bool     # the metrics are read after it: the epoch's end, a save, a progress point
  last: bool     # stop is the epoch's end


def plan_epoch(first: int, steps_per_epoch: int, steps_per_call: int, base: int,
               checkpoint_every: int, every: int) -> Iterator[Call]:
  """The calls of an epoch from step `first`; `base` is the global step of the epoch's step
  0, `every` the steps between progress reads."""
  i = first
  while i < steps_per_epoch:
    end = call_end(i, steps_per_epoch, steps_per_call, base, checkpoint_every)
    last = end == steps_per_epoch
    save = checkpoint_every > 0 and (base + end) % checkpoint_every == 0 and not last
    yield Call(i, end, scanned=end - i == steps_per_call > 1, save=save,
               read=last or save or end // every > i // every, last=last)
    i = end


def unstack(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Host metrics, one dict per call (scalars, or `[k]` arrays from `train_steps`) -> one
  dict per step, in order."""
  out = []
  for m in metrics:
    shape = np.shape(m["loss_sum"])
    if not shape:
      out.append(m)
    else:
      out.extend({k: v[j] for k, v in m.items()} for j in range(shape[0]))
  return out


# The step's metrics by kind, one rule each (`accumulate`, then `epoch_metrics`):
#   sums over the batch's examples: added up, then divided by the examples once per epoch
#     (`loss_sum` -> `loss`, `correct` -> `accuracy`, with `correct` and `count` kept);
#   arrays (the confusion matrix): added up;
#   any other scalar is a number per step (`grad_norm`): the epoch reports its mean over
#     the steps and its largest (`grad_norm`, `grad_norm_max`).
# So a new number returned by `steps.train_step` reaches metrics.jsonl, the epoch's
# TensorBoard scalars and the checkpoints' running totals with no other change.
EXAMPLE_SUMS = ("loss_sum", "correct", "count")


def accumulate(totals: dict[str, Any] | None, metrics: list[dict[str, Any]]) -> dict[str, Any]:
  """Adds per-batch host metrics, in order, to running totals (float64 / int): example
  sums and arrays are added, each per-step number `x` kept as `x_sum`, `x_max` and the
  `steps` counted.

  Adding in chunks gives the same floats as adding all at once, so an epoch split by a
  resume sums to exactly what an uninterrupted epoch does.
  """
  totals = dict(totals or {"loss_sum": 0.0, "correct": 0, "count": 0})
  for m in metrics:
    totals["loss_sum"] += float(m["loss_sum"])
    totals["correct"] += int(m["correct"])
    totals["count"] += int(m["count"])
    per_step = [k for k, v in m.items() if k not in EXAMPLE_SUMS and not np.ndim(v)]
    if per_step:
      totals["steps"] = totals.get("steps", 0) + 1
    for k in per_step:
      value = float(m[k])
      totals[f"{k}_sum"] = totals.get(f"{k}_sum", 0.0) + value
      totals[f"{k}_max"] = max(totals.get(f"{k}_max", value), value)
    for k, v in m.items():
      if np.ndim(v):
        totals[k] = totals.get(k, 0) + np.asarray(v, np.int64)
  return totals


def epoch_metrics(totals: dict[str, Any]) -> dict[str, Any]:
  """The epoch's numbers from its totals, divided once: `loss` and `accuracy` per example,
  `correct` and `count`, and each per-step number's mean and largest (`x`, `x_max`)."""
  count = max(totals["count"], 1)
  out = {"loss": totals["loss_sum"] / count, "accuracy": totals["correct"] / count,
         "correct": totals["correct"], "count": totals["count"]}
  for key in totals:
    if key.endswith("_sum") and key != "loss_sum":
      name = key[:-len("_sum")]
      out[name] = totals[key] / max(totals.get("steps", 0), 1)
      out[f"{name}_max"] = totals[f"{name}_max"]
  return out


class Diverged(Exception):
  """A step's loss was not finite: `step` (global) and its `loss` (per image)."""

  def __init__(self, step: int, loss: float):
    super().__init__(f"loss {loss} at step {step}")
    self.step, self.loss = step, loss


class PendingMetrics:
  """The metrics of calls not yet read, read one call behind, with the running totals.

  A progress read (`lag=True`) leaves the newest call's metrics for the next read, so that
  the device works on that call while the host waits for the earlier ones. Every read checks
  each step's loss (raising `Diverged`) and adds the steps to `totals`.

  Attributes:
    totals: the epoch's running sums (`loss_sum`, `correct`, `count`, and `seconds`, which
      the loop sets).
    position: the epoch step after the last step read.
  """

  def __init__(self, totals: dict[str, Any], first: int, base: int, batch_size: int,
               fetch: Callable[[Any], Any]):
    self.totals, self.position, self.base = totals, first, base
    self.batch_size, self.fetch = batch_size, fetch
    self._pending: list[tuple[Any, int]] = []  # (a call's metrics, its steps)

  def add(self, metrics, steps: int) -> None:
    self._pending.append((metrics, steps))

  def read(self, lag: bool) -> float | None:
    """Reads what is pending (all but the newest call when `lag`); returns the last step's
    loss per image, or None when there was nothing to read."""
    ready = self._pending[:-1] if lag else self._pending
    self._pending = self._pending[len(ready):]
    if not ready:
      return None
    fetched = unstack(self.fetch([m for m, _ in ready]))
    self.position += len(fetched)
    losses = [float(x["loss_sum"]) for x in fetched]
    for k, loss in enumerate(losses):
      if not math.isfinite(loss):
        raise Diverged(self.base + self.position - len(fetched) + 1 + k,
                       loss / self.batch_size)
    self.totals = accumulate(self.totals, fetched)  # keeps "seconds" as it was
    return losses[-1] / self.batch_size
