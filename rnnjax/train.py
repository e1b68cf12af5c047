"""The one orchestrator: `train_and_evaluate(config, workdir)`.

Per epoch: train over the whole training split, evaluate on all test images, print one
line, append one JSON line to `workdir/metrics.jsonl`, save a checkpoint, refresh the plots
(curves.png, confusion_matrix.png) and the TensorBoard events. Rerunning with
the same workdir resumes from the newest good checkpoint; a finished run says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from rnnjax import (checkpointing, data, loop, lstm_kernel, parallel, reporting, resources,
                    steps)
from rnnjax import workdir as workdir_lib
from rnnjax.config import Config
from rnnjax.workdir import PERMUTATION_FILE, WorkdirBusy, WorkdirError  # noqa: F401


class TrainingDiverged(Exception):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


check_workdir = workdir_lib.check


def load_task(workdir: Path, config: Config) -> data.Task:
  """The run's task. For `permuted`, the pixel order stored in `workdir/permutation.json`
  when there is one (a resumed or evaluated run reads pixels as it was trained), else the
  one drawn from `config.permutation_seed` (`store_task` writes it). A stored order must be
  784 distinct integers recorded with `config.permutation_seed`; one that this NumPy would
  not draw from that seed is used with a warning."""
  if config.task != "permuted":
    return data.make_task(config.task)
  stored = workdir / PERMUTATION_FILE
  drawn = data.make_task("permuted", config.permutation_seed)
  if not stored.exists():
    return drawn
  fix = ("the run's checkpoints only make sense with their own pixel order. Restore the "
         "file, or train in a new --workdir.")
  try:
    d = json.loads(stored.read_text())
    order, seed = d["permutation"], d["permutation_seed"]
    if not (isinstance(order, list) and all(type(i) is int for i in order)
            and sorted(order) == list(range(len(drawn.permutation)))):
      raise ValueError("its permutation is not the 784 pixel indices as integers")
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise WorkdirError(f"{stored} is unreadable or not a permutation of the 784 pixels ({e}); "
                       + fix) from None
  if seed != config.permutation_seed:
    raise WorkdirError(f"{stored} holds the pixel order of permutation_seed {seed!r}, not "
                       f"{config.permutation_seed}; " + fix)
  if order != drawn.permutation.tolist():  # the stored order is what the run trained with
    _warn(f"warning: {stored} holds another order than permutation_seed {seed} draws here "
          "(another NumPy, or an edited file); the run reads pixels in the stored order, as "
          "its checkpoints were trained")
  return data.make_task("permuted", permutation=order)


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


call_end, unstack = loop.call_end, loop.unstack  # the loop's planning: rnnjax/loop.py


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
  """SIGTERM, SIGINT or SIGHUP arrived; the position was checkpointed. Rerun to resume."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


class Interrupted(KeyboardInterrupt):
  """SIGTERM, SIGINT or SIGHUP arrived before training began (while loading or preparing
  data, restoring, compiling): the run stopped at once, leaving the workdir as it was."""

  def __init__(self, signum: int):
    super().__init__(f"stopped by {signal.Signals(signum).name} before training began; "
                     "nothing was written. Rerun the same command to start.")
    self.signum = signum


class StopSignals:
  """Turns SIGTERM, SIGINT and SIGHUP (a closed terminal, a dropped ssh connection) into a
  request to stop after the current call of the step function (at most
  `Config.steps_per_call` steps).

  While `immediate` is set (before the training loop: data preparation, restore), SIGINT
  raises `Interrupted` at once instead (a notebook's interrupt stays an exception), and
  SIGTERM or SIGHUP ends the process at once: `on_terminate` runs (stopping tfds's
  preparation and removing its unfinished folders), one line says why, exit status 128 +
  the signal's number. (Raising inside tfds's preparation can leave its worker threads
  waiting at exit: seen as a hang under load.) A second SIGINT (Ctrl-C twice) raises
  KeyboardInterrupt at once: the run then resumes from its last checkpoint. After SIGHUP,
  output to a terminal that is gone is dropped rather than failing the save. Handlers are
  installed only in the main thread and restored on exit, so a notebook kernel gets its
  own back.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
  ENDS_AT_ONCE = (signal.SIGTERM, signal.SIGHUP)  # while `immediate`

  def __init__(self, immediate: bool = False, on_terminate: Callable[[], Any] | None = None):
    self.signum: int | None = None
    self.immediate, self.on_terminate = immediate, on_terminate
    self._previous = {}

  def _terminate(self, signum):
    with self._lock:  # the watcher and the handler may both get here
      try:
        if self.on_terminate is not None:
          self.on_terminate()
        message = f"\n{Interrupted(signum)}\n".encode()
        os.write(reporting.console().fileno(), message)  # no buffered stream: it may be busy
      finally:
        os._exit(128 + signum)

  def _handle(self, signum, frame):
    if self.immediate and signum in self.ENDS_AT_ONCE:
      self._terminate(signum)
    if self.immediate:
      raise Interrupted(signum)
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    try:
      print(f"\n{signal.Signals(signum).name}: stopping after the current steps and saving a "
            "checkpoint (Ctrl-C again to stop at once)", file=reporting.console(), flush=True)
    except OSError:  # the terminal is gone (SIGHUP): nobody reads it now; save regardless
      _drop_terminal_output()

  def _watch(self, fd: int):
    """A Python handler runs only when the main thread next runs Python, which a long call
    into a library (tfds preparing data) can delay for minutes. The signal's number also
    reaches this thread at once, through the wakeup fd: SIGTERM or SIGHUP while `immediate`
    ends the process from here."""
    while chunk := os.read(fd, 64):
      for signum in self.ENDS_AT_ONCE:
        if self.immediate and signum in chunk:
          self._terminate(signum)
    os.close(fd)

  def __enter__(self):
    self._lock = threading.Lock()
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
      read, self._wakeup = os.pipe()
      os.set_blocking(self._wakeup, False)
      self._previous_wakeup = signal.set_wakeup_fd(self._wakeup, warn_on_full_buffer=False)
      threading.Thread(target=self._watch, args=(read,), daemon=True,
                       name="rnnjax-signals").start()
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    if self._previous:
      signal.set_wakeup_fd(self._previous_wakeup)
      os.close(self._wakeup)  # the watcher reads the end of the pipe and returns


@dataclasses.dataclass
class Context:
  """What every epoch of a run uses, set up once by `train_and_evaluate`."""
  config: Config
  workdir: Path
  mesh: Any
  ckpt: checkpointing.Checkpointer
  train_split: data.Split
  val_split: data.Split | None  # held out of the training file; None: no validation
  test_split: data.Split
  task: data.Task
  steps_per_epoch: int
  train_step: Callable  # jitted, the state donated
  train_steps: Callable  # several steps in one scan, jitted, the state donated
  eval_step: Callable
  dropout_key: Any  # masks: fold_in(key, step) inside the step (unused without dropout)
  stop: StopSignals
  main: bool


def train_and_evaluate(config: Config, workdir: str | os.PathLike,
                       splits: tuple[data.Split, ...] | None = None,
                       log: Callable[[str], Any] = print):
  """Trains `config` in `workdir` (config.json, metrics.jsonl, checkpoints/), resuming from
  its newest readable checkpoint. `splits`: (train, test) (`config.validation_size` held
  out), (train, val, test) or None (loaded as `config` says); `log` takes the epoch lines.
  Returns (final state, history: one record per epoch, as in metrics.jsonl).

  Checkpoints are written after every epoch, every `config.checkpoint_every_steps` steps
  (when > 0), and when SIGTERM or SIGINT asks the run to stop: the current call of the step
  function finishes, its position is saved, `Preempted` is raised (`Interrupted` before
  training began). A resumed run sees exactly the batches the uninterrupted one would.
  Unusable input raises WorkdirError, data.DataError, checkpointing.CheckpointError,
  resources.ResourceError or lstm_kernel.KernelUnavailable before anything is written; a
  non-finite loss TrainingDiverged, keeping the last good checkpoint.
  """
  workdir = Path(workdir)
  mesh, main = _check_before_work(config, workdir)
  log = log if main else (lambda line: None)  # process 0 speaks for the run
  with contextlib.ExitStack() as cleanup:
    if main:  # one writer per workdir
      cleanup.callback(workdir_lib.Lock(workdir).acquire().release)
    stop = cleanup.enter_context(StopSignals(immediate=True, on_terminate=functools.partial(
        data.remove_unfinished, config.data_dir, config.dataset, time.time())))
    task = load_task(workdir, config)
    state = parallel.replicate(steps.create_train_state(config, jax.random.key(config.seed)),
                               mesh)
    ckpt = checkpointing.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    cleanup.callback(ckpt.close)
    state, position = _restore(ckpt, state, mesh, log, config)
    history = position.history
    if position.epoch >= config.epochs:
      if main:
        _repair_metrics(workdir, history)
        reporting.repair_jsonl(workdir / workdir_lib.CONFIGS_FILE)
      log(f"run already finished: {position.epoch} of {config.epochs} epochs in {workdir}")
      return state, history
    # Data only when there is training to do, before anything is written (a data error
    # leaves the workdir as it was); the schedule then spans the epochs of the split at hand.
    splits = splits if splits is not None else data.load_dataset(config)
    ctx = _context(config, workdir, mesh, ckpt, splits, task, stop, main)
    state = state.replace(tx=steps.make_optimizer(config, ctx.steps_per_epoch))
    if main:
      workdir_lib.record_start(workdir, config, position.epoch, position.epoch_step,
                               _step(state), warn=_warn)
      store_task(workdir, config, task)
    writer = cleanup.enter_context(contextlib.closing(
        reporting.RunWriter(workdir, config, history, log, enabled=main)))
    stop.immediate = False  # from here on, a signal stops after the current call and saves
    for epoch in range(position.epoch, config.epochs):
      resumed = epoch == position.epoch
      state, totals, t0, train_seconds = train_epoch(
          ctx, state, epoch, position.epoch_step if resumed else 0,
          position.partial if resumed else None, history)
      record, confusion = evaluate_epoch(ctx, state, epoch, totals, t0, train_seconds)
      history.append(record)
      ckpt.save(record["step"], state,
                _meta(checkpointing.Position(epoch + 1, 0, None, history), config),
                metrics=checkpointing.selection_metrics(record))
      writer.write_epoch(record, confusion)
      if stop.signum is not None and epoch + 1 < config.epochs:
        raise _preempted(stop.signum, ckpt, epoch + 1, 0, ctx.steps_per_epoch, record["step"])
  return state, history


def _context(config, workdir, mesh, ckpt, splits, task, stop, main):
  """The run's `Context`: the splits (the validation images held out of the training file
  unless given), the jitted steps, the dropout key, the epoch's length."""
  if len(splits) == 3:
    train_split, val_split, test_split = splits
  else:
    (train_split, test_split), val_split = splits, None
    train_split, val_split = data.hold_out(train_split, config.validation_size)
  steps_per_epoch = data.steps_per_epoch(len(train_split), config.batch_size)
  if steps_per_epoch < 1:
    raise data.DataError(f"batch_size {config.batch_size} exceeds the {len(train_split)} "
                         "training examples; use a smaller --batch-size")
  train_step, eval_step = jit_steps()
  return Context(config, workdir, mesh, ckpt, train_split, val_split, test_split, task,
                 steps_per_epoch,
                 train_step, jit_train_steps(), eval_step,
                 parallel.replicate(jax.random.key_data(steps.dropout_key(config)), mesh),
                 stop, main)


def _check_before_work(config: Config, workdir: Path):
  """Every check that needs no data and writes nothing: memory, devices, the kernel, the
  workdir. Returns (mesh, whether this is process 0)."""
  resources.check_memory(config)  # before anything is allocated
  mesh = parallel.make_mesh()
  parallel.check_batch_sizes(config, mesh)
  lstm_kernel.describe(config)  # lstm_kernel "cpu" where it cannot run: say so first
  check_workdir(workdir, config)
  return mesh, parallel.is_main_process()


def _meta(position: checkpointing.Position, config: Config) -> dict[str, Any]:
  """A checkpoint's record: its position, and the config it was trained under (what a
  resume is checked against when the workdir's own record is gone)."""
  return reporting.json_safe({**position.to_meta(), "config": config.to_dict()})


def _restore(ckpt: checkpointing.Checkpointer, state, mesh, log, config: Config):
  """The newest readable checkpoint onto this mesh (any earlier topology), and its
  position; a fresh run's state and position 0 when there is none. WorkdirError when that
  checkpoint was trained with another model, task, dataset or data split."""
  restored = ckpt.restore(parallel.abstract_replicated(state, mesh))
  if restored is None:
    return state, checkpointing.Position()
  state, meta, step = restored
  workdir_lib.check_checkpoint_record(meta, config, str(ckpt.directory / str(step)))
  position = checkpointing.Position.from_meta(meta)
  where = (f", {position.epoch_step} steps into epoch {position.epoch + 1}"
           if position.epoch_step else "")
  log(f"resumed from {ckpt.directory / str(step)} (epoch {position.epoch}, step {step}"
      f"{where})")
  return state, position


def train_epoch(ctx: Context, state, epoch: int, first: int, partial: dict | None,
                history: list[dict[str, Any]]):
  """Trains epoch `epoch` from its step `first` (with the running totals `partial` of a
  resumed epoch): one flat loop over the calls `loop.plan_epoch` plans.

  Returns (state, totals, t0, train_seconds); raises Preempted after saving when a signal
  asks to stop, TrainingDiverged at a non-finite loss.
  """
  c = ctx.config
  totals = dict(partial) if partial else {"loss_sum": 0.0, "correct": 0, "count": 0,
                                          "seconds": 0.0}
  t0 = time.perf_counter() - totals["seconds"]
  # Global step = base + steps done in this epoch; read once per epoch, because reading
  # state.step after every step would wait for the device each time.
  base = _step(state) - first
  progress = reporting.Progress(ctx.steps_per_epoch, f"epoch {epoch + 1}/{c.epochs}",
                                c.batch_size, enabled=c.progress and ctx.main, start=first)
  reader = loop.PendingMetrics(totals, first, base, c.batch_size, fetch=parallel.to_host)
  batches = data.train_batches(ctx.train_split, c.batch_size, c.seed, epoch, start_step=first,
                               max_shift=c.augment_shift,
                               shard=parallel.process_rows(c.batch_size), task=ctx.task)
  every = max(1, ctx.steps_per_epoch // 50)  # host syncs per epoch: progress, NaN checks
  for call in loop.plan_epoch(first, ctx.steps_per_epoch, c.steps_per_call, base,
                              c.checkpoint_every_steps, every):
    state, done = _run_call(ctx, state, call, batches, reader)
    stopping = ctx.stop.signum is not None
    if not (call.read or stopping):
      continue
    try:
      loss = reader.read(lag=not (call.last or call.save or stopping))
    except loop.Diverged as e:
      raise _diverged(ctx.workdir, ctx.ckpt, epoch, e.step, e.loss, ctx.main) from None
    if loss is not None:
      progress.update(reader.position, loss)
    i = call.start + done
    if i < ctx.steps_per_epoch and (call.save or stopping):
      reader.totals["seconds"] = time.perf_counter() - t0
      ctx.ckpt.save(base + i, state, _meta(checkpointing.Position(
          epoch, i, reader.totals, history), c))
      if stopping:
        progress.close()
        raise _preempted(ctx.stop.signum, ctx.ckpt, epoch, i, ctx.steps_per_epoch, base + i)
  train_seconds = time.perf_counter() - t0
  progress.close()
  return state, reader.totals, t0, train_seconds


def _run_call(ctx: Context, state, call: loop.Call, batches, reader: loop.PendingMetrics):
  """Runs the steps of `call`: one `train_steps` scan for a whole group, else one
  `train_step` at a time (a short piece: the epoch's end, a periodic checkpoint), stopping
  early when a signal asks. Returns (state, steps done)."""
  group = [next(batches) for _ in range(call.stop - call.start)]
  if call.scanned:
    stacked = {k: np.stack([b[k] for b in group]) for k in group[0]}
    state, m = ctx.train_steps(state, parallel.shard_batch(stacked, ctx.mesh, stacked=True),
                               ctx.dropout_key)
    reader.add(m, len(group))
    return state, len(group)
  done = 0
  for batch in group:
    state, m = ctx.train_step(state, parallel.shard_batch(batch, ctx.mesh), ctx.dropout_key)
    reader.add(m, 1)
    done += 1
    if ctx.stop.signum is not None:
      break
  return state, done


def evaluate_epoch(ctx: Context, state, epoch: int, totals: dict, t0: float,
                   train_seconds: float):
  """The epoch's record (as in metrics.jsonl) after evaluating on the validation split
  (which chooses the best checkpoint) and on the test split (reported, never chosen by),
  and the test confusion matrix."""
  c = ctx.config
  count = max(totals["count"], 1)
  record = {"epoch": epoch + 1, "step": _step(state),
            "train_loss": totals["loss_sum"] / count,
            "train_accuracy": totals["correct"] / count}
  if "grad_norm_sum" in totals:  # the global gradient norm, before clipping
    record["grad_norm"] = totals["grad_norm_sum"] / max(totals["steps"], 1)
    record["grad_norm_max"] = totals["grad_norm_max"]
  confusion = None
  for name, split in (("val", ctx.val_split), ("test", ctx.test_split)):
    if split is not None:
      r = evaluate(ctx.eval_step, state, split, c.eval_batch_size, ctx.mesh, ctx.task)
      record.update({f"{name}_loss": r["loss"], f"{name}_accuracy": r["accuracy"],
                     f"{name}_correct": r["correct"], f"{name}_count": r["count"]})
      if name == "test":
        confusion = r["confusion"]
  record["test_confusion"] = confusion.tolist()
  record.update({
      "learning_rate": float(steps.make_schedule(c, ctx.steps_per_epoch)(record["step"])),
      "images_per_second": totals["count"] / train_seconds,
      "seconds": time.perf_counter() - t0})
  return record, confusion


def _repair_metrics(workdir: Path, history: list[dict[str, Any]]) -> None:
  """Rewrites a finished run's metrics.jsonl from its last checkpoint's history when the
  file no longer holds it (a half-written line, a damaged or missing file)."""
  path = workdir / workdir_lib.METRICS_FILE
  try:
    intact = [r for r in reporting.read_jsonl(path) if not r.get("diverged")] == \
        reporting.json_safe(history) and path.read_bytes().endswith(b"\n")
  except (OSError, ValueError, AttributeError):
    intact = False
  if not intact:
    reporting.write_jsonl(path, history)
    _warn(f"warning: {path} did not hold the run's {len(history)} epochs; rewrote it from "
          "the last checkpoint")


def _drop_terminal_output() -> None:
  """Points stdout and the console at /dev/null: their terminal is gone, and a write to it
  would fail the run before its checkpoint is saved."""
  null = os.open(os.devnull, os.O_WRONLY)
  for stream in {sys.stdout, reporting.console()}:
    try:
      os.dup2(null, stream.fileno())
    except (OSError, ValueError, AttributeError):
      pass
  os.close(null)


def _warn(message: str) -> None:
  print(message, file=reporting.console(), flush=True)


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
