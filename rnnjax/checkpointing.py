"""A thin Orbax wrapper: one manager per workdir, the full train state plus a JSON record.

Layout: `workdir/checkpoints/<global step>/{state/, meta/, metrics/}`. Orbax writes each
step into a temporary folder and renames it when complete, so a run killed mid-save leaves
no step that looks finished. Kept: the latest `keep` steps and the best by validation
accuracy (`selection_metrics`).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class CheckpointError(Exception):
  """A checkpoint cannot be used; the message says which and what to do."""


def selection_metrics(record: dict[str, Any]) -> dict[str, float] | None:
  """What ranks an epoch's checkpoint for `best_step`: its validation accuracy; None (not a
  candidate: the best is then the latest) for a run without a validation split. Never the
  test accuracy."""
  if "val_accuracy" not in record:
    return None
  return {"val_accuracy": record["val_accuracy"]}


def _val_accuracy(metrics) -> float:
  # Checkpoints written before runs held out validation images ranked by test accuracy:
  # they are never taken for the best.
  return metrics.get("val_accuracy", float("-inf"))


class Checkpointer:
  """Saves and restores `(train state, meta)` pairs under `directory`.

  `meta` is a small JSON-able dict (epoch, position in the epoch, history so far).
  """

  def __init__(self, directory: str | os.PathLike, keep: int = 2, read_only: bool = False):
    """`read_only`: for readers (evaluate, predict, notebooks) of a workdir that a run may
    be writing at the same time: no saves, deletions, or clean-up of the run's unfinished
    (temporary) checkpoint folders."""
    self.directory = Path(directory).absolute()
    self.read_only = read_only
    self.unreadable: list[int] = []
    preservation = policies.AnyPreservationPolicy([
        policies.LatestN(keep),
        policies.BestN(get_metric_fn=_val_accuracy, reverse=False, n=1,
                       keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation,
        best_fn=_val_accuracy, best_mode="max",  # without best_fn, best_step() = latest
        enable_async_checkpointing=False,  # a returned save is on disk: simplest to reason about
        cleanup_tmp_directories=not read_only,  # leftovers of a save killed midway
        read_only=read_only, create=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, step: int, state, meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> None:
    """Writes checkpoint `step`; `metrics` (`selection_metrics`) rank it for `best_step`."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta))
    try:
      self.manager.save(step, args=args, metrics=metrics, force=True)
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - a full disk surfaces as many kinds
      # Orbax writes into a temporary folder and deletes old steps only after the rename,
      # so the checkpoints already on disk are intact; the next start removes the leftover.
      cause = _os_error(e)
      if cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = ("The disk is full (or the quota spent): free some space, or use another "
               "--workdir")
      elif cause is not None:
        fix = (f"{cause.strerror or type(cause).__name__}"
               + (f": {cause.filename}" if cause.filename else "")
               + "; fix that, or use another --workdir")
      else:
        fix = "Fix the cause, or use another --workdir"
      raise CheckpointError(
          f"could not write checkpoint {self.directory / str(step)} ({type(e).__name__}: "
          f"{_first_line(e)}). The earlier checkpoints are untouched. {fix}, then rerun the "
          "same command to resume.") from e

  def restore(self, abstract_state, step: int | None = None, fallback: bool = False):
    """Restores a checkpoint onto `abstract_state`'s structure.

    `step` None: the newest readable checkpoint. A `step` given: that one, and with
    `fallback` the others after it, newest first, when it cannot be read (readers asking
    for `best` or `latest`). A checkpoint whose files or record (`check_meta`) are damaged
    is named in a warning and skipped; `unreadable` then lists what was skipped.

    Returns:
      (state, meta, step), or None when there is no checkpoint.
    """
    available = sorted(self.steps(), reverse=True)
    if step is None:
      candidates = available
    else:
      candidates = [step] + ([s for s in available if s != step] if fallback else [])
    self.unreadable = []
    for s in candidates:
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        meta = check_meta(restored["meta"])
        if not all_finite(restored["state"]):
          raise ValueError("its parameters are not all finite (NaN or infinite values)")
      except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many kinds
        if self._holds_other_shapes(s, abstract_state):
          raise CheckpointError(
              f"checkpoint {self.directory / str(s)} does not fit this config's model or "
              f"optimizer ({type(e).__name__}: {_first_line(e)}). Use a new "
              "--workdir for a different model, or the config that made this one.") from None
        logging.warning("checkpoint %s is unreadable (%s: %s); trying the next one",
                        self.directory / str(s), type(e).__name__, _first_line(e))
        more = "trying the next one" if s != candidates[-1] else "no other checkpoint to try"
        print(f"warning: checkpoint {self.directory / str(s)} is unreadable "
              f"({type(e).__name__}: {_first_line(e)[:120]}); {more}.", flush=True)
        self.unreadable.append(s)
        continue
      if self.unreadable and step is None and not self.read_only:
        self._set_aside(self.unreadable)
      return restored["state"], meta, s
    if candidates:
      others = [s for s in available if s not in candidates]
      raise CheckpointError(
          f"no checkpoint under {self.directory} could be read (tried steps "
          f"{', '.join(map(str, candidates))})"
          + (f"; the others ({', '.join(map(str, others))}) may be: ask for one with "
             "--checkpoint STEP." if others else
             ". Restore them from a backup; to start afresh instead, move the folder away "
             f"(mv {self.directory} {self.directory}.damaged)."))
    return None

  def _holds_other_shapes(self, step: int, abstract_state) -> bool:
    """Whether checkpoint `step` is intact enough to describe its arrays, and they differ
    from `abstract_state`'s (another model): a config error, not damage."""
    try:
      stored = self.manager.item_metadata(step)["state"]
    except Exception:  # noqa: BLE001 - unreadable metadata: damage
      return False
    if stored is None:
      return False
    shapes = lambda tree: sorted(tuple(getattr(x, "shape", ())) for x in jax.tree.leaves(tree))
    return shapes(stored) != shapes(abstract_state)

  def _set_aside(self, bad_steps: list[int]) -> None:
    """Moves unreadable checkpoints newer than the one restored out of the manager's way
    (the run will write those steps again), keeping them for inspection."""
    aside = self.directory.parent / "unreadable_checkpoints"
    aside.mkdir(exist_ok=True)
    for s in bad_steps:
      target = aside / str(s)
      n = 1
      while target.exists():
        target, n = aside / f"{s}.{n}", n + 1
      os.replace(self.directory / str(s), target)
      print(f"warning: moved the unreadable checkpoint {s} to {target}", flush=True)
    self.manager.reload()

  def close(self) -> None:
    self.manager.close()


@dataclasses.dataclass
class Position:
  """Where a run stands, as a checkpoint's record holds it.

  Attributes:
    epoch: finished epochs.
    epoch_step: steps done in epoch `epoch` (0 at an epoch's end).
    partial: that epoch's running totals (loss_sum, correct, count, seconds), mid-epoch.
    history: one record per finished epoch, as in metrics.jsonl.
  """
  epoch: int = 0
  epoch_step: int = 0
  partial: dict[str, Any] | None = None
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  def to_meta(self) -> dict[str, Any]:
    meta = {"epoch": self.epoch}
    if self.epoch_step or self.partial is not None:
      meta.update(epoch_step=self.epoch_step, partial=self.partial)
    meta["history"] = self.history
    return meta

  @classmethod
  def from_meta(cls, meta) -> "Position":
    meta = check_meta(meta)
    return cls(meta["epoch"], meta.get("epoch_step", 0), meta.get("partial"), meta["history"])


def check_meta(meta) -> dict[str, Any]:
  """The checkpoint's record as a dict, checked: `epoch` (finished epochs, an int >= 0),
  `history` (one dict per finished epoch), and, mid-epoch, `epoch_step` (int >= 0) and
  `partial` (the epoch's running totals). ValueError names what is malformed."""
  meta = dict(meta) if hasattr(meta, "keys") else meta
  if not isinstance(meta, dict):
    raise ValueError(f"the record is {type(meta).__name__}, not an object")
  epoch, history = meta.get("epoch"), meta.get("history")
  is_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
  if not is_int(epoch):
    raise ValueError(f"its record's epoch is {epoch!r}, not an integer >= 0")
  if not (isinstance(history, list) and all(isinstance(r, dict) for r in history)):
    raise ValueError("its record has no history (a list with one object per epoch)")
  if len(history) != epoch:
    raise ValueError(f"its record's history has {len(history)} epochs, its epoch says {epoch}")
  if not is_int(meta.get("epoch_step", 0)):
    raise ValueError(f"its record's epoch_step is {meta.get('epoch_step')!r}")
  partial = meta.get("partial")
  if partial is not None and not (isinstance(partial, dict) and all(
      isinstance(partial.get(k), (int, float)) for k in ("loss_sum", "correct", "count",
                                                          "seconds"))):
    raise ValueError("its record's running totals (partial) are malformed")
  return meta


def all_finite(state) -> bool:
  """Whether every floating-point parameter of `state` (a train state, or a tree of
  arrays) is finite: a checkpoint that holds NaN or infinite ones is never taken for a good
  one (to resume, evaluate or predict from)."""
  params = getattr(state, "params", state)
  leaves = [x for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)]
  if not leaves:
    return True
  ok = jax.jit(lambda xs: jnp.all(jnp.stack([jnp.isfinite(x).all() for x in xs])))(leaves)
  return bool(ok.addressable_data(0))


def _os_error(e: BaseException) -> OSError | None:
  """The OSError behind `e` (itself, or in its chain of causes), if any."""
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, OSError):
      return e
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


def _first_line(e: Exception) -> str:
  lines = str(e).strip().splitlines()
  return lines[0][:300] if lines else ""
