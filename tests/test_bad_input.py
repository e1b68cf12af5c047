"""Bad input through the command line: one clear message, a non-zero exit, and the good
checkpoints already in the workdir untouched, byte for byte."""

import gzip
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rnnjax import presets
from rnnjax import data, train
from tests.helpers import (REPO, SCRIPT, TINY, check_refused, requires_mnist, run_cli,
                           snapshot)

@pytest.fixture
def good_workdir(tmp_path, tiny_splits):
  """A workdir holding one finished epoch of the tiny preset (8 units, batch 16)."""
  workdir = tmp_path / "run"
  train.train_and_evaluate(presets.get("tiny"), workdir, tiny_splits, log=lambda s: None)
  return workdir


def fake_mnist_files(folder):
  """The four file names with right-format, wrong-content IDX data."""
  folder.mkdir()
  for images, labels, n in data.FILES.values():
    header = lambda a: bytes([0, 0, 8, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape)
    a = np.zeros((n, 28, 28), np.uint8)
    (folder / images).write_bytes(gzip.compress(header(a) + a.tobytes()))
    b = np.zeros((n,), np.uint8)
    (folder / labels).write_bytes(gzip.compress(header(b) + b.tobytes()))


def test_missing_files_in_manual_dir(good_workdir, tmp_path):
  before = snapshot(good_workdir)
  (tmp_path / "empty").mkdir()
  r = run_cli("--workdir", good_workdir, *TINY, "--manual-dir", tmp_path / "empty")
  check_refused(r, good_workdir, before, "lacks train-images-idx3-ubyte.gz, "
                "train-labels-idx1-ubyte.gz", "Put the official files")


def test_wrong_manual_dir(good_workdir, tmp_path):
  before = snapshot(good_workdir)
  r = run_cli("--workdir", good_workdir, *TINY, "--manual-dir", tmp_path / "nope")
  check_refused(r, good_workdir, before, "nope' does not exist or is not a folder",
                "t10k-labels-idx1-ubyte.gz")


def test_corrupt_data_file_is_named(good_workdir, tmp_path):
  before = snapshot(good_workdir)
  fake_mnist_files(tmp_path / "fake")
  r = run_cli("--workdir", good_workdir, *TINY, "--manual-dir", tmp_path / "fake")
  check_refused(r, good_workdir, before, "train-images-idx3-ubyte.gz' has the wrong checksum",
                "Replace it with the official train-images-idx3-ubyte.gz")


@requires_mnist
def test_truncated_data_file_is_named(good_workdir, tmp_path, mnist_dir):
  before = snapshot(good_workdir)
  copy = tmp_path / "copy"
  shutil.copytree(mnist_dir, copy)
  labels = copy / "t10k-labels-idx1-ubyte.gz"
  labels.write_bytes(labels.read_bytes()[:1000])
  r = run_cli("--workdir", good_workdir, *TINY, "--manual-dir", copy)
  check_refused(r, good_workdir, before, "t10k-labels-idx1-ubyte.gz' has the wrong checksum")


def test_checkpoints_of_another_model_without_config_json(good_workdir):
  before = snapshot(good_workdir)
  (good_workdir / "config.json").unlink()  # only the checkpoints tell
  r = run_cli("--workdir", good_workdir, *TINY, "--hidden-size", "16")
  check_refused(r, good_workdir, before, "does not fit this config's model",
                "Use a new --workdir")


def test_workdir_below_a_file(tmp_path):
  (tmp_path / "file").write_text("x")
  r = run_cli("--workdir", tmp_path / "file" / "run", *TINY)
  assert r.returncode == 1 and "is not writable" in r.stderr and "--workdir" in r.stderr
  assert "Traceback" not in r.stderr


def lock(path):
  """Makes `path` unwritable: chmod for ordinary users; root ignores permissions, so for
  root the immutable attribute (chattr +i). Returns the undo function."""
  if os.geteuid() != 0:
    path.chmod(0o555)
    return lambda: path.chmod(0o755)
  r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
  if r.returncode != 0:
    pytest.skip(f"cannot make a folder unwritable as root here: {r.stderr.strip()}")
  return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


def test_unwritable_workdir(good_workdir):
  before = snapshot(good_workdir)
  unlock = lock(good_workdir)
  try:
    r = run_cli("--workdir", good_workdir, *TINY)
  finally:
    unlock()
  check_refused(r, good_workdir, before, "is not writable", "Choose another --workdir")


@requires_mnist
def test_disk_full_during_save(good_workdir, mnist_dir):
  """Files may not grow past 4 KB (RLIMIT_FSIZE): the first new checkpoint cannot be written."""
  before = snapshot(good_workdir)

  # Limit file sizes, ignore SIGXFSZ (a failed write, not a killed process), exec the CLI.
  limited = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
             "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
  r = subprocess.run([sys.executable, "-c", limited, str(SCRIPT), "--workdir", str(good_workdir),
                      *TINY, "--manual-dir", str(mnist_dir), "--checkpoint-every", "1"],
                     capture_output=True, text=True, cwd=REPO, timeout=600)
  check_refused(r, good_workdir, before, "could not write checkpoint",
                "earlier checkpoints are untouched")
  # With room again, the same command resumes from the untouched checkpoint.
  r = run_cli("--workdir", good_workdir, *TINY, "--manual-dir", mnist_dir, "--epochs", "1")
  assert r.returncode == 0 and "run already finished: 1 of 1 epochs" in r.stdout
  assert snapshot(good_workdir) == before
  assert not [p for p in (good_workdir / "checkpoints").iterdir() if "tmp" in p.name]


@pytest.mark.parametrize("args", [["--epochs", "0"], ["--learning-rate", "nan"],
                                  ["--augment-shift", "99"], ["--checkpoint-every", "-3"]])
def test_invalid_values_leave_the_workdir_alone(good_workdir, args):
  before = snapshot(good_workdir)
  r = run_cli("--workdir", good_workdir, *TINY, *args)
  check_refused(r, good_workdir, before, "usage:", "error:", code=2)


def test_an_unwritable_checkpoints_folder_is_named_before_any_training(good_workdir):
  """checkpoints/ itself unwritable (the workdir above it is fine): refused before the first
  step, naming the folder and the cause, and never blaming a full disk."""
  before = snapshot(good_workdir)
  unlock = lock(good_workdir / "checkpoints")
  try:
    r = run_cli("--workdir", good_workdir, *TINY)
  finally:
    unlock()
  check_refused(r, good_workdir, before, "checkpoints cannot be written in",
                "checkpoints: it is not writable", "nothing was written")
  assert "disk" not in r.stderr and "epoch   1" not in r.stdout
