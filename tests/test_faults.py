"""Faults inside one process: preemption by signal, mid-epoch checkpoints, divergence,
damaged checkpoints, a full disk. (Killing real processes: test_resume_process.py.)"""

import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from rnnjax import presets
from rnnjax import checkpointing, signals, train


def leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves((state.params, state.opt_state))]


def assert_same_state(a, b):
  for x, y in zip(leaves(a), leaves(b)):
    np.testing.assert_array_equal(x, y)


def tree_of(path):
  """{relative path: bytes} of every file under `path`: to check nothing changed."""
  return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
          if p.is_file()}


@pytest.fixture(scope="session")  # once per worker (xdist interleaves modules)
def config():
  # 64 training examples, batch 16: 4 steps per epoch.
  return presets.get("tiny").replace(
      epochs=3, schedule="cosine", warmup_epochs=0.5, grad_clip_norm=1.0, augment_shift=2)


@pytest.fixture(scope="session")  # once per worker (xdist interleaves modules)
def uninterrupted(config, tiny_splits, tmp_path_factory):
  return train.train_and_evaluate(config, tmp_path_factory.mktemp("full"), tiny_splits,
                                  log=lambda s: None)


def signalling_steps(at_call: int, signum=signal.SIGTERM):
  """`train.jit_steps` whose train_step sends `signum` to this process on call `at_call`."""
  real_train, real_eval = jax.jit(train.steps.train_step), jax.jit(train.steps.eval_step)
  calls = [0]

  def train_step(state, batch, *key):
    calls[0] += 1
    if calls[0] == at_call:
      os.kill(os.getpid(), signum)
    return real_train(state, batch, *key)

  return lambda: (train_step, real_eval)


@pytest.mark.parametrize("signum,at_call", [(signal.SIGTERM, 6), (signal.SIGINT, 3),
                                            (signal.SIGTERM, 4)])
def test_signal_saves_position_and_resume_is_bit_identical(
    config, tiny_splits, tmp_path, monkeypatch, uninterrupted, signum, at_call):
  full, full_history = uninterrupted
  workdir = tmp_path / "stopped"
  with monkeypatch.context() as m:
    m.setattr(train, "jit_steps", signalling_steps(at_call, signum))
    with pytest.raises(signals.Preempted) as e:
      train.train_and_evaluate(config, workdir, tiny_splits, log=lambda s: None)
  assert e.value.signum == signum
  name = signal.Signals(signum).name
  if at_call % 4:  # mid-epoch: the current step finishes, and its position is saved
    epoch, k = at_call // 4 + 1, at_call % 4
    assert f"stopped by {name} at step {k} of 4 in epoch {epoch}" in str(e.value)
  else:  # on the last step of an epoch: the epoch is evaluated and saved first
    assert f"stopped by {name} after epoch {at_call // 4}" in str(e.value)
  assert "Rerun the same command to resume" in str(e.value)
  assert checkpointing.Checkpointer(workdir / "checkpoints").latest_step() == at_call
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back
  lines = []
  resumed, history = train.train_and_evaluate(config, workdir, tiny_splits, log=lines.append)
  assert lines[0].startswith(f"resumed from {workdir / 'checkpoints' / str(at_call)}")
  assert_same_state(full, resumed)
  assert history == [dict(h, seconds=r["seconds"], images_per_second=r["images_per_second"])
                     for h, r in zip(full_history, history)]  # train sums included, exactly


def test_periodic_checkpoints_resume_mid_epoch(config, tiny_splits, tmp_path, uninterrupted):
  full, full_history = uninterrupted
  workdir = tmp_path / "periodic"
  train.train_and_evaluate(config.replace(checkpoint_every_steps=3), workdir, tiny_splits,
                           log=lambda s: None)
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints")
  # Saved: 3, 6, 9 (mid-epoch) and 4, 8, 12 (epoch ends); kept: the latest two, 9 and 12,
  # and the best epoch end by test accuracy.
  kept = ckpt.steps()
  assert kept[-2:] == [9, 12] and len(kept) <= 3 and set(kept[:-2]) <= {4, 8}
  ckpt.close()
  # Lose the final checkpoint: the run must resume from step 9, 1 step into epoch 3.
  shutil.rmtree(workdir / "checkpoints" / "12")
  lines = []
  resumed, history = train.train_and_evaluate(config, workdir, tiny_splits, log=lines.append)
  assert "(epoch 2, step 9, 1 steps into epoch 3)" in lines[0]
  assert_same_state(full, resumed)
  assert [h["train_loss"] for h in history] == [h["train_loss"] for h in full_history]


def test_several_steps_per_call_give_the_same_run(config, tiny_splits, tmp_path,
                                                   uninterrupted):
  """4-step epochs with 3 steps per call: a scan of 3 steps, then 1 step alone, in every
  epoch. The fixture's run (steps_per_call 10 > 4: one step per call) is matched bit for bit,
  train sums included; with checkpoints every 5 steps the calls break elsewhere, and a run
  resumed from step 10 (2 steps into epoch 3) still ends on the same bits."""
  full, full_history = uninterrupted
  state, history = train.train_and_evaluate(config.replace(steps_per_call=3),
                                            tmp_path / "three", tiny_splits,
                                            log=lambda s: None)
  assert_same_state(full, state)
  assert [(h["train_loss"], h["train_accuracy"], h["test_loss"]) for h in history] == [
      (h["train_loss"], h["train_accuracy"], h["test_loss"]) for h in full_history]
  workdir = tmp_path / "periodic"
  periodic = config.replace(steps_per_call=3, checkpoint_every_steps=5)
  train.train_and_evaluate(periodic, workdir, tiny_splits, log=lambda s: None)
  shutil.rmtree(workdir / "checkpoints" / "12")
  lines = []
  resumed, history = train.train_and_evaluate(periodic, workdir, tiny_splits, log=lines.append)
  assert "(epoch 2, step 10, 2 steps into epoch 3)" in lines[0]
  assert_same_state(full, resumed)
  assert [h["train_loss"] for h in history] == [h["train_loss"] for h in full_history]


@pytest.mark.parametrize("steps_per_call", [1, 3])  # 3: step 6 is inside a scanned call
def test_divergence_names_step_and_epoch_and_keeps_checkpoint(config, tiny_splits, tmp_path,
                                                             steps_per_call):
  config = config.replace(steps_per_call=steps_per_call)
  workdir = tmp_path / "w"
  train.train_and_evaluate(config.replace(epochs=1), workdir, tiny_splits, log=lambda s: None)
  before = tree_of(workdir / "checkpoints")
  # Adam moves every weight by about the learning rate: 1e38 overflows float32 sums.
  wild = config.replace(learning_rate=1e38, grad_clip_norm=0.0, warmup_epochs=0.0,
                        schedule="constant")
  with pytest.raises(train.TrainingDiverged) as e:
    train.train_and_evaluate(wild, workdir, tiny_splits, log=lambda s: None)
  assert "at step 6 (epoch 2)" in str(e.value)  # step 5 sets 1e30 weights; step 6 reads them
  assert "last good checkpoint" in str(e.value) and "checkpoints/4" in str(e.value)
  last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
  assert last["diverged"] and last["step"] == 6 and last["epoch"] == 2
  assert last["train_loss"] is None  # the non-finite loss, as valid JSON
  assert tree_of(workdir / "checkpoints") == before


def test_damaged_latest_checkpoint_falls_back_with_a_warning(
    config, tiny_splits, tmp_path, uninterrupted, capsys):
  full, _ = uninterrupted
  workdir = tmp_path / "w"

  def stop_after_epoch_2(line):  # the same config (its cosine spans 3 epochs), cut short
    if line.startswith("epoch   2 "):
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, workdir, tiny_splits, log=stop_after_epoch_2)
  # Truncate every file of the newest checkpoint's state (step 8 = after epoch 2).
  for f in (workdir / "checkpoints" / "8" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  lines = []
  resumed, history = train.train_and_evaluate(config, workdir, tiny_splits, log=lines.append)
  out = capsys.readouterr().out
  assert f"checkpoint {workdir / 'checkpoints' / '8'} is unreadable" in out
  assert "(epoch 1, step 4)" in lines[0]
  assert_same_state(full, resumed)


def test_every_checkpoint_unreadable_is_a_clear_error(config, tiny_splits, tmp_path):
  workdir = tmp_path / "w"
  train.train_and_evaluate(config.replace(epochs=1), workdir, tiny_splits, log=lambda s: None)
  for f in (workdir / "checkpoints").rglob("*"):
    if f.is_file() and "state" in f.parts:
      f.unlink()
  with pytest.raises(checkpointing.CheckpointError, match="no checkpoint under .* could be read"):
    train.train_and_evaluate(config, workdir, tiny_splits, log=lambda s: None)


def test_disk_full_during_save_keeps_earlier_checkpoints(config, tiny_splits, tmp_path,
                                                          monkeypatch):
  workdir = tmp_path / "w"
  train.train_and_evaluate(config.replace(epochs=1), workdir, tiny_splits, log=lambda s: None)
  before = tree_of(workdir / "checkpoints")
  real_save = checkpointing.ocp.CheckpointManager.save

  def save_then_fill_disk(self, step, *args, **kwargs):
    # Half-write the step into Orbax's temporary folder, as a full disk would leave it.
    tmp = self.directory / f"{step}.orbax-checkpoint-tmp-0" / "state"
    tmp.mkdir(parents=True)
    (tmp / "partial").write_bytes(b"\0" * 100)
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", save_then_fill_disk)
  with pytest.raises(checkpointing.CheckpointError) as e:
    train.train_and_evaluate(config, workdir, tiny_splits, log=lambda s: None)
  assert "could not write checkpoint" in str(e.value) and "No space left" in str(e.value)
  assert "earlier checkpoints are untouched" in str(e.value)
  after = tree_of(workdir / "checkpoints")
  assert {k: v for k, v in after.items() if "tmp" not in k} == before
  # With space again, the rerun ignores the leftover and resumes from epoch 1.
  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", real_save)
  lines = []
  _, history = train.train_and_evaluate(config, workdir, tiny_splits, log=lines.append)
  assert "(epoch 1, step 4)" in lines[0] and len(history) == 3
  assert not any("tmp" in p.name for p in (workdir / "checkpoints").iterdir())
