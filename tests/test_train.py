import json

import jax
import numpy as np
import pytest

from rnnjax import data, train
from rnnjax import workdir as workdir_lib


class Crash(Exception):
  pass


def crash_after_first_epoch(line):
  if line.startswith("epoch   1 "):
    raise Crash(line)


def params_of(state):
  return [np.asarray(x) for x in jax.tree.leaves((state.params, state.opt_state))]


def test_resumed_run_equals_uninterrupted_bit_for_bit(tiny_config, tiny_splits, tmp_path):
  config = tiny_config.replace(epochs=3, schedule="cosine", warmup_epochs=0.5,
                               grad_clip_norm=1.0)
  full, full_history = train.train_and_evaluate(config, tmp_path / "a", tiny_splits)
  with pytest.raises(Crash):  # dies right after epoch 1 was checkpointed
    train.train_and_evaluate(config, tmp_path / "b", tiny_splits, log=crash_after_first_epoch)
  lines = []
  resumed, history = train.train_and_evaluate(config, tmp_path / "b", tiny_splits,
                                              log=lines.append)
  assert lines[0].startswith("resumed from") and "(epoch 1," in lines[0]
  for a, b in zip(params_of(full), params_of(resumed)):
    np.testing.assert_array_equal(a, b)
  assert [h["test_accuracy"] for h in history] == [h["test_accuracy"] for h in full_history]
  records = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2, 3]


def test_workdir_layout_and_metrics(tiny_config, tiny_splits, tmp_path):
  config = tiny_config.replace(epochs=2)
  state, history = train.train_and_evaluate(config, tmp_path, tiny_splits, log=lambda s: None)
  assert json.loads((tmp_path / "config.json").read_text())["hidden_size"] == 8
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert records == history and len(records) == 2
  r = records[-1]
  assert r["step"] == 2 * (64 // 16) == int(state.step)
  assert r["test_count"] == 40 and r["test_accuracy"] == r["test_correct"] / 40
  for key in ("train_loss", "train_accuracy", "test_loss", "images_per_second", "seconds"):
    assert np.isfinite(r[key])
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4", "8"]


def test_cosine_schedule_spans_the_split_it_is_given(tiny_config, tiny_splits, tmp_path):
  """64 training images in batches of 16: 4 steps per epoch, so after 2 epochs (8 steps)
  the cosine has decayed to its end, 10% of the peak; half-way, it is at the peak."""
  config = tiny_config.replace(epochs=2, schedule="cosine", warmup_epochs=1.0,
                               final_lr_fraction=0.1, learning_rate=0.01)
  _, history = train.train_and_evaluate(config, tmp_path, tiny_splits, log=lambda s: None)
  np.testing.assert_allclose([h["learning_rate"] for h in history], [0.01, 0.001], rtol=1e-6)


def test_finished_run_says_so(tiny_config, tiny_splits, tmp_path):
  train.train_and_evaluate(tiny_config, tmp_path, tiny_splits, log=lambda s: None)
  lines = []
  _, history = train.train_and_evaluate(tiny_config, tmp_path, tiny_splits, log=lines.append)
  assert lines[-1].startswith("run already finished: 1 of 1 epochs") and len(history) == 1
  # Asking for more epochs continues from the checkpoint.
  _, history = train.train_and_evaluate(tiny_config.replace(epochs=2), tmp_path, tiny_splits,
                                        log=lines.append)
  assert [h["epoch"] for h in history] == [1, 2]


def test_changed_model_shape_is_refused(tiny_config, tiny_splits, tmp_path):
  train.train_and_evaluate(tiny_config, tmp_path, tiny_splits, log=lambda s: None)
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  with pytest.raises(workdir_lib.WorkdirError, match="hidden_size: 8 in the workdir, 16 now.*new --workdir"):
    train.train_and_evaluate(tiny_config.replace(hidden_size=16), tmp_path, tiny_splits)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_evaluation_counts_every_test_example(tiny_config, tiny_splits, tmp_path):
  config = tiny_config.replace(eval_batch_size=16)  # 40 = 16 + 16 + 8 (padded)
  _, history = train.train_and_evaluate(config, tmp_path, tiny_splits, log=lambda s: None)
  assert history[-1]["test_count"] == 40


def test_validation_images_are_held_out_and_choose_the_best_checkpoint(
    tiny_config, tiny_splits, tmp_path):
  """The first 16 of 64 training images are held out: 48 to train on (3 steps of 16), every
  epoch evaluated on the 16 and on the test split; the best checkpoint is the epoch with
  the best validation accuracy, whatever the test accuracy says."""
  from rnnjax import checkpointing, plots
  config = tiny_config.replace(epochs=4, validation_size=16, learning_rate=0.01)
  _, history = train.train_and_evaluate(config, tmp_path, tiny_splits, log=lambda s: None)
  assert [r["step"] for r in history] == [3, 6, 9, 12]
  assert all(r["val_count"] == 16 and r["test_count"] == 40 for r in history)
  assert all(r["grad_norm"] > 0 and r["grad_norm_max"] >= r["grad_norm"] for r in history)
  train_images, val_images = data.hold_out(tiny_splits[0], 16)
  np.testing.assert_array_equal(val_images.images, tiny_splits[0].images[:16])
  np.testing.assert_array_equal(train_images.labels, tiny_splits[0].labels[16:])
  ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints", read_only=True)
  best = ckpt.best_step()
  ckpt.close()
  assert best == plots.best_epoch(history)["step"]
  assert history[best // 3 - 1]["val_accuracy"] == max(r["val_accuracy"] for r in history)
