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

from rnnjax import reporting
from rnnjax.config import Config, shape_differences

CONFIG_FILE = "config.json"
CONFIGS_FILE = "configs.jsonl"
METRICS_FILE = "metrics.jsonl"
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
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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

def check(workdir: Path, config: Config) -> None:
  """Creates `workdir` if needed and checks that it is writable, that its files are of the
  right kind, and that a stored config describes the same model shapes as `config`."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_test.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f"workdir {str(workdir)!r} is not writable ({e.strerror}). Choose "
                       "another --workdir or fix its permissions.") from None
  for name, folder in ((CHECKPOINTS, True), (CONFIG_FILE, False), (CONFIGS_FILE, False),
                       (METRICS_FILE, False), (PERMUTATION_FILE, False)):
    path = workdir / name
    if path.exists() and path.is_dir() != folder:
      kind = "a folder" if folder else "a file"
      raise WorkdirError(f"{path} is not {kind}; rnnjax keeps its {name} there. Move it "
                         "away, or use another --workdir. Nothing was written.")
  stored = workdir / CONFIG_FILE  # the shapes never change during a run: the first config
  if stored.exists():
    diffs = shape_differences(_read_config_dict(stored), config)
    if diffs:
      raise WorkdirError(
          f"workdir {str(workdir)!r} holds a run with a different model or data split ("
          + "; ".join(diffs) + "). Its checkpoints cannot be resumed with this config: "
          "use a new --workdir, or the same settings as before.")


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


def configs(workdir: Path) -> list[dict[str, Any]]:
  """Every config the run was trained under, oldest first, as configs.jsonl lines; a
  workdir with only config.json (or an older one) gives that one, from epoch 0."""
  path = workdir / CONFIGS_FILE
  lines = []
  if path.is_file():
    try:
      lines = [r for r in reporting.read_jsonl(path)
               if isinstance(r, dict) and isinstance(r.get("config"), dict)]
    except (OSError, ValueError):
      lines = []  # damaged: config.json still says how the run started
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
  if lines:
    with open(workdir / CONFIGS_FILE, "a") as f:
      f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in lines))
      f.flush()
      os.fsync(f.fileno())


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
