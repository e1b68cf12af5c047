"""rnnjax's model, gradients, optimizer and metrics against independent references.

The reference is `tests/helpers/reference.py`: float64 NumPy written from the LSTM equations.
"""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import REPO, random_params, reference, synthetic_split
from rnnjax import presets
from rnnjax import data, models, steps


def rel_err(got, want):
  """Largest absolute difference over the largest reference magnitude."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def init(model, shape, seed=0, dtype=jnp.float32):
  """Inputs U(0, 1) of `shape` and random parameters (tests.helpers.random_params)."""
  x = jax.random.uniform(jax.random.key(seed + 1), shape, dtype)
  return random_params(model, x, seed=seed), x


CASES = [  # (batch, time, features, hidden, layers)
    (1, 1, 28, 8, 1), (1, 28, 28, 16, 1), (7, 5, 3, 4, 1), (32, 28, 28, 64, 1),
    (4, 9, 6, 12, 2), (3, 1, 5, 256, 1)]


@pytest.mark.parametrize("batch,time,features,hidden,layers", CASES)
def test_logits_match_float64_numpy_in_x64(batch, time, features, hidden, layers):
  with jax.enable_x64(True):
    model = models.SequenceClassifier(hidden, layers, num_classes=10)
    params, x = init(model, (batch, time, features), dtype=jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    got = jax.jit(model.apply)({"params": params}, x)
    assert got.dtype == jnp.float64
    want = reference.classifier_logits(jax.device_get(params), np.asarray(x))
  # Both sides are float64 with the same formula; 1e-10 leaves room only for summation
  # order and transcendental-function ulps accumulated over up to 28 steps.
  err = rel_err(got, want)
  print(f"measured: logits x64 vs NumPy float64 {err:.1e}")
  assert err <= 1e-10


@pytest.mark.parametrize("batch,time,features,hidden,layers", CASES)
def test_logits_match_float64_numpy_in_float32(batch, time, features, hidden, layers):
  model = models.SequenceClassifier(hidden, layers, num_classes=10)
  params, x = init(model, (batch, time, features))
  got = jax.jit(model.apply)({"params": params}, x)
  want = reference.classifier_logits(jax.device_get(params), np.asarray(x))
  # float32 has a 6e-8 unit roundoff; dot products of up to 284 terms over 28 recurrent
  # steps grow it to ~1e-6, so 1e-5 is tight yet safe.
  err = rel_err(got, want)
  print(f"measured: logits float32 vs NumPy float64 {err:.1e}")
  assert err <= 1e-5


@pytest.mark.parametrize("cell", ["lstm", "lem", "cornn"])
def test_gradients_match_central_differences(cell):
  with jax.enable_x64(True):
    model = models.SequenceClassifier(hidden_size=6, num_layers=2, num_classes=10, cell=cell)
    params, x = init(model, (5, 7, 4), dtype=jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    labels = jnp.array([0, 3, 9, 3, 1])

    def loss(p):
      return steps.cross_entropy(model.apply({"params": p}, x), labels).mean()

    grads = jax.jit(jax.grad(loss))(params)
    loss_jit = jax.jit(loss)
    rng = np.random.default_rng(0)
    flat, tree = jax.tree.flatten(params)
    worst = 0.0
    for li, leaf in enumerate(flat):
      g = np.asarray(jax.tree.leaves(grads)[li]).ravel()
      for j in rng.choice(leaf.size, size=min(6, leaf.size), replace=False):
        h = 1e-3
        def shifted(d):
          new, moved = list(flat), np.array(leaf)  # (NumPy: no operation to compile)
          moved.ravel()[j] += d
          new[li] = moved
          return float(loss_jit(jax.tree.unflatten(tree, new)))
        # Fourth-order central differences: truncation ~h^4 |L^(5)| and roundoff
        # ~1e-16 |L| / h, both ~1e-12 here, far below the 1e-6 asked; the floor 1e-4 keeps
        # near-zero gradient entries from dividing by ~0. (The two-point formula measured
        # 3e-7 here: its h^2 truncation, not the gradient, dominated.)
        fd = (shifted(-2 * h) - 8 * shifted(-h) + 8 * shifted(h) - shifted(2 * h)) / (12 * h)
        worst = max(worst, abs(fd - g[j]) / max(abs(g[j]), 1e-4))
    print(f"measured: {cell} gradients vs finite differences {worst:.1e}")
    assert worst <= 1e-6, worst


def test_cell_stepped_by_hand_equals_nn_rnn():
  cell = nn.OptimizedLSTMCell(12)
  x = jax.random.normal(jax.random.key(0), (3, 9, 5))
  rnn = nn.RNN(cell, return_carry=True)
  variables = rnn.init(jax.random.key(1), x)
  (c_rnn, h_rnn), outputs = rnn.apply(variables, x)
  carry = cell.initialize_carry(jax.random.key(2), x[:, 0].shape)
  hand = []
  for t in range(x.shape[1]):
    carry, y = cell.apply({"params": variables["params"]["cell"]}, carry, x[:, t])
    hand.append(y)
  # Same float32 operations in the same order: exact up to XLA fusion choices.
  print(f"measured: cell by hand vs nn.RNN, max abs diff "
        f"{np.max(np.abs(np.stack(hand, 1) - outputs)):.1e}")
  np.testing.assert_allclose(np.stack(hand, 1), outputs, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(carry[0], c_rnn, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(carry[1], h_rnn, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(outputs[:, -1], h_rnn)  # the readout's input is h_T


def test_optimized_cell_equals_lstm_cell():
  x = jax.random.normal(jax.random.key(0), (4, 7, 5))
  fast, plain = nn.RNN(nn.OptimizedLSTMCell(10)), nn.RNN(nn.LSTMCell(10))
  params = fast.init(jax.random.key(1), x)
  assert jax.tree.structure(params) == jax.tree.structure(
      jax.eval_shape(plain.init, jax.random.key(1), x))
  # One fused matmul vs eight small ones: float32 sums in another order.
  print(f"measured: OptimizedLSTMCell vs LSTMCell, max abs diff "
        f"{np.max(np.abs(fast.apply(params, x) - plain.apply(params, x))):.1e}")
  np.testing.assert_allclose(fast.apply(params, x), plain.apply(params, x),
                             rtol=1e-5, atol=1e-6)


def test_optimizer_equals_numpy_adam_with_clipping_and_schedule():
  # The default preset's optimizer: global-norm clipping, warm-up, cosine; 5 steps.
  config = presets.get("default").replace(batch_size=20000, epochs=2,
                                                    warmup_epochs=1.0, learning_rate=0.01,
                                                    validation_size=0)
  tx = steps.make_optimizer(config)  # 3 steps per epoch of 60,000: warm-up 3, 6 in all
  rng = np.random.default_rng(0)
  params = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
  state = tx.init(params)
  p_ref = [p.astype(np.float64) for p in params]
  m = [np.zeros_like(p) for p in p_ref]
  v = [np.zeros_like(p) for p in p_ref]
  for t in range(1, 6):
    grads = [rng.normal(scale=3.0, size=p.shape).astype(np.float32) for p in params]
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    g64 = [g.astype(np.float64) for g in grads]
    norm = np.sqrt(sum((g ** 2).sum() for g in g64))
    g64 = [g * min(1.0, config.grad_clip_norm / norm) for g in g64]
    step = t - 1  # optax evaluates the schedule at the count before the update
    lr = (0.01 * step / 3 if step < 3 else
          0.01 * 0.5 * (1 + np.cos(np.pi * (step - 3) / 3)))
    p_ref, m, v = reference.adam(p_ref, g64, m, v, t, lr)
    print(f"measured: optimizer step {t} vs NumPy Adam, max rel err "
          f"{max(rel_err(a, b) for a, b in zip(params, p_ref)):.1e}")
    for a, b in zip(params, p_ref):
      # float32 Adam vs float64: parameter updates of <=1e-2 on values ~1, 1e-6 relative.
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_first_adam_step_moves_every_parameter_by_the_learning_rate():
  config = presets.get("tutorial").replace(hidden_size=8)
  state = steps.create_train_state(config, jax.random.key(0))
  batch = next(data.train_batches(synthetic_split(16, 0), 16, 0, 0))
  grads = jax.jit(jax.grad(lambda p: steps.cross_entropy(  # jitted: one compilation each
      state.apply_fn({"params": p}, batch["image"]), batch["label"]).mean()))(state.params)
  new, _ = jax.jit(steps.train_step)(state, batch)
  lr = config.learning_rate
  for a, b, g in zip(*(jax.tree.leaves(t) for t in (state.params, new.params, grads))):
    moved = np.abs(np.asarray(b, np.float64) - np.asarray(a, np.float64))
    g = np.abs(np.asarray(g, np.float64))
    # Step 1: m_hat / sqrt(v_hat) = g / |g|, so |dp| = lr |g| / (|g| + 1e-8): the learning
    # rate, except where |g| is within a few orders of eps. atol: float32 rounding of
    # parameters up to ~2 in size (ulp/2 = 1.2e-7).
    np.testing.assert_allclose(moved, lr * g / (g + 1e-8), rtol=1e-6, atol=1.2e-7)
    assert np.median(moved) == pytest.approx(lr, rel=1e-4)


def params_digests(seeds: list[int], n: int) -> list[str]:
  """Digest of the parameters after `n` steps, one separate process per seed (run side by
  side)."""
  code = """
import hashlib, jax, numpy as np, sys
sys.path.insert(0, {repo!r})
from tests.helpers import synthetic_split
from rnnjax import data, presets, steps
seed, n = int(sys.argv[1]), int(sys.argv[2])
c = presets.get('tiny')
state = steps.create_train_state(c, jax.random.key(seed))
step = jax.jit(steps.train_step, donate_argnums=0)
for b in list(data.train_batches(synthetic_split(64, 0), 16, seed, 0))[:n]:
  state, _ = step(state, b)
h = hashlib.sha256()
for leaf in jax.tree.leaves(state.params):
  h.update(np.asarray(leaf).tobytes())
print(h.hexdigest())
""".format(repo=str(REPO))
  procs = [subprocess.Popen([sys.executable, "-c", code, str(seed), str(n)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for seed in seeds]
  digests = []
  for p in procs:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    digests.append(out.strip().splitlines()[-1])
  return digests


def test_same_seed_bit_identical_in_two_processes():
  a, b, other = params_digests([0, 0, 1], 4)
  assert a == b
  assert other != a


def test_examples_do_not_leak_across_the_batch():
  model = models.SequenceClassifier(hidden_size=16)
  params, x = init(model, (6, 28, 28))
  base = model.apply({"params": params}, x)
  x2 = x.at[2].set(jax.random.uniform(jax.random.key(7), (28, 28)))
  out = model.apply({"params": params}, x2)
  assert not np.allclose(out[2], base[2])
  others = np.array([0, 1, 3, 4, 5])
  np.testing.assert_array_equal(np.asarray(out)[others], np.asarray(base)[others])


def test_metrics_over_unequal_batches_equal_full_batch():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(40, 10)).astype(np.float32))
  labels = jnp.asarray(rng.integers(0, 10, 40).astype(np.int32))
  full = steps.summarize(steps.compute_metrics(logits, labels))
  cuts = [0, 7, 20, 33, 40]
  parts = steps.summarize([steps.compute_metrics(logits[a:b], labels[a:b])
                           for a, b in zip(cuts[:-1], cuts[1:])])
  assert (parts["correct"], parts["count"]) == (full["correct"], full["count"]) == (
      int((np.argmax(logits, -1) == labels).sum()), 40)
  want = reference.cross_entropy(np.asarray(logits, np.float64), np.asarray(labels))
  # float32 per-example losses summed: 1e-6 relative is a few float32 ulps.
  np.testing.assert_allclose([parts["loss"], full["loss"]], want, rtol=1e-6)


@pytest.mark.slow
def test_training_pixel_statistics(mnist_dir):
  train = data.load_split("train", "idx", manual_dir=str(mnist_dir))
  x = train.images.astype(np.float64) / 255
  # The published normalisation constants of MNIST (e.g. torchvision's examples).
  assert round(x.mean(), 4) == 0.1307 and round(x.std(), 4) == 0.3081


def test_cross_entropy_stays_right_for_huge_logits():
  """Equal logits give log C however large they are (optax's form gave 0 at 3.3e31, where
  float32's spacing is 2e24), a huge margin gives the margin, and ordinary logits are
  optax's values and gradients bit for bit (recorded runs reproduce)."""
  import optax
  labels = jnp.asarray([0, 3, 9], jnp.int32)
  for scale in (1.0, 3.3e31, -3.3e31):
    got = steps.cross_entropy(jnp.full((3, 10), scale, jnp.float32), labels)
    np.testing.assert_allclose(got, np.full(3, np.log(10)), rtol=1e-6)
  margin = jnp.asarray([[1e30] + [0.0] * 9], jnp.float32)
  np.testing.assert_allclose(steps.cross_entropy(margin, jnp.asarray([1])), [1e30], rtol=1e-6)
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(64, 10)) * 8, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, 64), jnp.int32)
  ours = jax.jit(jax.value_and_grad(lambda z: steps.cross_entropy(z, labels).sum()))(logits)
  theirs = jax.jit(jax.value_and_grad(lambda z: optax.softmax_cross_entropy_with_integer_labels(
      z, labels).sum()))(logits)
  for a, b in zip(ours, theirs):
    np.testing.assert_array_equal(a, b)
