"""rnnjax's CPU LEM kernel (rnnjax.kernel_layers.KernelLEM) against the nn.RNN scan of cells.LEMCell it
replaces and against the float64 NumPy reference: outputs, gradients, carries, the model's
choice of path."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import presets
from rnnjax import cells, cpu_kernel, kernel_layers, models
from tests.helpers import random_params, reference

AVAILABLE, WHY = cpu_kernel.status()
needs_kernel = pytest.mark.skipif(not AVAILABLE, reason=f"CPU kernel unavailable: {WHY}")


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


# (batch, time, features, hidden, layers, readout, dt): one row; a batch split unevenly over
# the threads; sequential MNIST's shape (a short stretch of it); two layers; a larger dt.
CASES = [(1, 13, 1, 8, 1, "last", 0.21), (37, 9, 3, 12, 1, "mean", 0.21),
         (100, 60, 1, 128, 1, "last", 0.21), (33, 9, 6, 16, 2, "last", 0.21),
         (20, 11, 4, 10, 1, "last", 0.9)]


@needs_kernel
@pytest.mark.parametrize("batch,time,features,hidden,layers,readout,dt", CASES)
def test_kernel_equals_scan_and_float64_numpy(batch, time, features, hidden, layers, readout,
                                              dt):
  kw = dict(hidden_size=hidden, num_layers=layers, readout=readout, cell="lem",
            cell_options=(("cell_dt", dt),))
  kernel = models.SequenceClassifier(rnn_kernel="cpu", **kw)
  scan = models.SequenceClassifier(rnn_kernel="xla", **kw)
  x = jnp.asarray(np.random.default_rng(0).random((batch, time, features), np.float32))
  params = random_params(scan, x[:1], seed=2, bias_scale=0.2)
  assert jax.tree.structure(params) == jax.tree.structure(
      jax.eval_shape(lambda: models.init_params(kernel, jax.random.key(1), x[:1])))
  every = lambda m: jax.jit(lambda p, x: m.apply({"params": p}, x, all_steps=True))  # noqa
  got, via_scan = every(kernel)(params, x), every(scan)(params, x)
  with jax.enable_x64(True):
    want = reference_logits(jax.device_get(params), np.asarray(x, np.float64), layers, dt,
                            readout)
  print(f"measured: kernel vs float64 {rel_err(got, want):.1e}, scan vs float64 "
        f"{rel_err(via_scan, want):.1e}, kernel vs scan {rel_err(got, via_scan):.1e}")
  assert rel_err(got, want) <= 1e-5  # float32 against float64, as the LSTM kernel's test
  assert rel_err(got, via_scan) <= 1e-5

  def grad(model, argnums=(0, 1)):
    def f(p, x):  # every output step and every logit carries gradient
      return jnp.sum(jnp.sin(model.apply({"params": p}, x, all_steps=True)))
    return jax.jit(jax.grad(f, argnums=argnums))

  g_kernel, g_scan = grad(kernel)(params, x), grad(scan)(params, x)
  assert jax.tree.structure(g_kernel) == jax.tree.structure(g_scan)
  worst = max(rel_err(a, b) for a, b in zip(jax.tree.leaves(g_kernel), jax.tree.leaves(g_scan)))
  print(f"measured: gradients kernel vs scan, worst leaf {worst:.1e}")
  assert worst <= 1e-5
  # The parameters alone (a training step): the first layer's input cotangent is skipped.
  g_params = grad(kernel, argnums=0)(params, x)
  assert max(rel_err(a, b) for a, b in zip(jax.tree.leaves(g_params),
                                           jax.tree.leaves(g_scan[0]))) <= 1e-5


@needs_kernel
@pytest.mark.parametrize("engine", cpu_kernel.GEMM_ENGINES)
def test_every_matmul_engine_equals_scan_and_float64_numpy(engine):
  """As the LSTM kernel's: each matmul engine, switched in the process, on two cases."""
  if engine not in cpu_kernel.gemm_engines():
    pytest.skip(f"this kernel build has no {engine} ({cpu_kernel.gemm_engines()})")
  previous = cpu_kernel.set_gemm_engine(engine)
  try:
    for case in (CASES[2], CASES[-1]):
      test_kernel_equals_scan_and_float64_numpy(*case)
  finally:
    cpu_kernel.set_gemm_engine(previous)


def reference_logits(params, x, layers, dt, readout):
  """The float64 NumPy LEM of tests/helpers/reference.py, layer by layer, then the head;
  every step's logits."""
  h = x
  for k in range(layers):
    h, _ = reference.lem_layer(params[f"rnn_{k}"]["cell"], h, dt=dt)
  if readout == "mean":
    h = np.cumsum(h, axis=1) / np.arange(1, h.shape[1] + 1)[None, :, None]
  head = params["head"]
  return h @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64)


@needs_kernel
def test_carries_reverse_and_the_layer_call():
  """`KernelLEM` takes `nn.RNN`'s call: a given initial carry, return_carry, reverse with
  and without keep_order; its final carry and the carry's gradients match the scan's."""
  cell = cells.LEMCell(12)
  x = jnp.asarray(np.random.default_rng(3).random((17, 8, 2), np.float32))
  scan_rnn = nn.RNN(cell)
  params = random_params(scan_rnn, x, seed=4, bias_scale=0.2)
  rng = np.random.default_rng(5)
  carry = tuple(jnp.asarray(rng.standard_normal((17, 12)), jnp.float32) for _ in range(2))
  for kw in ({}, {"reverse": True}, {"reverse": True, "keep_order": True}):
    kernel = kernel_layers.KernelLEM(cell, return_carry=True, **kw)
    scan = nn.RNN(cell, return_carry=True, **kw)

    def f(model, p, c):
      (z, y), out = model.apply({"params": p}, x, initial_carry=c)
      return jnp.sum(jnp.sin(out)) + jnp.sum(z * 0.7) + jnp.sum(jnp.cos(y)), (z, y, out)

    (lk, got), gk = jax.value_and_grad(lambda p, c: f(kernel, p, c), argnums=(0, 1),
                                       has_aux=True)(params, carry)
    (ls, want), gs = jax.value_and_grad(lambda p, c: f(scan, p, c), argnums=(0, 1),
                                        has_aux=True)(params, carry)
    for a, b in zip(got, want):
      assert rel_err(a, b) <= 1e-5, kw
    worst = max(rel_err(a, b) for a, b in zip(jax.tree.leaves(gk), jax.tree.leaves(gs)))
    assert worst <= 1e-5, (kw, worst)


@needs_kernel
def test_the_model_runs_lem_on_the_kernel_where_it_can():
  config = presets.get("tiny").replace(cell="lem", task="pixels")
  assert models.model_from_config(config).rnn_kernel == "cpu"
  assert models.model_from_config(config.replace(rnn_kernel="xla")).rnn_kernel == "xla"
  assert "LEM: rnnjax CPU kernel" in models.describe(config)
  assert "cornn layers: nn.RNN scan" == models.describe(config.replace(cell="cornn"))
  layer = models.make_rnn("lem", 8, "cpu", {"dt": 0.3})
  assert isinstance(layer, kernel_layers.KernelLEM) and layer.cell.dt == 0.3
  assert type(models.make_rnn("cornn", 8, "cpu")) is nn.RNN
