"""Stopping a real training process and rerunning it: the same final parameters, bit for bit.

The driver and the random-kill loop live in tests/tools/kill_resume.py (run it by hand for 20
kills); here: SIGTERM at a known point and a SIGKILL at a random one.
"""

import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO
from tests.tools import kill_resume

# One worker runs this module, so that its tests share one reference run (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("resume_process")

EPOCHS, EVERY = 3, 5  # 30 steps per epoch, a checkpoint every 5 steps: ~1 s per epoch


def digest(stdout):
  return [l for l in stdout.splitlines() if l.startswith("DIGEST")][-1]


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
  """Final parameters of an uninterrupted run."""
  return kill_resume.run_to_end(tmp_path_factory.mktemp("ref"), EPOCHS, EVERY)[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])  # SIGINT: test_faults.py
def test_stopped_run_resumes_to_identical_parameters(tmp_path, sig, reference):
  workdir = tmp_path / "stopped"
  p = subprocess.Popen(kill_resume.command(workdir, EPOCHS, EVERY), cwd=REPO,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 120
  while time.time() < deadline and p.poll() is None:
    if metrics.exists() and metrics.read_text().count("\n") >= 1:
      break
    time.sleep(0.02)
  assert p.poll() is None, "the run ended before it could be stopped"
  time.sleep(0.3)  # somewhere in epoch 2
  p.send_signal(sig)
  _, err = p.communicate(timeout=60)
  if sig == signal.SIGKILL:
    assert p.returncode == -signal.SIGKILL
  else:  # the current step finishes, the position is saved, a message says how to resume
    assert p.returncode == 128 + sig, err[-2000:]
    name = signal.Signals(sig).name
    assert f"stopped by {name} " in err and "Rerun the same command to resume" in err
    assert "Traceback" not in err
  _, out = kill_resume.run_to_end(workdir, EPOCHS, EVERY)
  assert "resumed from" in out
  assert digest(out) == reference


def test_random_kills_resume_bit_identical(tmp_path, reference):
  """A SIGKILL at a random moment (tests/tools/kill_resume.py --kills 20 for the full check)."""
  r = subprocess.run([sys.executable, str(REPO / "tests" / "tools" / "kill_resume.py"),
                      "--kills", "1",
                      "--epochs", str(EPOCHS), "--every", str(EVERY), "--reference", reference,
                      "--max-delay", "6", "--workdir", str(tmp_path)],
                     capture_output=True, text=True, cwd=REPO, timeout=600)
  print(r.stdout)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert "MATCH" in r.stdout and "1 kills" in r.stdout
