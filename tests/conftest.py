"""Fixtures: tiny configs, synthetic MNIST-shaped splits, the real files if present (helpers
that are not fixtures: tests/helpers)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# One XLA compilation cache for the whole test run: the xdist workers and the command-line
# subprocesses the tests start compile the same tiny models over and over, and JAX's
# persistent cache (keyed by the program, the jax/jaxlib versions and the flags) lets them
# share the work. Numbers are unaffected: a cache hit loads the same compiled program. Set
# before JAX is imported; subprocesses inherit it. JAX_ENABLE_COMPILATION_CACHE=false turns
# it off.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(REPO / ".pytest_cache" / "jax-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# XLA compiles with LLVM's cheap settings (no optimisation passes): the numerical tests,
# which compile many small programs, take half the time. The compiled programs compute the
# same thing but may round differently in the last bits (where a multiply and an add fuse,
# say), so no test compares against numbers made with other flags: every comparison is
# against a float64 reference or a stored fixture with a tolerance, or between runs of the
# same suite. The end-to-end test on real MNIST runs the command with XLA's defaults, as
# users run it; `XLA_FLAGS= python -m pytest ...` runs every test so (docs/numerics.md).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                                   "--xla_llvm_disable_expensive_passes=true")

import pytest  # noqa: E402

from rnnjax import presets  # noqa: E402
from rnnjax import data  # noqa: E402
from tests.helpers import HAVE_MNIST, MNIST_DIR, synthetic_split  # noqa: E402


@pytest.fixture
def tiny_config():
  return presets.get("tiny")


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
  """A tfds data dir with `mnist` prepared offline from the real files (once per test run)."""
  pytest.importorskip("tensorflow_datasets")
  path = tmp_path_factory.mktemp("tfds")
  data.prepare_tfds("mnist", data_dir=str(path), manual_dir=str(mnist_dir))
  return path
