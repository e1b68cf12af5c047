"""The whole run in one frozen value.

A `Config` says everything that decides what a run computes: model, optimiser, data order,
epochs. Presets are plain functions of no arguments (rnnjax/presets.py); override fields
with `dataclasses.replace` (or `Config.replace`), never by mutation::

    from rnnjax import presets
    c = presets.get("tutorial").replace(epochs=3, seed=1)

Where the data lives (`data_dir`, `manual_dir`, `data_source`) is part of the value too, so a
notebook can pass one object around, but it does not affect the numbers: the tfds and IDX
sources give identical arrays.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable

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
# How the layers of a cell with fast layers (`CellSpec.layers`: LSTM, LEM) run:
# rnnjax/kernel_layers.py (cpu), rnnjax/cudnn.py (cudnn), the nn.RNN scan (xla); resolved
# once by `models.resolve`.
RNN_KERNELS = ("auto", "cpu", "cudnn", "xla")
# Fields renamed since a stored config (configs.jsonl, a checkpoint's record, summary.json)
# may have been written: old name -> new name, read by `Config.from_dict`.
RENAMED_FIELDS = {"lstm_kernel": "rnn_kernel"}
SCHEDULES = ("constant", "cosine", "step")
OPTIMIZERS = ("adam", "adamw")
# 28 x 28 grayscale, 10 classes, 60,000 + 10,000 images, the four IDX files of MNIST's format.
DATASETS = ("mnist", "fashion_mnist", "kmnist")
# How an image becomes a sequence: 28 rows of 28 pixels; 784 pixels one at a time (in
# raster order, or in a fixed random order: permuted sequential MNIST).
TASKS = ("rows", "pixels", "permuted")
SEQUENCE_SHAPES = {"rows": (28, 28), "pixels": (784, 1), "permuted": (784, 1)}  # [time, features]
READOUTS = ("last", "mean")
# The readout layer's initialisation (`rnnjax.models.dense_head`).
HEAD_INITS = ("lecun", "he")


@dataclasses.dataclass(frozen=True)
class CellSpec:
  """A recurrent cell as runs build it: the one place that names it, its options and the
  fast layers that can run it. Everything else reads `CELLS`: the model, its carry (from the
  cell's `initialize_carry`), the parameter count and memory estimate (from the model),
  `validate`, the flags, and the docs' tables.

  Objects are named as "module:attribute" strings and imported only when a model is built,
  so that this module stays light (no JAX, no Flax).

  Attributes:
    make: `make(hidden_size, **options) -> cell`, an unbound Flax cell that `nn.RNN` scans;
      with `model=True`, `make(config) -> module`, a whole sequence model (as `lru`).
    doc: what it is, in a few words (the --cell flag's help, the docs' tables).
    family: how messages name it ("LSTM": lstm and lstm_cell share their options).
    options: the `Config` fields the cell reads -> `make`'s keyword for each (a value of
      None is left out, so that the cell's own default holds).
    init: `init(params, key, steps, **init_options) -> params`, applied after `model.init`.
    init_options: the `Config` fields `init` reads, by name.
    layers: implementation (`cpu`, `cudnn`) -> the layer class that runs the cell faster
      than `nn.RNN`'s scan, with the same fields and parameters (for a whole model: what
      runs its recurrence there).
    model: `make` builds the whole model (no `nn.RNN` layers, no bidirectional).
    units: for a whole model, the floats per time step and example that the memory
      estimate counts (default: `hidden_size` per layer and direction).
  """

  make: str
  doc: str
  family: str = ""
  options: dict[str, str] = dataclasses.field(default_factory=dict)
  init: str | None = None
  init_options: tuple[str, ...] = ()
  layers: dict[str, str] = dataclasses.field(default_factory=dict)
  model: bool = False
  units: Callable[["Config"], int] | None = None

  def reads(self) -> tuple[str, ...]:
    """Every `Config` field this cell reads."""
    return (*self.options, *self.init_options)


_LSTM_INIT = dict(init="rnnjax.cells:lstm_gate_init", init_options=("forget_bias", "chrono_init"))

CELLS: dict[str, CellSpec] = {
    "lstm": CellSpec(
        "flax.linen:OptimizedLSTMCell", "nn.OptimizedLSTMCell", "LSTM", **_LSTM_INIT,
        layers={"cpu": "rnnjax.kernel_layers:KernelLSTM", "cudnn": "rnnjax.cudnn:CudnnLSTM"}),
    "lstm_cell": CellSpec("flax.linen:LSTMCell", "nn.LSTMCell: same parameters and numbers, "
                          "unfused", "LSTM", **_LSTM_INIT),
    "gru": CellSpec("flax.linen:GRUCell", "nn.GRUCell", "GRU"),
    "tanh": CellSpec("flax.linen:SimpleCell", "nn.SimpleCell, an Elman RNN", "tanh"),
    "irnn": CellSpec("rnnjax.cells:irnn_cell", "ReLU RNN, identity-initialised recurrence, "
                     "Le et al. 2015", "IRNN"),
    "lem": CellSpec("rnnjax.cells:LEMCell", "Long Expressive Memory, Rusch et al. 2022", "LEM",
                    options={"cell_dt": "dt"}, layers={"cpu": "rnnjax.kernel_layers:KernelLEM"}),
    "cornn": CellSpec("rnnjax.cells:CoRNNCell", "coupled oscillatory RNN, Rusch and Mishra "
                      "2021", "coRNN", options={"cell_dt": "dt", "cornn_gamma": "gamma",
                                                "cornn_epsilon": "epsilon"}),
    "lru": CellSpec(
        "rnnjax.lru:from_config", "a deep model of Linear Recurrent Units computed in "
        "parallel over time, Orvieto et al. 2023: --hidden-size is its width, --num-layers its "
        "blocks, rnnjax.lru", "LRU", options={"state_size": "state_size"}, model=True,
        units=lambda c: c.num_layers * (c.hidden_size + 2 * c.state_size)),  # complex states
    "lmu": CellSpec(
        "rnnjax.lmu:from_config", "Legendre Memory Unit, Voelker et al. 2019: a fixed "
        "linear memory of the last --lmu-theta steps under a tanh recurrence of "
        "--hidden-size units, rnnjax.lmu", "LMU",
        options={"lmu_order": "order", "lmu_theta": "theta",
                 "lmu_hidden_to_memory": "hidden_to_memory",
                 "lmu_memory_to_memory": "memory_to_memory"}, model=True,
        layers={"cpu": "rnnjax.kernel_layers:tanh_recurrence"},
        units=lambda c: c.num_layers * (c.hidden_size + c.lmu_order)),
    "plmu": CellSpec(
        "rnnjax.lmu:parallel_from_config", "parallel LMU, Chilkuri and Eliasmith 2021: the "
        "LMU's fixed linear memory (--lmu-order, --lmu-theta) under --num-layers ReLU layers "
        "of --hidden-size units, no hidden recurrence; computed in parallel over time, "
        "rnnjax.lmu", "parallel LMU", options={"lmu_order": "order", "lmu_theta": "theta"},
        model=True,  # reading the last step, nothing per step but the input and its copy;
        # every step, the FFT convolution's padded spectrum and the hidden layers
        units=lambda c: (3 + c.num_layers) * c.hidden_size if c.readout == "mean" else 2),
}


def load(name: str):
  """The object a "module:attribute" string names (`CellSpec`'s references)."""
  import importlib
  module, _, attribute = name.partition(":")
  return getattr(importlib.import_module(module), attribute)


def _field(default, help: str, *, group: str, choices: tuple | None = None, low=None,
           high=None, open_low: bool = False, open_high: bool = False,
           high_text: str | None = None, flag: str | None = None, metavar: str | None = None,
           aliases: tuple[str, ...] = ()):
  """A `Config` field and what the command line and `validate` know of it: its help, the
  `choices` it takes or the bounds `[low, high]` (`open_low`/`open_high`: the bound itself
  excluded; `high_text`: how messages write `high`), its flag group, the flag's name where
  it is not `--field-name`, and older names of the flag that keep working (`aliases`)."""
  spec = dict(help=help, group=group, choices=choices, low=low, high=high, open_low=open_low,
              open_high=open_high, high_text=high_text, flag=flag, metavar=metavar,
              aliases=aliases)
  return dataclasses.field(default=default, metadata=spec)


MODEL, TRAINING, DATA, RUN, OUTPUT = ("task and model", "training", "data", "checkpoints and "
                                      "speed", "output")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run needs. Each field's metadata holds its help, its choices or bounds and
  its flag (`rnnjax train --help` prints them; `validate` checks them); docs/cli.md lists
  them with the presets.

  `name` is the preset this value started from (recorded, not interpreted; `--preset`).
  """

  name: str = "default"
  dataset: str = _field(
      "mnist", "tfds name of the image dataset (all 28 x 28 grayscale, 10 classes, in the "
      "same four-file IDX format)", group=MODEL, choices=DATASETS)
  task: str = _field(
      "rows", "how an image becomes a sequence: rows (28 steps of 28 pixels), pixels "
      "(sequential MNIST: 784 steps of 1 pixel, raster order) or permuted (784 pixels in a "
      "fixed random order from --permutation-seed, stored in the workdir as "
      "permutation.json)", group=MODEL, choices=TASKS)
  permutation_seed: int = _field(
      0, "seed of the permuted task's pixel order (unused by other tasks)", group=MODEL,
      low=0, high=MAX_SEED, high_text="2**63 - 1")
  cell: str = _field(
      "lstm", "recurrent cell: " + ", ".join(f"{k} ({v.doc})" for k, v in CELLS.items()),
      group=MODEL, choices=tuple(CELLS))
  state_size: int = _field(64, "the lru's complex state per block", group=MODEL, low=1)
  lmu_order: int = _field(256, "the memory of lmu and plmu: Legendre coefficients of its window",
                          group=MODEL, low=1)
  lmu_theta: float = _field(784.0, "the window of lmu and plmu, in time steps", group=MODEL, low=0,
                            open_low=True)
  lmu_hidden_to_memory: bool = _field(
      False, "the lmu's hidden state feeds its memory (then the memory is scanned step by "
      "step)", group=MODEL)
  lmu_memory_to_memory: bool = _field(
      False, "the lmu's memory feeds itself through a learned map (then the memory is "
      "scanned step by step)", group=MODEL)
  cell_dt: float | None = _field(
      None, "time step of the lem and cornn cells (default: the authors' sequential-MNIST "
      "setting, 0.21 for lem, 0.042 for cornn)", group=MODEL, low=0, open_low=True)
  cornn_gamma: float = _field(2.7, "cornn's restoring force gamma (the authors' "
                              "sequential-MNIST setting)", group=MODEL, low=0)
  cornn_epsilon: float = _field(4.7, "cornn's damping epsilon (the authors' "
                                "sequential-MNIST setting)", group=MODEL, low=0)
  forget_bias: float = _field(
      0.0, "added to the forget-gate bias at initialisation (LSTM cells only; 1.0 is the "
      "usual choice, Jozefowicz et al. 2015)", group=MODEL)
  chrono_init: bool = _field(
      False, "chrono initialisation of the LSTM gate biases (Tallec and Ollivier 2018): "
      "forget bias log U(1, T - 1) per unit, input bias its negative, T the sequence length; "
      "memories start out lasting up to T steps (LSTM cells only)", group=MODEL)
  hidden_size: int = _field(256, "units of each recurrent layer (per direction)",
                            group=MODEL, low=1)
  num_layers: int = _field(1, "stacked recurrent layers", group=MODEL, low=1)
  bidirectional: bool = _field(
      False, "each layer reads the sequence both ways and concatenates the two", group=MODEL)
  dropout: float = _field(
      0.0, "dropout rate on the outputs of every recurrent layer (0: off)", group=MODEL,
      low=0, high=1, open_high=True)
  readout: str = _field(
      "last", "the dense layer reads the last hidden state (bidirectional: each direction's "
      "final one) or the mean over time", group=MODEL, choices=READOUTS)
  head_init: str = _field(
      "lecun", "the dense layer's initialisation: lecun (flax's default: LeCun-normal "
      "weights, zero bias) or he (He-normal weights, bias uniform in +-1/sqrt(fan in): "
      "PyTorch's kaiming_normal_ and nn.Linear bias, the LEM authors' classifier)",
      group=MODEL, choices=HEAD_INITS)
  num_classes: int = _field(
      10, "logits of the readout (every dataset here has 10; at least 10)", group=MODEL,
      low=1)
  batch_size: int = _field(100, "training images per step (the global batch)",
                           group=TRAINING, low=1)
  eval_batch_size: int = _field(
      1000, "test images per evaluation step; the last partial batch is padded and masked, "
      "so every image counts once", group=TRAINING, low=1)
  validation_size: int = _field(
      5000, "training images held out for validation: the first N of the training file (as "
      "TensorFlow's MNIST reader kept 5,000), never trained on; every epoch is evaluated on "
      "them and the best checkpoint is the one with the best validation accuracy (0: no "
      "validation split, and the best checkpoint is the latest)", group=TRAINING, low=0,
      high=TRAIN_EXAMPLES // 2)
  epochs: int = _field(13, "passes over the training split", group=TRAINING, low=1)
  optimizer: str = _field("adam", "adam, or adamw (decoupled weight decay)", group=TRAINING,
                          choices=OPTIMIZERS)
  learning_rate: float = _field(1e-3, "peak learning rate", group=TRAINING, low=0,
                                open_low=True)
  schedule: str = _field(
      "constant", "constant; cosine (linear warm-up, then cosine decay to "
      "--final-lr-fraction of the peak at the last step); or step (the peak, then "
      "--final-lr-fraction of it from --lr-drop-epoch on)", group=TRAINING, choices=SCHEDULES)
  warmup_epochs: float = _field(0.0, "linear warm-up, in epochs (cosine only; may be "
                                "fractional)", group=TRAINING, low=0)
  final_lr_fraction: float = _field(
      0.0, "end of the cosine decay, or the step schedule's drop, as a fraction of "
      "--learning-rate", group=TRAINING, low=0, high=1)
  lr_drop_epoch: float = _field(
      0.0, "the step schedule's drop, in epochs (step only)", group=TRAINING, low=0)
  grad_clip_norm: float = _field(0.0, "clip gradients to this global norm (0: off)",
                                 group=TRAINING, low=0)
  weight_decay: float = _field(0.0, "decoupled weight decay (optimizer adamw only)",
                               group=TRAINING, low=0)
  augment_shift: int = _field(
      0, "translate each training image by a random whole number of pixels in [-N, N] along "
      "each axis, zero fill (0: off); drawn per (seed, epoch), so resuming sees the same "
      "images", group=TRAINING, low=0, high=13)
  seed: int = _field(
      0, "root of all randomness: parameter init, the data order and the augmentation of "
      "every epoch", group=TRAINING, low=0, high=MAX_SEED, high_text="2**63 - 1")
  keep_checkpoints: int = _field(
      2, "how many of the latest checkpoints to keep (the best is kept as well)", group=RUN,
      low=1, metavar="N")
  checkpoint_every_steps: int = _field(
      0, "also checkpoint every STEPS training steps, mid-epoch included (0: only after "
      "each epoch, and when stopped by SIGTERM/SIGINT)", group=RUN, low=0,
      flag="--checkpoint-every", metavar="STEPS")
  steps_per_call: int = _field(
      10, "training steps per call of the jitted step function (a scan over K batches; 1: "
      "one train_step per call); the same updates bit for bit, fewer buffer allocations "
      "(docs/performance.md)", group=RUN, low=1, metavar="K")
  rnn_kernel: str = _field(
      "auto", "how lstm and lem layers run: auto (cuDNN's fused LSTM on one NVIDIA GPU; "
      "rnnjax's CPU kernel where it can run: one CPU device, float32, the kernel built; else "
      "the nn.RNN scan), cpu (the kernel, or an error), cudnn (cuDNN, for lstm layers, or an "
      "error) or xla (always the scan); same parameters and equations", group=RUN,
      choices=RNN_KERNELS, aliases=("--lstm-kernel",))
  data_source: str = _field(
      "auto", "tfds (tensorflow-datasets), idx (the four IDX files read with NumPy, no "
      "TensorFlow) or auto (tfds when TensorFlow is importable, else idx)", group=DATA,
      choices=DATA_SOURCES)
  data_dir: str | None = _field(
      None, "tfds data dir (default: tfds's own, ~/tensorflow_datasets or $TFDS_DATA_DIR)",
      group=DATA)
  manual_dir: str | None = _field(
      None, "folder with the dataset's four official IDX files, for machines without "
      "network (default: $RNNJAX_MANUAL_DIR, else ../shared/data/DATASET when it exists)",
      group=DATA)
  progress: bool = _field(True, "a progress bar inside each epoch", group=OUTPUT)
  tensorboard: bool = _field(
      True, "TensorBoard events (scalars per epoch, hyperparameters) in the workdir",
      group=OUTPUT)
  plots: bool = _field(True, "curves.png and confusion_matrix.png in the workdir after "
                       "every epoch", group=OUTPUT)
  memory_limit_gib: float | None = _field(
      None, "refuse to start when the run's estimated memory (rnnjax.resources.estimate) "
      "exceeds this many GiB (default: the machine's memory)", group=RUN, low=0,
      open_low=True, flag="--memory-limit", metavar="GIB")

  def __post_init__(self):
    errors = validate(self)
    if errors:
      raise ValueError("invalid config: " + "; ".join(errors))

  @property
  def steps_per_epoch(self) -> int:
    """Training steps per epoch of the training split, the validation images held out (the
    last partial batch is dropped); the loop counts the split it is given
    (`data.steps_per_epoch`)."""
    return (TRAIN_EXAMPLES - self.validation_size) // self.batch_size

  def replace(self, **changes: Any) -> "Config":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Config":
    """The config a stored dict describes (unknown keys ignored, renamed ones read under
    their new name: `RENAMED_FIELDS`); ValueError when `d` is not a dict or its values are
    invalid."""
    if not isinstance(d, dict):
      raise ValueError(f"a config is a JSON object of fields, got {type(d).__name__} {d!r:.40}")
    d = {RENAMED_FIELDS.get(k, k): v for k, v in d.items()}
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


_KINDS = {"int": int, "float": float, "str": str, "bool": bool}


def fields() -> list[tuple[dataclasses.Field, type, bool]]:
  """`(field, kind, optional)` for each field with metadata (every field but `name`): its
  kind is int, float, str or bool; `optional` when None is allowed."""
  out = []
  for f in dataclasses.fields(Config):
    if f.metadata:
      kind, _, rest = str(f.type).partition(" | ")
      out.append((f, _KINDS[kind], rest == "None"))
  return out


def expected(kind: type, spec) -> str:
  """What a field's metadata asks of its value, in words ("a positive integer")."""
  low, high = spec["low"], spec["high"]
  top = spec["high_text"] or (f"{high:g}" if isinstance(high, float) else str(high))
  if kind is int:
    if high is None:
      return "a positive integer" if low == 1 else f"an integer >= {low}"
    return f"an integer in [{low}, {top}]"
  if high is not None:
    return f"in [{low}, {top}{')' if spec['open_high'] else ']'}"
  if low is None:
    return "a finite number"
  return f"a finite number {'>' if spec['open_low'] else '>='} {low}"


def _within(value, spec) -> bool:
  low, high = spec["low"], spec["high"]
  return ((low is None or value > low or (value == low and not spec["open_low"]))
          and (high is None or value < high or (value == high and not spec["open_high"])))


def _field_error(name: str, value, kind: type, optional: bool, spec) -> str | None:
  if value is None and optional:
    return None
  if spec["choices"] is not None:
    ok = value in spec["choices"]
    return None if ok else f"{name} must be one of {spec['choices']}, got {value!r}"
  if kind is bool:
    return None if isinstance(value, bool) else f"{name} must be True or False, got {value!r}"
  if kind is str:
    return None if isinstance(value, str) else f"{name} must be a string, got {value!r}"
  ok = _is_int(value) if kind is int else _is_finite(value)
  if ok and _within(value, spec):
    return None
  return f"{name} must be {expected(kind, spec)}, got {value!r}"


def validate(c: Config) -> list[str]:
  """Returns what is wrong with `c`, one message per problem (empty when valid).

  Each field is checked against its metadata (kind, choices, bounds; every float finite),
  then the numbers against what they will meet: batch sizes against the splits every
  dataset has, epochs against what the step counter and the records hold, and the fields
  that only mean something together.
  """
  errors = [e for f, kind, optional in fields()
            if (e := _field_error(f.name, getattr(c, f.name), kind, optional, f.metadata))]
  bad = {e.split(" ", 1)[0] for e in errors}  # fields already reported
  ok = lambda *names: not bad.intersection(names)  # noqa: E731
  if ok("num_classes") and c.num_classes < 10:
    errors.append(f"num_classes must be at least 10 (every dataset rnnjax reads has 10 "
                  f"classes), got {c.num_classes}")
  if ok("batch_size") and c.batch_size > TRAIN_EXAMPLES:
    errors.append(f"batch_size {c.batch_size} exceeds the {TRAIN_EXAMPLES:,} training images "
                  f"of every dataset; use at most {TRAIN_EXAMPLES}")
  elif ok("batch_size", "validation_size") and c.batch_size > TRAIN_EXAMPLES - c.validation_size:
    errors.append(f"batch_size {c.batch_size} exceeds the {TRAIN_EXAMPLES - c.validation_size:,}"
                  f" training images left beside the {c.validation_size:,} held out for "
                  "validation; use a smaller --batch-size or --validation-size")
  if ok("eval_batch_size") and c.eval_batch_size > TEST_EXAMPLES:
    errors.append(f"eval_batch_size {c.eval_batch_size} exceeds the {TEST_EXAMPLES:,} test "
                  f"images (the rest would be padding); use at most {TEST_EXAMPLES}")
  if ok("epochs") and c.epochs > MAX_EPOCHS:
    errors.append(f"epochs must be at most {MAX_EPOCHS:,} (each epoch's record is kept in "
                  f"every checkpoint), got {c.epochs}")
  if ok("warmup_epochs", "epochs") and c.schedule == "cosine" and c.warmup_epochs > c.epochs:
    errors.append(f"warmup_epochs {c.warmup_epochs} is longer than the run ({c.epochs} "
                  "epochs)")
  if ok("lr_drop_epoch") and c.schedule == "step" and not 0 < c.lr_drop_epoch:
    errors.append("schedule 'step' drops the learning rate at --lr-drop-epoch; give it (> 0), "
                  "or choose constant or cosine")
  if ok("lr_drop_epoch") and c.schedule != "step" and c.lr_drop_epoch:
    errors.append(f"lr_drop_epoch is used by schedule 'step' only (schedule is "
                  f"{c.schedule!r}); choose step or leave lr_drop_epoch at 0")
  if ok("weight_decay") and c.weight_decay > 0 and c.optimizer != "adamw":
    errors.append(f"weight_decay is used by optimizer 'adamw' only (optimizer is "
                  f"{c.optimizer!r}); choose adamw or leave weight_decay at 0")
  spec = CELLS.get(c.cell)
  if spec is not None:
    if spec.model and c.bidirectional is True:
      errors.append(f"bidirectional applies to the recurrent cells, not to {c.cell} (a model "
                    "of its own, whose blocks read the whole sequence at once); leave it off")
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    for option in dict.fromkeys(o for s in CELLS.values() for o in s.reads()):
      value = getattr(c, option)
      if option in spec.reads() or value == defaults[option] or not ok(option):
        continue
      families = list(dict.fromkeys(s.family for s in CELLS.values() if option in s.reads()))
      one = len(families) == 1 and sum(option in s.reads() for s in CELLS.values()) == 1
      errors.append(f"{option} applies to the {' and '.join(families)} "
                    f"{'cell' if one else 'cells'} only (cell is {c.cell!r}); leave it at "
                    f"{defaults[option]!r}")
  if c.chrono_init is True and ok("forget_bias") and c.forget_bias != 0:
    errors.append("chrono_init sets the forget-gate biases itself; leave forget_bias at 0 "
                  "with it")
  return errors


def shape_differences(old: dict[str, Any], new: Config) -> list[str]:
  """Fields in `SHAPE_FIELDS` where a stored config dict and `new` disagree (and the
  pixel order, for the permuted task, the dataset and the validation split): what a run
  cannot change on resume."""
  out = []
  fields = SHAPE_FIELDS + (("permutation_seed",) if new.task == "permuted" else ())
  for f in fields:
    if f in old and old[f] != getattr(new, f):
      out.append(f"{f}: {old[f]!r} in the workdir, {getattr(new, f)!r} now")
  # Another dataset has the same shapes, but its images would be trained on, and ranked for
  # the best checkpoint, beside the first one's.
  if "dataset" in old and old["dataset"] != new.dataset:
    out.append(f"dataset: {old['dataset']!r} in the workdir, {new.dataset!r} now (epochs of "
               "one dataset cannot be resumed or ranked with another's)")
  # The held-out images must stay held out (a workdir from before the field trained on all).
  if old and old.get("validation_size", 0) != new.validation_size:
    out.append(f"validation_size: {old.get('validation_size', 0)!r} in the workdir, "
               f"{new.validation_size!r} now (the validation images must never be trained on)")
  return out
