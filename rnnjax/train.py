"""The one orchestrator: `train_and_evaluate(config, workdir)`.

Per epoch: train over the whole training split, evaluate on all test images, print one
line, append one JSON line to `workdir/metrics.jsonl`, save a checkpoint, refresh the plots
(curves.png, confusion_matrix.png) and the TensorBoard events. Rerunning with
the same workdir resumes from the newest good checkpoint; a finished run says so.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from rnnjax import (checkpointing, data, lstm_kernel, parallel, plots, reporting, resources,
                    steps, tensorboard)
from rnnjax import workdir as workdir_lib
from rnnjax.config import Config
from rnnjax.workdir import PERMUTATION_FILE, WorkdirBusy, WorkdirError  # noqa: F401


class TrainingDiverged(Exception):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


check_workdir = workdir_lib.check


def load_task(workdir: Path, config: Config) -> data.Task:
  """The run's task. For `permuted`, the pixel order stored in `workdir/permutation.json`
  when there is one (a resumed or evaluated run reads pixels as it was trained), else the
  one drawn from `config.permutation_seed` (`store_task` writes it)."""
  if config.task != "permuted":
    return data.make_task(config.task)
  stored = workdir / PERMUTATION_FILE
  if not stored.exists():
    return data.make_task("permuted", config.permutation_seed)
  try:
    d = json.loads(stored.read_text())
    return data.make_task("permuted", permutation=d["permutation"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise WorkdirError(
        f"{stored} is unreadable or not a permutation of the 784 pixels ({e}); the run's "
        "checkpoints only make sense with their own pixel order. Restore the file, or train "
        "in a new --workdir.") from None


def store_task(workdir: Path, config: Config, task: data.Task) -> None:
  """Writes the permuted task's pixel order next to config.json (once)."""
  stored = workdir / PERMUTATION_FILE
  if task.name == "permuted" and not stored.exists():
    reporting.write_json_atomic(stored, {"permutation_seed": config.permutation_seed,
                                         "permutation": task.permutation.tolist()})


def jit_steps():
  """`train_step` jitted with the state donated, and `eval_step` jitted."""
  return jax.jit(steps.train_step, donate_argnums=0), jax.jit(steps.eval_step)


def jit_train_steps():
  """`steps.train_steps` (several steps per call) jitted with the state donated."""
  return jax.jit(steps.train_steps, donate_argnums=0)


def call_end(i: int, steps_per_epoch: int, steps_per_call: int, base: int,
             checkpoint_every: int) -> int:
  """Where the call that starts at step `i` of an epoch ends (exclusive): the next multiple
  of `steps_per_call` within the epoch, cut short by the epoch's end and by the next
  periodic checkpoint (global step `base + j` a multiple of `checkpoint_every`).

  A function of the position alone, so a resumed run (which starts at such a boundary)
  groups its steps exactly as the uninterrupted run did.
  """
  end = min((i // steps_per_call + 1) * steps_per_call, steps_per_epoch)
  if checkpoint_every > 0:
    end = min(end, ((base + i) // checkpoint_every + 1) * checkpoint_every - base)
  return end


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


def evaluate(eval_step: Callable, state, split: data.Split, batch_size: int,
             mesh=None, task: data.Task | None = None) -> dict:
  """Loss, accuracy and confusion matrix over every example of `split`, exactly once.

  With a `mesh` (the loop's), batches are sharded over its devices and this process feeds
  only its rows; without one, they go to the default device as NumPy arrays. `task` turns
  images into the model's sequences (None: rows).
  """
  if mesh is None:
    metrics = [eval_step(state, b) for b in data.eval_batches(split, batch_size, task=task)]
  else:
    rows = parallel.process_rows(batch_size)
    metrics = [eval_step(state, parallel.shard_batch(b, mesh))
               for b in data.eval_batches(split, batch_size, shard=rows, task=task)]
  return steps.summarize(parallel.to_host(metrics))


class Preempted(Exception):
  """SIGTERM or SIGINT arrived; the position was checkpointed. Rerun to resume."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


class Interrupted(KeyboardInterrupt):
  """SIGTERM or SIGINT arrived before training began (while loading or preparing data,
  restoring, compiling): the run stopped at once, leaving the workdir as it was."""

  def __init__(self, signum: int):
    super().__init__(f"stopped by {signal.Signals(signum).name} before training began; "
                     "nothing was written. Rerun the same command to start.")
    self.signum = signum


class StopSignals:
  """Turns SIGTERM and SIGINT into a request to stop after the current call of the step
  function (at most `Config.steps_per_call` steps).

  While `immediate` is set (before the training loop: data preparation, restore), a signal
  raises `Interrupted` at once instead, so that clean-up code (tfds's removal of its
  unfinished folder) runs and the run says why it stopped. A second SIGINT (Ctrl-C twice)
  raises KeyboardInterrupt at once: the run then resumes from its last checkpoint. Handlers
  are installed only in the main thread and restored on exit, so a notebook kernel gets its
  own back.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, immediate: bool = False):
    self.signum: int | None = None
    self.immediate = immediate
    self._previous = {}

  def _handle(self, signum, frame):
    if self.immediate:
      raise Interrupted(signum)
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    print(f"\n{signal.Signals(signum).name}: stopping after the current steps and saving a "
          "checkpoint (Ctrl-C again to stop at once)", file=reporting.console(), flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def train_and_evaluate(config: Config, workdir: str | os.PathLike,
                       splits: tuple[data.Split, data.Split] | None = None,
                       log: Callable[[str], Any] = print):
  """Trains `config` in `workdir`, resuming from its checkpoints when it has any.

  Checkpoints are written after every epoch, every `config.checkpoint_every_steps` steps
  (when > 0), and when SIGTERM or SIGINT asks the run to stop: then the current call of
  the step function (up to `config.steps_per_call` steps) finishes, its position inside
  the epoch is saved, and `Preempted` is raised. A resumed run sees exactly the batches the
  uninterrupted one would, so it ends bit-identical.

  Args:
    config: the run.
    workdir: where config.json, metrics.jsonl and checkpoints/ live.
    splits: (train, test) already in memory; None loads them as `config` says.
    log: where the per-epoch lines go.
  Returns:
    (final train state, history: one dict per epoch, as in metrics.jsonl).
  Raises:
    WorkdirError, data.DataError, checkpointing.CheckpointError: unusable input; nothing
      written is lost.
    TrainingDiverged: a non-finite loss; the last good checkpoint stays.
    Preempted: stopped by a signal after saving a checkpoint.
    lstm_kernel.KernelUnavailable: `lstm_kernel="cpu"` where the CPU kernel cannot run.
  """
  workdir = Path(workdir)
  resources.check_memory(config)  # before anything is allocated
  mesh = parallel.make_mesh()
  parallel.check_batch_sizes(config, mesh)
  lstm_kernel.describe(config)  # lstm_kernel "cpu" where it cannot run: say so first
  main = parallel.is_main_process()
  if not main:
    log = lambda line: None  # noqa: E731 - process 0 speaks for the run
  check_workdir(workdir, config)
  lock = workdir_lib.Lock(workdir).acquire() if main else None  # one writer per workdir
  ckpt = board = None
  stop = StopSignals(immediate=True).__enter__()
  try:
    task = load_task(workdir, config)
    state = parallel.replicate(steps.create_train_state(config, jax.random.key(config.seed)),
                               mesh)
    ckpt = checkpointing.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    history: list[dict[str, Any]] = []
    start_epoch, start_step, partial = 0, 0, None
    restored = ckpt.restore(parallel.abstract_replicated(state, mesh))  # any earlier topology
    if restored is not None:
      state, meta, step = restored
      history, start_epoch = meta["history"], meta["epoch"]
      start_step, partial = meta.get("epoch_step", 0), meta.get("partial")
      where = f", {start_step} steps into epoch {start_epoch + 1}" if start_step else ""
      log(f"resumed from {ckpt.directory / str(step)} (epoch {start_epoch}, step {step}"
          f"{where})")
    if start_epoch >= config.epochs:
      log(f"run already finished: {start_epoch} of {config.epochs} epochs in {workdir}")
      return state, history

    # Data is loaded only when there is training to do (a finished run answers at once),
    # and before anything is written (a data error leaves the workdir as it was).
    train_split, test_split = splits if splits is not None else data.load_dataset(config)
    steps_per_epoch = data.steps_per_epoch(len(train_split), config.batch_size)
    if steps_per_epoch < 1:
      raise data.DataError(f"batch_size {config.batch_size} exceeds the {len(train_split)} "
                           "training examples; use a smaller --batch-size")
    if main:
      workdir_lib.record_start(workdir, config, start_epoch, start_step, _step(state),
                               warn=_warn)
      store_task(workdir, config, task)
      # metrics.jsonl follows the checkpoint: lines of epochs it does not hold are dropped.
      reporting.write_jsonl(workdir / "metrics.jsonl", history)
      board = _open_tensorboard(workdir, config)
    rows = parallel.process_rows(config.batch_size)
    train_step, eval_step = jit_steps()
    train_steps = jit_train_steps()
    # Dropout masks: fold_in(key, step) inside the step (unused without dropout).
    dropout_key = parallel.replicate(jax.random.key_data(steps.dropout_key(config)), mesh)
    saved_step = _step(state)
    every = max(1, steps_per_epoch // 50)  # host syncs per epoch: progress, NaN checks
    stop.immediate = False  # from here on, a signal stops after the current call and saves
    for epoch in range(start_epoch, config.epochs):
      first = start_step if epoch == start_epoch else 0
      totals = dict(partial) if (partial and epoch == start_epoch) else {
          "loss_sum": 0.0, "correct": 0, "count": 0, "seconds": 0.0}
      t0 = time.perf_counter() - totals["seconds"]
      # Global step = base + steps done in this epoch; read once per epoch, because
      # reading state.step after every step would wait for the device each time.
      base = _step(state) - first
      progress = reporting.Progress(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}",
                                    config.batch_size, enabled=config.progress and main,
                                    start=first)
      # Metrics not yet read, one entry per call: (a step's, or stacked [k]; step count).
      pending: list[tuple[steps.Metrics, int]] = []
      batches = data.train_batches(train_split, config.batch_size, config.seed, epoch,
                                   start_step=first, max_shift=config.augment_shift,
                                   shard=rows, task=task)
      i = first
      while i < steps_per_epoch:
        end = call_end(i, steps_per_epoch, config.steps_per_call, base,
                       config.checkpoint_every_steps)
        group = [next(batches) for _ in range(end - i)]
        if len(group) == config.steps_per_call > 1:  # a whole call: one scan
          stacked = {k: np.stack([b[k] for b in group]) for k in group[0]}
          state, m = train_steps(state, parallel.shard_batch(stacked, mesh, stacked=True),
                                 dropout_key)
          pending.append((m, len(group)))
          done = len(group)
        else:  # a short piece (epoch end, periodic checkpoint): one step at a time
          done = 0
          for batch in group:
            state, m = train_step(state, parallel.shard_batch(batch, mesh), dropout_key)
            pending.append((m, 1))
            done += 1
            if stop.signum is not None:
              break
        previous, i = i, i + done
        step = base + i
        periodic = (config.checkpoint_every_steps > 0
                    and step % config.checkpoint_every_steps == 0)
        stopping = stop.signum is not None
        full = i == steps_per_epoch or periodic or stopping  # read everything: a save
        if not (full or i // every > previous // every):
          continue
        # A progress read leaves the newest call's metrics for the next one, so that the
        # device works on that call while the host waits for the earlier ones.
        ready, pending = (pending, []) if full else (pending[:-1], pending[-1:])
        if not ready:
          continue
        fetched = unstack(parallel.to_host([m for m, _ in ready]))
        last = i - sum(k for _, k in pending)  # epoch position of the last step read
        first_step_of_pending = base + last - len(fetched) + 1
        losses = [float(x["loss_sum"]) for x in fetched]
        bad = [k for k, v in enumerate(losses) if not math.isfinite(v)]
        if bad:
          raise _diverged(workdir, ckpt, epoch, first_step_of_pending + bad[0],
                          losses[bad[0]] / config.batch_size, main)
        totals = steps.accumulate(totals, fetched)  # keeps "seconds" as it was
        progress.update(last, losses[-1] / config.batch_size)
        if i < steps_per_epoch and (periodic or stopping) and step != saved_step:
          totals["seconds"] = time.perf_counter() - t0
          ckpt.save(step, state, {"epoch": epoch, "epoch_step": i, "partial": totals,
                                  "history": history})
          saved_step = step
        if stopping and i < steps_per_epoch:
          progress.close()
          raise _preempted(stop.signum, ckpt, epoch, i, steps_per_epoch, step)
      train_seconds = time.perf_counter() - t0
      progress.close()
      count = max(totals["count"], 1)
      test = evaluate(eval_step, state, test_split, config.eval_batch_size, mesh, task)
      step = _step(state)
      record = {
          "epoch": epoch + 1, "step": step,
          "train_loss": totals["loss_sum"] / count, "train_accuracy": totals["correct"] / count,
          "test_loss": test["loss"], "test_accuracy": test["accuracy"],
          "test_correct": test["correct"], "test_count": test["count"],
          "test_confusion": test["confusion"].tolist(),
          "learning_rate": float(steps.make_schedule(config)(step)),
          "images_per_second": totals["count"] / train_seconds,
          "seconds": time.perf_counter() - t0,
      }
      history.append(record)
      ckpt.save(step, state, {"epoch": epoch + 1, "history": history},
                metrics={"test_accuracy": test["accuracy"]})
      saved_step = step
      log(reporting.epoch_line(record))
      if main:
        reporting.append_jsonl(workdir / "metrics.jsonl", record)
        if board is not None:
          board.write_epoch(record)
        if config.plots:
          _write_plots(workdir, history, test["confusion"])
      if stop.signum is not None and epoch + 1 < config.epochs:
        raise _preempted(stop.signum, ckpt, epoch + 1, 0, steps_per_epoch, saved_step)
  finally:
    stop.__exit__()
    if ckpt is not None:
      ckpt.close()
    if board is not None:
      board.close()
    if lock is not None:
      lock.release()
  return state, history


def _warn(message: str) -> None:
  print(message, file=reporting.console(), flush=True)


def _open_tensorboard(workdir: Path, config: Config):
  if not config.tensorboard:
    return None
  try:
    return tensorboard.Writer(workdir, config)
  except ImportError as e:  # a minimal JAX-only machine: train anyway
    print(f"warning: no TensorBoard events ({e}); pip install tensorboardX to have them",
          file=reporting.console(), flush=True)
    return None


def _write_plots(workdir: Path, history: list[dict[str, Any]], confusion) -> None:
  """curves.png and confusion_matrix.png; a failure is reported, never fatal to training."""
  try:
    plots.write_run_plots(workdir, history, confusion)
  except Exception as e:  # noqa: BLE001 - a figure must not cost a training run
    print(f"warning: could not write the plots in {workdir} ({type(e).__name__}: {e})",
          file=reporting.console(), flush=True)


def _step(state) -> int:
  """The global step as a Python int (reads the device: once per epoch or save)."""
  return int(parallel.to_host(state.step))


def _diverged(workdir: Path, ckpt, epoch: int, step: int, loss: float,
              main: bool = True) -> TrainingDiverged:
  if main:
    reporting.append_jsonl(workdir / "metrics.jsonl", {"epoch": epoch + 1, "step": step,
                                                       "diverged": True, "train_loss": loss})
  last = ckpt.latest_step()
  kept = (f"the last good checkpoint, {ckpt.directory / str(last)}, is kept" if last is not None
          else "no checkpoint had been written yet")
  return TrainingDiverged(
      f"the training loss became {loss} at step {step} (epoch {epoch + 1}); {kept}. Try a "
      "lower --learning-rate or gradient clipping, in a new --workdir or from that checkpoint.")


def _preempted(signum: int, ckpt, epoch: int, epoch_step: int, steps_per_epoch: int,
               step: int) -> Preempted:
  where = (f"at step {epoch_step} of {steps_per_epoch} in epoch {epoch + 1}" if epoch_step
           else f"after epoch {epoch}")
  return Preempted(
      f"stopped by {signal.Signals(signum).name} {where}; checkpoint "
      f"{ckpt.directory / str(step)} holds the position. Rerun the same command to resume.",
      signum)
