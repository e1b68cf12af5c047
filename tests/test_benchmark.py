"""The benchmark harness: its FLOP counts, its errors, and one quick measured setting."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import harness  # noqa: E402
import throughput  # noqa: E402

SCRIPT = REPO / "benchmarks" / "throughput.py"
EPOCH = REPO / "benchmarks" / "epoch.py"


def test_flops_per_image_by_hand():
  # Tutorial: per step 2 * (28 + 256) * 1024 = 581,632; x28 rows; + readout 2 * 256 * 10;
  # training = 3x forward.
  fwd = 28 * 2 * (28 + 256) * 1024 + 2 * 256 * 10
  assert throughput.flops_per_image("train", 256, 28, 28) == 3 * fwd
  assert round(3 * fwd / 1e6, 1) == 48.9  # 3 x the forward pass: 48.9 MFLOP per image
  assert round(throughput.flops_per_image("train", 128, 28, 28) / 1e6, 1) == 13.4
  assert throughput.flops_per_image("eval", 128, 784, 1) == 784 * 2 * 129 * 512 + 2 * 128 * 10
  # Other cells at 784 x 1, hidden 128, per step: LEM x (1 x 4H), y (H x 3H), z (H x H);
  # coRNN x (1 x H), z and y (H x H); LRU encoder (1 x H), 4 real H x N matmuls for B u
  # and C x (N = 64), its gated linear unit (H x 2H).
  head = 2 * 128 * 10
  assert throughput.flops_per_image("eval", 128, 784, 1, "lem") == 784 * 2 * (
      4 * 128 + 4 * 128 * 128) + head
  assert throughput.flops_per_image("eval", 128, 784, 1, "cornn") == 784 * 2 * (
      128 + 2 * 128 * 128) + head
  assert throughput.flops_per_image("eval", 128, 784, 1, "lru") == 784 * (
      2 * 128 + 4 * 2 * 128 * 64 + 2 * 128 * 256) + head
  # The parallel LMU as it computes the last step: the memory m_T = x (1 x T) H (T x 468),
  # then W_m (468 x 346) and the readout.
  assert throughput.flops_per_image("train", 346, 784, 1, "plmu") == 3 * (
      2 * 784 * 468 + 2 * 468 * 346 + 2 * 346 * 10)


def test_the_lmu_memory_alternatives_compute_the_fft_convolution():
  import jax
  import jax.numpy as jnp
  import lmu_memory
  from rnnjax import lmu
  u = jax.random.normal(jax.random.key(0), (lmu_memory.BATCH, lmu_memory.STEPS, 1))
  g = jax.random.normal(jax.random.key(1), (1, lmu_memory.STEPS, lmu_memory.HIDDEN)) / 30
  want = jax.jit(lmu.causal_convolution)(u, g)
  for f in (lmu_memory.toeplitz, lmu_memory.blocked):
    assert float(jnp.abs(jax.jit(f)(u, g) - want).max() / jnp.abs(want).max()) < 1e-5


def test_unknown_setting_is_a_usage_error():
  r = subprocess.run([sys.executable, str(SCRIPT), "--settings", "huge"],
                     capture_output=True, text=True, cwd=REPO)
  assert r.returncode == 2 and "unknown setting(s) huge" in r.stderr
  r = subprocess.run([sys.executable, str(EPOCH), "--epoch-steps", "-1"],
                     capture_output=True, text=True, cwd=REPO)
  assert r.returncode == 2 and "--epoch-steps must be >= 0" in r.stderr


@pytest.mark.parametrize("setting,batch,per_call", [("eval128", 1000, 1), ("small", 128, 10)])
def test_one_setting_as_json(setting, batch, per_call):
  """Evaluation: one batch per call; training: the loop's 10 steps per call."""
  r = subprocess.run([sys.executable, str(SCRIPT), "--settings", setting, "--windows", "2",
                      "--window-seconds", "0.05", "--json"],
                     capture_output=True, text=True, cwd=REPO, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["setting"] == setting and out["batch"] == batch and out["hidden"] == 128
  assert out["steps_per_call"] == per_call
  ips = out["images_per_second"]
  assert ips["windows"] == 2 and 0 < ips["min"] <= ips["median"] <= ips["max"]
  assert out["first_call_seconds"] > 0 and out["peak_memory_bytes"] > 2 ** 20
  assert 0 < out["fraction_of_matmul_peak"] < 1.5


def test_measured_processes_take_turns():
  """--compare-torch's two processes run their timed windows in turn, never at once (two
  rnnjax processes here: torch is not a dependency)."""
  workers = [harness.Worker(SCRIPT, "jax", "eval128", 0.05, dict(os.environ))
             for _ in range(2)]
  try:
    rates = harness.interleave(workers, 3)
  finally:
    for w in workers:
      w.close()
  assert [len(r) for r in rates] == [3, 3] and min(rates[0] + rates[1]) > 0
  spans = [span for pair in zip(*(w.spans for w in workers)) for span in pair]
  assert len(spans) == 6 and all(start < end for start, end in spans)
  assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def test_a_failing_measured_process_says_why():
  with pytest.raises(RuntimeError, match=r"(?s)jax nosuch failed \(exit 2\).*unknown setting"):
    harness.Worker(SCRIPT, "jax", "nosuch", 0.05, dict(os.environ))
  # From the command line: an `error:` line naming the process, then its stderr; exit 1 and
  # no traceback of the driver's own (here JAX cannot start in the measured process).
  r = subprocess.run([sys.executable, str(SCRIPT), "--settings", "eval128", "--windows", "1",
                      "--window-seconds", "0.05"], capture_output=True, text=True, cwd=REPO,
                     env={**os.environ, "JAX_PLATFORMS": "nosuchplatform"}, timeout=120)
  assert r.returncode == 1 and r.stdout == ""
  assert r.stderr.startswith("error: jax eval128 failed (exit 1); the end of its output:")
  assert "Unable to initialize backend 'nosuchplatform'" in r.stderr
  assert "in measure" not in r.stderr  # no frame of the driver's own


def test_epoch_mode_as_json():
  """--epoch: rnnjax's loop timed against its own step time and against a plain loop (a
  few synthetic steps here; the figures themselves live in docs/performance.md)."""
  r = subprocess.run([sys.executable, str(EPOCH), "--epoch-steps", "6",
                      "--synthetic", "--windows", "2", "--window-seconds", "0.05", "--json",
                      "--steps-per-call", "10,3"],
                     capture_output=True, text=True, cwd=REPO, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert len(out["runs"]) == 1  # --repeats 1 (the default)
  run = out["runs"][0]
  ours, plain = run["rnnjax"], run["plain"]
  assert ours["steps_per_epoch"] == plain["steps_per_epoch"] == 6
  assert len(ours["epoch_seconds"]) == len(plain["epoch_seconds"]) == 2
  assert ours["step_seconds"] > 0 and ours["step_images_per_second"] > 0
  # 6 steps, 10 per call: the loop runs them one per call, and so does the pure time.
  assert ours["steps_per_call"] == 10
  assert ours["step_seconds"] == pytest.approx(
      600 / ours["one_step_per_call_images_per_second"], rel=1e-12)
  assert run["loop_overhead"] == ours["epoch_seconds"][-1] / ours["step_seconds"] - 1
  assert run["speedup_vs_plain"] == plain["epoch_seconds"][-1] / ours["epoch_seconds"][-1]
  assert (out["loop_overhead"], out["speedup_vs_plain"]) == (run["loop_overhead"],
                                                             run["speedup_vs_plain"])
  assert plain["allocator"] == "system defaults"
  # The second --steps-per-call value: its own rnnjax run against the same plain loop; the
  # first value's figures are the headline ones.
  by = run["by_steps_per_call"]
  assert set(by) == {"10", "3"} and by["10"]["rnnjax"] == ours
  three = by["3"]["rnnjax"]
  assert three["steps_per_call"] == 3 and three["steps_per_epoch"] == 6
  assert by["3"]["loop_overhead"] == three["epoch_seconds"][-1] / three["step_seconds"] - 1
  assert by["3"]["speedup_vs_plain"] == (plain["epoch_seconds"][-1]
                                         / three["epoch_seconds"][-1])
  assert out["by_steps_per_call"]["3"] == {k: by["3"][k] for k in ("loop_overhead",
                                                                   "speedup_vs_plain")}


@pytest.mark.slow
def test_the_gpu_script_runs_dry_on_a_cpu(tmp_path, mnist_dir):
  """benchmarks/gpu.sh --dry: every step of the GPU check, with lstm_ref in place of cuDNN
  (the tests, the throughput of the scan and of the cuDNN path, a training run on that
  path), and the machine recorded."""
  out = tmp_path / "results"
  env = dict(os.environ, RNNJAX_GPU_OUT=str(out), RNNJAX_GPU_DATA=str(mnist_dir),
             PYTHON=sys.executable)
  r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "--dry"], cwd=REPO,
                     capture_output=True, text=True, env=env, timeout=900)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  summary = (out / "summary.txt").read_text()
  for step in ("tests", "throughput_xla", "throughput_cudnn", "train"):
    assert f"{step}: exit 0" in summary, summary
  assert "jax 0." in (out / "machine.txt").read_text()
  assert "LSTM: nn.RNN scan (--rnn-kernel xla)" in (out / "throughput_xla.txt").read_text()
  ran = "LSTM: jax.experimental.rnn.lstm_ref in place of cuDNN"
  assert ran in (out / "throughput_cudnn.txt").read_text()
  assert ran in (out / "train.txt").read_text()
  assert "test accuracy" in (out / "train.txt").read_text()
