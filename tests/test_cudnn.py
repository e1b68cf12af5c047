"""The cuDNN path for LSTM layers, on any device: the packing into cuDNN's flat layout
against `jax.experimental.rnn` and a float64 NumPy LSTM, and `CudnnLSTM` (through
`lstm_ref`, `RNNJAX_CUDNN=reference`) against the `nn.RNN` scan, forward and gradients,
both directions and stacked layers. On a GPU the same tests run cuDNN itself
(`benchmarks/gpu.sh`)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

from rnnjax import presets
from rnnjax import cpu_kernel, cudnn, models, train
from tests.helpers import random_params, run_cli, synthetic_split
from tests.helpers import reference as ref

ON_GPU = jax.default_backend() == "gpu"


@pytest.fixture
def cudnn_here(monkeypatch):
  """cuDNN where there is one, else `lstm_ref` in its place."""
  if not ON_GPU:
    monkeypatch.setenv(cudnn.REFERENCE_ENV, "reference")


def cell_params(inputs=5, hidden=4, seed=0):
  layer = nn.RNN(nn.OptimizedLSTMCell(hidden))
  return random_params(layer, jnp.zeros((1, 3, inputs)), seed=seed, bias_scale=0.5)["cell"]


def test_packing_is_cudnns_layout_and_round_trips_exactly():
  p = cell_params()
  w = cudnn.pack(p)
  assert w.shape == (rnn.get_num_params_in_lstm(5, 4, 1, False),)
  w_ih, w_hh, b_ih, b_hh = (d[0] for d in rnn.unpack_lstm_weights(w, 5, 4, 1, False))
  # Rows of W_ih are gates i, f, g, o, each [H, I]: the cell's input kernels, transposed.
  np.testing.assert_array_equal(w_ih[8:12], p["ig"]["kernel"].T)
  np.testing.assert_array_equal(w_hh[12:16], p["ho"]["kernel"].T)
  np.testing.assert_array_equal(b_ih, np.zeros(16))
  np.testing.assert_array_equal(b_hh[4:8], p["hf"]["bias"])
  back = cudnn.unpack(w, 5, 4)
  assert jax.tree.structure(back) == jax.tree.structure(p)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(p)):
    np.testing.assert_array_equal(a, b)


def test_a_packed_layer_through_lstm_ref_is_the_float64_lstm():
  """Independent of the packing code: `lstm_ref` on packed weights against the NumPy
  float64 LSTM on the cell's own parameters."""
  p = cell_params(seed=1)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 6, 5)).astype(np.float32)
  h0, c0 = (rng.normal(size=(3, 4)).astype(np.float32) for _ in range(2))
  w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(cudnn.pack(p), 5, 4, 1, False)
  y, h, c = rnn.lstm_ref(jnp.asarray(x), h0[None], c0[None], w_ih, w_hh, b_ih, b_hh,
                         jnp.full((3,), 6, jnp.int32), 5, 4, 1, 0.0, False)
  want, (c64, h64) = ref.lstm_layer(p, x.astype(np.float64), c0.astype(np.float64),
                                    h0.astype(np.float64))
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(h[0], h64, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(c[0], c64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw", [{}, {"reverse": True}, {"reverse": True, "keep_order": True},
                                {"time_major": True}, {"return_carry": True}])
def test_the_layer_is_nn_rnn_forward_and_gradients(cudnn_here, kw):
  hidden, inputs = 4, 5
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(7, 3, inputs) if kw.get("time_major") else (3, 7, inputs)),
                  jnp.float32)
  scan = nn.RNN(nn.OptimizedLSTMCell(hidden), **kw)
  fast = cudnn.CudnnLSTM(nn.OptimizedLSTMCell(hidden), **kw)
  params = {"params": random_params(scan, x, seed=3, bias_scale=0.5)}
  carry = (jnp.asarray(rng.normal(size=(3, hidden)), jnp.float32),) * 2

  def loss(layer):
    def f(p, x):
      out = layer.apply(p, x, initial_carry=carry)
      return sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(out))
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
  (a, ga), (b, gb) = loss(fast)(params, x), loss(scan)(params, x)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
  with pytest.raises(NotImplementedError, match="for seq_lengths use nn.RNN"):
    fast.apply(params, x, seq_lengths=jnp.full((x.shape[0],), 2))


def test_stacked_bidirectional_model_matches_the_scan(cudnn_here):
  """Two bidirectional layers: the model's logits and every parameter's gradient."""
  cfg = presets.get("tiny").replace(num_layers=2, bidirectional=True,
                                              hidden_size=6)
  fast = models.model_from_config(cfg.replace(rnn_kernel="cudnn"))
  scan = models.model_from_config(cfg.replace(rnn_kernel="xla"))
  assert fast.rnn_kernel == "cudnn"
  x = jnp.asarray(np.random.default_rng(4).random((4, 9, 28)), jnp.float32)
  labels = jnp.asarray([1, 2, 3, 4])
  params = random_params(scan, x, seed=5)

  def loss(model):
    return jax.jit(jax.value_and_grad(lambda p: jnp.mean(
        optax_ce(model.apply({"params": p}, x), labels))))
  (a, ga), (b, gb) = loss(fast)(params), loss(scan)(params)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def optax_ce(logits, labels):
  from rnnjax import steps
  return steps.cross_entropy(logits, labels)


def test_training_through_the_cudnn_path_is_the_scans_run(cudnn_here, tmp_path):
  """One epoch of the tiny preset through the whole loop: the same losses as the scan to
  float32 rounding."""
  splits = synthetic_split(64, 0), synthetic_split(40, 1)
  cfg = presets.get("tiny")
  _, fast = train.train_and_evaluate(cfg.replace(rnn_kernel="cudnn"), tmp_path / "c", splits,
                                     log=lambda s: None)
  _, scan = train.train_and_evaluate(cfg.replace(rnn_kernel="xla"), tmp_path / "x", splits,
                                     log=lambda s: None)
  for key in ("train_loss", "test_loss"):
    np.testing.assert_allclose(fast[-1][key], scan[-1][key], rtol=1e-5)
  assert fast[-1]["test_correct"] == scan[-1]["test_correct"]


@pytest.mark.skipif(ON_GPU, reason="a GPU is here: cuDNN can run")
def test_cudnn_without_a_gpu_is_refused_and_auto_passes_it_over(monkeypatch, tmp_path):
  monkeypatch.delenv(cudnn.REFERENCE_ENV, raising=False)
  assert cudnn.status() == (False, "cuDNN needs an NVIDIA GPU; JAX runs on cpu")
  with pytest.raises(cpu_kernel.KernelUnavailable,
                     match="rnn_kernel 'cudnn' cannot run here: cuDNN needs an NVIDIA GPU"):
    models.resolve("cudnn")
  assert models.resolve("auto") in ("cpu", "xla")
  r = run_cli("--workdir", tmp_path / "w", "--preset", "tiny", "--rnn-kernel", "cudnn",
              env={cudnn.REFERENCE_ENV: ""})
  assert r.returncode == 1, r.stderr
  assert r.stderr.strip().endswith("error: --rnn-kernel cudnn cannot run here: cuDNN needs an "
                                   "NVIDIA GPU; JAX runs on cpu. Use auto (cuDNN on a GPU, "
                                   "else the CPU kernel or the nn.RNN scan) or xla."), r.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()
