"""What a run tells people: a progress bar, one line and one JSON line per epoch, config.json.

The progress bar is tqdm on a terminal; when output goes to a file or pipe it becomes a
plain line every ~10% of the epoch, so logs stay readable.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"  # a record per epoch, written by this module alone (RunWriter)


_console = None


def console():
  """Where rnnjax's own messages to a person go (progress, stop notices): stderr, unless a
  front end set another stream with `set_console` (the CLI does, when it sends library
  output to a log file)."""
  return _console or sys.stderr


def set_console(stream) -> None:
  global _console
  _console = stream


class Progress:
  """Progress within one epoch: loss, images/s and ETA.

  Call `update(steps_done, loss)` at a coarse interval (each call may wait for the device).
  """

  def __init__(self, total: int, desc: str, batch_size: int, enabled: bool = True,
               stream=None, start: int = 0):
    self.total, self.desc, self.batch_size = total, desc, batch_size
    self.stream = stream or console()
    self.enabled = enabled and total > 0
    self.start, self.done, self.t0 = start, start, time.perf_counter()
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.next_plain = start + max(1, total // 10)
    self.bar = None
    if self.enabled and self.tty:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=start, desc=desc, unit="step", file=self.stream,
                      leave=False, dynamic_ncols=True)

  def rate(self) -> float:
    dt = time.perf_counter() - self.t0
    return (self.done - self.start) * self.batch_size / dt if dt > 0 else 0.0

  def update(self, done: int, loss: float | None = None) -> None:
    if not self.enabled:
      return
    prev, self.done = self.done, done
    rate = self.rate()
    if self.bar is not None:
      self.bar.update(done - prev)
      post = {"img/s": f"{rate:,.0f}"}
      if loss is not None:
        post["loss"] = f"{loss:.4f}"
      self.bar.set_postfix(post, refresh=False)
    elif done >= self.next_plain or done == self.total:
      self.next_plain = done + max(1, self.total // 10)
      eta = (self.total - done) * self.batch_size / rate if rate > 0 else math.nan
      loss_s = f" loss {loss:.4f}" if loss is not None else ""
      print(f"  {self.desc} {done}/{self.total}{loss_s} {rate:,.0f} img/s eta {eta:.0f}s",
            file=self.stream, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def epoch_line(r: dict[str, Any]) -> str:
  val = (f"val loss {r['val_loss']:.4f} acc {100 * r['val_accuracy']:.2f}% | "
         if "val_loss" in r else "")
  norm = f" | grad norm {r['grad_norm']:.3g}" if "grad_norm" in r else ""
  return (f"epoch {r['epoch']:3d} | train loss {r['train_loss']:.4f} acc "
          f"{100 * r['train_accuracy']:.2f}% | {val}test loss {r['test_loss']:.4f} acc "
          f"{100 * r['test_accuracy']:.2f}% | {r['images_per_second']:,.0f} img/s | "
          f"{r['seconds']:.1f}s{norm}")


def json_safe(obj: Any) -> Any:
  """`obj` with every non-finite float (a diverged loss, an overflowed norm) as None, so that
  what rnnjax writes is JSON every reader takes (a bare `NaN` is not JSON)."""
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if isinstance(obj, dict):
    return {k: json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  return obj


def dumps(obj: Any, **kw) -> str:
  return json.dumps(json_safe(obj), sort_keys=True, allow_nan=False, **kw)


def write_json_atomic(path: Path, obj: Any) -> None:
  """Writes JSON via a temporary file and a rename, so a reader never sees half a file. A
  failed write (a full disk) leaves no temporary file behind."""
  _write_atomic(path, dumps(obj, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  try:
    tmp.write_text(text)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def repair_jsonl(path: Path) -> int:
  """Cuts a half-written last line (a write stopped by a crash or a full disk) off the
  append-only file `path`, so that the next line starts on a line of its own. Returns the
  number of bytes cut; says so on the console when any were."""
  try:
    with open(path, "rb") as f:
      size = f.seek(0, os.SEEK_END)
      if size == 0:
        return 0
      f.seek(size - 1)
      if f.read(1) == b"\n":
        return 0
      f.seek(0)
      keep = f.read().rfind(b"\n") + 1
  except FileNotFoundError:
    return 0
  os.truncate(path, keep)
  print(f"warning: {path} ended in a half-written line ({size - keep} bytes); removed it",
        file=console(), flush=True)
  return size - keep


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
  """Appends one line to `path`, after repairing a half-written last line."""
  repair_jsonl(path)
  with open(path, "a") as f:
    f.write(dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
  """Replaces `path` with `records`, one JSON object per line (atomically)."""
  _write_atomic(path, "".join(dumps(r) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
  """The lines of `path` as JSON values; a half-written last line (no newline, not JSON) is
  left out. A damaged complete line raises ValueError."""
  if not Path(path).exists():
    return []
  text = Path(path).read_text()
  lines = text.splitlines()
  if lines and not text.endswith("\n"):
    try:
      json.loads(lines[-1])
    except ValueError:
      lines = lines[:-1]
  return [json.loads(line) for line in lines if line.strip()]


class RunWriter:
  """The epoch's outputs behind one call: the line (through `log`), metrics.jsonl (whose
  only writer it is), summary.json (`rnnjax.results`), TensorBoard events and the plots.
  Only process 0 writes (`enabled`).

  metrics.jsonl follows the checkpoint the run resumed from: on opening, it is rewritten
  with `history` (lines of epochs the checkpoint does not hold are dropped).
  """

  def __init__(self, workdir: Path, config, history: list[dict[str, Any]], log,
               enabled: bool = True, engine: str = "", started: float | None = None):
    self.workdir, self.config, self.history, self.log = Path(workdir), config, history, log
    self.enabled, self.board, self.engine = enabled, None, engine
    self.started = time.perf_counter() if started is None else started
    if enabled:
      from rnnjax import results
      self.earlier = results.command_seconds_so_far(self.workdir)  # the command's resumes
      write_jsonl(self.workdir / METRICS_FILE, history)
      if config.tensorboard:
        try:
          from rnnjax import tensorboard
          self.board = tensorboard.Writer(self.workdir, config)
        except ImportError as e:  # a minimal JAX-only machine: train anyway
          print(f"warning: no TensorBoard events ({e}); pip install tensorboardX to have "
                "them", file=console(), flush=True)

  def write_epoch(self, record: dict[str, Any], confusion) -> None:
    self.log(epoch_line(record))
    if not self.enabled:
      return
    append_jsonl(self.workdir / METRICS_FILE, record)
    from rnnjax import results
    write_json_atomic(self.workdir / results.SUMMARY_FILE, results.summary(
        self.config, self.history, self.engine,
        self.earlier + time.perf_counter() - self.started))
    if self.board is not None:
      self.board.write_epoch(record)
    if self.config.plots:
      try:  # curves.png and confusion_matrix.png: a figure must not cost a training run
        from rnnjax import plots
        plots.write_run_plots(self.workdir, self.history, confusion)
      except Exception as e:  # noqa: BLE001
        print(f"warning: could not write the plots in {self.workdir} ({type(e).__name__}: "
              f"{e})", file=console(), flush=True)

  def write_diverged(self, epoch: int, step: int, loss: float) -> None:
    """The last line of a run whose loss stopped being finite (no TensorBoard, no plots)."""
    if self.enabled:
      append_jsonl(self.workdir / METRICS_FILE, {"epoch": epoch, "step": step,
                                                    "diverged": True, "train_loss": loss})

  def close(self) -> None:
    if self.board is not None:
      self.board.close()


def repair_metrics(workdir: Path, history: list[dict[str, Any]], warn) -> None:
  """Rewrites a finished run's metrics.jsonl from its last checkpoint's history when the
  file no longer holds it (a half-written line, a damaged or missing file); `warn` says so."""
  path = Path(workdir) / METRICS_FILE
  try:
    intact = [r for r in read_jsonl(path) if not r.get("diverged")] == \
        json_safe(history) and path.read_bytes().endswith(b"\n")
  except (OSError, ValueError, AttributeError):
    intact = False
  if not intact:
    write_jsonl(path, history)
    warn(f"warning: {path} did not hold the run's {len(history)} epochs; rewrote it from "
         "the last checkpoint")


def shown(path) -> str:
  """A path as text any terminal can print (bytes that are not UTF-8 become U+FFFD)."""
  return os.fsencode(path).decode("utf-8", "replace")


def unexpected_error(command: str, log_path: Path | None = None) -> int:
  """The error boundary of a command, called in its `except Exception:` block.

  Writes the traceback to `log_path` (the workdir's library.log) or, without one, to a new
  private file of a fresh name in the temporary folder, prints one `error:` line to the
  console naming what failed and where the traceback is, and returns the exit status, 1. A
  bug, or a case rnnjax does not handle yet, so never an empty terminal and never a wall of
  frames.
  """
  import tempfile
  import traceback
  exc = sys.exc_info()[1]
  text = f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {command}: unexpected error\n"
  text += traceback.format_exc()
  where = None
  if log_path:
    try:
      with open(log_path, "a") as f:
        f.write(text)
      where = Path(log_path)
    except OSError:
      pass
  if where is None:  # a new file of our own: mkstemp never follows nor reuses a name
    try:
      fd, name = tempfile.mkstemp(prefix=f"rnnjax-{command}-", suffix=".log")
      with os.fdopen(fd, "w") as f:
        f.write(text)
      where = Path(name)
    except OSError:
      pass
  lines = str(exc).strip().splitlines()
  what = f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
  told = (f"the full traceback is in {shown(where)}" if where else
          "the traceback could not be written anywhere")
  print(f"error: {command} failed unexpectedly ({what}); {told}. Please report it with that "
        "file.", file=console(), flush=True)
  return 1
