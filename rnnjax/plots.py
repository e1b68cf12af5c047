"""Figures of a run, with matplotlib's non-interactive Agg backend (no screen needed).

Every run writes, into its workdir, after each epoch (so they are fresh at any moment)::

    curves.png             loss and accuracy per epoch: train, validation and test
    confusion_matrix.png   test-set confusion matrix of the latest epoch

The notebook uses the same functions, plus `misclassified_grid` and `row_by_row`. Each
function returns a matplotlib Figure; `save` writes one atomically and closes it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _plt():
  import matplotlib
  if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
    matplotlib.use("Agg")  # a script or test: never open a window
  import matplotlib.pyplot as plt
  return plt


def curves(history: Sequence[dict[str, Any]]):
  """Loss (left) and accuracy in % (right) per epoch: train, validation (where the run
  held some out) and test; the title names the best-validation epoch and its test
  accuracy."""
  plt = _plt()
  epochs = [r["epoch"] for r in history]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  for split, style in (("train", "o-"), ("val", "^-"), ("test", "s-")):
    if history and f"{split}_loss" in history[-1]:
      ax_loss.plot(epochs, [r.get(f"{split}_loss") for r in history], style, label=split)
      ax_acc.plot(epochs, [100 * r.get(f"{split}_accuracy", np.nan) for r in history], style,
                  label=split)
  ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
  title = "accuracy"
  if history and "val_accuracy" in history[-1]:
    best = best_epoch(history)
    title += (f"\nbest validation: epoch {best['epoch']}, {100 * best['val_accuracy']:.2f}%"
              f"\ntest there: {100 * best['test_accuracy']:.2f}%")
  ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title=title)
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
    ax.xaxis.get_major_locator().set_params(integer=True)
  fig.tight_layout()
  return fig


def best_epoch(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """`results.best_epoch` (the latest of equals, as the checkpoint manager's `best_step`);
  the last epoch where the run held out no validation images."""
  from rnnjax import results
  return results.best_epoch(history) or history[-1]


def confusion(matrix: np.ndarray, title: str = "test set"):
  """Counts per (true, predicted) class, with per-class accuracy on the row labels."""
  plt = _plt()
  m = np.asarray(matrix)
  c = m.shape[0]
  fig, ax = plt.subplots(figsize=(6.5, 5.5))
  shown = np.log1p(m)  # the diagonal dwarfs the errors on a linear scale
  ax.imshow(shown, cmap="Blues")
  for t in range(c):
    for p in range(c):
      if m[t, p]:
        ax.text(p, t, str(m[t, p]), ha="center", va="center", fontsize=7,
                color="white" if shown[t, p] > 0.6 * shown.max() else "black")
  per_class = m.diagonal() / np.maximum(m.sum(1), 1)
  ax.set_xticks(range(c))
  ax.set_yticks(range(c), [f"{t}  ({100 * a:.1f}%)" for t, a in enumerate(per_class)])
  total = max(int(m.sum()), 1)
  ax.set(xlabel="predicted", ylabel="true  (per-class accuracy)",
         title=f"{title}: {100 * m.trace() / total:.2f}% of {total:,}")
  fig.tight_layout()
  return fig


def misclassified_grid(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
                       columns: int = 8):
  """Images `[n, 28, 28]` titled 'true -> predicted' (give only the wrong ones)."""
  plt = _plt()
  n = len(images)
  rows = max(1, -(-n // columns))
  fig, axes = plt.subplots(rows, columns, figsize=(1.4 * columns, 1.6 * rows), squeeze=False)
  for k, ax in enumerate(axes.flat):
    ax.axis("off")
    if k < n:
      ax.imshow(images[k], cmap="gray_r")
      ax.set_title(f"{labels[k]} -> {predicted[k]}", fontsize=9, color="firebrick")
  fig.suptitle("misclassified test digits: true -> predicted")
  fig.tight_layout()
  return fig


def row_by_row(image: np.ndarray, probs: np.ndarray, label: int | None = None):
  """The image (left) and the probability of each class after each row read (right).

  Args:
    image: `[rows, columns]`.
    probs: `[rows, C]`, softmax of the readout applied to the hidden state after each row.
  """
  plt = _plt()
  fig, (ax_img, ax_p) = plt.subplots(1, 2, figsize=(10, 3.8),
                                     gridspec_kw={"width_ratios": [1, 2.6]})
  ax_img.imshow(image, cmap="gray_r")
  ax_img.set_title("input" if label is None else f"input (label {label})")
  ax_img.set_xticks([])
  ax_img.set_ylabel("row")
  rows = np.arange(1, len(probs) + 1)
  final = int(np.argmax(probs[-1]))
  for k in range(probs.shape[1]):
    strong = probs[:, k].max() > 0.2
    ax_p.plot(rows, probs[:, k], lw=2.5 if k == final else 1.2, alpha=1.0 if strong else 0.35,
              label=str(k) if strong else None)
  ax_p.set(xlabel="rows read", ylabel="probability", ylim=(-0.02, 1.02),
           title=f"prediction as the LSTM reads the rows (final: {final})")
  ax_p.grid(alpha=0.3)
  ax_p.legend(title="class", loc="center left", bbox_to_anchor=(1.0, 0.5))
  fig.tight_layout()
  return fig


def save(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
  """Writes `fig` as PNG through a temporary file and a rename, then closes it. A failed
  write (a full disk) leaves the previous figure and no temporary file."""
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp.png")
  try:
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  finally:
    _plt().close(fig)
  return path


def write_run_plots(workdir: str | os.PathLike, history: Sequence[dict[str, Any]],
                    confusion_matrix: np.ndarray | None) -> list[Path]:
  """curves.png and confusion_matrix.png in `workdir` (the latter when a matrix is given)."""
  workdir = Path(workdir)
  written = [save(curves(history), workdir / "curves.png")]
  if confusion_matrix is not None:
    epoch = history[-1]["epoch"] if history else 0
    written.append(save(confusion(confusion_matrix, f"test set, epoch {epoch}"),
                        workdir / "confusion_matrix.png"))
  return written
