"""TensorBoard event files in the workdir: per-epoch scalars and the run's hyperparameters.

Written with tensorboardX (maintained, pure Python, no TensorFlow needed, so it works on
JAX-only GPU machines too)::

    tensorboard --logdir runs/        # one run per workdir

Scalars, at the global training step: every number of the epoch's metrics.jsonl record,
under its key (`tag`: `train/loss`, `val/accuracy`, `test/loss`, `grad_norm`,
`grad_norm_max`, `learning_rate`, `images_per_second`, ...). Hyperparameters: the whole
Config in the HPARAMS tab (with the final test accuracy and loss as its metrics), and as a
text summary. A resumed run appends a new event file; TensorBoard merges them.
Off with `Config.tensorboard = False` (`--no-tensorboard`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")


def tag(key: str) -> str:
  """The TensorBoard tag of a metrics.jsonl key: a split's numbers grouped under it
  (`train_loss` -> `train/loss`), every other key as it is (`grad_norm`)."""
  split, _, rest = key.partition("_")
  return f"{split}/{rest}" if split in SPLITS and rest else key


def _hparam_value(v: Any):
  return v if isinstance(v, (bool, int, float, str)) else str(v)


class Writer:
  """Writes one run's events into `workdir`; use as a context manager or call `close`."""

  def __init__(self, workdir: str | os.PathLike, config):
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams

    self.workdir = Path(workdir)
    self._writer = SummaryWriter(logdir=str(self.workdir), flush_secs=30)
    cfg = config.to_dict()
    self._writer.add_text("config", "\n".join(f"    {k}: {cfg[k]!r}" for k in sorted(cfg)))
    hp = {k: _hparam_value(v) for k, v in cfg.items() if v is not None}
    # The three hparams summaries in this run's own folder (SummaryWriter.add_hparams would
    # make a new sub-run for them).
    metrics = {"hparam/test_accuracy": 0.0, "hparam/test_loss": 0.0}
    if config.validation_size:
      metrics["hparam/val_accuracy"] = 0.0
    for summary in hparams(hp, metrics):
      self._writer.file_writer.add_summary(summary)

  def write_epoch(self, record: dict[str, Any]) -> None:
    """Scalars of one metrics.jsonl record at its global step."""
    step = int(record["step"])
    for key, value in record.items():  # every number of the record, none left out
      if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
        self._writer.add_scalar(tag(key), float(value), step)
    self._writer.add_scalar("hparam/test_accuracy", float(record["test_accuracy"]), step)
    self._writer.add_scalar("hparam/test_loss", float(record["test_loss"]), step)
    if "val_accuracy" in record:
      self._writer.add_scalar("hparam/val_accuracy", float(record["val_accuracy"]), step)
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

