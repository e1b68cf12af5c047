"""A thin Orbax wrapper: one manager per workdir, the full train state plus a JSON record.

Layout: `workdir/checkpoints/<global step>/{state/, meta/, metrics/}`. Orbax writes each
step into a temporary folder and renames it when complete, so a run killed mid-save leaves
no step that looks finished. Kept: the latest `keep` steps and the best by test accuracy.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class CheckpointError(Exception):
  """A checkpoint cannot be used; the message says which and what to do."""


def _test_accuracy(metrics) -> float:
  return metrics["test_accuracy"]


class Checkpointer:
  """Saves and restores `(train state, meta)` pairs under `directory`.

  `meta` is a small JSON-able dict (epoch, position in the epoch, history so far).
  """

  def __init__(self, directory: str | os.PathLike, keep: int = 2, read_only: bool = False):
    """`read_only`: for readers (evaluate, predict, notebooks) of a workdir that a run may
    be writing at the same time: no saves, deletions, or clean-up of the run's unfinished
    (temporary) checkpoint folders."""
    self.directory = Path(directory).absolute()
    preservation = policies.AnyPreservationPolicy([
        policies.LatestN(keep),
        policies.BestN(get_metric_fn=_test_accuracy, reverse=False, n=1,
                       keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation,
        best_fn=_test_accuracy, best_mode="max",  # without best_fn, best_step() = latest
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
    """Writes checkpoint `step`; `metrics` (with `test_accuracy`) rank it for `best_step`."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta))
    try:
      self.manager.save(step, args=args, metrics=metrics, force=True)
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - a full disk surfaces as many kinds
      # Orbax writes into a temporary folder and deletes old steps only after the rename,
      # so the checkpoints already on disk are intact; the next start removes the leftover.
      raise CheckpointError(
          f"could not write checkpoint {self.directory / str(step)} ({type(e).__name__}: "
          f"{_first_line(e)}). The earlier checkpoints are untouched. Is the disk full? Free "
          "some space (or use another --workdir), then rerun the same command to resume."
      ) from e

  def restore(self, abstract_state, step: int | None = None):
    """Restores `step` (default: the newest readable one) onto `abstract_state`'s structure.

    Returns:
      (state, meta, step), or None when there is no checkpoint. When the newest checkpoint
      cannot be read, warns, names it, and falls back to the next older one.
    """
    candidates = [step] if step is not None else sorted(self.steps(), reverse=True)
    unreadable = []
    for s in candidates:
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many kinds
        if self._holds_other_shapes(s, abstract_state):
          raise CheckpointError(
              f"checkpoint {self.directory / str(s)} does not fit this config's model or "
              f"optimizer ({type(e).__name__}: {_first_line(e)}). Use a new "
              "--workdir for a different model, or the config that made this one.") from None
        logging.warning("checkpoint %s is unreadable (%s: %s); falling back to an older one",
                        self.directory / str(s), type(e).__name__, _first_line(e))
        print(f"warning: checkpoint {self.directory / str(s)} is unreadable "
              f"({type(e).__name__}); trying an older one.", flush=True)
        unreadable.append(s)
        continue
      if unreadable and step is None:
        self._set_aside(unreadable)
      return restored["state"], dict(restored["meta"]), s
    if candidates:
      raise CheckpointError(
          f"no checkpoint under {self.directory} could be read. Move the folder away to "
          "start afresh, or restore it from a backup.")
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


def _first_line(e: Exception) -> str:
  lines = str(e).strip().splitlines()
  return lines[0][:300] if lines else ""


def abstract_like(state):
  """Shape/dtype structs of `state`'s arrays, for restoring without materialising it."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
