"""Use a trained run: restore its checkpoint, evaluate it, classify image files.

    from rnnjax import inference
    run = inference.load_run("runs/default")            # the best checkpoint
    result = inference.evaluate_run(run)                 # test loss, accuracy, per class
    probs = inference.predict(run, inference.load_images(["seven.png"]))

The command line wraps these: `experiments/mnist_lstm.py evaluate|predict --workdir W`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from rnnjax import checkpointing, data, reporting, steps
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
  skipped: list[int] = dataclasses.field(default_factory=list)  # unreadable, tried first


def load_run(workdir: str | os.PathLike, which: str = "best") -> Run:
  """Restores the `best` (by validation accuracy; the latest without a validation split) or
  `latest` checkpoint of `workdir`.

  `which` may also be a step number (as in checkpoints/<step>). When the `best` or `latest`
  one cannot be read, the others are tried, newest first, as training does; `Run.which`
  then says which was used and `Run.skipped` which were unreadable. A step asked for by
  number is that one or an error.
  """
  from rnnjax import workdir as workdir_lib
  workdir = Path(workdir)
  if not (workdir / workdir_lib.CONFIG_FILE).is_file():
    raise InferenceError(
        f"{workdir} holds no run (no config.json). Train one first: python "
        f"experiments/mnist_lstm.py --workdir {workdir}")
  try:
    config = workdir_lib.current_config(workdir)
  except workdir_lib.WorkdirError as e:
    raise InferenceError(str(e)) from None
  try:
    workdir_lib.recorded_configs(workdir)
  except workdir_lib.WorkdirError as e:  # configs.jsonl gave the config: say why
    print(f"warning: {str(e).split(';')[0]}; using the config recorded in "
          f"{workdir_lib.CONFIGS_FILE}", file=reporting.console(), flush=True)
  if config.rnn_kernel == "cpu":  # how the run trained, not a need: any machine evaluates
    config = config.replace(rnn_kernel="auto")
  from rnnjax import workdir as workdir_lib  # the loop's own reading of the workdir's task
  try:
    task = workdir_lib.load_task(workdir, config)
  except workdir_lib.WorkdirError as e:
    raise InferenceError(str(e)) from None
  if config.task == "permuted" and not (workdir / workdir_lib.PERMUTATION_FILE).is_file():
    raise InferenceError(f"{workdir} lacks {workdir_lib.PERMUTATION_FILE}, the pixel order its "
                         "permuted-task checkpoints were trained with.")
  if not (workdir / "checkpoints").is_dir():
    raise InferenceError(f"{workdir} has no checkpoints/ folder yet: let the run finish an "
                         "epoch.")
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
    restored = ckpt.restore(abstract, step=step, fallback=which in ("best", "latest"))
    skipped = list(ckpt.unreadable)
  except checkpointing.CheckpointError as e:
    raise InferenceError(str(e)) from None
  finally:
    ckpt.close()
  state, meta, used = restored
  if used != step:
    which = f"{used}, the newest readable one, in place of {which} ({step}, unreadable)"
  record = next((r for r in meta.get("history", []) if r.get("step") == used), None)
  return Run(workdir, config, state, used, which, record, task, skipped)


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


MAX_PIXELS = 50_000_000  # a 48-megapixel phone photo fits; a decompression bomb does not
WORK_SIDE = 1024  # larger images are reduced to about this before the float work


def load_image(path: str | os.PathLike) -> np.ndarray:
  """One image file as an MNIST-like `<uint8>[28, 28]`; InferenceError names a bad file.

  Read as devices write images: only regular files (a FIFO or a device would block or never
  end); the size the header declares is checked against `MAX_PIXELS` before decoding; the
  EXIF orientation of phone photos is applied; 16-bit and floating-point images keep their
  range; transparency is composited (`_to_gray`). Then `to_mnist`.
  """
  from PIL import Image, ImageOps, UnidentifiedImageError
  import stat
  path = Path(path)
  name = reporting.shown(path)
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    raise InferenceError(f"{name}: no such file") from None
  except OSError as e:
    raise InferenceError(f"{name}: cannot be read ({e.strerror})") from None
  if stat.S_ISDIR(mode):
    raise InferenceError(f"{name}: is a folder, not an image file")
  if not stat.S_ISREG(mode):
    raise InferenceError(f"{name}: not a regular file (a pipe, socket or device); save the "
                         "image to a file first")
  try:
    with warnings.catch_warnings():
      # Pillow warns above 89 megapixels; the check below refuses those with a clear error.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      im = Image.open(path)
    with im:
      w, h = im.size
      if w * h > MAX_PIXELS:
        raise InferenceError(
            f"{name}: declares {w:,} x {h:,} pixels ({w * h / 1e6:,.0f} megapixels), more "
            f"than the {MAX_PIXELS / 1e6:.0f} megapixels rnnjax reads; scale it down first")
      if im.format == "JPEG":  # decode at a reduced scale: fast, and far less memory
        im.draft(im.mode, (WORK_SIDE, WORK_SIDE))
      im.load()
      im = ImageOps.exif_transpose(im)
      if max(im.size) > 2 * WORK_SIDE:
        im = im.reduce(max(im.size) // WORK_SIDE)
      gray = _to_gray(im)
  except InferenceError:
    raise
  except Image.DecompressionBombError as e:  # Pillow's own, larger bound, met at open
    raise InferenceError(f"{name}: declares more than the {MAX_PIXELS / 1e6:.0f} megapixels "
                         f"rnnjax reads ({e}); scale it down first") from None
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
    raise InferenceError(f"{name}: not a readable image (PNG or JPEG expected): "
                         f"{type(e).__name__}") from None
  try:
    return to_mnist(gray)
  except ValueError as e:
    raise InferenceError(f"{name}: {e}") from None


def _to_gray(im) -> np.ndarray:
  """A Pillow image of any mode -> `<float64>[h, w]` in [0, 1].

  16-bit (`I;16`, `I`) and floating-point (`F`) images are scaled by the range their type
  holds (a float image already in [0, 1] stays there), not clipped to 8 bits. With
  transparency, the pixels are composited over the background the digit implies: the
  opposite of the ink's (the opaque pixels') mean brightness, so a white digit on a
  transparent canvas reads as well as a black one. An alpha that is the same everywhere is
  ignored.
  """
  if im.mode == "P":
    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
  alpha = None
  if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    a = np.asarray(im.getchannel("A"), np.float64) / 255.0
    if a.max() > a.min():
      alpha = a
    im = im.convert("RGB" if im.mode.startswith("RGB") else "L")
  if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
    g = np.asarray(im, np.float64)
    if im.mode == "F":
      lo, hi = (0.0, 1.0) if g.min() >= 0 and g.max() <= 1 else (g.min(), g.max())
    else:
      lo, hi = 0.0, (255.0 if g.max() <= 255 else 65535.0)
    g = np.clip((g - lo) / max(hi - lo, 1e-12), 0, 1)
  else:
    g = np.asarray(im.convert("L"), np.float64) / 255.0
  if alpha is not None:
    ink = float((g * alpha).sum() / max(alpha.sum(), 1e-12))
    background = 0.0 if ink > 0.5 else 1.0
    g = alpha * g + (1 - alpha) * background
  return g


def blank_reason(g: np.ndarray) -> str | None:
  """Why the grayscale image `g` (ink light, background dark, in [0, 1]) holds no digit,
  or None when it holds one. One test for every size:

  - contrast: the brightest pixel is less than 0.05 above the background (the median);
  - specks: the ink (pixels at least halfway from the background to the brightest) spans
    fewer than max(3, longer side / 20) pixels, or holds fewer pixels than half the longer
    side of its bounding box (a stroke holds at least one pixel per pixel of its length;
    a few scattered specks of noise or dust do not).
  """
  background, top = float(np.median(g)), float(g.max())
  if top - background < 0.05:
    return "the image is blank (no contrast)"
  rows, cols = np.nonzero(g >= background + 0.5 * (top - background))
  h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
  if max(h, w) < max(3, max(g.shape) / 20) or len(rows) < 0.5 * max(h, w):
    return "only specks of noise, no stroke of a digit"
  return None


def to_mnist(gray: np.ndarray) -> np.ndarray:
  """A grayscale image `[h, w]` in [0, 1] -> `<uint8>[28, 28]` prepared like MNIST.

  1. Polarity: MNIST digits are light on black. The border's median is the background;
     when the darkest pixel lies farther from it than the brightest (dark ink, as drawn
     on paper, whatever the paper's shade), the image is inverted.
  2. An image with no digit is refused (`blank_reason`: the same test at every size).
  3. A 28 x 28 image on a black background (median < 0.1) is taken as already MNIST-shaped
     (only step 1 applies).
  4. Otherwise: contrast stretched to [0, 1], faint background (< 10%) cleared, cropped to
     the ink's bounding box, resized so its longer side is 20 pixels (aspect kept), and
     placed in a 28 x 28 black frame with its centre of mass at the centre, as MNIST was
     made (LeCun et al.).
  """
  from PIL import Image
  g = np.asarray(gray, np.float64)
  if g.ndim != 2 or min(g.shape) < 1:
    raise ValueError(f"expected a 2-D grayscale image, got shape {g.shape}")
  if not np.isfinite(g).all():
    raise ValueError("the image holds values that are not finite numbers")
  background = np.median(np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]]))
  if background - g.min() > g.max() - background:
    g = 1.0 - g
  reason = blank_reason(g)
  if reason:
    raise ValueError(f"no digit found: {reason}")
  if g.shape == (SIDE, SIDE) and np.median(g) < 0.1:
    return np.round(np.clip(g, 0, 1) * 255).astype(np.uint8)
  lo, hi = float(g.min()), float(g.max())
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
