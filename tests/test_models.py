import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import models


@pytest.mark.parametrize("batch,time,features,hidden", [(1, 1, 3, 4), (5, 28, 28, 8)])
def test_logits_shape(batch, time, features, hidden):
  model = models.SequenceClassifier(hidden_size=hidden, num_classes=10)
  x = jnp.ones((batch, time, features))
  params = model.init(jax.random.key(0), x)["params"]
  assert model.apply({"params": params}, x).shape == (batch, 10)


def test_parameter_paths_are_stable():
  model = models.SequenceClassifier(hidden_size=8, num_layers=2, num_classes=10)
  params = model.init(jax.random.key(0), jnp.ones((1, 28, 28)))["params"]
  shapes = {"/".join(k.key for k in path): v.shape
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  expected = {"head/kernel": (8, 10), "head/bias": (10,)}
  for k, inputs in ((0, 28), (1, 8)):
    for g in "ifgo":
      expected[f"rnn_{k}/cell/i{g}/kernel"] = (inputs, 8)
      expected[f"rnn_{k}/cell/h{g}/kernel"] = (8, 8)
      expected[f"rnn_{k}/cell/h{g}/bias"] = (8,)
  assert shapes == expected


def test_readout_uses_last_step_only():
  """Logits depend on every row, and the readout is the last hidden state."""
  model = models.SequenceClassifier(hidden_size=8)
  x = np.random.default_rng(0).random((2, 6, 5)).astype(np.float32)
  params = model.init(jax.random.key(0), x)["params"]
  base = model.apply({"params": params}, x)
  x2 = x.copy()
  x2[:, 0] += 1.0  # the first row still reaches the output through the recurrence
  assert not np.allclose(model.apply({"params": params}, x2), base)


@pytest.mark.parametrize("cell,options", [
    ("lem", {}), ("lstm", {}), ("lmu", {"lmu_order": 8, "lmu_theta": 28.0}),
    ("plmu", {"lmu_order": 8, "lmu_theta": 28.0}), ("lru", {"state_size": 4})])
def test_he_head_init_is_pytorchs_kaiming_normal_and_linear_bias(cell, options):
  """`head_init="he"` reaches the head of every model: weights N(0, 2 / fan_in), untruncated
  (PyTorch's `kaiming_normal_`), bias uniform in +-1/sqrt(fan_in) (`nn.Linear`'s); `lecun`
  keeps flax's default (LeCun-normal, truncated at 2 sigma of its base; zero bias)."""
  from rnnjax import config as config_lib, steps
  fan_in = 512
  heads = {}
  for init in ("lecun", "he"):
    c = config_lib.Config(cell=cell, hidden_size=fan_in, num_classes=64, head_init=init,
                          rnn_kernel="xla", **options)
    state = steps.create_train_state(c, jax.random.key(0), steps_per_epoch=1)
    heads[init] = jax.tree.map(np.asarray, state.params["head"])
  he, lecun = heads["he"], heads["lecun"]
  assert he["kernel"].shape == lecun["kernel"].shape == (fan_in, 64)
  # 32,768 weights: the sample std is within 1% of the true one (5 sigma: 2%).
  np.testing.assert_allclose(he["kernel"].std(), np.sqrt(2 / fan_in), rtol=0.02)
  np.testing.assert_allclose(lecun["kernel"].std(), np.sqrt(1 / fan_in), rtol=0.02)
  # Untruncated: some weights lie beyond 4 sigma; the truncated draw never passes 2.3.
  assert np.abs(he["kernel"]).max() > 4 * np.sqrt(2 / fan_in)
  assert np.abs(lecun["kernel"]).max() < 2.3 * np.sqrt(1 / fan_in)
  bound = 1 / np.sqrt(fan_in)
  assert np.abs(he["bias"]).max() < bound and np.abs(he["bias"]).max() > 0.9 * bound
  np.testing.assert_array_equal(lecun["bias"], 0)
