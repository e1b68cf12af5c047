import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import synthetic_split
from rnnjax import presets
from rnnjax import data, steps


def test_cross_entropy_hand_computed():
  logits = jnp.array([[0.0, 0.0], [1.0, 2.0]])
  labels = jnp.array([0, 1])
  got = np.asarray(steps.cross_entropy(logits, labels))
  # -log softmax: log(2), and log(1 + e^-1) for the larger of two logits one apart.
  np.testing.assert_allclose(got, [math.log(2), math.log(1 + math.exp(-1))], rtol=1e-6)


def test_compute_metrics_with_mask():
  logits = jnp.array([[0.0, 3.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
  labels = jnp.array([1, 1, 2])
  m = steps.compute_metrics(logits, labels, jnp.array([1.0, 1.0, 0.0]))
  assert int(m["correct"]) == 1 and int(m["count"]) == 2
  lse = lambda v: math.log(sum(math.exp(t) for t in v))
  np.testing.assert_allclose(float(m["loss_sum"]),
                             (lse([0, 3, 0]) - 3) + (lse([2, 0, 0]) - 0), rtol=1e-6)


def test_every_parameter_changes_after_one_step(tiny_config):
  state = steps.create_train_state(tiny_config, jax.random.key(0))
  batch = next(data.train_batches(synthetic_split(32, 0), 16, 0, 0))
  new, metrics = jax.jit(steps.train_step)(state, batch)
  assert int(new.step) == 1 and int(metrics["count"]) == 16
  for path, old, upd in zip(jax.tree_util.tree_flatten_with_path(state.params)[0],
                            jax.tree.leaves(state.params), jax.tree.leaves(new.params)):
    assert np.all(np.asarray(old) != np.asarray(upd)), path[0]


def test_overfits_a_tiny_batch(tiny_config):
  config = tiny_config.replace(hidden_size=32, learning_rate=1e-2)
  state = steps.create_train_state(config, jax.random.key(0))
  batch = next(data.train_batches(synthetic_split(16, 3), 16, 0, 0))
  batch["label"] = np.random.default_rng(0).integers(0, 10, 16).astype(np.int32)  # memorise
  train_step = jax.jit(steps.train_step)
  for _ in range(150):
    state, _ = train_step(state, batch)
  m = steps.summarize(jax.jit(steps.eval_step)(state, batch))
  assert m["accuracy"] == 1.0 and m["loss"] < 0.05, m


def test_jitted_and_plain_steps_agree(tiny_config):
  state = steps.create_train_state(tiny_config, jax.random.key(1))
  batch = next(data.train_batches(synthetic_split(16, 1), 16, 0, 0))
  a, ma = steps.train_step(state, batch)
  b, mb = jax.jit(steps.train_step)(state, batch)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)  # fusion reorders float ops
  np.testing.assert_allclose(ma["loss_sum"], mb["loss_sum"], rtol=1e-5)


def test_cosine_schedule(tiny_config):
  c = tiny_config.replace(schedule="cosine", warmup_epochs=1.0, epochs=3, batch_size=100,
                          learning_rate=0.01)
  s = steps.make_schedule(c)  # 600 steps per epoch, 1800 in all
  np.testing.assert_allclose([float(s(0)), float(s(300)), float(s(600)), float(s(1800))],
                             [0.0, 0.005, 0.01, 0.0], atol=1e-9)
  # Half-way through the decay, cosine is at half the peak.
  np.testing.assert_allclose(float(s(1200)), 0.005, rtol=1e-5)
  # Over a split of 2,000 images: 20 steps per epoch, 60 in all.
  s = steps.make_schedule(c, steps_per_epoch=20)
  np.testing.assert_allclose([float(s(10)), float(s(20)), float(s(40)), float(s(60))],
                             [0.005, 0.01, 0.005, 0.0], atol=1e-9)


def test_step_schedule(tiny_config):
  """The LEM authors' psMNIST schedule: the peak for 100 epochs, then a tenth of it."""
  c = tiny_config.replace(schedule="step", lr_drop_epoch=100.0, final_lr_fraction=0.1,
                          epochs=120, learning_rate=7.3e-3)
  s = steps.make_schedule(c, steps_per_epoch=10)  # the drop at step 1,000
  np.testing.assert_allclose([float(s(0)), float(s(999)), float(s(1000)), float(s(1199))],
                             [7.3e-3, 7.3e-3, 7.3e-4, 7.3e-4], rtol=1e-6)
  with pytest.raises(ValueError, match="drops the learning rate at --lr-drop-epoch"):
    tiny_config.replace(schedule="step")
  with pytest.raises(ValueError, match="lr_drop_epoch is used by schedule 'step' only"):
    tiny_config.replace(lr_drop_epoch=3.0)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_train_steps_equal_that_many_train_step_calls(dropout):
  """Several steps in one scanned call (what the loop runs): the same bits as one call per
  step, dropout masks (folded from each step's counter) included."""
  config = presets.get("tiny").replace(dropout=dropout)
  state = steps.create_train_state(config, jax.random.key(0))
  split = synthetic_split(5 * config.batch_size, 3)
  batches = list(data.train_batches(split, config.batch_size, seed=0, epoch=0))
  key = jax.random.key_data(steps.dropout_key(config))
  one, metrics = state, []
  for b in batches:
    one, m = jax.jit(steps.train_step)(one, b, key)
    metrics.append(m)
  stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
  many, ms = jax.jit(steps.train_steps)(state, stacked, key)
  assert int(many.step) == 5
  for x, y in zip(jax.tree.leaves((one.params, one.opt_state)),
                  jax.tree.leaves((many.params, many.opt_state))):
    np.testing.assert_array_equal(x, y)
  for k in ("loss_sum", "correct", "count"):
    np.testing.assert_array_equal(np.stack([m[k] for m in metrics]), ms[k])
  assert len({float(m["loss_sum"]) for m in metrics}) == 5  # five different batches


def test_train_step_reports_the_gradients_global_norm(tiny_config):
  """`grad_norm` is the norm of the whole gradient, before clipping: against jax.grad of
  the same loss, summed in float64 by NumPy."""
  config = tiny_config.replace(grad_clip_norm=0.01)  # clipping must not change the report
  state = steps.create_train_state(config, jax.random.key(0))
  split = synthetic_split(16, 3)
  batch = {"image": data.to_float(split.images), "label": split.labels}

  def loss(params):
    logits = state.apply_fn({"params": params}, batch["image"])
    return steps.cross_entropy(logits, batch["label"]).mean()

  grads = jax.jit(jax.grad(loss))(state.params)
  want = math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2))
                       for g in jax.tree.leaves(grads)))
  _, metrics = jax.jit(steps.train_step)(state, batch)
  assert want > 0.01  # so that clipping would have changed it
  np.testing.assert_allclose(float(metrics["grad_norm"]), want, rtol=1e-5)
