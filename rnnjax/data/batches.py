"""Batches of a split: the training order and augmentation of each epoch, and evaluation
batches that count every image once.

Batches are NumPy: images `<float32>[batch, 28, 28]` in [0, 1] (or, through a `Task`,
sequences `[batch, 784, 1]`), labels `<int32>[batch]`. The training order of an epoch is a
pure function of `(seed, epoch)`, so a resumed run sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from rnnjax.data.sources import Split
from rnnjax.data.tasks import Task

def to_float(images: np.ndarray) -> np.ndarray:
  """`<uint8>[..., 28, 28]` -> `<float32>[..., 28, 28]` in [0, 1]."""
  return images.astype(np.float32) / np.float32(255)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """Training order of epoch `epoch`: a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def steps_per_epoch(n: int, batch_size: int) -> int:
  """Training steps per epoch; the last partial batch is dropped (the order changes each
  epoch, so every example is still seen)."""
  return n // batch_size


def epoch_shifts(seed: int, epoch: int, n: int, max_shift: int) -> np.ndarray:
  """Random translations of epoch `epoch`: `<int>[n, 2]` (rows, columns) in
  [-max_shift, max_shift], one per position of the epoch's order; a pure function of
  (seed, epoch), independent of the order's own stream."""
  return np.random.default_rng([seed, epoch, 1]).integers(
      -max_shift, max_shift + 1, size=(n, 2))


def shift_images(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
  """Translates each image by whole pixels, filling with zeros (the background).

  Args:
    images: `[b, H, W]`.
    shifts: `<int>[b, 2]`: rows down, columns right (negative: up, left).
  Returns:
    `[b, H, W]`, same dtype; pixels moved out of the frame are lost.
  """
  b, h, w = images.shape
  s = int(np.abs(shifts).max(initial=0))
  if s == 0:
    return images.copy()
  padded = np.zeros((b, h + 2 * s, w + 2 * s), images.dtype)
  padded[:, s:s + h, s:s + w] = images
  out = np.empty_like(images)
  for k, (dy, dx) in enumerate(shifts):
    out[k] = padded[k, s - dy:s - dy + h, s - dx:s - dx + w]
  return out


def train_batches(split: Split, batch_size: int, seed: int, epoch: int,
                  start_step: int = 0, max_shift: int = 0,
                  shard: tuple[int, int] | None = None,
                  task: Task | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Yields the training batches of `epoch` from step `start_step` on.

  Order and augmentation (random translations by up to `max_shift` pixels, off when 0) are
  pure functions of (seed, epoch): resuming at `start_step` gives the same batches.
  `shard=(first, count)` yields only rows [first, first + count) of every global batch of
  `batch_size` (one process's share in a multi-host run; only those images are read).
  `task` turns the (shifted) images into sequences; None: rows.

  Yields:
    {'image': <float32>[rows, time, features], 'label': <int32>[rows]}
  """
  n = len(split)
  first, count = shard or (0, batch_size)
  perm = epoch_permutation(seed, epoch, n)
  shifts = epoch_shifts(seed, epoch, n, max_shift) if max_shift > 0 else None
  for i in range(start_step, steps_per_epoch(n, batch_size)):
    pos = np.arange(i * batch_size, (i + 1) * batch_size)
    pos = pos[np.argsort(perm[pos], kind="stable")][first:first + count]  # sorted: faster gather
    idx = perm[pos]
    images = split.images[idx]
    if shifts is not None:
      images = shift_images(images, shifts[pos])
    images = to_float(images)
    yield {"image": task(images) if task else images, "label": split.labels[idx]}


def eval_batches(split: Split, batch_size: int, shard: tuple[int, int] | None = None,
                 task: Task | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Yields every example exactly once, in order; the last batch is zero-padded to
  `batch_size` so that one compiled step serves all, and `mask` marks the real rows.
  `shard=(first, count)`: only those rows of every batch, as in `train_batches`; `task`
  as there.

  Yields:
    {'image': <float32>[rows, time, features], 'label': <int32>[rows],
     'mask': <float32>[rows]}
  """
  n = len(split)
  first, count = shard or (0, batch_size)
  for start in range(0, n, batch_size):
    lo, hi = min(start + first, n), min(start + first + count, start + batch_size, n)
    pad = count - (hi - lo)
    images, labels = to_float(split.images[lo:hi]), split.labels[lo:hi]
    mask = np.ones(hi - lo, np.float32)
    if pad:
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], np.float32)])
      labels = np.concatenate([labels, np.zeros(pad, np.int32)])
      mask = np.concatenate([mask, np.zeros(pad, np.float32)])
    yield {"image": task(images) if task else images, "label": labels, "mask": mask}
