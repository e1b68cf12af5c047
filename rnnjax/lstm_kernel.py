"""A hand-written LSTM layer for CPUs, used in place of `nn.RNN(nn.OptimizedLSTMCell)`'s
scan when the model runs on one CPU device (`Config.lstm_kernel`, `--lstm-kernel`).

Same parameters, same equations, float32 (`SequenceClassifier` still declares the layer as
`nn.RNN(nn.OptimizedLSTMCell)`, and reads the kernel's weights from that layer's
parameters)::

    z_t = x_t @ W_i + h_{t-1} @ W_h + b        W_i = [ii|if|ig|io], W_h = [hi|hf|hg|ho]
    i, f, o = sigmoid(z_t[gate]), g = tanh(z_t[g])
    c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t)

Outputs and gradients agree with the scan to float32 rounding (1e-7 to 2.4e-6 relative;
tests/test_kernel.py). Why it exists (docs/lab/2026-11-speed-notes.md, items 14-15): XLA's CPU
backend spends a third of the scan's step in some 20 small element-wise fusions per time
step and runs the backward pass's transposed matmul at two thirds of its speed; this layer
is one call forward and one call backward (XLA FFI): per time step one MKL matmul
`[x_t | h_{t-1} | 1] [W_i; W_h; b]` and one fused loop, the two cores each running the
whole recurrence for half the batch (an LSTM's batch rows are independent until the weight
gradients, which are then one large matmul). On the project's 2-core CPU the tutorial's
training step ran 1.55x the scan's speed with the kernel's first version (item 14), the
second pass took another 10% off the kernel's time, and it runs 1.3-1.4x PyTorch's (item 15).

The C++ source (rnnjax/csrc/lstm_cpu.cc) is compiled on first use with the machine's C++
compiler (`$CXX`, else `g++`) against MKL from PyPI (the `mkl` and `mkl-include` packages,
installed with rnnjax on x86-64 Linux) and jaxlib's FFI headers, into
`$RNNJAX_KERNEL_CACHE` (default `~/.cache/rnnjax`), once per source, CPU and jaxlib version.
Where that is not possible (no compiler, no MKL, another platform, a GPU, several devices,
float64) `lstm_kernel="auto"` uses the scan and `status()` says why.

The kernel defines reverse-mode derivatives only (a `jax.custom_vjp`): `jax.grad` and
`jax.vjp` work, forward mode (`jax.jvp`, `jax.hessian`) needs `lstm_kernel="xla"`.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import glob
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from rnnjax.config import LSTM_KERNELS

MODES = LSTM_KERNELS  # auto, cpu, xla
SOURCE = Path(__file__).with_name("csrc") / "lstm_cpu.cc"
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w"]
_TARGETS = {"fwd": "RnnjaxLstmFwd", "infer": "RnnjaxLstmInfer", "bwd": "RnnjaxLstmBwd"}


class KernelUnavailable(Exception):
  """`lstm_kernel="cpu"` was asked for where the kernel cannot run; the message says why."""


def _mkl() -> tuple[Path, Path] | str:
  """(include dir, libmkl_rt path) of an installed MKL, or why there is none."""
  roots = [Path(sysconfig.get_paths()["data"]), Path(sys.prefix)]
  if os.environ.get("MKLROOT"):
    roots.insert(0, Path(os.environ["MKLROOT"]))
  for root in roots:
    header = root / "include" / "mkl_cblas.h"
    libs = sorted(glob.glob(str(root / "lib" / "libmkl_rt.so*")))
    if header.exists() and libs:
      return root / "include", Path(libs[-1])
  return ("MKL not found (pip install mkl mkl-include: x86-64 Linux only; or set $MKLROOT "
          "to an MKL installation)")


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


def _build() -> Path | str:
  """The compiled library (building it when missing), or why it cannot be built."""
  if sys.platform != "linux" or platform.machine() != "x86_64":
    return f"the CPU kernel is built for x86-64 Linux only (this is {sys.platform} " \
           f"{platform.machine()})"
  mkl = _mkl()
  if isinstance(mkl, str):
    return mkl
  include, lib = mkl
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if not cxx or not shutil.which(cxx):
    return "no C++ compiler found (install g++, or set $CXX)"
  import jaxlib
  key = hashlib.sha256("\n".join([
      SOURCE.read_text(), jaxlib.__version__, str(lib), cxx, " ".join(FLAGS),
      _cpu_signature()]).encode()).hexdigest()[:16]
  out = cache_dir() / f"lstm_cpu-{key}.so"
  if out.exists():
    return out
  cmd = [cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", f"-I{include}", str(SOURCE), "-o",
         None, f"-L{lib.parent}", f"-l:{lib.name}", f"-Wl,-rpath,{lib.parent}", "-lpthread"]
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time (parallel test workers, several processes of one run).
    with open(out.parent / ".lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if out.exists():
        return out
      fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
      os.close(fd)
      cmd[cmd.index(None)] = tmp
      r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
      if r.returncode != 0:
        os.unlink(tmp)
        return f"compiling {SOURCE.name} failed: {(r.stderr or r.stdout).strip()[-500:]}"
      os.replace(tmp, out)
  except (OSError, subprocess.SubprocessError) as e:
    return f"building the CPU kernel in {out.parent} failed: {e}"
  return out


@functools.cache
def _load() -> ctypes.CDLL | str:
  built = _build()
  if isinstance(built, str):
    return built
  try:
    lib = ctypes.CDLL(str(built))
  except OSError as e:
    return f"loading {built} failed: {e}"
  try:
    threads = len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    threads = os.cpu_count() or 1
  lib.rnnjax_lstm_init(ctypes.c_int(threads))
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(f"rnnjax_lstm_{name}", jax.ffi.pycapsule(getattr(lib, symbol)),
                                platform="cpu")
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
  return True, f"MKL kernel {loaded._name}"


def describe(config) -> str:
  """How `config`'s recurrent layers run in this process, for the run's first line."""
  if config.cell != "lstm":
    return f"{config.cell} layers: nn.RNN scan"
  what = "bidirectional LSTM" if config.bidirectional else "LSTM"
  if config.lstm_kernel == "xla":
    return f"{what}: nn.RNN scan (--lstm-kernel xla)"
  ok, why = status()
  if ok:
    return f"{what}: rnnjax CPU kernel (MKL)"
  if config.lstm_kernel == "cpu":
    raise KernelUnavailable(f"--lstm-kernel cpu cannot run here: {why}. Use auto (the "
                            "nn.RNN scan where the kernel cannot run) or xla.")
  return f"{what}: nn.RNN scan ({why})"


def use_kernel(mode: str, x: jax.Array) -> bool:
  """Whether a layer whose input is `x` runs on the kernel under `mode` (see `MODES`)."""
  if mode == "xla":
    return False
  if mode not in MODES:
    raise ValueError(f"lstm_kernel must be one of {MODES}, got {mode!r}")
  ok, why = status()
  if ok and x.dtype != jnp.float32:
    ok, why = False, f"the CPU kernel computes in float32, the input is {x.dtype}"
  if not ok and mode == "cpu":
    raise KernelUnavailable(f"lstm_kernel 'cpu' cannot run here: {why}. Use 'auto' (the "
                            "scan where the kernel cannot run) or 'xla'.")
  return ok


def _shape(*dims):
  return jax.ShapeDtypeStruct(dims, jnp.float32)


@jax.custom_vjp
def _layer(x, wi, wh, b, c0, h0):
  """Time-major x [T,B,F] -> (hs [T+1,B,H] with hs[0] = h0, c_T [B,H])."""
  t, batch, _ = x.shape
  h = wh.shape[0]
  return jax.ffi.ffi_call("rnnjax_lstm_infer", (_shape(t + 1, batch, h), _shape(batch, h)),
                          vmap_method="sequential")(x, wi, wh, b, c0, h0)


def _layer_fwd(x, wi, wh, b, c0, h0):
  t, batch, f = x.shape
  h = wh.shape[0]
  hs, cs, xh, acts, tcs = jax.ffi.ffi_call(
      "rnnjax_lstm_fwd", (_shape(t + 1, batch, h), _shape(t + 1, batch, h),
                          _shape(t, batch, f + h + 1), _shape(t, batch, 4 * h),
                          _shape(t, batch, h)),
      vmap_method="sequential")(x, wi, wh, b, c0, h0)
  return (hs, cs[-1]), (wi, wh, xh, cs, acts, tcs)


def _layer_bwd(res, cotangents):
  wi, wh, xh, cs, acts, tcs = res
  d_hs, d_c = cotangents
  t, batch, _ = xh.shape
  f, h = wi.shape[0], wh.shape[0]
  dx, dwi, dwh, db, dc0, dh0 = jax.ffi.ffi_call(
      "rnnjax_lstm_bwd", (_shape(t, batch, f), _shape(f, 4 * h), _shape(h, 4 * h),
                          _shape(4 * h), _shape(batch, h), _shape(batch, h)),
      vmap_method="sequential")(wi, wh, xh, cs, acts, tcs, d_hs[1:], d_c)
  return dx, dwi, dwh, db, dc0, dh0 + d_hs[0]


_layer.defvjp(_layer_fwd, _layer_bwd)


def lstm(cell_params, x: jax.Array, carry: tuple[jax.Array, jax.Array]):
  """`nn.RNN(nn.OptimizedLSTMCell)` with parameters `cell_params` (its `cell` subtree) on
  batch-major `x <f32>[B, T, F]` from `carry = (c0, h0)`: outputs `<f32>[B, T, H]`.

  Needs `status()[0]` (the library is loaded there)."""
  wi = jnp.concatenate([cell_params[k]["kernel"] for k in ("ii", "if", "ig", "io")], axis=1)
  wh = jnp.concatenate([cell_params[k]["kernel"] for k in ("hi", "hf", "hg", "ho")], axis=1)
  b = jnp.concatenate([cell_params[k]["bias"] for k in ("hi", "hf", "hg", "ho")])
  c0, h0 = carry
  hs, _ = _layer(jnp.swapaxes(x, 0, 1), wi, wh, b, c0, h0)
  return jnp.swapaxes(hs[1:], 0, 1)
