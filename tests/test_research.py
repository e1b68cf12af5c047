"""Tasks, cells and architectures against independent references.

Cells: each against a float64 NumPy implementation of its equations (`tests/helpers/reference.py`),
stacked, bidirectional and with both readouts. Tasks: exact input shapes and pixel orders,
a pinned permutation, and a resumed permuted run that keeps its stored order.
"""

import dataclasses
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import random_params, reference, synthetic_split
from rnnjax import config as config_lib
from rnnjax import data, inference, models, presets, resources, steps, train
from rnnjax import workdir as workdir_lib

CELLS = [c for c, spec in config_lib.CELLS.items() if not spec.model]  # lru: test_lru.py


def rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


CASES = [  # (cell, layers, bidirectional, readout, batch, time, features, hidden)
    *[(c, 1, False, "last", 3, 9, 5, 7) for c in CELLS],
    ("lstm", 2, True, "last", 2, 6, 4, 5), ("gru", 2, True, "last", 2, 6, 4, 5),
    ("irnn", 2, False, "mean", 3, 7, 4, 6), ("tanh", 1, True, "mean", 2, 5, 3, 4),
    ("lstm", 1, False, "last", 2, 784, 1, 8),  # sequential MNIST's shape
]


@pytest.mark.parametrize("cell,layers,bidirectional,readout,batch,time,features,hidden", CASES)
def test_logits_match_float64_numpy(cell, layers, bidirectional, readout, batch, time,
                                    features, hidden):
  with jax.enable_x64(True):
    model = models.SequenceClassifier(hidden, layers, num_classes=10, cell=cell,
                                      bidirectional=bidirectional, readout=readout)
    x = jax.random.uniform(jax.random.key(1), (batch, time, features), jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), random_params(model, x))
    got = jax.jit(model.apply)({"params": params}, x)
    want = reference.classifier_logits(jax.device_get(params), np.asarray(x), cell,
                                       bidirectional, readout)
  # float64 on both sides with the same equations: only summation order and ulps of
  # exp/tanh differ (over up to 784 steps).
  err = rel_err(got, want)
  print(f"measured: {cell} layers={layers} bidirectional={bidirectional} {readout}: {err:.1e}")
  assert got.shape == (batch, 10)
  assert err <= 1e-10


@pytest.mark.parametrize("cell", ["gru", "tanh", "irnn", "lem", "cornn"])
def test_float32_logits_and_gradients_match_float64(cell):
  """The float32 model (what trains) against the same model in float64, forward and
  gradients, on a 28-step input (the LSTM's gradients: tests/test_numerics.py)."""
  model = models.SequenceClassifier(8, 1, num_classes=10, cell=cell)
  x = jax.random.uniform(jax.random.key(1), (4, 28, 28))
  labels = jnp.array([0, 3, 9, 1])
  params = random_params(model, x)

  def loss(p, xx):
    return steps.cross_entropy(model.apply({"params": p}, xx), labels).mean()

  grad, apply = jax.jit(jax.grad(loss)), jax.jit(model.apply)
  g32 = grad(params, x)
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    g64 = grad(p64, x.astype(jnp.float64))
    l64 = apply({"params": p64}, x.astype(jnp.float64))
  assert rel_err(apply({"params": params}, x), l64) <= 1e-5
  for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g64)):
    assert rel_err(a, b) <= 1e-4  # float32 gradients through 28 steps: ~1e-6 measured


def test_lstm_cell_and_optimized_lstm_cell_agree():
  """`lstm_cell` (unfused) and `lstm` (fused) share parameters and equations."""
  x = jax.random.uniform(jax.random.key(1), (3, 10, 6))
  fused = models.SequenceClassifier(16, 2, cell="lstm")
  plain = models.SequenceClassifier(16, 2, cell="lstm_cell")
  params = random_params(fused, x)
  assert (jax.tree.structure(params)
          == jax.tree.structure(jax.eval_shape(plain.init, jax.random.key(0), x)["params"]))
  np.testing.assert_allclose(plain.apply({"params": params}, x),
                             fused.apply({"params": params}, x), rtol=0, atol=2e-6)


def test_irnn_initialisation():
  model = models.SequenceClassifier(50, 1, cell="irnn")
  params = models.init_params(model, jax.random.key(0), jnp.zeros((1, 784, 1)))
  cell = params["rnn_0"]["cell"]
  np.testing.assert_array_equal(cell["h"]["kernel"], np.eye(50, dtype=np.float32))
  np.testing.assert_array_equal(cell["i"]["bias"], np.zeros(50, np.float32))
  std = float(np.std(cell["i"]["kernel"]))
  assert 0.0005 < std < 0.002, std  # N(0, 0.001^2) over 50 draws
  # With the identity recurrence and zero bias, a non-negative input is carried unchanged
  # when no new input arrives: h_t = relu(h_{t-1}).
  x = np.zeros((1, 5, 1), np.float32)
  x[0, 0, 0] = 1.0
  out = nn_outputs(model, params, x)
  np.testing.assert_allclose(out[0, -1], np.maximum(cell["i"]["kernel"][0], 0), atol=0)


def nn_outputs(model, params, x):
  """The last layer's outputs at every step (the head applied to nothing)."""
  import flax.linen as nn
  rnn = nn.RNN(models.make_cell(model.cell, model.hidden_size))
  return np.asarray(rnn.apply({"params": params["rnn_0"]}, x))


@pytest.mark.parametrize("cell", ["lstm", "lstm_cell"])
def test_forget_bias(cell):
  config = presets.get("tiny").replace(cell=cell, forget_bias=1.0, num_layers=2)
  plain = steps.create_train_state(config.replace(forget_bias=0.0), jax.random.key(0))
  state = steps.create_train_state(config, jax.random.key(0))
  for k in range(2):
    for g in "ifgo":
      want = plain.params[f"rnn_{k}"]["cell"][f"h{g}"]["bias"] + (1.0 if g == "f" else 0.0)
      np.testing.assert_array_equal(state.params[f"rnn_{k}"]["cell"][f"h{g}"]["bias"], want)
  assert float(state.params["rnn_0"]["cell"]["hf"]["bias"][0]) == 1.0  # Flax inits zeros


@pytest.mark.parametrize("cell", ["lstm", "lstm_cell"])
def test_chrono_init(cell):
  # Tallec and Ollivier 2018: b_f = log(u), u ~ U(1, T - 1), b_i = -b_f; the rest as Flax's.
  config = presets.get("tiny").replace(
      cell=cell, task="pixels", chrono_init=True, num_layers=2, hidden_size=64)
  plain = steps.create_train_state(config.replace(chrono_init=False), jax.random.key(0))
  state = steps.create_train_state(config, jax.random.key(0))
  draws = []
  for k in range(2):
    new, old = state.params[f"rnn_{k}"]["cell"], plain.params[f"rnn_{k}"]["cell"]
    u = np.exp(np.asarray(new["hf"]["bias"], np.float64))
    assert u.min() >= 1 - 1e-5 and u.max() <= 783 * (1 + 1e-6), (u.min(), u.max())
    np.testing.assert_array_equal(new["hi"]["bias"], -new["hf"]["bias"])
    for g in ("hg", "ho", "ii", "if", "ig", "io"):
      for a, b in zip(jax.tree.leaves(new[g]), jax.tree.leaves(old[g]), strict=True):
        np.testing.assert_array_equal(a, b)
    draws.append(u)
  u = np.concatenate(draws)  # 128 draws of U(1, 783): mean 392, sd 226 (sd of the mean 20)
  assert 392 - 80 < u.mean() < 392 + 80, u.mean()
  assert not np.array_equal(draws[0], draws[1])  # each layer its own draw
  for a, b in zip(jax.tree.leaves(state.params["head"]), jax.tree.leaves(plain.params["head"]),
                  strict=True):
    np.testing.assert_array_equal(a, b)


def test_chrono_init_refusals():
  tiny = presets.get("tiny")
  with pytest.raises(ValueError, match="chrono_init applies to the LSTM cells only"):
    tiny.replace(cell="gru", chrono_init=True)
  with pytest.raises(ValueError, match="leave forget_bias at 0"):
    tiny.replace(chrono_init=True, forget_bias=1.0)


def test_forget_bias_only_for_lstm():
  with pytest.raises(ValueError, match="forget_bias applies to the LSTM cells only"):
    presets.get("tiny").replace(cell="gru", forget_bias=1.0)


def lstm_layer_params(inputs, hidden):
  return 4 * (inputs * hidden + hidden * hidden + hidden)


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (3, False), (1, True), (2, True)])
def test_stacked_and_bidirectional_shapes_and_counts(layers, bidirectional):
  hidden, features, classes = 6, 28, 10
  model = models.SequenceClassifier(hidden, layers, classes, bidirectional=bidirectional)
  x = jnp.ones((3, 28, features))
  params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]  # shapes: no compiling
  directions = 2 if bidirectional else 1
  want = 0
  for k in range(layers):
    inputs = features if k == 0 else directions * hidden
    want += directions * lstm_layer_params(inputs, hidden)
  want += directions * hidden * classes + classes
  assert sum(p.size for p in jax.tree.leaves(params)) == want
  assert params["head"]["kernel"].shape == (directions * hidden, classes)
  assert jax.eval_shape(model.apply, {"params": params}, x).shape == (3, classes)
  assert jax.eval_shape(lambda p: model.apply(p, x, all_steps=True),
                        {"params": params}).shape == (3, 28, classes)


def test_parameter_counts_of_the_presets():
  """Hand-counted: LSTM 256 on rows 4*(28*256 + 256^2 + 256) + 2570 = 294,410; GRU:
  3*(28*256 + 256^2) + 4*256 (ir, iz, in, hn biases) + 2570; the bidirectional LSTM twice
  the LSTM layer and a 512-wide head; LSTM 128 on pixels 4*(128 + 128^2 + 128) + 1290;
  IRNN 100: 100 + 100 + 100^2 + 1010; LEM 128 on pixels: input 4H + 4H, hidden H*3H + 3H,
  z H^2 + H, head 1290; coRNN 256: input H + H, z and y H^2 each, head 2570; the parallel
  LMU: encoder 1, W_m order*H, bias H, head 10H + 10; the LMU 212 over order 256 (keras-lmu's
  101,771): encoder 1, W_m 256*212, W_x 212 and bias 212, W_h 212^2, head 2130."""
  lem = 8 * 128 + 3 * 128 ** 2 + 3 * 128 + 128 ** 2 + 128 + 1290
  want = {"default": 294410, "row_gru": 3 * (28 * 256 + 256 ** 2) + 4 * 256 + 2570,
          "row_bilstm": 2 * 291840 + 5130, "smnist_lem": lem, "psmnist_lem": lem,
          "psmnist_lem_authors": lem,
          "psmnist_lmu": 1 + 256 * 212 + 2 * 212 + 212 ** 2 + 2130,
          "psmnist": 1 + 468 * 346 + 346 + 3470, "smnist": 1 + 468 * 1024 + 1024 + 1024 ** 2 + 1024 + 10250,
          "lstm 128 on pixels": 67850, "irnn 100 on pixels": 11210,
          "cornn 256 on pixels": 2 * 256 + 2 * 256 ** 2 + 2570}
  pixels = {"lstm 128 on pixels": dict(cell="lstm", hidden_size=128),
            "irnn 100 on pixels": dict(cell="irnn", hidden_size=100),
            "cornn 256 on pixels": dict(cell="cornn", hidden_size=256)}
  for name, count in want.items():
    config = (presets.get("tutorial").replace(task="pixels", **pixels[name]) if name in pixels
              else presets.get(name))
    state = jax.eval_shape(lambda c=config: steps.create_train_state(c, jax.random.key(0)))
    assert sum(p.size for p in jax.tree.leaves(state.params)) == count, name
    assert resources.parameter_count(config) == count, name


def test_mean_readout_is_mean_of_outputs():
  model = models.SequenceClassifier(5, 1, readout="mean")
  x = jax.random.uniform(jax.random.key(1), (2, 7, 3))
  params = random_params(model, x)
  outputs = nn_outputs(model, params, x)
  head = params["head"]
  np.testing.assert_allclose(model.apply({"params": params}, x),
                             outputs.mean(1) @ head["kernel"] + head["bias"], atol=1e-6)
  steps_logits = model.apply({"params": params}, x, all_steps=True)
  np.testing.assert_allclose(steps_logits[:, -1], model.apply({"params": params}, x),
                             atol=1e-6)


def test_dropout():
  """Off at evaluation; with train=True, the mask zeroes about `rate` of the outputs and
  scales the rest by 1/(1 - rate); same key, same mask."""
  model = models.SequenceClassifier(64, 2, dropout=0.5)
  plain = models.SequenceClassifier(64, 2)
  x = jax.random.uniform(jax.random.key(1), (8, 5, 3))
  params = random_params(plain, x)
  np.testing.assert_array_equal(model.apply({"params": params}, x),
                                plain.apply({"params": params}, x))
  rngs = {"dropout": jax.random.key(3)}
  a = model.apply({"params": params}, x, train=True, rngs=rngs)
  b = model.apply({"params": params}, x, train=True, rngs=rngs)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, plain.apply({"params": params}, x), atol=1e-3)
  import flax.linen as nn
  y = jnp.ones((1000,))
  kept = nn.Dropout(0.5).apply({}, y, deterministic=False, rngs=rngs)
  assert 0.45 < float(jnp.mean(kept > 0)) < 0.55
  assert set(np.unique(np.asarray(kept))) <= {0.0, 2.0}


def test_train_step_dropout_masks_follow_the_step():
  config = presets.get("tiny").replace(dropout=0.3)
  state = steps.create_train_state(config, jax.random.key(0))
  batch = {"image": jax.random.uniform(jax.random.key(1), (4, 28, 28)),
           "label": jnp.array([1, 2, 3, 4])}
  key = steps.dropout_key(config)
  train_step = jax.jit(steps.train_step)
  a, ma = train_step(state, batch, key)
  b, mb = train_step(state, batch, jax.random.key_data(key))  # raw key data too
  assert float(ma["loss_sum"]) == float(mb["loss_sum"])
  later = state.replace(step=state.step + 1)
  _, mc = train_step(later, batch, key)
  assert float(mc["loss_sum"]) != float(ma["loss_sum"])  # another step, another mask
  with pytest.raises(Exception, match="dropout"):  # no key: flax asks for one
    train_step(state, batch)


# ----------------------------------------------------------------------------------------
# Tasks.

def test_task_shapes_and_pixel_orders():
  images = np.random.default_rng(0).random((3, 28, 28)).astype(np.float32)
  rows = data.make_task("rows")(images)
  assert rows.shape == (3, 28, 28) and np.array_equal(rows, images)
  pixels = data.make_task("pixels")(images)
  assert pixels.shape == (3, 784, 1)
  assert pixels[1, 28 * 5 + 7, 0] == images[1, 5, 7]  # raster order: row 5, column 7
  task = data.make_task("permuted", permutation_seed=0)
  permuted = task(images)
  assert permuted.shape == (3, 784, 1)
  t = 100
  r, c = divmod(int(task.permutation[t]), 28)
  assert permuted[2, t, 0] == images[2, r, c]
  assert sorted(task.permutation.tolist()) == list(range(784))
  # The declared shapes (what the model is initialised with) are the shapes made above.
  for name, made in (("rows", rows), ("pixels", pixels), ("permuted", permuted)):
    assert data.make_task(name, permutation_seed=0).shape == made.shape[1:]
    assert steps.input_shape(presets.get("tiny").replace(task=name)) == (
        1, *made.shape[1:])


def test_permutation_is_stable():
  """Pinned: the order of permutation_seed 0 (a NumPy change would show up here; runs keep
  theirs in permutation.json anyway)."""
  p = data.pixel_permutation(0)
  assert p[:8].tolist() == PINNED_FIRST
  assert hashlib.sha256(p.astype(np.int64).tobytes()).hexdigest()[:16] == PINNED_SHA
  assert np.array_equal(p, data.pixel_permutation(0))
  assert not np.array_equal(p, data.pixel_permutation(1))


PINNED_FIRST = [318, 2, 606, 446, 758, 13, 98, 539]  # NumPy 2.x PCG64, seed 0
PINNED_SHA = "3aa79b80c498bc4e"  # sha256 of the int64 bytes, first 16 hex digits


def test_task_errors():
  with pytest.raises(ValueError, match="permutation of range"):
    data.Task("permuted", np.arange(783))
  with pytest.raises(ValueError, match="task must be one of"):
    presets.get("tiny").replace(task="columns")
  with pytest.raises(ValueError, match="cell must be one of"):
    presets.get("tiny").replace(cell="transformer")


def tiny_permuted(**changes):
  return presets.get("tiny").replace(
      **{"task": "permuted", "hidden_size": 4, "batch_size": 50, "eval_batch_size": 100,
         **changes})


@pytest.fixture(scope="module")
def small_splits():
  return synthetic_split(200, seed=0), synthetic_split(100, seed=1)


def test_resumed_permuted_run_keeps_its_stored_permutation(tmp_path, small_splits,
                                                           monkeypatch):
  """Epoch 1, then a resume for epoch 2 under a 'changed NumPy' (pixel_permutation now
  returns another order): the resumed run reads permutation.json and ends bit-identical to
  an uninterrupted two-epoch run."""
  full, _ = train.train_and_evaluate(tiny_permuted(epochs=2), tmp_path / "full",
                                     splits=small_splits, log=lambda s: None)
  train.train_and_evaluate(tiny_permuted(epochs=1), tmp_path / "split",
                           splits=small_splits, log=lambda s: None)
  stored = json.loads((tmp_path / "split" / "permutation.json").read_text())
  assert stored["permutation"] == data.pixel_permutation(0).tolist()
  real = data.pixel_permutation
  monkeypatch.setattr(data.tasks, "pixel_permutation", lambda seed: real(seed + 1))
  resumed, history = train.train_and_evaluate(tiny_permuted(epochs=2), tmp_path / "split",
                                              splits=small_splits, log=lambda s: None)
  assert len(history) == 2
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  assert json.loads((tmp_path / "split" / "permutation.json").read_text()) == stored
  # evaluate reads it too: same correct count as the run recorded.
  run = inference.load_run(tmp_path / "split", "latest")
  assert np.array_equal(run.task.permutation, stored["permutation"])
  result = inference.evaluate_run(run, small_splits[1])
  assert result["correct"] == history[-1]["test_correct"]


def test_permuted_run_refuses_another_permutation_seed(tmp_path, small_splits):
  train.train_and_evaluate(tiny_permuted(), tmp_path, splits=small_splits, log=lambda s: None)
  with pytest.raises(workdir_lib.WorkdirError, match="permutation_seed"):
    train.train_and_evaluate(tiny_permuted(epochs=2, permutation_seed=3), tmp_path,
                             splits=small_splits, log=lambda s: None)
  (tmp_path / "permutation.json").write_text("{broken")
  with pytest.raises(workdir_lib.WorkdirError, match="pixel order"):
    train.train_and_evaluate(tiny_permuted(epochs=2), tmp_path, splits=small_splits,
                             log=lambda s: None)


def test_pixel_task_trains_on_its_sequences(tmp_path, small_splits, monkeypatch):
  """The loop feeds the model the task's [b, 784, 1] sequences (shape seen when the step
  is traced; the transform itself: test_task_shapes_and_pixel_orders)."""
  seen = []
  real = steps.train_step

  def spy(state, batch, key=None):
    seen.append(batch["image"].shape)
    return real(state, batch, key)

  monkeypatch.setattr(steps, "train_step", spy)
  config = tiny_permuted(task="pixels")
  train.train_and_evaluate(config, tmp_path, splits=small_splits, log=lambda s: None)
  assert seen and all(s == (50, 784, 1) for s in seen)


def test_training_options_are_recorded_in_config_json(tmp_path, small_splits):
  config = presets.get("tiny").replace(
      optimizer="adamw", weight_decay=0.05, schedule="cosine", warmup_epochs=0.5,
      grad_clip_norm=0.7, cell="gru", bidirectional=True, dropout=0.2, readout="mean",
      batch_size=50, eval_batch_size=100)
  train.train_and_evaluate(config, tmp_path, splits=small_splits, log=lambda s: None)
  stored = json.loads((tmp_path / "config.json").read_text())
  for field in ("optimizer", "weight_decay", "schedule", "warmup_epochs", "grad_clip_norm",
                "cell", "bidirectional", "dropout", "readout"):
    assert stored[field] == getattr(config, field), field
  assert config_lib.Config.from_dict(stored) == config


def test_adamw_decays_weights_by_lr_times_decay():
  """With zero gradients, AdamW's update is -lr * weight_decay * param (decoupled)."""
  config = presets.get("tiny").replace(optimizer="adamw", weight_decay=0.1,
                                                 learning_rate=0.01)
  tx = steps.make_optimizer(config)
  params = {"w": jnp.array([1.0, -2.0])}
  updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.001, 0.002], rtol=1e-6)


@pytest.mark.slow
def test_another_datasets_files_are_named_in_the_error(mnist_dir):
  """MNIST's files offered as Fashion-MNIST's: the error says whose they are."""
  with pytest.raises(data.DataError, match="it is mnist's t10k-images-idx3-ubyte.gz, not "
                                           "fashion_mnist's"):
    data.load_idx("test", manual_dir=mnist_dir, dataset="fashion_mnist")


def write_idx_files(folder, seed=0):
  """The four file names with valid IDX content (random images, labels 0-9)."""
  import gzip
  folder.mkdir()
  rng = np.random.default_rng(seed)
  for images, labels, n in data.FILES.values():
    header = lambda a: bytes([0, 0, 8, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape)
    a = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    (folder / images).write_bytes(gzip.compress(header(a) + a.tobytes(), compresslevel=1))
    b = rng.integers(0, 10, (n,), dtype=np.uint8)
    (folder / labels).write_bytes(gzip.compress(header(b) + b.tobytes(), compresslevel=1))
  return folder


def test_other_datasets_by_name_through_their_own_checksums(tmp_path, monkeypatch):
  """`dataset='kmnist'` reads its manual dir and checks the files against kmnist's
  registered SHA-256 (here: the synthetic files' own, swapped in), not MNIST's."""
  folder = write_idx_files(tmp_path / "kmnist")
  sums = {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in data.ALL_FILES}
  with pytest.raises(data.DataError, match="wrong checksum for kmnist"):
    data.load_idx("test", manual_dir=folder, dataset="kmnist")
  monkeypatch.setitem(data.PUBLISHED, "kmnist",
                      dataclasses.replace(data.PUBLISHED["kmnist"], sha256=sums))
  test = data.load_split("test", "idx", manual_dir=folder, dataset="kmnist")
  assert test.images.shape == (10000, 28, 28) and test.labels.dtype == np.int32
  with pytest.raises(data.DataError, match="wrong checksum for mnist"):
    data.load_idx("test", manual_dir=folder, dataset="mnist")
  config = presets.get("tiny").replace(dataset="kmnist", data_source="idx",
                                                 manual_dir=str(folder))
  train_split, test_split = data.load_dataset(config)
  assert len(train_split) == 60000 and np.array_equal(test_split.labels, test.labels)


def test_offline_without_files_names_the_dataset_and_its_server(tmp_path, monkeypatch):
  monkeypatch.setattr(data.sources, "network_available", lambda host, **k: host is None)
  with pytest.raises(data.DataError, match="fashion_mnist data not found.*"
                                           "fashion-mnist.s3-website"):
    data.load_idx("test", data_dir=tmp_path, dataset="fashion_mnist")
  assert (data.sources._host("fashion_mnist")
          == "fashion-mnist.s3-website.eu-central-1.amazonaws.com")


@pytest.mark.parametrize("cell,paths", [
    ("lem", {"input/kernel": (3, 16), "input/bias": (16,), "hidden/kernel": (4, 12),
             "hidden/bias": (12,), "z/kernel": (4, 4), "z/bias": (4,)}),
    ("cornn", {"input/kernel": (3, 4), "input/bias": (4,), "z/kernel": (4, 4),
               "y/kernel": (4, 4)})])
def test_long_sequence_cells_parameter_paths_and_initialisation(cell, paths):
  """The documented paths and shapes (features 3, hidden 4), initialised uniform within
  the authors' bound: 1/sqrt(H) for LEM, 1/sqrt(F + 2H) for coRNN."""
  model = models.SequenceClassifier(4, 1, cell=cell)
  params = model.init(jax.random.key(0), jnp.zeros((2, 5, 3)))["params"]["rnn_0"]["cell"]
  flat = {"/".join(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  assert {k: v.shape for k, v in flat.items()} == paths
  bound = 1 / np.sqrt(4) if cell == "lem" else 1 / np.sqrt(3 + 8)
  values = np.concatenate([np.ravel(v) for v in flat.values()])
  assert np.abs(values).max() <= bound and np.abs(values).max() > 0.8 * bound
