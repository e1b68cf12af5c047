"""rnnjax.cpu_kernel, the CPU kernel as a library: its cache, its matmul engine and its
fall-backs.

The cache trusts only its owner: a library is loaded only from a private folder, as a
private file whose checksum is the one recorded when it was built; anything else is refused
(a folder others can write) or built again (a damaged or foreign library). The matmul
engine is timed once, kept, and can be forced; a oneDNN that does not load or build leaves
MKL alone, and no compiler leaves the scan.

The cache's builds here run a stand-in compiler that copies this process's real kernel
library to its `-o` argument: every check of the cache runs, in milliseconds, without
compiling."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rnnjax import cpu_kernel, reporting

needs_kernel = pytest.mark.skipif(not cpu_kernel.status()[0],
                                  reason=f"CPU kernel unavailable: {cpu_kernel.status()[1]}")

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
  real = Path(cpu_kernel._load()._name)
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
  """`cpu_kernel.status()` in a new process (a fresh load), with the cache and compiler."""
  env = dict(os.environ, RNNJAX_KERNEL_CACHE=str(cache_folder), CXX=str(cxx))
  r = subprocess.run([sys.executable, "-c", "from rnnjax import cpu_kernel as k\n"
                      "print('STATUS', *k.status())"], capture_output=True, text=True,
                     env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stdout, r.stderr


@needs_kernel
def test_a_new_cache_is_private_whatever_the_umask(cache):
  folder, _ = cache
  old = os.umask(0o002)  # the default of many distributions
  try:
    built = cpu_kernel._build()
  finally:
    os.umask(old)
  assert built == folder / built.name, built
  for made in (folder, folder.parent):
    assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
  for f in folder.iterdir():
    if f.name != ".lock":
      assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
  assert cpu_kernel._check_library(built) is None
  first = built.stat().st_ino
  assert cpu_kernel._build() == built and built.stat().st_ino == first  # not built again


@needs_kernel
def test_a_cache_folder_made_at_the_same_moment_by_another_process_is_used(cache, monkeypatch):
  """Two processes starting at once on a new machine both find no cache folder and both make
  it; the one whose `mkdir` comes second uses it as well, not failing on `File exists` (and
  then falling back to a build without oneDNN)."""
  folder, _ = cache
  mkdir = Path.mkdir

  def second(self, *args, **kwargs):
    if self == folder:
      os.mkdir(folder, 0o700)  # the other process, between the check and this mkdir
    return mkdir(self, *args, **kwargs)

  monkeypatch.setattr(Path, "mkdir", second)
  built = cpu_kernel._build()
  assert isinstance(built, Path) and built.parent == folder, built
  assert cpu_kernel._check_library(built) is None


@needs_kernel
def test_a_library_in_a_folder_others_can_write_never_runs(cache, tmp_path):
  folder, cxx = cache
  built = cpu_kernel._build()  # the name a build gets here
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
  assert "belongs to another user (uid 65534)" in cpu_kernel._build()


@needs_kernel
@pytest.mark.parametrize("damage", ["foreign", "truncated", "other owner", "no record"])
def test_a_damaged_or_foreign_library_is_built_again_never_loaded(cache, tmp_path, damage):
  folder, cxx = cache
  built = cpu_kernel._build()
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
  assert built.read_bytes() == good and cpu_kernel._check_library(built) is None


@needs_kernel
def test_the_lock_file_is_never_followed_through_a_link(cache, tmp_path):
  folder, _ = cache
  cpu_kernel._build()
  victim = tmp_path / "victim"
  victim.write_text("precious")
  lock = folder / ".lock"
  lock.unlink()
  lock.symlink_to(victim)
  built = next(folder.glob("*.so"))
  built.unlink()  # a build is needed, so the lock is taken
  why = cpu_kernel._build()
  assert isinstance(why, str) and "Too many levels of symbolic links" in why, why
  assert victim.read_text() == "precious"


@needs_kernel
def test_compiler_commands_with_words_and_silent_failures_are_named(cache, monkeypatch):
  _, cxx = cache
  monkeypatch.setenv("CXX", f"{cxx} -DRNNJAX_WRAPPED")  # as ccache or a wrapper is given
  assert isinstance(cpu_kernel._build(), Path)
  monkeypatch.setenv("CXX", "/bin/false")
  why = cpu_kernel._build()
  assert why == ("compiling rnn_cpu.cc with /bin/false failed (exit status 1): it printed "
                 "nothing"), why
  monkeypatch.setenv("CXX", "/nonexistent/g++ -O2")
  assert cpu_kernel._build() == "no C++ compiler found (install g++, or set $CXX)"


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


@needs_kernel
def test_matmul_engine_is_timed_once_kept_and_can_be_forced(tmp_path):
  """A build's first load times the engines and keeps the choice beside it; later loads
  read it; $RNNJAX_KERNEL_GEMM forces one, and a wrong name is refused with the fix."""
  code = ("from rnnjax import cpu_kernel as k\nok, why = k.status()\nprint('STATUS', ok, why)\n"
          "if ok:\n  print('ENGINES', *k.gemm_engines())\n  print('ENGINE', k.gemm_engine())\n")

  def run(cache, **extra):
    env = {k: v for k, v in os.environ.items() if k != "RNNJAX_KERNEL_GEMM"}
    env.update(RNNJAX_KERNEL_CACHE=str(cache), **extra)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout

  # The build a new process loads (this process may hold a fall-back built without oneDNN),
  # copied with its checksum into a cache without a choice.
  out = run(cpu_kernel.cache_dir())
  built = Path(out.split("STATUS True kernel ", 1)[1].split(", matmuls by", 1)[0])
  engines = out.split("ENGINES ", 1)[1].splitlines()[0].split()
  for name in (built.name, built.name + ".sha256"):
    shutil.copy2(built.with_name(name), tmp_path / name)
  kept = tmp_path / built.with_suffix(".gemm").name
  out = run(tmp_path)
  picked = kept.read_text().strip()
  assert picked in engines and f"ENGINE {picked}" in out
  assert f"matmuls by {cpu_kernel.GEMM_NAMES[picked]}" in out
  assert list(tmp_path.glob("*.so")) == [tmp_path / built.name]  # not built again
  other = engines[-1] if picked == engines[0] else engines[0]
  kept.write_text(other + "\n")  # a kept choice is read, not timed again
  assert f"ENGINE {other}" in run(tmp_path)
  assert "ENGINE mkl" in run(tmp_path, RNNJAX_KERNEL_GEMM="mkl")
  out = run(tmp_path, RNNJAX_KERNEL_GEMM="blas")
  assert "STATUS False RNNJAX_KERNEL_GEMM='blas' names no matmul engine" in out
  assert "unset it for the faster one" in out


def test_a_onednn_library_that_does_not_load_is_passed_over(tmp_path, monkeypatch):
  """A oneDNN install whose library does not load is not used (no build is spent on it);
  the same install with a library that loads is."""
  root = tmp_path / "onednn"
  (root / "include").mkdir(parents=True)
  (root / "include" / "dnnl.hpp").write_text("")
  (root / "lib").mkdir()
  (root / "lib" / "libdnnl.so.3").write_text("not a library")
  real = cpu_kernel._onednn()
  monkeypatch.setattr(cpu_kernel, "_install_roots", lambda variable: [root])
  assert cpu_kernel._onednn() is None
  if real:  # the control: a library that loads, in the same place
    (root / "lib" / "libdnnl.so.3").unlink()
    (root / "lib" / "libdnnl.so.3").symlink_to(real[1])
    assert cpu_kernel._onednn() == (root / "include", root / "lib" / "libdnnl.so.3")


@needs_kernel
def test_a_onednn_the_kernel_cannot_be_built_with_leaves_mkl_alone(tmp_path):
  """oneDNN found, but the build with it fails (stood in for by `_build`'s error for it):
  the kernel is built without it, runs its matmuls on MKL, and says why."""
  code = ("from rnnjax import cpu_kernel as k\n"
          "build = k._build\n"
          "k._onednn = lambda: (k.Path('/x/include'), k.Path('/x/lib/libdnnl.so.3'))\n"
          "k._build = lambda onednn=True: ('compiling rnn_cpu.cc failed: dnnl.hpp' if onednn\n"
          "                               else build(onednn=False))\n"
          "ok, why = k.status()\nprint('STATUS', ok, why)\nprint('ENGINES', k.gemm_engines())\n")
  env = {k: v for k, v in os.environ.items() if k != "RNNJAX_KERNEL_GEMM"}
  env["RNNJAX_KERNEL_CACHE"] = str(tmp_path / "cache")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "STATUS True" in r.stdout and "matmuls by MKL" in r.stdout
  assert "ENGINES ['mkl']" in r.stdout
  assert ("note: compiling rnn_cpu.cc failed: dnnl.hpp; the CPU kernel runs its matmuls on "
          "MKL alone") in r.stderr


@needs_kernel
def test_set_gemm_engine_refuses_an_unknown_engine():
  with pytest.raises(ValueError, match="matmul engine 'cublas': this kernel build has mkl"):
    cpu_kernel.set_gemm_engine("cublas")


def test_without_a_compiler_auto_uses_the_scan_and_says_why(tmp_path):
  """A fresh cache and no compiler: `status` names the cause, `auto` trains on the scan,
  `cpu` is refused with the cause."""
  code = (
      "import jax, jax.numpy as jnp\n"
      "from rnnjax import cpu_kernel, models\n"
      "ok, why = cpu_kernel.status()\n"
      "print('STATUS', ok, why)\n"
      "m = models.SequenceClassifier(hidden_size=4)\n"
      "x = jnp.ones((2, 3, 5))\n"
      "print('LOGITS', m.apply(m.init(jax.random.key(0), x), x).shape)\n"
      "try:\n"
      "  models.resolve('cpu', x.dtype)\n"
      "except cpu_kernel.KernelUnavailable as e:\n"
      "  print('REFUSED', e)\n")
  env = dict(os.environ, RNNJAX_KERNEL_CACHE=str(tmp_path), CXX=str(tmp_path / "no-g++"))
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  if sys.platform == "linux" and os.uname().machine == "x86_64" and "MKL not found" not in \
      r.stdout:
    assert "STATUS False no C++ compiler found" in r.stdout
  assert "LOGITS (2, 10)" in r.stdout
  assert "REFUSED rnn_kernel 'cpu' cannot run here" in r.stdout
  assert list(tmp_path.glob("*.so")) == []
