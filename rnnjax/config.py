"""The whole run in one frozen value.

A `Config` says everything that decides what a run computes: model, optimiser, data order,
epochs. Presets are plain functions of no arguments; override fields with
`dataclasses.replace` (or `Config.replace`), never by mutation::

    from rnnjax import config as cfg
    c = cfg.get_config("tutorial").replace(epochs=3, seed=1)

Where the data lives (`data_dir`, `manual_dir`, `data_source`) is part of the value too, so a
notebook can pass one object around, but it does not affect the numbers: the tfds and IDX
sources give identical arrays.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

# Fields whose change alters the structure or shapes of the train state. Resuming a workdir
# whose stored config differs in one of these cannot work; the loop says so and suggests a
# new workdir. (Clipping and schedules keep one optimizer-state structure whatever their
# values, so changing them on resume is allowed, with a warning.)
SHAPE_FIELDS = ("task", "cell", "hidden_size", "num_layers", "num_classes", "optimizer")

TRAIN_EXAMPLES = 60000  # every dataset rnnjax reads has 60,000 training images
DATA_SOURCES = ("auto", "tfds", "idx")
SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "adamw")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run needs.

  Attributes:
    name: preset this value started from (recorded, not interpreted).
    dataset: tfds name of the image dataset (`mnist`).
    task: how an image becomes a sequence; `rows` reads 28 rows of 28 pixels.
    cell: recurrent cell; `lstm` is `nn.OptimizedLSTMCell`.
    hidden_size: units of each recurrent layer.
    num_layers: stacked recurrent layers.
    num_classes: logits of the dense readout.
    batch_size: training images per step (the global batch).
    eval_batch_size: test images per evaluation step; the last partial batch is padded and
      masked, so every test image counts exactly once.
    epochs: passes over the training split.
    optimizer: `adam` or `adamw` (decoupled weight decay).
    learning_rate: peak learning rate.
    schedule: `constant` or `cosine` (linear warm-up, then cosine decay to
      `final_lr_fraction * learning_rate` at the last step).
    warmup_epochs: length of the linear warm-up (cosine only); may be fractional.
    final_lr_fraction: end of the cosine decay, as a fraction of `learning_rate`.
    grad_clip_norm: clip gradients to this global norm; 0 turns clipping off.
    weight_decay: AdamW decoupled weight decay (optimizer `adamw` only).
    augment_shift: translate each training image by a random whole number of pixels in
      [-augment_shift, augment_shift] along each axis (zero fill); 0 turns it off. Drawn
      per (seed, epoch) like the order, so resuming sees the same images.
    seed: root of all randomness: parameter init, the data order and the augmentation of
      every epoch.
    keep_checkpoints: how many of the latest checkpoints to keep (the best is kept as well).
    checkpoint_every_steps: also checkpoint every this many training steps, mid-epoch
      included (0: only after each epoch and when stopped by SIGTERM/SIGINT).
    data_source: `tfds` (tensorflow-datasets), `idx` (the four IDX files read with NumPy,
      no TensorFlow needed) or `auto` (tfds when TensorFlow is importable, else idx).
    data_dir: tfds data dir; None means tfds's default (`~/tensorflow_datasets` or
      `$TFDS_DATA_DIR`).
    manual_dir: folder holding the four official MNIST files, for machines without network.
    progress: show a progress bar inside each epoch.
    tensorboard: write TensorBoard events (scalars per epoch, hyperparameters) into the
      workdir.
    plots: write curves.png and confusion_matrix.png into the workdir after every epoch.
  """

  name: str = "default"
  dataset: str = "mnist"
  task: str = "rows"
  cell: str = "lstm"
  hidden_size: int = 256
  num_layers: int = 1
  num_classes: int = 10
  batch_size: int = 100
  eval_batch_size: int = 1000
  epochs: int = 13
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  schedule: str = "constant"
  warmup_epochs: float = 0.0
  final_lr_fraction: float = 0.0
  grad_clip_norm: float = 0.0
  weight_decay: float = 0.0
  augment_shift: int = 0
  seed: int = 0
  keep_checkpoints: int = 2
  checkpoint_every_steps: int = 0
  data_source: str = "auto"
  data_dir: str | None = None
  manual_dir: str | None = None
  progress: bool = True
  tensorboard: bool = True
  plots: bool = True

  def __post_init__(self):
    errors = validate(self)
    if errors:
      raise ValueError("invalid config: " + "; ".join(errors))

  @property
  def steps_per_epoch(self) -> int:
    """Training steps per epoch (the last partial batch is dropped)."""
    return TRAIN_EXAMPLES // self.batch_size

  @property
  def total_steps(self) -> int:
    return self.epochs * self.steps_per_epoch

  def replace(self, **changes: Any) -> "Config":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Config":
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


def validate(c: Config) -> list[str]:
  """Returns what is wrong with `c`, one message per problem (empty when valid)."""
  errors = []
  for field in ("hidden_size", "num_layers", "num_classes", "batch_size", "eval_batch_size",
                "epochs", "keep_checkpoints"):
    value = getattr(c, field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      errors.append(f"{field} must be a positive integer, got {value!r}")
  if not c.learning_rate > 0:
    errors.append(f"learning_rate must be > 0, got {c.learning_rate!r}")
  if (not isinstance(c.checkpoint_every_steps, int) or isinstance(c.checkpoint_every_steps, bool)
      or c.checkpoint_every_steps < 0):
    errors.append(f"checkpoint_every_steps must be an integer >= 0, got "
                  f"{c.checkpoint_every_steps!r}")
  for field in ("warmup_epochs", "grad_clip_norm", "weight_decay"):
    if not getattr(c, field) >= 0:
      errors.append(f"{field} must be >= 0, got {getattr(c, field)!r}")
  if (not isinstance(c.augment_shift, int) or isinstance(c.augment_shift, bool)
      or not 0 <= c.augment_shift <= 13):
    errors.append(f"augment_shift must be an integer in [0, 13], got {c.augment_shift!r}")
  if not 0 <= c.final_lr_fraction <= 1:
    errors.append(f"final_lr_fraction must be in [0, 1], got {c.final_lr_fraction!r}")
  if c.schedule not in SCHEDULES:
    errors.append(f"schedule must be one of {SCHEDULES}, got {c.schedule!r}")
  if c.optimizer not in OPTIMIZERS:
    errors.append(f"optimizer must be one of {OPTIMIZERS}, got {c.optimizer!r}")
  if c.data_source not in DATA_SOURCES:
    errors.append(f"data_source must be one of {DATA_SOURCES}, got {c.data_source!r}")
  if c.task != "rows":
    errors.append(f"task must be 'rows', got {c.task!r}")
  if c.cell != "lstm":
    errors.append(f"cell must be 'lstm', got {c.cell!r}")
  if c.dataset != "mnist":
    errors.append(f"dataset must be 'mnist', got {c.dataset!r}")
  return errors


# ----------------------------------------------------------------------------------------
# Presets.

def tutorial() -> Config:
  """The original TF1 tutorial: LSTM 256, batch 100, Adam 1e-3, 13 epochs, no schedule."""
  return Config(name="tutorial")


def default() -> Config:
  """The best single-run setup found for a 2-core CPU within 15 minutes (see README)."""
  return Config(
      name="default", epochs=20, batch_size=100, learning_rate=2e-3, schedule="cosine",
      warmup_epochs=1.0, grad_clip_norm=1.0, augment_shift=2)


def tiny() -> Config:
  """For tests: a few units, small batches, one epoch; no progress bar, plots or TensorBoard
  events (the tests that check those turn them on)."""
  return Config(name="tiny", hidden_size=8, batch_size=16, eval_batch_size=32, epochs=1,
                progress=False, tensorboard=False, plots=False)


PRESETS: dict[str, Callable[[], Config]] = {
    "default": default, "tutorial": tutorial, "tiny": tiny}


def get_config(name: str = "default") -> Config:
  """Returns the preset called `name` (one of `PRESETS`)."""
  try:
    return PRESETS[name]()
  except KeyError:
    raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def shape_differences(old: dict[str, Any], new: Config) -> list[str]:
  """Fields in `SHAPE_FIELDS` where a stored config dict and `new` disagree."""
  out = []
  for f in SHAPE_FIELDS:
    if f in old and old[f] != getattr(new, f):
      out.append(f"{f}: {old[f]!r} in the workdir, {getattr(new, f)!r} now")
  return out
