"""How a training run stops when asked: SIGTERM, SIGINT and SIGHUP become a checkpoint
and a rerunnable position (`StopSignals`), or, before training began, an exit that leaves
the workdir as it was (`Interrupted`)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Callable

from rnnjax import reporting


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


def preempted(signum: int, ckpt, epoch: int, epoch_step: int, steps_per_epoch: int,
              step: int) -> Preempted:
  """The `Preempted` of a run stopped by `signum` at that position, its checkpoint saved."""
  where = (f"at step {epoch_step} of {steps_per_epoch} in epoch {epoch + 1}" if epoch_step
           else f"after epoch {epoch}")
  return Preempted(
      f"stopped by {signal.Signals(signum).name} {where}; checkpoint "
      f"{ckpt.directory / str(step)} holds the position. Rerun the same command to resume.",
      signum)
