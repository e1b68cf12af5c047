"""The CPU kernel's cache trusts only its owner: a library is loaded only from a private
folder, as a private file whose checksum is the one recorded when it was built; anything
else is refused (a folder others can write) or built again (a damaged or foreign library).

Builds here run a stand-in compiler that copies this process's real kernel library to its
`-o` argument: every check of the cache runs, in milliseconds, without compiling."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rnnjax import lstm_kernel, reporting

needs_kernel = pytest.mark.skipif(not lstm_kernel.status()[0],
                                  reason=f"CPU kernel unavailable: {lstm_kernel.status()[1]}")

# A library whose start-up code leaves a mark: what another user would plant.
PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
  FILE *f = fopen(MARK, "w"); if (f) { fputs("ran", f); fclose(f); }
}
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """(a fresh cache folder not yet made, the stand-in compiler) with the environment set."""
  real = Path(lstm_kernel._load()._name)
  cxx = tmp_path / "cxx"
  cxx.write_text(f'#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && cp {real} "$2"; '
                 'shift; done\n')
  cxx.chmod(0o755)
  folder = tmp_path / "home" / "cache"
  monkeypatch.setenv("RNNJAX_KERNEL_CACHE", str(folder))
  monkeypatch.setenv("CXX", str(cxx))
  return folder, cxx


def plant(path: Path, mark: Path) -> None:
  src = path.with_suffix(".c")
  src.write_text(PLANTED.replace("MARK", f'"{mark}"'))
  subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(path), str(src)], check=True)
  src.unlink()


def status_in_subprocess(cache_folder, cxx):
  """`lstm_kernel.status()` in a new process (a fresh load), with the cache and compiler."""
  env = dict(os.environ, RNNJAX_KERNEL_CACHE=str(cache_folder), CXX=str(cxx))
  r = subprocess.run([sys.executable, "-c", "from rnnjax import lstm_kernel as k\n"
                      "print('STATUS', *k.status())"], capture_output=True, text=True,
                     env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stdout, r.stderr


@needs_kernel
def test_a_new_cache_is_private_whatever_the_umask(cache):
  folder, _ = cache
  old = os.umask(0o002)  # the default of many distributions
  try:
    built = lstm_kernel._build()
  finally:
    os.umask(old)
  assert built == folder / built.name, built
  for made in (folder, folder.parent):
    assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
  for f in folder.iterdir():
    if f.name != ".lock":
      assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
  assert lstm_kernel._check_library(built) is None
  first = built.stat().st_ino
  assert lstm_kernel._build() == built and built.stat().st_ino == first  # not built again


@needs_kernel
def test_a_library_in_a_folder_others_can_write_never_runs(cache, tmp_path):
  folder, cxx = cache
  built = lstm_kernel._build()  # the name a build gets here
  shutil.rmtree(folder)
  folder.mkdir()
  folder.chmod(0o777)  # a shared scratch folder
  mark = tmp_path / "mark"
  plant(built, mark)
  out, _ = status_in_subprocess(folder, cxx)
  assert "STATUS False the kernel cache" in out and "is writable by other users (mode 0777)" \
      in out and "chmod go-w" in out, out
  assert not mark.exists()  # its start-up code never ran
  # A folder of another user's, however private: refused the same way.
  folder.chmod(0o700)
  os.chown(folder, 65534, 65534)
  assert "belongs to another user (uid 65534)" in lstm_kernel._build()


@needs_kernel
@pytest.mark.parametrize("damage", ["foreign", "truncated", "other owner", "no record"])
def test_a_damaged_or_foreign_library_is_built_again_never_loaded(cache, tmp_path, damage):
  folder, cxx = cache
  built = lstm_kernel._build()
  good = built.read_bytes()
  mark = tmp_path / "mark"
  if damage == "foreign":
    plant(built, mark)
  elif damage == "truncated":  # loading it would end the process with a bus error
    built.write_bytes(good[:len(good) // 3])
  elif damage == "other owner":
    plant(built, mark)
    os.chown(built, 65534, 65534)
  else:
    built.with_name(built.name + ".sha256").unlink()
  out, err = status_in_subprocess(folder, cxx)
  assert "STATUS True" in out, (out, err)
  assert f"note: the cached CPU kernel {built}" in err and "building it again" in err, err
  assert not mark.exists()
  assert built.read_bytes() == good and lstm_kernel._check_library(built) is None


@needs_kernel
def test_the_lock_file_is_never_followed_through_a_link(cache, tmp_path):
  folder, _ = cache
  lstm_kernel._build()
  victim = tmp_path / "victim"
  victim.write_text("precious")
  lock = folder / ".lock"
  lock.unlink()
  lock.symlink_to(victim)
  built = next(folder.glob("*.so"))
  built.unlink()  # a build is needed, so the lock is taken
  why = lstm_kernel._build()
  assert isinstance(why, str) and "Too many levels of symbolic links" in why, why
  assert victim.read_text() == "precious"


@needs_kernel
def test_compiler_commands_with_words_and_silent_failures_are_named(cache, monkeypatch):
  _, cxx = cache
  monkeypatch.setenv("CXX", f"{cxx} -DRNNJAX_WRAPPED")  # as ccache or a wrapper is given
  assert isinstance(lstm_kernel._build(), Path)
  monkeypatch.setenv("CXX", "/bin/false")
  why = lstm_kernel._build()
  assert why == ("compiling lstm_cpu.cc with /bin/false failed (exit status 1): it printed "
                 "nothing"), why
  monkeypatch.setenv("CXX", "/nonexistent/g++ -O2")
  assert lstm_kernel._build() == "no C++ compiler found (install g++, or set $CXX)"


def test_the_fallback_traceback_file_is_new_and_never_followed(tmp_path, monkeypatch, capsys):
  """Without a workdir log, the traceback goes to a fresh private file: a link planted
  under the old predictable name (rnnjax-COMMAND-PID.log) is left alone."""
  monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
  victim = tmp_path / "victim"
  victim.write_text("precious")
  (tmp_path / f"rnnjax-train-{os.getpid()}.log").symlink_to(victim)
  try:
    raise RuntimeError("boom")
  except RuntimeError:
    assert reporting.unexpected_error("train") == 1
  assert victim.read_text() == "precious"
  err = capsys.readouterr().err
  logs = [p for p in tmp_path.glob("rnnjax-train-*.log") if not p.is_symlink()]
  assert len(logs) == 1 and str(logs[0]) in err
  assert stat.S_IMODE(logs[0].stat().st_mode) == 0o600
  assert "RuntimeError: boom" in logs[0].read_text()
