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
