"""The memory-allocator settings rnnjax's commands run with (Linux with glibc only).

By default glibc's malloc returns freed memory to the kernel and takes it back on the next
step, so a training process spends seconds per minute in page faults (the kernel time of
`time python experiments/mnist_lstm.py` shows it). Transparent huge pages for malloc
(`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`) measured fastest for rnnjax's training steps on
the project's CPU; the figures are in docs/lab/2026-11-speed-notes.md.

glibc reads its tunables once, when a process starts, so the commands (`mnist_lstm.py`,
`benchmarks/`) call `use_tuned_allocator()` first thing: it restarts the same command in
place (`os.execve`: same process id, same arguments) with the tunables set. It does nothing
when `GLIBC_TUNABLES` is already set (your own setting wins), off Linux/glibc, on a
machine with an NVIDIA GPU, or when turned off::

    RNNJAX_ALLOCATOR=system python experiments/mnist_lstm.py   # the C library's defaults

Light: no JAX import, so it can run before anything is allocated.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLES = "glibc.malloc.hugetlb=1"
SWITCH = "RNNJAX_ALLOCATOR"
CHOICES = ("tuned", "system")
GPU_DEVICE = "/dev/nvidiactl"  # present where an NVIDIA driver is loaded


def wanted() -> str:
  """'tuned' or 'system' from $RNNJAX_ALLOCATOR (unset: 'tuned'); ValueError otherwise."""
  value = os.environ.get(SWITCH, "tuned").strip().lower() or "tuned"
  if value not in CHOICES:
    raise ValueError(f"{SWITCH}={os.environ[SWITCH]!r} is not a choice: use 'tuned' "
                     "(the default: faster malloc settings) or 'system' (the C library's "
                     "defaults)")
  return value


def applies() -> bool:
  """Whether `use_tuned_allocator` would restart this process: not on a machine with an
  NVIDIA GPU (`/dev/nvidiactl`), where the step runs on the device, not in host malloc."""
  return (wanted() == "tuned" and "GLIBC_TUNABLES" not in os.environ
          and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
          and not os.path.exists(GPU_DEVICE))


def use_tuned_allocator() -> None:
  """Restarts this command with `GLIBC_TUNABLES` set, unless `applies()` is false.

  Call it before importing JAX. Raises ValueError for an unknown $RNNJAX_ALLOCATOR.
  """
  if not applies():
    return
  env = dict(os.environ, GLIBC_TUNABLES=TUNABLES)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
