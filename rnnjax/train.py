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
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from rnnjax import (checkpointing, data, loop, models, parallel, reporting, resources,
                    steps)
from rnnjax import workdir as workdir_lib
from rnnjax.config import Config
from rnnjax import signals as signals_lib
from rnnjax.signals import StopSignals


class TrainingDiverged(Exception):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


def jit_steps():
  """`train_step` jitted with the state donated, and `eval_step` jitted."""
  return jax.jit(steps.train_step, donate_argnums=0), jax.jit(steps.eval_step)


def jit_train_steps():
  """`steps.train_steps` (several steps per call) jitted with the state donated."""
  return jax.jit(steps.train_steps, donate_argnums=0)


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
                       log: Callable[[str], Any] = print, started: float | None = None):
  """Trains `config` in `workdir` (config.json, metrics.jsonl, checkpoints/), resuming from
  its newest readable checkpoint. `splits`: (train, test) (`config.validation_size` held
  out), (train, val, test) or None (loaded as `config` says); `log` takes the epoch lines;
  `started`, the `perf_counter` time the command began (default: now), times the whole
  command in summary.json.
  Returns (final state, history: one record per epoch, as in metrics.jsonl).

  Checkpoints are written after every epoch, every `config.checkpoint_every_steps` steps
  (when > 0), and when SIGTERM or SIGINT asks the run to stop: the current call of the step
  function finishes, its position is saved, `Preempted` is raised (`Interrupted` before
  training began). A resumed run sees exactly the batches the uninterrupted one would.
  Unusable input raises WorkdirError, data.DataError, checkpointing.CheckpointError,
  resources.ResourceError or cpu_kernel.KernelUnavailable before anything is written; a
  non-finite loss TrainingDiverged, keeping the last good checkpoint.
  """
  started = time.perf_counter() if started is None else started
  workdir = Path(workdir)
  mesh, main, engine = _check_before_work(config, workdir)
  log = log if main else (lambda line: None)  # process 0 speaks for the run
  with contextlib.ExitStack() as cleanup:
    if main:  # one writer per workdir
      cleanup.callback(workdir_lib.Lock(workdir).acquire().release)
    stop = cleanup.enter_context(StopSignals(immediate=True, on_terminate=functools.partial(
        data.remove_unfinished, config.data_dir, config.dataset, time.time())))
    task = workdir_lib.load_task(workdir, config, warn=_warn)
    steps_per_epoch = _steps_per_epoch(config, splits)
    state = parallel.replicate(steps.create_train_state(config, jax.random.key(config.seed),
                                                        steps_per_epoch), mesh)
    ckpt = checkpointing.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    cleanup.callback(ckpt.close)
    state, position = _restore(ckpt, state, mesh, log, config)
    history = position.history
    if position.epoch >= config.epochs:
      if main:
        reporting.repair_metrics(workdir, history, warn=_warn)
        reporting.repair_jsonl(workdir / workdir_lib.CONFIGS_FILE)
      log(f"run already finished: {position.epoch} of {config.epochs} epochs in {workdir}")
      return state, history
    # Data only when there is training to do, before anything is written (a data error
    # leaves the workdir as it was); the schedule then spans the epochs of the split at hand.
    splits = splits if splits is not None else data.load_dataset(config)
    ctx = _context(config, workdir, mesh, ckpt, splits, task, stop, main)
    assert ctx.steps_per_epoch == steps_per_epoch, (ctx.steps_per_epoch, steps_per_epoch)
    if main:
      workdir_lib.record_start(workdir, config, position.epoch, position.epoch_step,
                               _step(state), warn=_warn)
      workdir_lib.store_task(workdir, config, task)
    writer = cleanup.enter_context(contextlib.closing(
        reporting.RunWriter(workdir, config, history, log, enabled=main, engine=engine,
                            started=started)))
    stop.immediate = False  # from here on, a signal stops after the current call and saves
    for epoch in range(position.epoch, config.epochs):
      resumed = epoch == position.epoch
      try:
        state, totals, t0, train_seconds = train_epoch(
            ctx, state, epoch, position.epoch_step if resumed else 0,
            position.partial if resumed else None, history)
      except loop.Diverged as e:
        writer.write_diverged(epoch + 1, e.step, e.loss)
        raise _diverged(ckpt, epoch, e.step, e.loss) from None
      record, confusion = evaluate_epoch(ctx, state, epoch, totals, t0, train_seconds)
      history.append(record)
      ckpt.save(record["step"], state,
                _meta(checkpointing.Position(epoch + 1, 0, None, history), config),
                metrics=checkpointing.selection_metrics(record))
      writer.write_epoch(record, confusion)
      if stop.signum is not None and epoch + 1 < config.epochs:
        raise signals_lib.preempted(stop.signum, ckpt, epoch + 1, 0, ctx.steps_per_epoch,
                                    record["step"])
  return state, history


def _steps_per_epoch(config: Config, splits: tuple[data.Split, ...] | None) -> int:
  """Training steps per epoch, known before any data is loaded: the full training split's
  (`config.steps_per_epoch`), or that of the `splits` given."""
  if splits is None:
    return config.steps_per_epoch
  train = len(splits[0]) - (config.validation_size if len(splits) == 2 else 0)
  return data.steps_per_epoch(train, config.batch_size)


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
  workdir. Returns (mesh, whether this is process 0, how the recurrent layers run)."""
  resources.check_memory(config)  # before anything is allocated
  mesh = parallel.make_mesh()
  parallel.check_batch_sizes(config, mesh)
  engine = models.describe(config)  # rnn_kernel "cpu" where it cannot run: say so first
  workdir_lib.check(workdir, config)
  return mesh, parallel.is_main_process(), engine


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
  asks to stop, loop.Diverged at a non-finite loss.
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
    loss = reader.read(lag=not (call.last or call.save or stopping))  # or loop.Diverged
    if loss is not None:
      progress.update(reader.position, loss)
    i = call.start + done
    if i < ctx.steps_per_epoch and (call.save or stopping):
      reader.totals["seconds"] = time.perf_counter() - t0
      ctx.ckpt.save(base + i, state, _meta(checkpointing.Position(
          epoch, i, reader.totals, history), c))
      if stopping:
        progress.close()
        raise signals_lib.preempted(ctx.stop.signum, ctx.ckpt, epoch, i, ctx.steps_per_epoch,
                                    base + i)
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


EXAMPLE_METRICS = ("loss", "accuracy", "correct", "count")  # per example, by split


def evaluate_epoch(ctx: Context, state, epoch: int, totals: dict, t0: float,
                   train_seconds: float):
  """The epoch's record (as in metrics.jsonl) after evaluating on the validation split
  (which chooses the best checkpoint) and on the test split (reported, never chosen by),
  and the test confusion matrix."""
  c = ctx.config
  record = {"epoch": epoch + 1, "step": _step(state)}
  # Numbers of examples are named by their split (train_loss, test_accuracy); the steps'
  # own numbers (grad_norm: the global norm before clipping) by themselves.
  for key, value in loop.epoch_metrics(totals).items():
    record[f"train_{key}" if key in EXAMPLE_METRICS else key] = value
  confusion = None
  for name, split in (("val", ctx.val_split), ("test", ctx.test_split)):
    if split is not None:
      r = evaluate(ctx.eval_step, state, split, c.eval_batch_size, ctx.mesh, ctx.task)
      confusion = r.pop("confusion")
      record.update({f"{name}_{k}": v for k, v in r.items()})
  record["test_confusion"] = confusion.tolist()
  record.update({
      "learning_rate": float(steps.make_schedule(c, ctx.steps_per_epoch)(record["step"])),
      "images_per_second": totals["count"] / train_seconds,
      "seconds": time.perf_counter() - t0})
  return record, confusion


def _warn(message: str) -> None:
  print(message, file=reporting.console(), flush=True)


def _step(state) -> int:
  """The global step as a Python int (reads the device: once per epoch or save)."""
  return int(parallel.to_host(state.step))


def _diverged(ckpt, epoch: int, step: int, loss: float) -> TrainingDiverged:
  last = ckpt.latest_step()
  kept = (f"the last good checkpoint, {ckpt.directory / str(last)}, is kept" if last is not None
          else "no checkpoint had been written yet")
  return TrainingDiverged(
      f"the training loss became {loss} at step {step} (epoch {epoch + 1}); {kept}. Try a "
      "lower --learning-rate or gradient clipping, in a new --workdir or from that checkpoint.")
