"""rnnjax's CPU LSTM layer (rnnjax.kernel_layers.KernelLSTM) against the nn.RNN scan it replaces and
against the float64 NumPy reference: outputs, gradients, carries, fall-backs and errors."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import cpu_kernel, kernel_layers, models, presets
from tests.helpers import random_params, reference

AVAILABLE, WHY = cpu_kernel.status()
needs_kernel = pytest.mark.skipif(not AVAILABLE, reason=f"CPU kernel unavailable: {WHY}")


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def perturbed(params, seed, scale=0.2):
  """Flax's init leaves the biases at 0; random ones exercise every term."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [
      p + scale * rng.standard_normal(p.shape).astype(np.float32) for p in leaves])


def two_models(**kw):
  kernel = models.SequenceClassifier(rnn_kernel="cpu", **kw)
  scan = models.SequenceClassifier(rnn_kernel="xla", **kw)
  return kernel, scan


# (batch, time, features, hidden, layers, readout, bidirectional): 1 row; a batch that
# splits unevenly over threads (kernel rows per thread >= 16); the tutorial's shape; two
# layers; bidirectional (the `last` readout reads each direction's final output, the second
# layer reads both directions); so many rows per thread that each thread's time step runs
# as several matmuls of unequal row counts (the kernel's chunks of at most 512 kB of gates).
CASES = [(1, 28, 28, 8, 1, "last", False), (37, 5, 3, 12, 1, "mean", False),
         (100, 28, 28, 256, 1, "last", False), (33, 9, 6, 16, 2, "last", False),
         (37, 6, 5, 12, 1, "last", True), (20, 9, 6, 16, 2, "mean", True),
         (603, 3, 5, 256, 1, "last", False)]


@needs_kernel
@pytest.mark.parametrize("batch,time,features,hidden,layers,readout,bidirectional", CASES)
def test_kernel_equals_scan_and_float64_numpy(batch, time, features, hidden, layers, readout,
                                              bidirectional):
  check_against_scan_and_numpy(batch, time, features, hidden, layers, readout, bidirectional)


@needs_kernel
@pytest.mark.parametrize("engine", cpu_kernel.GEMM_ENGINES)
def test_every_matmul_engine_equals_scan_and_float64_numpy(engine):
  """The automatic choice runs every test above on one engine; here each engine, switched
  in the process, meets the same tolerances (an uneven split over threads, the tutorial's
  shape, two bidirectional layers)."""
  if engine not in cpu_kernel.gemm_engines():
    pytest.skip(f"this kernel build has no {engine} ({cpu_kernel.gemm_engines()})")
  previous = cpu_kernel.set_gemm_engine(engine)
  try:
    assert cpu_kernel.gemm_engine() == engine
    for case in (CASES[1], CASES[2], CASES[5]):
      check_against_scan_and_numpy(*case)
  finally:
    cpu_kernel.set_gemm_engine(previous)


def check_against_scan_and_numpy(batch, time, features, hidden, layers, readout,
                                 bidirectional):
  kernel, scan = two_models(hidden_size=hidden, num_layers=layers, readout=readout,
                            bidirectional=bidirectional)
  x = jnp.asarray(np.random.default_rng(0).random((batch, time, features), np.float32))
  params = random_params(scan, x[:1], seed=2, bias_scale=0.2)
  got = jax.jit(lambda p, x: kernel.apply({"params": p}, x))(params, x)
  via_scan = jax.jit(lambda p, x: scan.apply({"params": p}, x))(params, x)
  want = reference.classifier_logits(jax.device_get(params), np.asarray(x), readout=readout,
                                     bidirectional=bidirectional)
  # float32 against float64: the same 1e-5 as the scan's own test (test_numerics.py); the
  # kernel and the scan differ by summation order and tanh/exp ulps only.
  print(f"measured: kernel vs float64 {rel_err(got, want):.1e}, scan vs float64 "
        f"{rel_err(via_scan, want):.1e}, kernel vs scan {rel_err(got, via_scan):.1e}")
  assert rel_err(got, want) <= 1e-5
  assert rel_err(got, via_scan) <= 1e-5
  every = lambda m: jax.jit(lambda p, x: m.apply({"params": p}, x, all_steps=True))  # noqa
  assert rel_err(every(kernel)(params, x), every(scan)(params, x)) <= 1e-5

  def loss(model, argnums=(0, 1)):
    def f(p, x):  # every output step and every logit carries gradient
      return jnp.sum(jnp.sin(model.apply({"params": p}, x, all_steps=True)))
    return jax.jit(jax.grad(f, argnums=argnums))

  g_kernel, g_scan = loss(kernel)(params, x), loss(scan)(params, x)
  assert jax.tree.structure(g_kernel) == jax.tree.structure(g_scan)
  worst = max(rel_err(a, b) for a, b in zip(jax.tree.leaves(g_kernel), jax.tree.leaves(g_scan)))
  print(f"measured: gradients kernel vs scan, worst leaf {worst:.1e}")
  assert worst <= 1e-5
  # The parameters alone, as a training step asks: the kernel then skips the first layer's
  # input cotangent; the parameters' must not change.
  g_params = loss(kernel, argnums=0)(params, x)
  assert max(rel_err(a, b) for a, b in zip(jax.tree.leaves(g_params),
                                           jax.tree.leaves(g_scan[0]))) <= 1e-5


@needs_kernel
def test_kernel_layer_with_a_given_carry_equals_nn_rnn():
  """Nonzero initial (c, h), and their gradients, against nn.RNN with return_carry."""
  b, t, f, h = 20, 7, 5, 24
  rng = np.random.default_rng(3)
  x, c0, h0 = (jnp.asarray(rng.standard_normal(s), jnp.float32)
               for s in ((b, t, f), (b, h), (b, h)))
  rnn = nn.RNN(nn.OptimizedLSTMCell(h))
  params = random_params(rnn, x, seed=4, bias_scale=0.2)
  # Reference outputs from float64 NumPy with the same carry.
  want, _ = reference.lstm_layer(jax.device_get(params["cell"]), np.asarray(x, np.float64),
                                 np.asarray(c0, np.float64), np.asarray(h0, np.float64))

  def by_kernel(p, x, c0, h0):
    return kernel_layers.lstm(p["cell"], x, (c0, h0))

  def by_scan(p, x, c0, h0):
    return rnn.apply({"params": p}, x, initial_carry=(c0, h0))

  got = jax.jit(by_kernel)(params, x, c0, h0)
  assert rel_err(got, want) <= 1e-5
  assert rel_err(got, jax.jit(by_scan)(params, x, c0, h0)) <= 1e-5
  w = jnp.asarray(rng.standard_normal((b, t, h)), jnp.float32)
  grad = lambda fn: jax.jit(jax.grad(lambda *a: jnp.sum(w * fn(*a)), argnums=(0, 1, 2, 3)))
  for a, bb in zip(jax.tree.leaves(grad(by_kernel)(params, x, c0, h0)),
                   jax.tree.leaves(grad(by_scan)(params, x, c0, h0))):
    assert rel_err(a, bb) <= 1e-5


@needs_kernel
@pytest.mark.parametrize("reverse,keep_order,time_major", [
    (False, False, False), (True, False, False), (True, True, False), (True, True, True)])
def test_kernel_layer_is_a_drop_in_for_nn_rnn(reverse, keep_order, time_major):
  """KernelLSTM takes nn.RNN's parameters and call: the same parameter tree at init, the
  same outputs and final carry for each `reverse` / `keep_order` / `time_major`, and inside
  nn.Bidirectional."""
  b, t, f, h = 9, 6, 4, 12
  x = jnp.asarray(np.random.default_rng(5).standard_normal((b, t, f)), jnp.float32)
  x = jnp.swapaxes(x, 0, 1) if time_major else x
  kw = dict(reverse=reverse, keep_order=keep_order, time_major=time_major, return_carry=True)
  scan = nn.RNN(nn.OptimizedLSTMCell(h), **kw)
  kernel = kernel_layers.KernelLSTM(nn.OptimizedLSTMCell(h), **kw)
  assert isinstance(kernel, nn.RNN)
  p_scan, p_kernel = (m.init(jax.random.key(2), x)["params"] for m in (scan, kernel))
  assert p_scan.keys() == p_kernel.keys() == {"cell"}
  for a, bb in zip(jax.tree.leaves(p_scan), jax.tree.leaves(p_kernel)):
    np.testing.assert_array_equal(a, bb)  # the same initialisation, bit for bit
  params = perturbed(p_scan, 6)
  (c1, h1), y1 = jax.jit(lambda p: kernel.apply({"params": p}, x))(params)
  (c2, h2), y2 = jax.jit(lambda p: scan.apply({"params": p}, x))(params)
  assert y1.shape == y2.shape == (x.shape[0], x.shape[1], h)
  for got, want in ((y1, y2), (c1, c2), (h1, h2)):
    assert rel_err(got, want) <= 1e-5
  both = lambda cls: nn.Bidirectional(cls(nn.OptimizedLSTMCell(h)),  # noqa: E731
                                      cls(nn.OptimizedLSTMCell(h)))
  xb = x if not time_major else jnp.swapaxes(x, 0, 1)
  p_both = random_params(both(nn.RNN), xb, seed=7, bias_scale=0.2)
  got = both(kernel_layers.KernelLSTM).apply({"params": p_both}, xb)
  assert rel_err(got, both(nn.RNN).apply({"params": p_both}, xb)) <= 1e-5
  with pytest.raises(NotImplementedError, match="seq_lengths"):
    kernel.apply({"params": params}, x, seq_lengths=jnp.full((b,), t))


def test_model_from_config_resolves_auto_once():
  """The built model carries `cpu` or `xla`, never `auto`; `make_rnn` picks the class."""
  want = "cpu" if AVAILABLE else "xla"
  model = models.model_from_config(presets.get("tiny"))
  assert model.rnn_kernel == want
  assert type(models.make_rnn("lstm", 4, "cpu")) is kernel_layers.KernelLSTM
  assert type(models.make_rnn("lstm", 4, "xla")) is nn.RNN
  assert type(models.make_rnn("gru", 4, "cpu")) is nn.RNN
  with pytest.raises(ValueError, match="resolve 'auto' first"):
    models.make_rnn("lstm", 4, "auto")


@needs_kernel
def test_default_model_uses_the_kernel_and_other_cells_the_scan():
  """`auto` runs LSTM layers, both directions of bidirectional ones, on the kernel (no
  scan in the program) and leaves other cells to nn.RNN."""
  x = jnp.ones((2, 28, 28))

  def hlo(**kw):
    m = models.SequenceClassifier(hidden_size=8, **kw)
    p = jax.eval_shape(m.init, jax.random.key(0), x)  # lowering needs shapes only
    return jax.jit(lambda p, x: m.apply(p, x)).lower(p, x).as_text()

  assert "rnnjax_lstm_infer" in hlo() and "while" not in hlo()
  assert "rnnjax_lstm" not in hlo(rnn_kernel="xla")
  both_ways = hlo(bidirectional=True)
  assert both_ways.count("rnnjax_lstm_infer") == 2 and "while" not in both_ways
  assert "rnnjax_lstm" not in hlo(cell="gru")


def test_float64_falls_back_to_the_scan_and_cpu_refuses_it():
  x = jnp.ones((2, 5, 3))
  with jax.enable_x64(True):
    x64 = x.astype(jnp.float64)
    assert not models.resolve("auto", x64.dtype) == "cpu"
    with pytest.raises(cpu_kernel.KernelUnavailable, match="float32"):
      models.resolve("cpu", x64.dtype)
  assert not models.resolve("xla", x.dtype) == "cpu"
  with pytest.raises(ValueError, match="rnn_kernel must be one of"):
    models.resolve("fast", x.dtype)


def test_config_takes_the_kernel_choice():  # the CLI flag: test_cli.py
  assert presets.get("tutorial").rnn_kernel == "auto"
  with pytest.raises(ValueError, match="rnn_kernel must be one of"):
    presets.get("tiny").replace(rnn_kernel="gpu")
  assert models.model_from_config(
      presets.get("tiny").replace(rnn_kernel="xla")).rnn_kernel == "xla"


@needs_kernel
def test_a_layer_built_by_hand_loads_the_kernel_on_first_use():
  """`nn.Bidirectional(KernelLSTM(...), KernelLSTM(...))` in a fresh process, with nothing
  loading the kernel first: the same outputs as the `nn.RNN` pair with the same parameters."""
  code = (
      "import flax.linen as nn, jax, jax.numpy as jnp, numpy as np\n"
      "from rnnjax import kernel_layers\n"
      "x = jnp.asarray(np.random.default_rng(0).random((3, 7, 5), np.float32))\n"
      "layer = lambda kind: nn.Bidirectional(kind(nn.OptimizedLSTMCell(6)),\n"
      "                                      kind(nn.OptimizedLSTMCell(6)))\n"
      "scan, fast = layer(nn.RNN), layer(kernel_layers.KernelLSTM)\n"
      "params = scan.init(jax.random.key(0), x)\n"
      "print('DIFF', float(jnp.max(jnp.abs(fast.apply(params, x) - scan.apply(params, x)))))\n")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert float(r.stdout.split("DIFF")[1]) < 1e-6, r.stdout
