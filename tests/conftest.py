"""Shared fixtures: tiny configs, synthetic MNIST-shaped splits, the real files if present."""

import os
from pathlib import Path

import numpy as np
import pytest

from rnnjax import config as config_lib
from rnnjax import data

REPO = Path(__file__).resolve().parent.parent
_env = os.environ.get(data.MANUAL_DIR_ENV)
MNIST_DIR = Path(_env) if _env else REPO.parent / "shared" / "data" / "mnist"
HAVE_MNIST = all((MNIST_DIR / f).is_file() for f in data.ALL_FILES)
requires_mnist = pytest.mark.skipif(
    not HAVE_MNIST, reason=f"real MNIST files not found in {MNIST_DIR} (set "
    f"{data.MANUAL_DIR_ENV} to the folder holding the four official files)")


def synthetic_split(n: int, seed: int) -> data.Split:
  """MNIST-shaped random split whose label is learnable (the brightest of 10 row bands)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, size=n).astype(np.int32)
  for i, y in enumerate(labels):
    images[i, 2 * y + 4: 2 * y + 6] = 255
  return data.Split(images=images, labels=labels)


@pytest.fixture
def tiny_config():
  return config_lib.get_config("tiny")


@pytest.fixture(scope="session")
def tiny_splits():
  return synthetic_split(64, 0), synthetic_split(40, 1)


@pytest.fixture(scope="session")
def mnist_dir():
  if not HAVE_MNIST:
    pytest.skip(f"real MNIST files not found in {MNIST_DIR}")
  return MNIST_DIR


@pytest.fixture(scope="session")
def tfds_data_dir(mnist_dir, tmp_path_factory):
  """A tfds data dir with `mnist` prepared offline from the real files (once per session)."""
  pytest.importorskip("tensorflow_datasets")
  path = tmp_path_factory.mktemp("tfds")
  data.prepare_tfds("mnist", data_dir=str(path), manual_dir=str(mnist_dir))
  return path
