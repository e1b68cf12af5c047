"""TensorBoard event files in the workdir: per-epoch scalars and the run's hyperparameters.

Written with tensorboardX (maintained, pure Python, no TensorFlow needed, so it works on
JAX-only GPU machines too)::

    tensorboard --logdir runs/        # one run per workdir

Scalars, at the global training step: `train/loss`, `train/accuracy`, `test/loss`,
`test/accuracy`, `learning_rate`, `images_per_second`, `epoch`. Hyperparameters: the whole
Config in the HPARAMS tab (with the final test accuracy and loss as its metrics), and as a
text summary. A resumed run appends a new event file; TensorBoard merges them.
Off with `Config.tensorboard = False` (`--no-tensorboard`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SCALARS = {  # TensorBoard tag -> metrics.jsonl key
    "train/loss": "train_loss", "train/accuracy": "train_accuracy",
    "val/loss": "val_loss", "val/accuracy": "val_accuracy",
    "test/loss": "test_loss", "test/accuracy": "test_accuracy",
    "grad_norm/mean": "grad_norm", "grad_norm/max": "grad_norm_max",
    "learning_rate": "learning_rate", "images_per_second": "images_per_second",
    "epoch": "epoch",
}


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
    for tag, key in SCALARS.items():
      if key in record:
        self._writer.add_scalar(tag, float(record[key]), step)
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

