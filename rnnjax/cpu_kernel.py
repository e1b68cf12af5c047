"""rnnjax's CPU kernel as a library: its build, its loading and its matmul engine.

The C++ source (rnnjax/csrc/rnn_cpu.cc) runs the LSTM and LEM layers of
`rnnjax.kernel_layers` (forward, inference and backward of each, as XLA FFI handlers). It is
compiled on first use with the machine's C++ compiler (`$CXX`, else `g++`, `-march=native`)
against MKL and oneDNN from PyPI (the `mkl`, `mkl-include`, `onednn-cpu-gomp` and
`onednn-devel-cpu-gomp` packages, installed with rnnjax on x86-64 Linux) and jaxlib's FFI
headers, into `$RNNJAX_KERNEL_CACHE` (default `~/.cache/rnnjax`, private to its user), once
per source, CPU and jaxlib version; each library's SHA-256 is recorded at build time and
checked before it is loaded.

**Matmul engine**: MKL's `cblas_sgemm`, or oneDNN (its matmul primitive for the per-step
matmuls, with the weights laid out once per call in the primitive's own format, and
`dnnl_sgemm` for the rest), whichever runs the kernels' typical matmuls faster on this CPU,
timed once when a build is first loaded (about a second) and kept beside it
(`<build>.gemm`); `$RNNJAX_KERNEL_GEMM=mkl|onednn` forces one, `set_gemm_engine` switches in
a process (the engines' measured speeds: docs/performance.md). Without oneDNN, or where it
fails to load, the build uses MKL alone.

Where no build is possible (no compiler, no MKL, another platform, a GPU, several devices)
`status()` says why, and `models.resolve` runs the layers as the `nn.RNN` scan under
`rnn_kernel="auto"`.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import glob
import hashlib
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import jax

SOURCE = Path(__file__).with_name("csrc") / "rnn_cpu.cc"
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w"]
_TARGETS = {"rnnjax_lstm_fwd": "RnnjaxLstmFwd", "rnnjax_lstm_infer": "RnnjaxLstmInfer",
            "rnnjax_lstm_bwd": "RnnjaxLstmBwd", "rnnjax_lem_fwd": "RnnjaxLemFwd",
            "rnnjax_lem_infer": "RnnjaxLemInfer", "rnnjax_lem_bwd": "RnnjaxLemBwd",
            "rnnjax_tanh_fwd": "RnnjaxTanhFwd", "rnnjax_tanh_bwd": "RnnjaxTanhBwd"}


GEMM_ENGINES = ("mkl", "onednn")  # the kernel's matmul engines, in the C++ enum's order
GEMM_NAMES = {"mkl": "MKL", "onednn": "oneDNN"}


class KernelUnavailable(Exception):
  """A fast layer was asked for (`rnn_kernel` `cpu` or `cudnn`) where it cannot run; the
  message says why and what to use instead."""


def _install_roots(variable: str) -> list[Path]:
  """Where pip installs a package's `lib/` and `include/`, after `$variable` if set."""
  roots = [Path(sysconfig.get_paths()["data"]), Path(sys.prefix)]
  return ([Path(os.environ[variable])] if os.environ.get(variable) else []) + roots


def _mkl() -> tuple[Path, Path] | str:
  """(include dir, libmkl_rt path) of an installed MKL, or why there is none."""
  for root in _install_roots("MKLROOT"):
    header = root / "include" / "mkl_cblas.h"
    libs = sorted(glob.glob(str(root / "lib" / "libmkl_rt.so*")))
    if header.exists() and libs:
      return root / "include", Path(libs[-1])
  return ("MKL not found (pip install mkl mkl-include: x86-64 Linux only; or set $MKLROOT "
          "to an MKL installation)")


def _onednn() -> tuple[Path, Path] | None:
  """(include dir, libdnnl.so.3) of an installed oneDNN built for OpenMP (the
  `onednn-cpu-gomp` and `onednn-devel-cpu-gomp` packages), or None. (The SYCL build of the
  `onednn` package needs Intel's SYCL runtime; it is not used.) A library that does not
  load here (damaged, another architecture, a dependency missing) is passed over before any
  build is spent on it."""
  for root in _install_roots("DNNLROOT"):
    lib = root / "lib" / "libdnnl.so.3"
    if (lib.exists() and (root / "include" / "dnnl.hpp").exists()
        and not (root / "lib" / "libsycl.so.9").exists() and _loads(lib)):
      return root / "include", lib
  return None


def _loads(lib: Path) -> bool:
  try:
    ctypes.CDLL(str(lib))
  except OSError:
    return False
  return True


def _cpu_signature() -> str:
  """What `-march=native` depends on: the CPU's model and instruction set flags."""
  try:
    text = Path("/proc/cpuinfo").read_text()
  except OSError:
    return platform.processor()
  keep = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
  return "\n".join(sorted(set(keep)))


def cache_dir() -> Path:
  return Path(os.environ.get("RNNJAX_KERNEL_CACHE")
              or Path.home() / ".cache" / "rnnjax")


def _private_folder(folder: Path) -> str | None:
  """Makes `folder` (and any missing parent) private to this user (0700, whatever the
  umask) when it does not exist; returns why it cannot be trusted to hold code this
  process runs (not a folder, another owner, writable by group or others), or None.

  A library in a folder someone else can write may be theirs: its start-up code would run
  in this process. Only the folder and the library are checked, as for a program's own
  files; a folder above that others can rename is theirs to guard."""
  missing = []
  p = folder
  while not p.exists() and not p.is_symlink() and p != p.parent:
    missing.append(p)
    p = p.parent
  try:
    for q in reversed(missing):
      try:
        q.mkdir(mode=0o700)
      except FileExistsError:
        continue  # made at the same moment by another process; checked below as any folder
      os.chmod(q, 0o700)
    st = folder.stat()
  except OSError as e:
    return f"cannot make the kernel cache {folder} ({e.strerror})"
  fix = ("; point $RNNJAX_KERNEL_CACHE at a folder of your own that only you can write (or "
         "unset it for ~/.cache/rnnjax)")
  if not stat.S_ISDIR(st.st_mode):
    return f"the kernel cache {folder} is not a folder" + fix
  if st.st_uid != os.geteuid():
    return (f"the kernel cache {folder} belongs to another user (uid {st.st_uid}), who could "
            "place code there that rnnjax would run" + fix)
  if st.st_mode & 0o022:
    return (f"the kernel cache {folder} is writable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}), who could place code there that rnnjax would "
            f"run; make it private (chmod go-w {folder}), or" + fix[1:])
  return None


def _digest(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_library(path: Path) -> str | None:
  """None when `path` is the library this cache built (a private regular file of this
  user's whose SHA-256 is the one recorded beside it at build time), else what is wrong."""
  try:
    st = os.lstat(path)
  except FileNotFoundError:
    return "missing"
  if not stat.S_ISREG(st.st_mode):
    return "is not a regular file"
  if st.st_uid != os.geteuid() or st.st_mode & 0o022:
    return "is not a private file of this user's"
  try:
    recorded = path.with_name(path.name + ".sha256").read_text().strip()
  except OSError:
    return "has no recorded checksum"
  if _digest(path) != recorded:
    return "does not match its recorded checksum (damaged, truncated or replaced)"
  return None


def _note(message: str) -> None:
  from rnnjax import reporting
  print(f"note: {message}", file=reporting.console(), flush=True)


def _compiler() -> list[str] | str:
  """The C++ compiler's command (`$CXX` may carry words: `ccache g++`), or why none."""
  cxx = shlex.split(os.environ.get("CXX") or "") or [shutil.which("g++") or
                                                     shutil.which("c++") or ""]
  if not cxx[0] or not shutil.which(cxx[0]):
    return "no C++ compiler found (install g++, or set $CXX)"
  return cxx


def _build(onednn: bool = True) -> Path | str:
  """The compiled library (building it when missing, damaged or not the one recorded), or
  why it cannot be built or trusted. With `onednn` (and oneDNN installed) it can run its
  matmuls on oneDNN as well as MKL."""
  if sys.platform != "linux" or platform.machine() != "x86_64":
    return f"the CPU kernel is built for x86-64 Linux only (this is {sys.platform} " \
           f"{platform.machine()})"
  mkl = _mkl()
  if isinstance(mkl, str):
    return mkl
  include, lib = mkl
  cxx = _compiler()
  if isinstance(cxx, str):
    return cxx
  dnnl = _onednn() if onednn else None
  import jaxlib
  key = hashlib.sha256("\n".join([
      SOURCE.read_text(), jaxlib.__version__, str(lib), str(dnnl), " ".join(cxx),
      " ".join(FLAGS), _cpu_signature()]).encode()).hexdigest()[:16]
  out = cache_dir() / f"{SOURCE.stem}-{key}.so"
  untrusted = _private_folder(out.parent)
  if untrusted:
    return untrusted
  cmd = [*cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", f"-I{include}", str(SOURCE), "-o",
         None, f"-L{lib.parent}", f"-l:{lib.name}", f"-Wl,-rpath,{lib.parent}", "-lpthread"]
  if dnnl:
    cmd += ["-DRNNJAX_ONEDNN", "-fopenmp", f"-I{dnnl[0]}", str(dnnl[1]),
            f"-Wl,-rpath,{dnnl[1].parent}"]
  try:
    # One build at a time (parallel test workers, several processes of one run). The lock
    # file is never followed through a link.
    lock = os.open(out.parent / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(lock, "w"):
      fcntl.flock(lock, fcntl.LOCK_EX)
      problem = _check_library(out)
      if problem is None:
        return out
      if problem != "missing":
        _note(f"the cached CPU kernel {out} {problem}; building it again")
        out.unlink()
      fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)  # 0600
      os.close(fd)
      cmd[cmd.index(None)] = tmp
      r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
      if r.returncode != 0:
        os.unlink(tmp)
        said = (r.stderr or r.stdout).strip()[-500:] or "it printed nothing"
        return (f"compiling {SOURCE.name} with {' '.join(cxx)} failed (exit status "
                f"{r.returncode}): {said}")
      os.chmod(tmp, 0o600)  # the linker made it executable for all: private, as its folder
      record = out.with_name(out.name + ".sha256")
      fd, tmp_record = tempfile.mkstemp(dir=out.parent)
      with os.fdopen(fd, "w") as f:
        f.write(_digest(Path(tmp)) + "\n")
      os.replace(tmp_record, record)
      os.replace(tmp, out)
  except (OSError, subprocess.SubprocessError) as e:
    return f"building the CPU kernel in {out.parent} failed: {e}"
  return out


def _engines(lib: ctypes.CDLL) -> list[str]:
  return [e for k, e in enumerate(GEMM_ENGINES) if lib.rnnjax_gemm_engines() >> k & 1]


def _pick_gemm(lib: ctypes.CDLL, built: Path) -> str:
  """Selects the library's matmul engine and returns its name: `$RNNJAX_KERNEL_GEMM` where
  set, else the one timed fastest on this CPU when the library was first loaded (the choice
  is kept beside the library, in `<library>.gemm`)."""
  forced = os.environ.get("RNNJAX_KERNEL_GEMM")
  have = _engines(lib)
  if forced:
    if forced not in have:
      raise KernelUnavailable(f"RNNJAX_KERNEL_GEMM={forced!r} names no matmul engine of "
                              f"this kernel build, which has {', '.join(have)}" +
                              ("" if "onednn" in have else
                               " (for oneDNN: pip install onednn-devel-cpu-gomp)") +
                              "; unset it for the faster one")
    lib.rnnjax_set_gemm(GEMM_ENGINES.index(forced))
    return forced
  kept = built.with_suffix(".gemm")
  try:
    engine = kept.read_text().strip()
  except OSError:
    engine = None
  if engine not in have:
    engine = GEMM_ENGINES[lib.rnnjax_pick_gemm()]
    try:
      fd, tmp = tempfile.mkstemp(dir=kept.parent)
      with os.fdopen(fd, "w") as f:
        f.write(engine + "\n")
      os.replace(tmp, kept)
    except OSError:
      pass  # timed again next time
  lib.rnnjax_set_gemm(GEMM_ENGINES.index(engine))
  return engine


@functools.cache
def _load() -> ctypes.CDLL | str:
  built = _build()
  lib = None
  if not isinstance(built, str):
    try:
      lib = ctypes.CDLL(str(built))
    except OSError as e:
      built = (f"loading {built} failed: {e}; delete it (or its folder) and rerun to build "
               "it again")
  if lib is None and _onednn():  # then without oneDNN: MKL alone
    fallback = _build(onednn=False)
    try:
      lib = None if isinstance(fallback, str) else ctypes.CDLL(str(fallback))
    except OSError:
      fallback = built  # the first failure is the one to report
    if lib is not None:
      _note(f"{built}; the CPU kernel runs its matmuls on MKL alone")
    built = fallback
  if lib is None:
    return built
  try:
    threads = len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    threads = os.cpu_count() or 1
  lib.rnnjax_kernel_init(ctypes.c_int(threads))
  try:
    lib.gemm = _pick_gemm(lib, built)
  except KernelUnavailable as e:
    return str(e)
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return lib


def status() -> tuple[bool, str]:
  """(whether the kernel can run in this process, why not / where it lives)."""
  if jax.default_backend() != "cpu":
    return False, f"JAX runs on {jax.default_backend()}, not a CPU"
  if jax.device_count() != 1:
    return False, (f"{jax.device_count()} devices: the CPU kernel runs the whole batch on "
                   "one device")
  loaded = _load()
  if isinstance(loaded, str):
    return False, loaded
  return True, f"kernel {loaded._name}, matmuls by {GEMM_NAMES[loaded.gemm]}"


def gemm_engine() -> str:
  """The kernels' matmul engine in this process (`GEMM_ENGINES`): `$RNNJAX_KERNEL_GEMM`,
  else the faster on this CPU, as timed when the library was first loaded. Needs
  `status()[0]`."""
  return require().gemm


def gemm_engines() -> list[str]:
  """The matmul engines this process's kernel build can use (`GEMM_ENGINES` order)."""
  return _engines(require())


def set_gemm_engine(engine: str) -> str:
  """Runs the kernels' matmuls on `engine` (`GEMM_ENGINES`) from now on, in this process,
  jitted functions included (the engine is read at each call); returns the previous one.
  For comparing engines; the automatic choice is the faster one."""
  lib = require()
  if engine not in GEMM_ENGINES or lib.rnnjax_set_gemm(GEMM_ENGINES.index(engine)) < 0:
    raise ValueError(f"matmul engine {engine!r}: this kernel build has "
                     f"{', '.join(_engines(lib))}")
  previous, lib.gemm = lib.gemm, engine
  return previous


def require() -> ctypes.CDLL:
  """The loaded library; `KernelUnavailable` saying why where it cannot run."""
  ok, why = status()
  if not ok:
    raise KernelUnavailable(f"the CPU kernel cannot run here: {why}")
  return _load()
