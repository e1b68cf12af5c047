"""Tasks: how an image becomes a sequence (rows, pixels, permuted pixels)."""

from __future__ import annotations

import dataclasses

import numpy as np

from rnnjax.config import SEQUENCE_SHAPES, TASKS

PIXELS = 28 * 28


def pixel_permutation(seed: int) -> np.ndarray:
  """The `permuted` task's pixel order, `<int64>[784]`: a pure function of `seed`.

  Runs store it in their workdir (permutation.json) and read it back from there, so a run
  keeps its order even if NumPy's generator changed between versions.
  """
  return np.random.default_rng(seed).permutation(PIXELS)


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """Turns images `<float32>[b, 28, 28]` into sequences `<float32>[b, time, features]`.

  * `rows`: 28 steps of 28 pixels (the image as it is).
  * `pixels`: 784 steps of 1 pixel, in raster order (sequential MNIST).
  * `permuted`: 784 steps of 1 pixel, pixel `permutation[t]` at step t (permuted
    sequential MNIST: no step is next to its neighbours in the image).

  Attributes:
    name: one of `rnnjax.config.TASKS`.
    permutation: `<int>[784]`, for `permuted` only.
  """
  name: str = "rows"
  permutation: np.ndarray | None = None

  def __post_init__(self):
    if self.name not in TASKS:
      raise ValueError(f"unknown task {self.name!r}")
    if self.name == "permuted":
      p = self.permutation
      if p is None or np.shape(p) != (PIXELS,) or not np.array_equal(np.sort(p),
                                                                     np.arange(PIXELS)):
        raise ValueError("the permuted task needs a permutation of range(784)")

  @property
  def shape(self) -> tuple[int, int]:
    """`(time, features)` of one sequence."""
    return SEQUENCE_SHAPES[self.name]

  def __call__(self, images: np.ndarray) -> np.ndarray:
    if self.name == "rows":
      return images
    flat = images.reshape(images.shape[0], PIXELS)
    if self.name == "permuted":
      flat = flat[:, self.permutation]
    return flat[:, :, None]


def make_task(name: str = "rows", permutation_seed: int = 0,
              permutation: np.ndarray | None = None) -> Task:
  """The task `name`; `permuted` uses `permutation` if given, else draws it from
  `permutation_seed`."""
  if name == "permuted" and permutation is None:
    permutation = pixel_permutation(permutation_seed)
  return Task(name, None if name != "permuted" else np.asarray(permutation, np.int64))
