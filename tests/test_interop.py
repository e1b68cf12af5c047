"""rnnjax against PyTorch, through a fixture made by tests/tools/make_torch_fixture.py."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax import interop, models, steps

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "torch_lstm.json").read_text())


def arrays(group):
  return {k: np.asarray(v, np.float32).reshape(FIXTURE["shapes"][k])
          for k, v in FIXTURE[group].items()}


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def setup():
  torch_params = arrays("params")
  params = jax.tree.map(jnp.asarray, interop.from_torch(torch_params))
  hidden = FIXTURE["shapes"]["lstm.weight_hh_l0"][1]
  model = models.SequenceClassifier(hidden_size=hidden, num_classes=10)
  x = jnp.asarray(np.asarray(FIXTURE["x"], np.float32).reshape(FIXTURE["x_shape"]))
  return torch_params, params, model, x, jnp.asarray(FIXTURE["labels"])


def loss_fn(model, x, labels):
  return lambda p: steps.cross_entropy(model.apply({"params": p}, x), labels).mean()


def test_parameter_tree_matches_the_model():
  _, params, model, x, _ = setup()
  init = model.init(jax.random.key(0), x)["params"]
  assert jax.tree.structure(init) == jax.tree.structure(params)
  assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, params)


def test_logits_loss_and_carry_match_pytorch():
  _, params, model, x, labels = setup()
  logits = model.apply({"params": params}, x)
  # Both float32, same equations, different summation order: 1e-5 relative.
  errs = (rel_err(logits, np.reshape(FIXTURE["logits"], logits.shape)),
          rel_err(loss_fn(model, x, labels)(params), FIXTURE["loss"]))
  print(f"measured: logits, loss vs PyTorch {errs[0]:.1e}, {errs[1]:.1e}")
  assert max(errs) <= 1e-5
  # Final carry: PyTorch (h, c) -> Flax (c, h).
  import flax.linen as nn
  rnn = nn.RNN(nn.OptimizedLSTMCell(4), return_carry=True)
  (c, h), _ = rnn.apply({"params": params["rnn_0"]}, x)
  shape = (1, x.shape[0], 4)
  [(c_t, h_t)] = interop.carry_from_torch(np.reshape(FIXTURE["h_n"], shape),
                                          np.reshape(FIXTURE["c_n"], shape))
  assert rel_err(c, c_t) <= 1e-5 and rel_err(h, h_t) <= 1e-5
  h_back, c_back = interop.carry_to_torch([(c_t, h_t)])
  np.testing.assert_array_equal(h_back, np.reshape(FIXTURE["h_n"], shape))
  np.testing.assert_array_equal(c_back, np.reshape(FIXTURE["c_n"], shape))


def test_gradients_match_pytorch():
  _, params, model, x, labels = setup()
  grads = interop.to_torch(jax.grad(loss_fn(model, x, labels))(params))
  torch_grads = arrays("grads")
  for name, g in torch_grads.items():
    # float32 backward passes in different orders; per-tensor relative error (the largest
    # difference over the largest entry), 1e-5.
    print(f"measured: gradient {name} vs PyTorch {rel_err(grads[name], g):.1e}")
    assert rel_err(grads[name], g) <= 1e-5, name


def test_one_adam_step_matches_torch_optim_adam():
  torch_params, params, model, x, labels = setup()
  tx = optax.adam(FIXTURE["lr"])  # torch.optim.Adam defaults: betas (0.9, 0.999), eps 1e-8
  grads = jax.grad(loss_fn(model, x, labels))(params)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = interop.to_torch(optax.apply_updates(params, updates))
  after = arrays("params_after_adam")
  # The fixture trains bias_ih only (bias_hh frozen): the Flax bias is their sum.
  after["lstm.bias_ih_l0"] = after["lstm.bias_ih_l0"] + after.pop("lstm.bias_hh_l0")
  new.pop("lstm.bias_hh_l0")
  for name, want in after.items():
    # One float32 step of ~1e-3 on weights ~0.3: agreement to float32 rounding, 1e-6.
    print(f"measured: {name} after one Adam step vs torch.optim.Adam "
          f"{rel_err(new[name], want):.1e}")
    assert rel_err(new[name], want) <= 1e-6, name


def test_round_trip_through_torch_layout_is_exact():
  _, params, _, _, _ = setup()
  back = interop.from_torch(interop.to_torch(jax.device_get(params)))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)
  # Two-layer stacks map layer by layer.
  two = models.SequenceClassifier(hidden_size=3, num_layers=2)
  p2 = jax.device_get(two.init(jax.random.key(0), jnp.ones((1, 4, 5)))["params"])
  sd = interop.to_torch(p2)
  assert sd["lstm.weight_ih_l1"].shape == (12, 3) and sd["lstm.weight_ih_l0"].shape == (12, 5)
  for a, b in zip(jax.tree.leaves(p2), jax.tree.leaves(interop.from_torch(sd))):
    np.testing.assert_array_equal(a, b)
