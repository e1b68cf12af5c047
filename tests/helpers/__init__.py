"""What several test files share: paths, synthetic data, the real MNIST files when present,
and the command-line runner with its checks. (The float64 NumPy references:
`tests.helpers.reference`.)"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import data

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "experiments" / "mnist_lstm.py"

_env = os.environ.get(data.MANUAL_DIR_ENV)
MNIST_DIR = Path(_env) if _env else REPO.parent / "shared" / "data" / "mnist"
HAVE_MNIST = all((MNIST_DIR / f).is_file() for f in data.ALL_FILES)
requires_mnist = pytest.mark.skipif(
    not HAVE_MNIST, reason=f"real MNIST files not found in {MNIST_DIR} (set "
    f"{data.MANUAL_DIR_ENV} to the folder holding the four official files)")

# Two epochs of the tiny preset (8 units, batch 16) on the real files, without a bar.
TINY = ["--preset", "tiny", "--epochs", "2", "--data-source", "idx", "--no-progress"]


def random_params(model, *inputs, seed=0, bias_scale=0.1):
  """Parameters with the tree and shapes of `model.init(key, *inputs)`, drawn by NumPy:
  matrices N(0, 1/fan_in), vectors and scalars N(0, bias_scale^2). For numerical tests,
  which need parameters, not Flax's initial ones: no structure (identity, orthogonality)
  that could hide a transposed kernel, non-zero biases that exercise every term, and no
  compiled init (an LSTM's orthogonal initialisers take seconds to compile)."""
  shapes = jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a)["params"], *inputs)
  rng = np.random.default_rng(seed)

  def draw(leaf):
    std = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if len(leaf.shape) >= 2 else bias_scale
    return jnp.asarray((std * rng.standard_normal(leaf.shape)).astype(leaf.dtype))
  return jax.tree.map(draw, shapes)


def synthetic_split(n: int, seed: int) -> data.Split:
  """MNIST-shaped random split whose label is learnable (the brightest of 10 row bands)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, size=n).astype(np.int32)
  for i, y in enumerate(labels):
    images[i, 2 * y + 4: 2 * y + 6] = 255
  return data.Split(images=images, labels=labels)


def run_cli(*args, env=None, timeout=600):
  """`python experiments/mnist_lstm.py ARGS...` in a subprocess, from the checkout."""
  e = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                        text=True, cwd=REPO, env=e, timeout=timeout)


def snapshot(workdir):
  """{path: bytes} of every file under workdir/checkpoints, but for Orbax's temporary
  folders (a step being written; never taken for a checkpoint, removed at the next start)."""
  root = workdir / "checkpoints"
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
          if p.is_file() and ".orbax-checkpoint-tmp" not in str(p)}


def check_refused(r, workdir, before, *messages, code=1):
  """`r` (a finished command) exited `code` with each of `messages` and no traceback, and
  left the checkpoints of `workdir` as `before` (a `snapshot`)."""
  assert r.returncode == code, (r.returncode, r.stderr[-3000:])
  for m in messages:
    assert m in r.stderr, r.stderr[-3000:]
  assert "Traceback" not in r.stderr
  assert snapshot(workdir) == before


def abstract_like(state):
  """Shape/dtype structs of `state`'s arrays, for restoring without materialising it."""
  import orbax.checkpoint as ocp
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def worst_central_difference_error(loss, params, h=1e-4, per_leaf=3, seed=0) -> float:
  """The largest relative error of `jax.grad(loss)(params)` against fourth-order central
  differences of `loss` (float64 params), over `per_leaf` random entries of each leaf:
  |fd - g| / max(|g|, 1e-4)."""
  grads = jax.tree.leaves(jax.jit(jax.grad(loss))(params))
  loss = jax.jit(loss)
  flat, tree = jax.tree.flatten(params)
  rng, worst = np.random.default_rng(seed), 0.0
  for li, leaf in enumerate(flat):
    for j in rng.choice(leaf.size, size=min(per_leaf, leaf.size), replace=False):
      def shifted(d):
        new, moved = list(flat), np.array(leaf)  # (NumPy: no operation to compile)
        moved.ravel()[j] += d
        new[li] = moved
        return float(loss(jax.tree.unflatten(tree, new)))
      fd = (shifted(-2 * h) - 8 * shifted(-h) + 8 * shifted(h) - shifted(2 * h)) / (12 * h)
      g = float(np.ravel(grads[li])[j])
      worst = max(worst, abs(fd - g) / max(abs(g), 1e-4))
  return worst
