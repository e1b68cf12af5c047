import jax
import numpy as np

from rnnjax import checkpointing, steps


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
  restored, meta, step = ckpt.restore(checkpointing.abstract_like(fresh))
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


def test_no_checkpoint_gives_none(tiny_config, tmp_path):
  state = steps.create_train_state(tiny_config, jax.random.key(0))
  assert checkpointing.Checkpointer(tmp_path / "ck").restore(state) is None
