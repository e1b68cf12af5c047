"""The whole run in one frozen value.

A `Config` says everything that decides what a run computes: model, optimiser, data order,
epochs. Presets are plain functions of no arguments (rnnjax/presets.py); override fields
with `dataclasses.replace` (or `Config.replace`), never by mutation::

    from rnnjax import config as cfg
    c = cfg.get_config("tutorial").replace(epochs=3, seed=1)

Where the data lives (`data_dir`, `manual_dir`, `data_source`) is part of the value too, so a
notebook can pass one object around, but it does not affect the numbers: the tfds and IDX
sources give identical arrays.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

# Fields whose change alters the structure or shapes of the train state. Resuming a workdir
# whose stored config differs in one of these cannot work; the loop says so and suggests a
# new workdir. (Clipping and schedules keep one optimizer-state structure whatever their
# values, so changing them on resume is allowed, with a warning.)
SHAPE_FIELDS = ("task", "cell", "hidden_size", "num_layers", "bidirectional", "num_classes",
                "optimizer")

TRAIN_EXAMPLES = 60000  # every dataset rnnjax reads has 60,000 training images
TEST_EXAMPLES = 10000   # and 10,000 test images
# Every epoch's record is kept in metrics.jsonl and in every checkpoint's record. (With
# batches of at least 1 image, 10,000 epochs are at most 6e8 steps: the device's int32 step
# counter holds them.)
MAX_EPOCHS = 10000
MAX_SEED = 2**63 - 1  # jax.random.key takes a signed 64-bit seed
DATA_SOURCES = ("auto", "tfds", "idx")
LSTM_KERNELS = ("auto", "cpu", "xla")  # how LSTM layers run: rnnjax/lstm_kernel.py
SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "adamw")
# 28 x 28 grayscale, 10 classes, 60,000 + 10,000 images, the four IDX files of MNIST's format.
DATASETS = ("mnist", "fashion_mnist", "kmnist")
# How an image becomes a sequence: 28 rows of 28 pixels; 784 pixels one at a time (in
# raster order, or in a fixed random order: permuted sequential MNIST).
TASKS = ("rows", "pixels", "permuted")
SEQUENCE_SHAPES = {"rows": (28, 28), "pixels": (784, 1), "permuted": (784, 1)}  # [time, features]
CELLS = ("lstm", "lstm_cell", "gru", "tanh", "irnn")
READOUTS = ("last", "mean")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run needs.

  Attributes:
    name: preset this value started from (recorded, not interpreted).
    dataset: tfds name of the image dataset: `mnist`, `fashion_mnist` or `kmnist` (all
      28 x 28 grayscale, 10 classes, in the same four-file IDX format).
    task: how an image becomes a sequence: `rows` (28 steps of 28 pixels), `pixels`
      (sequential MNIST: 784 steps of 1 pixel, raster order) or `permuted` (784 steps of 1
      pixel in a fixed random order drawn from `permutation_seed`, stored in the workdir as
      permutation.json, so a resumed or evaluated run reads pixels in the same order).
    permutation_seed: seed of the `permuted` task's pixel order (unused by other tasks).
    cell: recurrent cell: `lstm` (`nn.OptimizedLSTMCell`), `lstm_cell` (`nn.LSTMCell`:
      same parameters and numbers, unfused), `gru` (`nn.GRUCell`), `tanh` (`nn.SimpleCell`,
      an Elman RNN) or `irnn` (ReLU RNN with identity-initialised recurrence, Le et al. 2015).
    forget_bias: added to the forget-gate bias at initialisation (LSTM cells only; 1.0 is
      the usual choice, Jozefowicz et al. 2015; 0 keeps Flax's zero init).
    hidden_size: units of each recurrent layer (per direction).
    num_layers: stacked recurrent layers.
    bidirectional: each layer reads the sequence both ways and concatenates the two.
    dropout: dropout rate on the outputs of every recurrent layer (between layers, and
      before the readout); 0 turns it off.
    readout: the dense layer reads the `last` hidden state (for a bidirectional layer, the
      forward direction's last and the backward direction's first), or the `mean` over time.
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
    steps_per_call: training steps per call of the jitted function (`steps.train_steps`,
      a scan over that many batches; 1: one `train_step` per call). The updates are the
      same bit for bit; fewer calls save the per-call buffer allocations (+9% images/s at
      the tutorial setting on the project's CPU, docs/lab/2026-11-speed-notes.md item 8).
    lstm_kernel: how `lstm` layers run: `auto` (rnnjax's CPU kernel where it can run: one
      CPU device, float32, the kernel built; else the `nn.RNN` scan), `cpu` (the kernel, an
      error where it cannot run) or `xla` (always the scan). Same parameters and equations;
      results agree to float32 rounding (`rnnjax.lstm_kernel`).
    data_source: `tfds` (tensorflow-datasets), `idx` (the four IDX files read with NumPy,
      no TensorFlow needed) or `auto` (tfds when TensorFlow is importable, else idx).
    data_dir: tfds data dir; None means tfds's default (`~/tensorflow_datasets` or
      `$TFDS_DATA_DIR`).
    manual_dir: folder holding the four official MNIST files, for machines without network.
    progress: show a progress bar inside each epoch.
    tensorboard: write TensorBoard events (scalars per epoch, hyperparameters) into the
      workdir.
    plots: write curves.png and confusion_matrix.png into the workdir after every epoch.
    memory_limit_gib: refuse to start when the estimated memory of the run
      (`rnnjax.resources.estimate`) exceeds this many GiB; None: the machine's memory.
  """

  name: str = "default"
  dataset: str = "mnist"
  task: str = "rows"
  permutation_seed: int = 0
  cell: str = "lstm"
  forget_bias: float = 0.0
  hidden_size: int = 256
  num_layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0
  readout: str = "last"
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
  steps_per_call: int = 10
  lstm_kernel: str = "auto"
  data_source: str = "auto"
  data_dir: str | None = None
  manual_dir: str | None = None
  progress: bool = True
  tensorboard: bool = True
  plots: bool = True
  memory_limit_gib: float | None = None

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
    """The config a stored dict describes (unknown keys ignored); ValueError when `d` is
    not a dict or its values are invalid."""
    if not isinstance(d, dict):
      raise ValueError(f"a config is a JSON object of fields, got {type(d).__name__} {d!r:.40}")
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def validate(c: Config) -> list[str]:
  """Returns what is wrong with `c`, one message per problem (empty when valid).

  Numbers are checked against what they will meet: batch sizes against the splits every
  dataset has, epochs against what the step counter and the records hold, every float
  finite.
  """
  errors = []
  for field in ("hidden_size", "num_layers", "num_classes", "batch_size", "eval_batch_size",
                "epochs", "keep_checkpoints", "steps_per_call"):
    value = getattr(c, field)
    if not _is_int(value) or value < 1:
      errors.append(f"{field} must be a positive integer, got {value!r}")
  if _is_int(c.num_classes) and c.num_classes < 10:
    errors.append(f"num_classes must be at least 10 (every dataset rnnjax reads has 10 "
                  f"classes), got {c.num_classes}")
  if _is_int(c.batch_size) and c.batch_size > TRAIN_EXAMPLES:
    errors.append(f"batch_size {c.batch_size} exceeds the {TRAIN_EXAMPLES:,} training images "
                  f"of every dataset; use at most {TRAIN_EXAMPLES}")
  if _is_int(c.eval_batch_size) and c.eval_batch_size > TEST_EXAMPLES:
    errors.append(f"eval_batch_size {c.eval_batch_size} exceeds the {TEST_EXAMPLES:,} test "
                  f"images (the rest would be padding); use at most {TEST_EXAMPLES}")
  if _is_int(c.epochs) and c.epochs > MAX_EPOCHS:
    errors.append(f"epochs must be at most {MAX_EPOCHS:,} (each epoch's record is kept in "
                  f"every checkpoint), got {c.epochs}")
  if not (_is_finite(c.learning_rate) and c.learning_rate > 0):
    errors.append(f"learning_rate must be a finite number > 0, got {c.learning_rate!r}")
  if not _is_int(c.checkpoint_every_steps) or c.checkpoint_every_steps < 0:
    errors.append(f"checkpoint_every_steps must be an integer >= 0, got "
                  f"{c.checkpoint_every_steps!r}")
  for field in ("warmup_epochs", "grad_clip_norm", "weight_decay"):
    value = getattr(c, field)
    if not (_is_finite(value) and value >= 0):
      errors.append(f"{field} must be a finite number >= 0, got {value!r}")
  if (_is_finite(c.warmup_epochs) and _is_int(c.epochs) and c.schedule == "cosine"
      and c.warmup_epochs > c.epochs):
    errors.append(f"warmup_epochs {c.warmup_epochs} is longer than the run ({c.epochs} "
                  "epochs)")
  if _is_finite(c.weight_decay) and c.weight_decay > 0 and c.optimizer != "adamw":
    errors.append(f"weight_decay is used by optimizer 'adamw' only (optimizer is "
                  f"{c.optimizer!r}); choose adamw or leave weight_decay at 0")
  if not _is_int(c.augment_shift) or not 0 <= c.augment_shift <= 13:
    errors.append(f"augment_shift must be an integer in [0, 13], got {c.augment_shift!r}")
  if not (_is_finite(c.final_lr_fraction) and 0 <= c.final_lr_fraction <= 1):
    errors.append(f"final_lr_fraction must be in [0, 1], got {c.final_lr_fraction!r}")
  if c.schedule not in SCHEDULES:
    errors.append(f"schedule must be one of {SCHEDULES}, got {c.schedule!r}")
  if c.optimizer not in OPTIMIZERS:
    errors.append(f"optimizer must be one of {OPTIMIZERS}, got {c.optimizer!r}")
  if c.lstm_kernel not in LSTM_KERNELS:
    errors.append(f"lstm_kernel must be one of {LSTM_KERNELS}, got {c.lstm_kernel!r}")
  if c.data_source not in DATA_SOURCES:
    errors.append(f"data_source must be one of {DATA_SOURCES}, got {c.data_source!r}")
  for field, allowed in (("task", TASKS), ("cell", CELLS), ("dataset", DATASETS),
                         ("readout", READOUTS)):
    if getattr(c, field) not in allowed:
      errors.append(f"{field} must be one of {allowed}, got {getattr(c, field)!r}")
  if not isinstance(c.bidirectional, bool):
    errors.append(f"bidirectional must be True or False, got {c.bidirectional!r}")
  if not (_is_finite(c.dropout) and 0 <= c.dropout < 1):
    errors.append(f"dropout must be in [0, 1), got {c.dropout!r}")
  if not _is_finite(c.forget_bias):
    errors.append(f"forget_bias must be a finite number, got {c.forget_bias!r}")
  elif c.forget_bias != 0 and c.cell not in ("lstm", "lstm_cell"):
    errors.append(f"forget_bias applies to the LSTM cells only (cell is {c.cell!r}); "
                  "leave it at 0")
  for field in ("permutation_seed", "seed"):
    value = getattr(c, field)
    if not _is_int(value) or not 0 <= value <= MAX_SEED:
      errors.append(f"{field} must be an integer in [0, 2**63 - 1], got {value!r}")
  if c.memory_limit_gib is not None and not (_is_finite(c.memory_limit_gib)
                                             and c.memory_limit_gib > 0):
    errors.append(f"memory_limit_gib must be a finite number > 0, got {c.memory_limit_gib!r}")
  return errors


# Presets live in rnnjax/presets.py; these two names stay here for code that reads them so.

def get_config(name: str = "default") -> Config:
  """Returns the preset called `name` (one of `rnnjax.presets.PRESETS`)."""
  from rnnjax import presets
  return presets.get(name)


def __getattr__(name: str):
  if name == "PRESETS":  # config.PRESETS: the table in rnnjax/presets.py
    from rnnjax import presets
    return presets.PRESETS
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def shape_differences(old: dict[str, Any], new: Config) -> list[str]:
  """Fields in `SHAPE_FIELDS` where a stored config dict and `new` disagree (and the
  pixel order, for the permuted task)."""
  out = []
  fields = SHAPE_FIELDS + (("permutation_seed",) if new.task == "permuted" else ())
  for f in fields:
    if f in old and old[f] != getattr(new, f):
      out.append(f"{f}: {old[f]!r} in the workdir, {getattr(new, f)!r} now")
  return out
