"""Killing a training process and rerunning it: the same final parameters, bit for bit."""

import hashlib
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO

DRIVER = f"""
import hashlib, sys, jax, numpy as np
sys.path.insert(0, {str(REPO / 'tests')!r})
from conftest import synthetic_split
from rnnjax import config, train
c = config.get_config('tiny').replace(epochs=4, schedule='cosine', warmup_epochs=1.0)
state, _ = train.train_and_evaluate(c, sys.argv[1], (synthetic_split(480, 0),
                                    synthetic_split(40, 1)))
h = hashlib.sha256()
for leaf in jax.tree.leaves((state.params, state.opt_state)):
  h.update(np.asarray(leaf).tobytes())
print('DIGEST', h.hexdigest())
"""


def run(workdir):
  r = subprocess.run([sys.executable, "-c", DRIVER, str(workdir)], capture_output=True,
                     text=True, cwd=REPO, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stdout


def digest(stdout):
  return [l for l in stdout.splitlines() if l.startswith("DIGEST")][-1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Final parameters of an uninterrupted run."""
  return digest(run(tmp_path_factory.mktemp("ref")))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_to_identical_parameters(tmp_path, sig, reference):
  workdir = tmp_path / "killed"
  p = subprocess.Popen([sys.executable, "-c", DRIVER, str(workdir)], cwd=REPO,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 120
  while time.time() < deadline and p.poll() is None:
    if metrics.exists() and metrics.read_text().count("\n") >= 1:
      break
    time.sleep(0.05)
  assert p.poll() is None, "the run ended before it could be killed"
  p.send_signal(sig)  # somewhere in epoch 2 (or while it saves epoch 1)
  p.communicate(timeout=60)
  assert p.returncode != 0
  out = run(workdir)
  assert "resumed from" in out
  assert digest(out) == reference
