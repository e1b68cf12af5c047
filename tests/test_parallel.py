"""Data parallelism: 4 simulated devices, 2 real processes, checkpoints across topologies.

Each run is a subprocess (`tests/tools/sharded_run.py`), because the device count is fixed when
JAX starts. All train the same tiny LSTM on the same synthetic data with the same global
batch (16) for 2 epochs of 8 steps; the final parameters are compared with the 1-device run
(itself resumed after epoch 1, which is bit-identical: tests/test_train.py).

Tolerance: 1e-6 absolute on parameters of size ~0.1-1. With the batch split over devices,
the batch mean of the loss and gradients is summed in another order (per device, then
across devices), so each gradient differs from the 1-device one by float32 rounding
(~1e-7 relative); Adam's steps of lr * m / (sqrt(v) + eps) carry that into the parameters
over 16 steps. A real bug (a shard dropped or counted twice, unsynchronised replicas) moves
parameters by ~1e-3 or more.
"""

import json
import re
import shutil
import socket
import subprocess
import sys
import types

import numpy as np
import pytest

from tests.helpers import REPO

# One worker runs this module, so that its tests share one reference run (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("parallel")

SCRIPT = REPO / "tests" / "tools" / "sharded_run.py"
ATOL = 1e-6


def run(workdir, out, devices, epochs=2, extra=(), wait=True):
  cmd = [sys.executable, str(SCRIPT), "--devices", str(devices), "--workdir", str(workdir),
         "--epochs", str(epochs), "--out", str(out), *map(str, extra)]
  p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       cwd=REPO)
  return finish(p) if wait else p


def finish(p):
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0, err[-3000:]
  lines = [line for line in out.splitlines() if line.startswith("{")]
  return json.loads(lines[-1]) if lines else None


def params(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def max_diff(a, b):
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
  """1 device: epoch 1 (its workdir is copied for the topology test), then epoch 2, resumed
  in the same process."""
  d = tmp_path_factory.mktemp("one_device")
  info = run(d / "run", d / "params.npz", devices=1,
             extra=("--copy-after-epoch-1", d / "after_epoch_1"))
  assert info["devices"] == 1 and [r["epoch"] for r in info["history"]] == [1, 2]
  return params(d / "params.npz"), info["history"], d / "after_epoch_1"


def test_four_devices_and_checkpoints_across_topologies(reference, tmp_path):
  """4 devices train like 1; a 1-device checkpoint resumes on 4 devices, and a 4-device
  checkpoint on 1."""
  ref, ref_history, one_device_epoch_1 = reference
  four = tmp_path / "four"
  info = run(four, tmp_path / "unused.npz", devices=4, epochs=1)
  assert info["devices"] == 4 and info["processes"] == 1
  a, b = info["history"][0], ref_history[0]  # epoch 1 on 4 devices vs 1: counts exact
  assert (a["test_correct"], a["step"]) == (b["test_correct"], b["step"])
  assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
  cases = {"4 -> 1": (four, 1), "1 -> 4": (tmp_path / "one", 4)}
  shutil.copytree(one_device_epoch_1, tmp_path / "one")
  for name, (workdir, devices) in cases.items():
    info = run(workdir, tmp_path / "p.npz", devices=devices)
    assert info["devices"] == devices and [r["epoch"] for r in info["history"]] == [1, 2]
    err = max_diff(params(tmp_path / "p.npz"), ref)
    print(f"measured: {name} devices, max abs parameter difference {err:.2e}")
    assert err < ATOL, name


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))  # loopback only
    return s.getsockname()[1]


def test_two_processes_train_together_like_one(reference, tmp_path):
  """Two real processes on localhost (gloo collectives), 2 devices each: 4 in all."""
  ref, *_ = reference
  port = free_port()
  procs = [run(tmp_path / "run", tmp_path / "p.npz", devices=2, wait=False,
               extra=("--coordinator", f"127.0.0.1:{port}", "--num-processes", 2,
                      "--process-id", k)) for k in (0, 1)]
  infos = [finish(p) for p in procs]
  assert infos[0]["devices"] == 4 and infos[0]["processes"] == 2
  assert infos[1] is None  # only process 0 reports and writes
  err = max_diff(params(tmp_path / "p.npz"), ref)
  print(f"measured: 2 processes x 2 devices vs 1 device, max abs parameter difference "
        f"{err:.2e}")
  assert err < ATOL
  lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["epoch"] for x in lines] == [1, 2]  # written once, by process 0


def test_batch_that_does_not_divide_is_a_clear_error():
  from rnnjax import presets
  from rnnjax import parallel
  cfg = presets.get("tiny")  # batch 16, eval batch 32
  with pytest.raises(parallel.ParallelError, match=re.escape(
      "batch_size 16 does not divide evenly over the 3 devices of this run (1 process(es)); "
      "use a multiple of 3, e.g. 15 or 18 (--batch-size).")):
    parallel.check_batch_sizes(cfg, types.SimpleNamespace(size=3))
  with pytest.raises(parallel.ParallelError, match="eval_batch_size 32 does not divide"):
    parallel.check_batch_sizes(cfg.replace(batch_size=20), types.SimpleNamespace(size=5))
  parallel.check_batch_sizes(cfg, types.SimpleNamespace(size=8))  # 16 and 32: fine
