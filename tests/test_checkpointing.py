import jax
import numpy as np
import pytest

from rnnjax import presets
from rnnjax import checkpointing, results, steps
from tests.helpers import abstract_like


def test_round_trip_is_exact(tiny_config, tmp_path):
  state = steps.create_train_state(tiny_config, jax.random.key(0))
  # Non-trivial optimizer state: take one step on random data.
  rng = np.random.default_rng(0)
  batch = {"image": rng.random((4, 28, 28), dtype=np.float32),
           "label": np.arange(4, dtype=np.int32)}
  state, _ = jax.jit(steps.train_step)(state, batch)
  ckpt = checkpointing.Checkpointer(tmp_path / "ck")
  ckpt.save(1, state, {"epoch": 1, "history": [{"a": 1.5}]}, {"val_accuracy": 0.5})
  fresh = steps.create_train_state(tiny_config, jax.random.key(9))
  restored, meta, step = ckpt.restore(abstract_like(fresh))
  assert step == 1 and meta == {"epoch": 1, "history": [{"a": 1.5}]}
  assert int(restored.step) == 1
  for a, b in zip(jax.tree.leaves((state.params, state.opt_state)),
                  jax.tree.leaves((restored.params, restored.opt_state))):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  ckpt.close()


def test_keeps_latest_and_best_by_validation_never_by_test(tiny_config, tmp_path):
  """The best is chosen on validation accuracy; the test accuracy, in the opposite order
  here, plays no part. Without a validation split no checkpoint is ranked: best is None
  (readers then take the latest)."""
  state = steps.create_train_state(tiny_config, jax.random.key(0))
  ckpt = checkpointing.Checkpointer(tmp_path / "ck", keep=2)
  for step, acc in [(1, 0.5), (2, 0.9), (3, 0.6), (4, 0.7), (5, 0.65)]:
    record = {"val_accuracy": acc, "test_accuracy": 1 - acc}
    ckpt.save(step, state, {"epoch": step}, checkpointing.selection_metrics(record))
  assert ckpt.steps() == [2, 4, 5]
  assert (ckpt.latest_step(), ckpt.best_step()) == (5, 2)
  ckpt.close()
  assert checkpointing.selection_metrics({"test_accuracy": 0.9}) is None
  unranked = checkpointing.Checkpointer(tmp_path / "none", keep=2)
  for step in (1, 2, 3):
    unranked.save(step, state, {"epoch": step}, None)
  assert (unranked.steps(), unranked.best_step()) == ([2, 3], None)
  unranked.close()


def test_of_equal_validation_accuracies_the_latest_is_kept_and_best(tiny_config, tmp_path):
  """What `results.best_epoch` and the run's last line report: the latest of equals is the
  checkpoint kept and named best; an earlier equal one is gone."""
  state = steps.create_train_state(tiny_config, jax.random.key(0))
  ckpt = checkpointing.Checkpointer(tmp_path / "ck", keep=1)
  history = [{"epoch": e, "val_accuracy": a} for e, a in [(1, 0.5), (2, 0.9), (3, 0.7),
                                                         (4, 0.9), (5, 0.6), (6, 0.9),
                                                         (7, 0.8)]]
  for record in history:
    ckpt.save(record["epoch"], state, {"epoch": record["epoch"]},
              checkpointing.selection_metrics(record))
  assert ckpt.best_step() == 6 and ckpt.steps() == [6, 7]
  assert results.best_epoch(history)["epoch"] == 6
  ckpt.close()


def test_no_checkpoint_gives_none(tiny_config, tmp_path):
  state = steps.create_train_state(tiny_config, jax.random.key(0))
  assert checkpointing.Checkpointer(tmp_path / "ck").restore(state) is None


def test_a_checkpoint_with_non_finite_parameters_is_never_taken_for_a_good_one(tmp_path,
                                                                              tiny_splits):
  """A readable checkpoint whose parameters are NaN (or infinite) is unreadable for every
  purpose: evaluate and predict fall back to the newest good one or refuse it by number,
  and a resumed run sets it aside and continues from the good one."""
  import json
  from rnnjax import inference, train
  tiny = presets.get("tiny").replace(epochs=2)  # steps 4 and 8
  workdir = tmp_path / "w"
  train.train_and_evaluate(tiny, workdir, tiny_splits, log=lambda s: None)
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints")
  state, meta, _ = ckpt.restore(abstract_like(
      steps.create_train_state(tiny, jax.random.key(0))))
  for bad in (np.nan, np.inf):
    broken = state.replace(params=jax.tree.map(lambda p: p * bad, state.params))
    assert not checkpointing.all_finite(broken)
  assert checkpointing.all_finite(state)
  history = meta["history"] + [dict(meta["history"][-1], epoch=3, step=12)]
  ckpt.save(12, state.replace(params=jax.tree.map(lambda p: p * np.nan, state.params)),
            dict(meta, epoch=3, history=history))
  ckpt.close()

  run = inference.load_run(workdir, "latest")
  assert run.step == 8 and run.skipped == [12]
  assert run.which == "8, the newest readable one, in place of latest (12, unreadable)"
  with pytest.raises(inference.InferenceError, match=r"no checkpoint under .* could be read "
                     r"\(tried steps 12\)"):
    inference.load_run(workdir, "12")
  lines = []
  _, history = train.train_and_evaluate(tiny.replace(epochs=3), workdir, tiny_splits,
                                        log=lines.append)
  assert "(epoch 2, step 8)" in lines[0] and [r["step"] for r in history] == [4, 8, 12]
  assert (workdir / "unreadable_checkpoints" / "12").is_dir()
  records = [json.loads(x, parse_constant=pytest.fail)
             for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert all(np.isfinite(r["train_loss"]) for r in records) and len(records) == 3
