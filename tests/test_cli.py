"""The command line, driven as a user drives it: in a subprocess."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, requires_mnist

SCRIPT = REPO / "experiments" / "mnist_lstm.py"


def run_cli(*args, env=None, timeout=600):
  e = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                        text=True, cwd=REPO, env=e, timeout=timeout)


@pytest.mark.parametrize("args,message", [
    (["--hidden-size", "0"], "--hidden-size: expected a positive integer, got 0"),
    (["--batch-size", "-5"], "--batch-size: expected a positive integer, got -5"),
    (["--epochs", "two"], "--epochs: expected a positive integer, got 'two'"),
    (["--learning-rate=-1e-3"], "--learning-rate: expected a positive finite number"),
    (["--learning-rate", "nan"], "--learning-rate: expected a positive finite number"),
    (["--preset", "huge"], "--preset: invalid choice: 'huge'"),
    (["--data-source", "hub"], "--data-source: invalid choice: 'hub'"),
    (["--augment-shift", "20"], "augment_shift must be an integer in [0, 13], got 20"),
])
def test_invalid_values_exit_2(args, message, tmp_path):
  r = run_cli("--workdir", tmp_path / "w", *args)
  assert r.returncode == 2, r.stderr
  assert message in r.stderr and "usage:" in r.stderr
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "w").exists()


def test_wrong_manual_dir_is_a_clear_error(tmp_path):
  r = run_cli("--workdir", tmp_path / "w", "--preset", "tiny", "--data-source", "idx",
              "--manual-dir", tmp_path / "missing")
  assert r.returncode == 1
  assert "missing' does not exist" in r.stderr and "train-images-idx3-ubyte.gz" in r.stderr
  assert "Traceback" not in r.stderr


def test_changed_hidden_size_is_refused_and_nothing_lost(tmp_path, tiny_splits):
  from rnnjax import config, train
  workdir = tmp_path / "w"
  train.train_and_evaluate(config.get_config("tiny"), workdir, tiny_splits, log=lambda s: None)
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.name != "library.log"}
  r = run_cli("--workdir", workdir, "--preset", "tiny", "--hidden-size", "16",
              "--data-source", "idx")
  assert r.returncode == 1
  assert "hidden_size: 8 in the workdir, 16 now" in r.stderr and "new --workdir" in r.stderr
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.name != "library.log"} == before


@requires_mnist
@pytest.mark.slow
@pytest.mark.xdist_group("tfds")  # one worker prepares tfds's MNIST for both tests
def test_end_to_end_on_real_mnist(tmp_path, tfds_data_dir, mnist_dir):
  """One epoch of a small LSTM on the real files through tfds, then a resume that finds the
  run finished."""
  workdir = tmp_path / "run"
  args = ["--workdir", workdir, "--preset", "tutorial", "--epochs", "1", "--hidden-size", "32",
          "--learning-rate", "3e-3", "--data-dir", tfds_data_dir, "--manual-dir", mnist_dir]
  r = run_cli(*args)
  assert r.returncode == 0, r.stderr[-3000:]
  record = json.loads((workdir / "metrics.jsonl").read_text())
  assert record["test_count"] == 10000
  assert record["test_accuracy"] > 0.90, record  # 32 units, one epoch: ~94% seen
  assert f"test accuracy {100 * record['test_accuracy']:.2f}%" in r.stdout
  r2 = run_cli(*args)
  assert r2.returncode == 0 and "run already finished: 1 of 1 epochs" in r2.stdout
