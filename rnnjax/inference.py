"""Use a trained run: restore its checkpoint, evaluate it, classify image files.

    from rnnjax import inference
    run = inference.load_run("runs/default")            # the best checkpoint
    result = inference.evaluate_run(run)                 # test loss, accuracy, per class
    probs = inference.predict(run, inference.load_images(["seven.png"]))

The command line wraps these: `experiments/mnist_lstm.py evaluate|predict --workdir W`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from rnnjax import checkpointing, data, steps
from rnnjax.config import Config

SIDE = 28  # MNIST images are 28 x 28
BOX = 20   # MNIST digits fit a 20 x 20 box, centred by their centre of mass


class InferenceError(Exception):
  """The workdir or an image cannot be used; the message says which and what to do."""


@dataclasses.dataclass
class Run:
  """A restored run: its config, train state, checkpoint step, the epoch record, and its
  task (images -> sequences, with the run's own pixel order for the permuted task)."""
  workdir: Path
  config: Config
  state: steps.TrainState
  step: int
  which: str
  record: dict[str, Any] | None  # the metrics.jsonl line of that checkpoint's epoch
  task: data.Task = dataclasses.field(default_factory=data.Task)


def load_run(workdir: str | os.PathLike, which: str = "best") -> Run:
  """Restores the `best` (by test accuracy) or `latest` checkpoint of `workdir`.

  `which` may also be a step number (as in checkpoints/<step>).
  """
  workdir = Path(workdir)
  stored = workdir / "config.json"
  if not stored.is_file():
    raise InferenceError(
        f"{workdir} holds no run (no config.json). Train one first: python "
        f"experiments/mnist_lstm.py --workdir {workdir}")
  try:
    config = Config.from_dict(json.loads(stored.read_text()))
  except (OSError, ValueError, TypeError) as e:
    raise InferenceError(f"{stored} is unreadable or invalid ({e}).") from None
  if config.lstm_kernel == "cpu":  # how the run trained, not a need: any machine evaluates
    config = config.replace(lstm_kernel="auto")
  from rnnjax import train  # the loop's own reading of the workdir's task
  try:
    task = train.load_task(workdir, config)
  except train.WorkdirError as e:
    raise InferenceError(str(e)) from None
  if config.task == "permuted" and not (workdir / train.PERMUTATION_FILE).is_file():
    raise InferenceError(f"{workdir} lacks {train.PERMUTATION_FILE}, the pixel order its "
                         "permuted-task checkpoints were trained with.")
  if not (workdir / "checkpoints").is_dir():
    raise InferenceError(f"{workdir} has no checkpoints/ yet: let the run finish an epoch.")
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints,
                                    read_only=True)  # the run may be writing beside us
  try:
    available = ckpt.steps()
    if not available:
      raise InferenceError(f"{workdir / 'checkpoints'} holds no checkpoint yet: let the run "
                           "finish an epoch.")
    if which == "best":
      step = ckpt.best_step() or ckpt.latest_step()
    elif which == "latest":
      step = ckpt.latest_step()
    else:
      try:
        step = int(which)
      except ValueError:
        raise InferenceError(f"--checkpoint must be best, latest or a step number, got "
                             f"{which!r}") from None
      if step not in available:
        raise InferenceError(f"no checkpoint {step} in {workdir / 'checkpoints'}; there are: "
                             f"{', '.join(map(str, available))}")
    abstract = jax.eval_shape(lambda: steps.create_train_state(config, jax.random.key(0)))
    restored = ckpt.restore(abstract, step=step)
  except checkpointing.CheckpointError as e:
    raise InferenceError(str(e)) from None
  finally:
    ckpt.close()
  state, meta, step = restored
  record = next((r for r in meta.get("history", []) if r.get("step") == step), None)
  return Run(workdir, config, state, step, which, record, task)


def evaluate_run(run: Run, test: data.Split | None = None,
                 batch_size: int | None = None) -> dict[str, Any]:
  """Loss, accuracy, confusion matrix and per-class accuracy on the test split."""
  from rnnjax import train  # the loop's own jitted steps and evaluation
  if test is None:
    test = data.load_split("test", run.config.data_source, run.config.data_dir,
                           run.config.manual_dir, run.config.dataset)
  _, eval_step = train.jit_steps()
  result = train.evaluate(eval_step, run.state, test, batch_size or run.config.eval_batch_size,
                          task=run.task)
  m = result["confusion"]
  result["per_class_accuracy"] = (m.diagonal() / np.maximum(m.sum(1), 1)).tolist()
  return result


def predict(run: Run, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
  """Class probabilities `<float32>[n, C]` of `images`: `<uint8>[n, 28, 28]` (MNIST's
  format: light digit on black) or float32 in [0, 1]; read as the run's task reads them."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    images = data.to_float(images)
  images = run.task(images)
  fn = jax.jit(steps.predict_step)
  out = [np.asarray(fn(run.state, images[i:i + batch_size]))
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out) if out else np.zeros((0, run.config.num_classes), np.float32)


# ----------------------------------------------------------------------------------------
# Image files -> MNIST-like arrays.

def load_images(paths: Sequence[str | os.PathLike]) -> np.ndarray:
  """`<uint8>[n, 28, 28]` from PNG/JPEG (any format Pillow reads) files; see `to_mnist`."""
  return np.stack([load_image(p) for p in paths]) if paths else np.zeros((0, SIDE, SIDE),
                                                                         np.uint8)


def load_image(path: str | os.PathLike) -> np.ndarray:
  """One image file as an MNIST-like `<uint8>[28, 28]`; InferenceError names a bad file."""
  from PIL import Image, UnidentifiedImageError
  path = Path(path)
  try:
    with Image.open(path) as im:
      im.load()
      gray = np.asarray(_flatten_alpha(im).convert("L"), np.float64) / 255.0
  except FileNotFoundError:
    raise InferenceError(f"{path}: no such file") from None
  except IsADirectoryError:
    raise InferenceError(f"{path}: is a folder, not an image file") from None
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise InferenceError(f"{path}: not a readable image (PNG or JPEG expected): "
                         f"{type(e).__name__}") from None
  try:
    return to_mnist(gray)
  except ValueError as e:
    raise InferenceError(f"{path}: {e}") from None


def _flatten_alpha(im):
  """Transparent pixels become white (a digit drawn on a transparent canvas)."""
  from PIL import Image
  if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba)
  return im


def to_mnist(gray: np.ndarray) -> np.ndarray:
  """A grayscale image `[h, w]` in [0, 1] -> `<uint8>[28, 28]` prepared like MNIST.

  1. Polarity: MNIST digits are light on black. When the image's border is mostly light
     (dark-on-light, as drawn on paper), it is inverted.
  2. A 28 x 28 image is taken as already MNIST-shaped (only step 1 applies).
  3. Otherwise: contrast stretched to [0, 1], faint background (< 10%) cleared, cropped to
     the ink's bounding box, resized so its longer side is 20 pixels (aspect kept), and
     placed in a 28 x 28 black frame with its centre of mass at the centre, as MNIST was
     made (LeCun et al.).
  """
  from PIL import Image
  g = np.asarray(gray, np.float64)
  if g.ndim != 2 or min(g.shape) < 1:
    raise ValueError(f"expected a 2-D grayscale image, got shape {g.shape}")
  border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
  if np.median(border) > 0.5:
    g = 1.0 - g
  if g.shape == (SIDE, SIDE):
    return np.round(np.clip(g, 0, 1) * 255).astype(np.uint8)
  lo, hi = float(g.min()), float(g.max())
  if hi - lo < 0.05:
    raise ValueError("no digit found: the image is blank (no contrast)")
  g = (g - lo) / (hi - lo)
  g[g < 0.1] = 0.0
  rows, cols = np.nonzero(g)
  g = g[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
  h, w = g.shape
  scale = BOX / max(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL: (width, height)
  small = np.asarray(Image.fromarray((g * 255).astype(np.uint8)).resize(
      size, Image.Resampling.LANCZOS), np.float64) / 255.0
  small = np.clip(small, 0, 1)
  frame = np.zeros((SIDE, SIDE))
  top, left = (SIDE - small.shape[0]) // 2, (SIDE - small.shape[1]) // 2
  frame[top:top + small.shape[0], left:left + small.shape[1]] = small
  # Move the centre of mass to the centre (whole pixels, zero fill).
  ys, xs = np.indices(frame.shape)
  mass = frame.sum()
  dy = int(round((SIDE - 1) / 2 - (ys * frame).sum() / mass))
  dx = int(round((SIDE - 1) / 2 - (xs * frame).sum() / mass))
  frame = data.shift_images(frame[None], np.array([[dy, dx]]))[0]
  return np.round(frame * 255).astype(np.uint8)
