"""The benchmark harness: its FLOP counts, its errors, and one quick measured setting."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
import benchmark  # noqa: E402

SCRIPT = REPO / "experiments" / "benchmark.py"


def test_flops_per_image_by_hand():
  # Tutorial: per step 2 * (28 + 256) * 1024 = 581,632; x28 rows; + readout 2 * 256 * 10;
  # training = 3x forward.
  fwd = 28 * 2 * (28 + 256) * 1024 + 2 * 256 * 10
  assert benchmark.flops_per_image("train", 256, 28, 28) == 3 * fwd
  assert round(3 * fwd / 1e6, 1) == 48.9  # the figure quoted in the speed issue
  assert round(benchmark.flops_per_image("train", 128, 28, 28) / 1e6, 1) == 13.4
  assert benchmark.flops_per_image("eval", 128, 784, 1) == 784 * 2 * 129 * 512 + 2 * 128 * 10


def test_unknown_setting_is_a_usage_error():
  r = subprocess.run([sys.executable, str(SCRIPT), "--settings", "huge"], capture_output=True,
                     text=True, cwd=REPO)
  assert r.returncode == 2 and "unknown setting(s) huge" in r.stderr


def test_one_setting_as_json():
  r = subprocess.run([sys.executable, str(SCRIPT), "--settings", "eval128", "--windows", "2",
                      "--window-seconds", "0.05", "--json"],
                     capture_output=True, text=True, cwd=REPO, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["setting"] == "eval128" and out["batch"] == 1000 and out["hidden"] == 128
  ips = out["images_per_second"]
  assert ips["windows"] == 2 and 0 < ips["min"] <= ips["median"] <= ips["max"]
  assert out["first_call_seconds"] > 0 and out["peak_memory_bytes"] > 2 ** 20
  assert 0 < out["fraction_of_matmul_peak"] < 1.5


def test_epoch_mode_as_json():
  """--epoch: rnnjax's loop timed against its own step time and against a plain loop (a
  few synthetic steps here; the figures themselves live in the README)."""
  r = subprocess.run([sys.executable, str(SCRIPT), "--epoch", "--epoch-steps", "6",
                      "--synthetic", "--windows", "2", "--window-seconds", "0.05", "--json"],
                     capture_output=True, text=True, cwd=REPO, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  ours, plain = out["rnnjax"], out["plain"]
  assert ours["steps_per_epoch"] == plain["steps_per_epoch"] == 6
  assert len(ours["epoch_seconds"]) == len(plain["epoch_seconds"]) == 2
  assert ours["step_seconds"] > 0 and ours["step_images_per_second"] > 0
  assert out["loop_overhead"] == ours["epoch_seconds"][-1] / ours["step_seconds"] - 1
  assert out["speedup_vs_plain"] == plain["epoch_seconds"][-1] / ours["epoch_seconds"][-1]
  assert plain["allocator"] == "system defaults"
