"""The one orchestrator: `train_and_evaluate(config, workdir)`.

Per epoch: train over the whole training split, evaluate on all test images, print one
line, append one JSON line to `workdir/metrics.jsonl`, save a checkpoint. Rerunning with
the same workdir resumes from the newest good checkpoint; a finished run says so.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from rnnjax import checkpointing, data, reporting, steps
from rnnjax.config import Config, shape_differences


class WorkdirError(Exception):
  """The workdir cannot be used as asked; the message says what to do."""


class TrainingDiverged(Exception):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


def check_workdir(workdir: Path, config: Config) -> None:
  """Creates `workdir` if needed, checks it is writable, and that a stored config.json
  describes the same model shapes as `config`."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / ".write_test"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f"workdir {str(workdir)!r} is not writable ({e.strerror}). Choose "
                       "another --workdir or fix its permissions.") from None
  stored = workdir / "config.json"
  if stored.exists():
    try:
      old = json.loads(stored.read_text())
    except (OSError, ValueError) as e:
      raise WorkdirError(f"{stored} is unreadable ({e}); fix or remove it.") from None
    diffs = shape_differences(old, config)
    if diffs:
      raise WorkdirError(
          f"workdir {str(workdir)!r} holds a run with a different model ("
          + "; ".join(diffs) + "). Its checkpoints cannot be resumed with this config: "
          "use a new --workdir, or the same settings as before.")


def jit_steps():
  """`train_step` jitted with the state donated, and `eval_step` jitted."""
  return jax.jit(steps.train_step, donate_argnums=0), jax.jit(steps.eval_step)


def evaluate(eval_step: Callable, state, split: data.Split, batch_size: int) -> dict:
  """Loss and accuracy over every example of `split`, exactly once."""
  metrics = [eval_step(state, b) for b in data.eval_batches(split, batch_size)]
  return steps.summarize(metrics)


def train_and_evaluate(config: Config, workdir: str | os.PathLike,
                       splits: tuple[data.Split, data.Split] | None = None,
                       log: Callable[[str], Any] = print):
  """Trains `config` in `workdir`, resuming from its checkpoints when it has any.

  Args:
    config: the run.
    workdir: where config.json, metrics.jsonl and checkpoints/ live.
    splits: (train, test) already in memory; None loads them as `config` says.
    log: where the per-epoch lines go.
  Returns:
    (final train state, history: one dict per epoch, as in metrics.jsonl).
  """
  workdir = Path(workdir)
  check_workdir(workdir, config)
  reporting.write_json_atomic(workdir / "config.json", config.to_dict())
  train_split, test_split = splits if splits is not None else data.load_dataset(config)
  steps_per_epoch = data.steps_per_epoch(len(train_split), config.batch_size)
  if steps_per_epoch < 1:
    raise ValueError(f"batch_size {config.batch_size} exceeds the {len(train_split)} "
                     "training examples")

  state = steps.create_train_state(config, jax.random.key(config.seed))
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
  history: list[dict[str, Any]] = []
  start_epoch = 0
  try:
    restored = ckpt.restore(checkpointing.abstract_like(state))
    if restored is not None:
      state, meta, step = restored
      history, start_epoch = meta["history"], meta["epoch"]
      # metrics.jsonl follows the checkpoint: lines of epochs it does not hold are dropped.
      reporting.write_jsonl(workdir / "metrics.jsonl", history)
      log(f"resumed from {ckpt.directory / str(step)} (epoch {start_epoch}, step {step})")
    if start_epoch >= config.epochs:
      log(f"run already finished: {start_epoch} of {config.epochs} epochs in {workdir}")
      return state, history

    train_step, eval_step = jit_steps()
    for epoch in range(start_epoch, config.epochs):
      t0 = time.perf_counter()
      progress = reporting.Progress(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}",
                                    config.batch_size, enabled=config.progress)
      every = max(1, steps_per_epoch // 50)
      train_metrics = []
      for i, batch in enumerate(data.train_batches(train_split, config.batch_size,
                                                   config.seed, epoch), start=1):
        state, m = train_step(state, batch)
        train_metrics.append(m)
        if i % every == 0 or i == steps_per_epoch:
          progress.update(i, float(m["loss_sum"]) / config.batch_size)
      train = steps.summarize(train_metrics)  # waits for the last step
      train_seconds = time.perf_counter() - t0
      progress.close()
      if not math.isfinite(train["loss"]):
        record = {"epoch": epoch + 1, "diverged": True, "train_loss": train["loss"]}
        reporting.append_jsonl(workdir / "metrics.jsonl", record)
        raise TrainingDiverged(
            f"the training loss became {train['loss']} in epoch {epoch + 1} (by step "
            f"{int(state.step)}); the last good checkpoint in {ckpt.directory} is kept. Try a "
            "lower --learning-rate or gradient clipping.")
      test = evaluate(eval_step, state, test_split, config.eval_batch_size)
      record = {
          "epoch": epoch + 1, "step": int(state.step),
          "train_loss": train["loss"], "train_accuracy": train["accuracy"],
          "test_loss": test["loss"], "test_accuracy": test["accuracy"],
          "test_correct": test["correct"], "test_count": test["count"],
          "learning_rate": float(steps.make_schedule(config)(int(state.step))),
          "images_per_second": train["count"] / train_seconds,
          "seconds": time.perf_counter() - t0,
      }
      history.append(record)
      ckpt.save(int(state.step), state, {"epoch": epoch + 1, "history": history},
                metrics={"test_accuracy": test["accuracy"]})
      reporting.append_jsonl(workdir / "metrics.jsonl", record)
      log(reporting.epoch_line(record))
  finally:
    ckpt.close()
  return state, history
