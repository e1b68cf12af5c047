"""rnnjax.lmu: the Legendre delay system by hand and against an independent matrix
exponential, the model against keras-lmu (a stored fixture) and a float64 NumPy loop, the
parallel memory against the step-by-step scan (forward and gradients), gradients against
central differences, and the model through the training loop."""

import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import cpu_kernel, kernel_layers, lmu, models, presets, resources, steps, train
from tests.helpers import random_params, reference, worst_central_difference_error


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def test_the_legendre_delay_system_by_hand():
  a, b = lmu.legendre_delay(3)
  np.testing.assert_array_equal(a, [[-1, -1, -1], [3, -3, -3], [-5, 5, -5]])
  np.testing.assert_array_equal(b, [1, -3, 5])


@pytest.mark.parametrize("order,theta", [(3, 1.0), (16, 50.0), (64, 784.0), (256, 784.0)])
def test_zero_order_hold_matches_an_independent_matrix_exponential(order, theta):
  ad, bd = lmu.zoh(order, theta)
  want_a, want_b = reference.lmu_zoh(order, theta)  # Taylor series, not SciPy's Pade
  assert rel_err(ad, want_a) <= 1e-10 and rel_err(bd, want_b) <= 1e-10


def test_the_memory_of_a_constant_input_is_its_first_legendre_coefficient():
  """A window holding the constant 1 is the Legendre polynomial P_0: the memory settles at
  (1, 0, 0, ...), both as the fixed point of the discrete system and as the sum of its
  impulse response over many windows."""
  order, theta = 12, 40.0
  ad, bd = lmu.zoh(order, theta)
  fixed = np.linalg.solve(np.eye(order) - ad, bd)
  np.testing.assert_allclose(fixed, np.eye(order)[0], atol=1e-9)
  settled = lmu.impulse_response(order, theta, 40 * int(theta)).sum(0)
  np.testing.assert_allclose(settled, np.eye(order)[0], atol=1e-6)


OPTIONS = [(False, False), (True, False), (False, True), (True, True)]


@pytest.mark.parametrize("hidden_to_memory,memory_to_memory", OPTIONS)
@pytest.mark.parametrize("parallel", [True, False])
def test_logits_match_float64_numpy(hidden_to_memory, memory_to_memory, parallel):
  theta = 9.0
  with jax.enable_x64(True):
    model = lmu.LMUClassifier(hidden_size=6, num_layers=2, order=5, theta=theta,
                              hidden_to_memory=hidden_to_memory,
                              memory_to_memory=memory_to_memory, parallel=parallel)
    x = jax.random.uniform(jax.random.key(1), (3, 17, 2), jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), random_params(model, x))
    got = jax.jit(model.apply)({"params": params}, x)
    p = jax.device_get(params)
    h = np.asarray(x)
    for k in range(2):
      h = reference.lmu_layer(p[f"rnn_{k}"]["cell"], h, theta, hidden_to_memory,
                              memory_to_memory)
    want = h[:, -1] @ p["head"]["kernel"] + p["head"]["bias"]
  assert rel_err(got, want) <= 1e-10


KERAS = json.loads((Path(__file__).parent / "fixtures" / "keras_lmu.json").read_text())


def keras_params(case) -> dict:
  """keras-lmu's weights as rnnjax's parameters: its memory encoder over [x, h] splits into
  `encoder_x` and `encoder_h`, its hidden cell's kernel over [m, x] into `memory` and
  `input`."""
  w = {k: np.asarray(v["value"], np.float32).reshape(v["shape"])
       for k, v in case["weights"].items()}
  features, order = KERAS["features"], KERAS["order"]
  encoder, hidden_in = w["lmu_cell/kernel"], w["simple_rnn_cell/kernel"]
  cell = {"encoder_x": {"kernel": encoder[:features]},
          "memory": {"kernel": hidden_in[:order]},
          "input": {"kernel": hidden_in[order:], "bias": w["simple_rnn_cell/bias"]},
          "hidden": {"kernel": w["simple_rnn_cell/recurrent_kernel"]}}
  if case["hidden_to_memory"]:
    cell["encoder_h"] = {"kernel": encoder[features:]}
  if case["memory_to_memory"]:
    cell["encoder_m"] = {"kernel": w["lmu_cell/recurrent_kernel"]}
  return {"rnn_0": {"cell": cell},
          "head": {"kernel": w["dense/kernel"], "bias": w["dense/bias"]}}


@pytest.mark.parametrize("case", KERAS["cases"], ids=lambda c: f"h2m={c['hidden_to_memory']}")
@pytest.mark.parametrize("parallel", [True, False])
def test_logits_and_carry_match_keras_lmu(case, parallel):
  """keras-lmu's `RNN(LMUCell(memory_d=1, ..., input_to_hidden=True))` with a
  `SimpleRNNCell` and a `Dense` readout (tests/tools/make_keras_lmu_fixture.py), random
  weights: the same logits and final carry from the same weights, float32 both."""
  model = lmu.LMUClassifier(
      hidden_size=KERAS["hidden"], order=KERAS["order"], theta=KERAS["theta"],
      num_classes=KERAS["classes"], hidden_to_memory=case["hidden_to_memory"],
      memory_to_memory=case["memory_to_memory"], parallel=parallel)
  x = np.asarray(case["inputs"], np.float32).reshape(
      KERAS["batch"], KERAS["time"], KERAS["features"])
  params = keras_params(case)
  logits = model.apply({"params": params}, x)
  np.testing.assert_allclose(logits, np.reshape(case["logits"], logits.shape), rtol=2e-5,
                             atol=2e-6)
  (m, h), _ = lmu.LMULayer(model_cell(model), parallel=parallel).apply(
      {"params": params["rnn_0"]}, x, return_carry=True)
  np.testing.assert_allclose(m, np.reshape(case["carry"]["memory"], m.shape), rtol=2e-5,
                             atol=2e-6)
  np.testing.assert_allclose(h, np.reshape(case["carry"]["hidden"], h.shape), rtol=2e-5,
                             atol=2e-6)


def model_cell(model: lmu.LMUClassifier) -> lmu.LMUCell:
  return lmu.LMUCell(model.hidden_size, model.order, model.theta,
                     hidden_to_memory=model.hidden_to_memory,
                     memory_to_memory=model.memory_to_memory)


@pytest.mark.parametrize("memory_method", lmu.MEMORY_METHODS)
def test_two_memories_in_parallel_match_the_scan(memory_method):
  """A cell with memory_d = 2 (two delay systems, each with its own encoder column): the
  parallel layer against `nn.RNN`'s scan of the same cell, float64."""
  with jax.enable_x64(True):
    cell = lmu.LMUCell(5, order=4, theta=7.0, memory_d=2, memory_method=memory_method)
    fast, scan = lmu.LMULayer(cell), lmu.LMULayer(cell, parallel=False)
    x = jax.random.uniform(jax.random.key(2), (2, 13, 3), jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), random_params(scan, x))
    (m1, h1), y1 = fast.apply({"params": params}, x, return_carry=True)
    (m2, h2), y2 = scan.apply({"params": params}, x, return_carry=True)
  assert rel_err(y1, y2) <= 1e-12 and rel_err(h1, h2) <= 1e-12 and rel_err(m1, m2) <= 1e-12


@pytest.mark.parametrize("systems,steps_,block", [(1, 56, 8), (2, 50, 8), (1, 7, 16)])
def test_the_memory_by_blocks_is_the_convolution_with_the_response(systems, steps_, block):
  """`memory_drive_by_blocks` against `sum_k u[t - k] H[k] W_m` summed by NumPy in float64:
  whole blocks, a last block cut short, a sequence shorter than one block."""
  rng = np.random.default_rng(systems * 100 + steps_)
  order, theta = 16, 40.0
  u = rng.uniform(0, 1, (3, steps_, systems))
  w_m = rng.standard_normal((systems * order, 5))
  response = lmu.impulse_response(order, theta, steps_)  # [T, order]
  want = np.zeros((3, steps_, 5))
  for t in range(steps_):
    for k in range(t + 1):
      memory = (u[:, t - k, :, None] * response[k]).reshape(3, -1)  # [B, J * order]
      want[:, t] += memory @ w_m
  with jax.enable_x64(True):
    got = lmu.memory_drive_by_blocks(jnp.asarray(u), jnp.asarray(w_m), order, theta, block)
  assert rel_err(got, want) <= 1e-12


def test_the_parallel_layer_falls_back_to_the_scan_where_it_does_not_apply():
  cell = lmu.LMUCell(4, order=3, theta=5.0)
  x = jax.random.uniform(jax.random.key(3), (2, 6, 1))
  params = random_params(nn.RNN(cell), x)
  carry = (jnp.ones((2, 3)), jnp.ones((2, 4)))
  for kw in [dict(initial_carry=carry), dict(reverse=True, keep_order=True)]:
    got = lmu.LMULayer(cell).apply({"params": params}, x, **kw)
    want = nn.RNN(cell).apply({"params": params}, x, **kw)
    np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match="memory_method must be one of"):
    lmu.LMUCell(4, order=3, memory_method="fast").apply(
        {"params": params["cell"]}, x, method="sequence")
  with pytest.raises(ValueError, match="reads the input only"):
    lmu.LMUCell(4, order=3, hidden_to_memory=True).apply(
        {"params": params["cell"]}, x, method="sequence")


def assert_matches_the_scan(fast, scan, x, labels):
  """`fast` against `scan` on the same parameters: logits within 1e-5 and every gradient
  within 1e-4 of the largest (float32 rounding over hundreds of steps)."""
  params = random_params(scan, x)

  def loss(model):
    return lambda p: steps.cross_entropy(model.apply({"params": p}, x), labels).mean()

  assert rel_err(jax.jit(fast.apply)({"params": params}, x),
                 jax.jit(scan.apply)({"params": params}, x)) <= 1e-5
  g_fast, g_scan = (jax.jit(jax.grad(loss(m)))(params) for m in (fast, scan))
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_scan)):
    assert rel_err(a, b) <= 1e-4


@pytest.mark.parametrize("memory_method", lmu.MEMORY_METHODS)
def test_the_parallel_memory_matches_the_scan_in_float32_at_784_steps(memory_method):
  """psMNIST's length and window, forward and gradients, float32 both ways: they differ by
  float32 rounding only (an FFT convolution, or blocks through the memory's state, against
  784 sequential updates)."""
  kw = dict(hidden_size=16, order=64, theta=784.0)
  fast = lmu.LMUClassifier(**kw, memory_method=memory_method)
  assert_matches_the_scan(fast, lmu.LMUClassifier(**kw, parallel=False),
                          jax.random.uniform(jax.random.key(4), (4, 784, 1)),
                          jnp.array([0, 3, 9, 1]))


AVAILABLE, WHY = cpu_kernel.status()
needs_kernel = pytest.mark.skipif(not AVAILABLE, reason=f"CPU kernel unavailable: {WHY}")


@needs_kernel
@pytest.mark.parametrize("batch,steps_,hidden", [(1, 7, 3), (37, 50, 24), (100, 30, 212)])
def test_the_kernels_hidden_recurrence_matches_the_scan_and_float64(batch, steps_, hidden):
  """`kernel_layers.tanh_recurrence` (one row; a batch split unevenly over the threads; the
  psMNIST model's width) against `lmu.tanh_recurrence`'s scan and a float64 NumPy loop:
  every h_t and the gradients of drive, w and h0 for a random cotangent of every h_t."""
  rng = np.random.default_rng(3)
  drive = rng.normal(0, 0.7, (steps_, batch, hidden)).astype(np.float32)
  w = rng.normal(0, 1 / np.sqrt(hidden), (hidden, hidden)).astype(np.float32)
  h0 = rng.normal(0, 0.5, (batch, hidden)).astype(np.float32)
  cotangent = rng.normal(0, 1, (steps_, batch, hidden)).astype(np.float32)
  h, want = h0.astype(np.float64), []
  for d in drive.astype(np.float64):
    h = np.tanh(d + h @ w.astype(np.float64))
    want.append(h)
  got = jax.jit(kernel_layers.tanh_recurrence)(drive, w, h0)
  assert rel_err(got, np.stack(want)) <= 2e-6

  def grads(f):
    return jax.jit(jax.grad(lambda *a: (f(*a) * cotangent).sum(), argnums=(0, 1, 2)))(
        drive, w, h0)

  for a, b in zip(grads(kernel_layers.tanh_recurrence), grads(lmu.tanh_recurrence)):
    assert rel_err(a, b) <= 1e-5


@needs_kernel
def test_an_lmu_on_the_kernel_matches_the_scan():
  """`kernel="cpu"` (the hidden recurrence on the CPU kernel, the memory in parallel) against
  the plain scan of the same parameters: logits and gradients, at 300 steps."""
  kw = dict(hidden_size=20, order=32, theta=300.0)
  assert_matches_the_scan(lmu.LMUClassifier(**kw, kernel="cpu"),
                          lmu.LMUClassifier(**kw, parallel=False),
                          jax.random.uniform(jax.random.key(6), (19, 300, 1)),
                          jnp.arange(19) % 10)


def test_the_config_puts_the_lmus_hidden_recurrence_on_the_kernel_where_it_runs():
  config = presets.get("tiny").replace(cell="lmu", task="pixels")
  want = "cpu" if AVAILABLE else "xla"
  assert models.model_from_config(config).kernel == want
  assert models.model_from_config(config.replace(rnn_kernel="xla")).kernel == "xla"


@pytest.mark.parametrize("hidden_to_memory", [False, True])  # the parallel form, the scan
def test_gradients_match_central_differences(hidden_to_memory):
  with jax.enable_x64(True):
    model = lmu.LMUClassifier(hidden_size=5, order=4, theta=6.0,
                              hidden_to_memory=hidden_to_memory)
    x = jax.random.uniform(jax.random.key(5), (3, 10, 2), jnp.float64)
    labels = jnp.array([1, 7, 3])
    params = jax.tree.map(lambda p: p.astype(jnp.float64), random_params(model, x))

    def loss(p):
      return steps.cross_entropy(model.apply({"params": p}, x), labels).mean()

    worst = worst_central_difference_error(loss, params, h=1e-4)
  assert worst <= 1e-7


def test_parameters_of_keras_lmus_psmnist_model():
  """212 hidden units over a memory of order 256 reading one pixel, and the readout:
  W_m 256 x 212, W_x 1 x 212 and b 212, W_h 212 x 212, e_x 1, head 212 x 10 + 10."""
  config = presets.get("tiny").replace(cell="lmu", hidden_size=212, lmu_order=256,
                                       num_layers=1, task="permuted")
  want = 256 * 212 + 212 + 212 + 212 * 212 + 1 + 212 * 10 + 10
  assert want == 101_771
  assert resources.parameter_count(config) == want
  params = jax.eval_shape(lambda: models.init_params(
      models.model_from_config(config), jax.random.key(0), jnp.zeros((1, 784, 1))))
  cell = params["rnn_0"]["cell"]
  assert cell["encoder_x"]["kernel"].shape == (1, 1)
  assert cell["memory"]["kernel"].shape == (256, 212)
  assert cell["hidden"]["kernel"].shape == (212, 212)


def test_dropout_acts_in_training_only():
  model = lmu.LMUClassifier(hidden_size=6, order=4, theta=8.0, dropout=0.5)
  x = jax.random.uniform(jax.random.key(6), (3, 8, 1))
  params = random_params(model, x)
  rngs = {"dropout": jax.random.key(7)}
  plain = model.apply({"params": params}, x)
  np.testing.assert_array_equal(plain, model.clone(dropout=0.0).apply({"params": params}, x))
  dropped = model.apply({"params": params}, x, train=True, rngs=rngs)
  assert not np.allclose(plain, dropped)
  np.testing.assert_array_equal(dropped, model.apply({"params": params}, x, train=True,
                                                     rngs=rngs))


def test_initialisation():
  cell = lmu.LMUCell(6, order=5, theta=9.0, memory_to_memory=True)
  params = nn.RNN(cell).init(jax.random.key(0), jnp.zeros((1, 3, 2)))["params"]["cell"]
  np.testing.assert_array_equal(params["encoder_x"]["kernel"], np.ones((2, 1)))
  w_h = np.asarray(params["hidden"]["kernel"])
  np.testing.assert_allclose(w_h @ w_h.T, np.eye(6), atol=1e-5)  # orthogonal
  np.testing.assert_array_equal(params["input"]["bias"], np.zeros(6))
  assert "encoder_h" not in params and params["encoder_m"]["kernel"].shape == (5, 1)


def test_an_lmu_trains_through_the_loop(tiny_splits, tmp_path):
  config = presets.get("tiny").replace(cell="lmu", hidden_size=8, lmu_order=6,
                                       lmu_theta=28.0, epochs=2, dropout=0.25)
  model = models.model_from_config(config)
  assert isinstance(model, lmu.LMUClassifier) and model.dropout == 0.25
  on_kernel = ", its recurrence on rnnjax's CPU kernel" if AVAILABLE else ""
  assert models.describe(config).startswith(f"LMU: its own model (rnnjax.lmu){on_kernel}")
  assert models.describe(config.replace(rnn_kernel="xla")) == "LMU: its own model (rnnjax.lmu)"
  _, history = train.train_and_evaluate(config, tmp_path, tiny_splits, log=lambda s: 0)
  assert [r["step"] for r in history] == [4, 8]
  assert np.isfinite(history[-1]["test_loss"]) and history[-1]["grad_norm"] > 0
  with pytest.raises(ValueError, match="lmu_order applies to the LMU and parallel LMU cells "
                     "only"):
    presets.get("tiny").replace(lmu_order=8)
  with pytest.raises(ValueError, match="lmu_hidden_to_memory applies to the LMU cell only"):
    presets.get("tiny").replace(cell="plmu", lmu_hidden_to_memory=True)


def test_a_parallel_lmu_trains_through_the_loop(tiny_splits, tmp_path):
  config = presets.get("tiny").replace(cell="plmu", hidden_size=8, lmu_order=6,
                                       lmu_theta=28.0, epochs=2, dropout=0.25)
  model = models.model_from_config(config)
  assert isinstance(model, lmu.ParallelLMU) and model.dropout == 0.25
  _, history = train.train_and_evaluate(config, tmp_path, tiny_splits, log=lambda s: 0)
  assert [r["step"] for r in history] == [4, 8]
  assert np.isfinite(history[-1]["test_loss"]) and history[-1]["grad_norm"] > 0


# The parallel LMU

@pytest.mark.parametrize("readout,all_steps,layers", [("last", False, 1), ("mean", False, 1),
                                                      ("last", True, 1), ("last", False, 3),
                                                      ("mean", True, 2)])
def test_the_parallel_lmu_matches_float64_numpy(readout, all_steps, layers):
  """Its last-step path (one matmul with the impulse response) and its every-step path (an
  FFT convolution) against a float64 loop over time of m' = A_d m + B_d u, relu(W_m m + b),
  with further ReLU layers."""
  with jax.enable_x64(True):
    model = lmu.ParallelLMU(hidden_size=7, num_layers=layers, order=6, theta=9.0,
                            readout=readout)
    x = jax.random.uniform(jax.random.key(7), (3, 15, 2), jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64),
                          random_params(model, x, bias_scale=0.3))
    got = model.apply({"params": params}, x, all_steps=all_steps)
  o = reference.parallel_lmu(params, np.asarray(x), theta=9.0)
  if readout == "mean":  # the mean of the outputs so far (all_steps), or of all of them
    o = np.cumsum(o, 1) / np.arange(1, o.shape[1] + 1)[:, None]
  o = o if all_steps else o[:, -1]
  want = o @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_the_parallel_lmu_at_784_steps_in_float32_matches_float64():
  """psMNIST's length and window: float32 within rounding of the float64 loop, both paths."""
  model = lmu.ParallelLMU(hidden_size=16, order=64)
  x = jax.random.uniform(jax.random.key(8), (4, 784, 1))
  params = random_params(model, x, bias_scale=0.3)
  o = reference.parallel_lmu(params, np.asarray(x, np.float64), theta=784.0)
  head = [np.asarray(params["head"][k], np.float64) for k in ("kernel", "bias")]
  assert rel_err(jax.jit(model.apply)({"params": params}, x), o[:, -1] @ head[0] + head[1]) <= 1e-5
  every = jax.jit(lambda p, x: model.apply(p, x, all_steps=True))({"params": params}, x)
  assert rel_err(every, o @ head[0] + head[1]) <= 1e-5


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_parallel_lmu_gradients_match_central_differences(readout):
  with jax.enable_x64(True):
    model = lmu.ParallelLMU(hidden_size=5, order=4, theta=6.0, readout=readout)
    x = jax.random.uniform(jax.random.key(9), (3, 10, 2), jnp.float64)
    labels = jnp.array([1, 7, 3])
    params = jax.tree.map(lambda p: p.astype(jnp.float64),
                          random_params(model, x, bias_scale=0.3))

    def loss(p):
      return steps.cross_entropy(model.apply({"params": p}, x), labels).mean()

    worst = worst_central_difference_error(loss, params, h=1e-4)
  assert worst <= 1e-7


def test_parameters_of_the_parallel_lmus_psmnist_model():
  """Order 468, theta 784, 346 units: 1 + 468 * 346 + 346 + 346 * 10 + 10 = 165,745, the
  paper's 165k."""
  config = presets.get("tiny").replace(cell="plmu", task="permuted", hidden_size=346,
                                       lmu_order=468)
  model = models.model_from_config(config)
  params = model.init(jax.random.key(0), jnp.zeros((1, 784, 1)))["params"]
  assert sum(p.size for p in jax.tree.leaves(params)) == 165_745
  assert resources.parameter_count(config) == 165_745
