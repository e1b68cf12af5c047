"""A run's workdir: its files, the checks made before anything is written, the one-writer
lock, and the record of every config the run was trained under.

    config.json      the config the run started with (written once, never rewritten)
    configs.jsonl    one line per start that trained under a config different from the
                     one before: {"epoch", "epoch_step", "step", "changes", "config"}
    metrics.jsonl    one line per finished epoch
    permutation.json the permuted task's pixel order
    checkpoints/     Orbax (rnnjax/checkpointing.py)
    lock             held (flock) by the one training process writing here

Stdlib only: readers (evaluate, predict) and notebooks use it without JAX state.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rnnjax import data, reporting
from rnnjax.reporting import METRICS_FILE
from rnnjax.config import Config, shape_differences

CONFIG_FILE = "config.json"
CONFIGS_FILE = "configs.jsonl"
PERMUTATION_FILE = "permutation.json"
LOCK_FILE = "lock"
CHECKPOINTS = "checkpoints"

# Fields that say where data lives or how a run shows itself, not what it computes (the
# tfds and IDX sources give identical arrays; steps per call give identical updates).
# Changing them on resume is recorded without a warning.
PLACE_FIELDS = ("data_source", "data_dir", "manual_dir", "progress", "tensorboard", "plots",
                "keep_checkpoints", "checkpoint_every_steps", "steps_per_call",
                "memory_limit_gib")


class WorkdirError(Exception):
  """The workdir cannot be used as asked; the message says what to do."""


class WorkdirBusy(WorkdirError):
  """Another training process holds the workdir's lock."""


# ----------------------------------------------------------------------------------------
# One writer per workdir.

class Lock:
  """An exclusive `flock` on `workdir/lock`, held while a run trains there.

  The operating system releases it when the process ends, however it ends (kill -9
  included), so a stale file never blocks anyone: the file stays, the lock does not. The
  holder writes its process id, host and start time into the file, for the message a
  second trainer gets. Readers (evaluate, predict) never take it.
  """

  def __init__(self, workdir: str | os.PathLike):
    self.path = Path(workdir) / LOCK_FILE
    self._fd: int | None = None

  def acquire(self) -> "Lock":
    import fcntl
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # never a link
    except OSError as e:
      raise WorkdirError(f"cannot create {self.path} ({e.strerror}). Choose another "
                         "--workdir or fix its permissions.") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read_holder(fd)
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise WorkdirBusy(
            f"workdir {str(self.path.parent)!r} is in use by another training run ({holder}). "
            "One run writes to a workdir at a time: wait for it to finish (or stop it; it "
            "resumes), or use another --workdir. evaluate and predict work meanwhile."
        ) from None
      print(f"warning: cannot lock {self.path} ({e.strerror}); make sure no other run "
            "trains in this workdir", file=reporting.console(), flush=True)
      return self
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "command": " ".join(sys.argv)}) + "\n").encode())
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor releases the flock
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _read_holder(fd: int) -> str:
  try:
    d = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    return (f"process {d['pid']} on {d['host']}, started {d['started']}: "
            f"{d.get('command', '')}".rstrip(": "))
  except (OSError, ValueError, KeyError, TypeError):
    return "a process that has not said which"


# ----------------------------------------------------------------------------------------
# Checks before anything is written.

# Room below checkpoints/ for the deepest path Orbax writes while saving a step (its
# temporary folder name, then state/ocdbt.process_N/d/<32 hex digits>), with a margin.
CHECKPOINT_PATH_ROOM = 160


def check(workdir: Path, config: Config) -> None:
  """Creates `workdir` if needed and checks, before any work, that it and its checkpoints/
  folder are writable, that its files are of the right kind, and that the run's record
  (config.json and configs.jsonl) describes the same model, task, dataset and data split
  as `config`. (The checkpoint being resumed is checked against `config` once restored:
  `check_checkpoint_record`.)"""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_test.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    if e.errno == errno.ENAMETOOLONG:
      raise WorkdirError(f"the path of workdir {str(workdir)!r} is too long for this file "
                         "system; use a --workdir with a shorter path.") from None
    raise WorkdirError(f"workdir {str(workdir)!r} is not writable ({e.strerror}). Choose "
                       "another --workdir or fix its permissions.") from None
  for name, folder in ((CHECKPOINTS, True), (CONFIG_FILE, False), (CONFIGS_FILE, False),
                       (METRICS_FILE, False), (PERMUTATION_FILE, False)):
    path = workdir / name
    if (path.exists() or path.is_symlink()) and path.is_dir() != folder:
      kind = "a folder" if folder else "a file"
      raise WorkdirError(f"{path} is not {kind}; rnnjax keeps its {name} there. Move it "
                         "away, or use another --workdir. Nothing was written.")
  for source, stored in recorded_configs(workdir):
    diffs = shape_differences(stored, config)
    if diffs:
      raise WorkdirError(
          f"workdir {str(workdir)!r} holds a run that does not fit this config's model, task "
          "or data (" + "; ".join(diffs) + f"; as its {source} records). Its checkpoints "
          "cannot be resumed with this config. Use a new --workdir, or the same settings as "
          "before.")
  check_checkpoints_writable(workdir / CHECKPOINTS)


def check_checkpoints_writable(folder: Path) -> None:
  """That checkpoints can be written into `folder` (created if missing): a file can be made
  there, its path leaves room for Orbax's files, and no file or link sits where a step's
  folder goes. WorkdirError names the cause."""
  fix = "Fix it, or use another --workdir; nothing was written."
  try:
    folder.mkdir(exist_ok=True)
    probe = folder / f".write_test.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    why = "not writable" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "unusable"
    raise WorkdirError(f"checkpoints cannot be written in {folder}: it is {why} "
                       f"({e.strerror}). {fix}") from None
  absolute = len(os.fsencode(folder.absolute()))
  try:
    path_max = os.pathconf(folder, "PC_PATH_MAX")
  except (OSError, ValueError):
    path_max = 4096
  if absolute + CHECKPOINT_PATH_ROOM > path_max:
    raise WorkdirError(
        f"the path of {folder} is too long for checkpoints ({absolute} bytes; the files "
        f"Orbax writes below it need about {CHECKPOINT_PATH_ROOM} more, and this file system "
        f"takes at most {path_max}). Use a --workdir with a shorter path; nothing was written.")
  for entry in folder.iterdir():
    if entry.name.split(".")[0].isdigit() and (entry.is_symlink() or not entry.is_dir()):
      kind = "a symbolic link" if entry.is_symlink() else "a file"
      raise WorkdirError(f"{entry} is {kind}, where a checkpoint's folder goes: move it "
                         "away, or use another --workdir; nothing was written.")


def recorded_configs(workdir: Path) -> list[tuple[str, dict[str, Any]]]:
  """(source, config dict) for each record of the run's config in `workdir`: config.json
  (the first; WorkdirError when damaged) and the newest line of configs.jsonl."""
  out = []
  if (workdir / CONFIG_FILE).exists():
    out.append((CONFIG_FILE, _read_config_dict(workdir / CONFIG_FILE)))
  lines = _configs_lines(workdir / CONFIGS_FILE)
  if lines:
    out.append((CONFIGS_FILE, lines[-1]["config"]))
  return out


def check_checkpoint_record(meta: dict[str, Any], config: Config, where: str) -> None:
  """That the checkpoint `where`, whose record is `meta`, was trained as `config` trains: the
  config it holds, or (a checkpoint written before records held one) the validation split
  its history shows. WorkdirError when not."""
  stored = meta.get("config")
  if isinstance(stored, dict):
    diffs = shape_differences(stored, config)
  else:
    history = meta.get("history") or []
    held_out = history[-1].get("val_count", 0) if history else config.validation_size
    diffs = [] if held_out == config.validation_size else [
        f"validation_size: {held_out!r} in the checkpoint, {config.validation_size!r} now "
        "(the validation images must never be trained on)"]
  if diffs:
    raise WorkdirError(
        f"checkpoint {where} does not fit this config's model, task or data ("
        + "; ".join(diffs) + "; as its record says). It cannot be resumed with this config. "
        "Use a new --workdir, or the same settings as before.")


def _read_config_dict(path: Path) -> dict[str, Any]:
  try:
    d = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise WorkdirError(f"{path} is unreadable ({type(e).__name__}: {e}); restore it, or move "
                       "it away to let this command's settings stand for the run.") from None
  if not isinstance(d, dict):
    raise WorkdirError(f"{path} does not hold a config (a JSON object of fields, found "
                       f"{type(d).__name__} {json.dumps(d)[:40]}); restore it, or move it "
                       "away to let this command's settings stand for the run.")
  return d


def _configs_lines(path: Path) -> list[dict[str, Any]]:
  """configs.jsonl's records (a half-written last line left out); [] when absent or
  damaged."""
  if not path.is_file():
    return []
  try:
    return [r for r in reporting.read_jsonl(path)
            if isinstance(r, dict) and isinstance(r.get("config"), dict)]
  except (OSError, ValueError):
    return []  # damaged: config.json still says how the run started


def configs(workdir: Path) -> list[dict[str, Any]]:
  """Every config the run was trained under, oldest first, as configs.jsonl lines; a
  workdir with only config.json (or an older one) gives that one, from epoch 0."""
  lines = _configs_lines(workdir / CONFIGS_FILE)
  if not lines and (workdir / CONFIG_FILE).is_file():
    lines = [{"epoch": 0, "epoch_step": 0, "step": 0, "changes": {},
              "config": _read_config_dict(workdir / CONFIG_FILE)}]
  return lines


def stored_config(workdir: Path) -> dict[str, Any] | None:
  """The newest config the run was trained under (a dict), or None for a new workdir."""
  found = configs(workdir)
  return found[-1]["config"] if found else None


def current_config(workdir: Path) -> Config:
  """The newest config of the run in `workdir`, as a Config; WorkdirError when none or
  invalid."""
  d = stored_config(workdir)
  if d is None:
    raise WorkdirError(f"{workdir} holds no run (no {CONFIG_FILE}).")
  try:
    return Config.from_dict(d)
  except (ValueError, TypeError) as e:
    raise WorkdirError(f"{workdir / CONFIG_FILE} is invalid ({e}).") from None


def changes(old: dict[str, Any], new: Config, ignore=PLACE_FIELDS) -> dict[str, list]:
  """{field: [old, new]} where `new` differs from the stored `old` (fields in `ignore`
  left out)."""
  out = {}
  for key, value in new.to_dict().items():
    if key not in ignore and key in old and old[key] != value:
      out[key] = [old[key], value]
  return out


def record_start(workdir: Path, config: Config, epoch: int, epoch_step: int, step: int,
                 warn: Callable[[str], Any]) -> None:
  """Records that `config` trains from (`epoch`, `epoch_step`): config.json on the first
  start, a configs.jsonl line whenever the config differs from the one before, and a
  warning naming every change that alters what is computed."""
  found = configs(workdir)
  new = config.to_dict()
  if not (workdir / CONFIG_FILE).exists():  # a new run's, or the recorded first one again
    reporting.write_json_atomic(workdir / CONFIG_FILE, found[0]["config"] if found else new)
  lines = [] if (workdir / CONFIGS_FILE).is_file() else found[:1]  # an older workdir's start
  if not found or found[-1]["config"] != new:
    line = {"epoch": epoch, "epoch_step": epoch_step, "step": step, "changes": {},
            "config": new}
    if found:
      line["changes"] = changes(found[-1]["config"], config, ignore=())
      told = changes(found[-1]["config"], config)
      if told:
        where = (f"step {epoch_step} of epoch {epoch + 1}" if epoch_step
                 else f"epoch {epoch + 1}")
        warn("warning: resuming with changed settings (" + ", ".join(
            f"{k}: {a!r} -> {b!r}" for k, (a, b) in told.items()) + f"); they apply from "
            f"{where} on, and {workdir / CONFIGS_FILE} records what each epoch ran under.")
    lines.append(line)
  for line in lines:
    reporting.append_jsonl(workdir / CONFIGS_FILE, line)


def describe_configs(workdir: Path) -> str | None:
  """'tutorial (epochs 1-2), default (from epoch 3)' when the run changed configs."""
  found = configs(workdir)
  if len(found) < 2:
    return None
  parts = []
  for r, nxt in zip(found, found[1:] + [None]):
    first = r["epoch"] + 1
    name = r["config"].get("name", "?")
    parts.append(f"{name} (from epoch {first}" + (f" to {nxt['epoch']})" if nxt else " on)"))
  return ", ".join(parts)


def load_task(workdir: Path, config: Config,
              warn: Callable[[str], Any] | None = None) -> data.Task:
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
    (warn or _say)(f"warning: {stored} holds another order than permutation_seed {seed} draws here "
          "(another NumPy, or an edited file); the run reads pixels in the stored order, as "
          "its checkpoints were trained")
  return data.make_task("permuted", permutation=order)


def store_task(workdir: Path, config: Config, task: data.Task) -> None:
  """Writes the permuted task's pixel order next to config.json (once)."""
  stored = workdir / PERMUTATION_FILE
  if task.name == "permuted" and not stored.exists():
    reporting.write_json_atomic(stored, {"permutation_seed": config.permutation_seed,
                                         "permutation": task.permutation.tolist()})


def _say(message: str) -> None:
  print(message, file=reporting.console(), flush=True)
