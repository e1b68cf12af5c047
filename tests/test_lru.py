"""rnnjax.lru: the parallel scan against a plain loop, the layer against float64 NumPy, its
initialisation, gradients against central differences, and a run of the whole loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import presets
from rnnjax import lru, models, steps, train
from tests.helpers import reference, worst_central_difference_error


def rel_err(got, want):
  got, want = np.asarray(got), np.asarray(want)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("method", ["sequential", "associative"])
@pytest.mark.parametrize("time", [1, 2, 7, 784])
def test_both_recurrences_equal_the_complex_loop(time, method):
  rng = np.random.default_rng(time)
  n = 6
  with jax.enable_x64(True):
    lam = jnp.asarray(rng.uniform(0.5, 0.999, n) * np.exp(1j * rng.uniform(0, 6.3, n)))
    bu = jnp.asarray(rng.standard_normal((3, time, n)) + 1j * rng.standard_normal((3, time, n)))
    got, loop = lru.lru_states(lam, bu, method), lru.lru_states_sequential(lam, bu)
    # By hand, the first two states.
    np.testing.assert_allclose(got[:, 0], bu[:, 0], rtol=1e-14)
    if time > 1:
      np.testing.assert_allclose(got[:, 1], lam * bu[:, 0] + bu[:, 1], rtol=1e-13)
  err = rel_err(got, loop)
  print(f"measured: {method} vs the complex loop, T={time}: {err:.1e}")
  assert err <= 1e-12


@pytest.mark.parametrize("method", ["sequential", "associative"])
def test_the_layer_equals_float64_numpy_and_its_initialisation_is_the_papers(method):
  with jax.enable_x64(True):
    layer = lru.LRU(state_size=5, recurrence=method)
    u = jax.random.normal(jax.random.key(0), (2, 30, 4), jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64),
                          jax.jit(layer.init)(jax.random.key(1), u)["params"])
    # Time-major in and out; jitted: one compilation, not one per op.
    got = jnp.swapaxes(jax.jit(layer.apply)({"params": params}, jnp.swapaxes(u, 0, 1)), 0, 1)
  assert rel_err(got, reference.lru_layer(jax.device_get(params), np.asarray(u))) <= 1e-12
  # |lambda| on the ring [0.9, 0.999]; the input normalisation sqrt(1 - |lambda|^2).
  p = jax.device_get(jax.jit(lru.LRU(state_size=4000).init)(
      jax.random.key(2), u[:, :2].astype(jnp.float32))["params"])
  modulus = np.exp(-np.exp(p["nu_log"].astype(np.float64)))
  assert 0.9 - 1e-6 <= modulus.min() and modulus.max() <= 0.999 + 1e-6
  assert modulus.min() < 0.905 and modulus.max() > 0.995  # the whole ring is drawn from
  np.testing.assert_allclose(np.exp(p["gamma_log"]), np.sqrt(1 - modulus ** 2), rtol=1e-4)
  assert np.all(np.exp(p["theta_log"]) <= 2 * np.pi)


def test_the_model_runs_the_same_with_both_recurrences_and_its_gradients_are_right():
  with jax.enable_x64(True):
    kw = dict(d_model=6, state_size=4, num_blocks=2, num_classes=10)
    fast = lru.LRUClassifier(**kw, recurrence="sequential")
    slow = lru.LRUClassifier(**kw, recurrence="associative")
    x = jax.random.uniform(jax.random.key(0), (3, 11, 2), jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64),
                          jax.jit(fast.init)(jax.random.key(1), x)["params"])
    assert rel_err(jax.jit(fast.apply)({"params": params}, x),
                   jax.jit(slow.apply)({"params": params}, x)) <= 1e-12
    labels = jnp.array([1, 7, 3])

    def loss(p):
      return steps.cross_entropy(fast.apply({"params": p}, x), labels).mean()

    # Fourth-order central differences with h = 1e-4: lambda = exp(-exp(nu) + ...) has
    # large higher derivatives, so h = 1e-3 (the LSTM test's) left 1.5e-5 of truncation.
    worst = worst_central_difference_error(loss, params, h=1e-4)
  print(f"measured: lru gradients vs finite differences {worst:.1e}")
  assert worst <= 1e-6


def test_an_lru_trains_through_the_loop(tiny_splits, tmp_path):
  config = presets.get("tiny").replace(cell="lru", hidden_size=8, state_size=4,
                                                 num_layers=2, readout="mean", epochs=2)
  assert isinstance(models.model_from_config(config), lru.LRUClassifier)
  _, history = train.train_and_evaluate(config, tmp_path, tiny_splits, log=lambda s: 0)
  assert [r["step"] for r in history] == [4, 8]
  assert np.isfinite(history[-1]["test_loss"]) and history[-1]["grad_norm"] > 0
  with pytest.raises(ValueError, match="bidirectional applies to the recurrent cells"):
    config.replace(bidirectional=True)
