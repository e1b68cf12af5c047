"""Named configurations: each a function of no arguments returning a `Config`.

A docstring says what the recipe is, why it was chosen, and its command. What each preset
reached, on which machine and in how long, is recorded data: docs/results.md, generated from
the runs' summaries in docs/results/ (`rnnjax results`). Override any field with flags
(`--epochs 3`) or `get("tutorial").replace(epochs=3)`.
"""

from __future__ import annotations

from typing import Callable

from rnnjax.config import Config


def tutorial() -> Config:
  """The original TF1 tutorial: LSTM 256 over 28 rows of 28 pixels, batch 100, Adam 1e-3,
  13 epochs, no schedule, no regularisation (its test accuracy wanders between epochs).

      python experiments/mnist_lstm.py --preset tutorial
  """
  return Config(name="tutorial")


def default() -> Config:
  """The best single-run recipe found for a 2-core CPU within 15 minutes: the tutorial's
  LSTM 256 with Adam at a 2e-3 peak, one warm-up epoch then cosine decay, clipping at global
  norm 1, random shifts of up to 2 pixels, 20 epochs. The shifts matter most: without them
  the same schedule ends lower (docs/lab/).

      python experiments/mnist_lstm.py
  """
  return Config(
      name="default", epochs=20, batch_size=100, learning_rate=2e-3, schedule="cosine",
      warmup_epochs=1.0, grad_clip_norm=1.0, augment_shift=2)


def tiny() -> Config:
  """For tests, not for results: a few units, small batches, one epoch; no progress bar,
  plots or TensorBoard events (the tests that check those turn them on). Seconds on
  synthetic data."""
  return Config(name="tiny", hidden_size=8, batch_size=16, eval_batch_size=32, epochs=1,
                validation_size=0, progress=False, tensorboard=False, plots=False)


def row_gru() -> Config:
  """`default`'s recipe with a GRU 256 (`nn.GRUCell`) in place of the LSTM: the same task
  and budget, for comparing cells.

      python experiments/mnist_lstm.py --preset row_gru
  """
  return default().replace(name="row_gru", cell="gru")


def row_bilstm() -> Config:
  """`default`'s recipe with each LSTM layer bidirectional (256 units each way): the last
  row is read first too, for comparing architectures at about twice the cost.

      python experiments/mnist_lstm.py --preset row_bilstm
  """
  return default().replace(name="row_bilstm", bidirectional=True)


def smnist() -> Config:
  """Sequential MNIST (784 pixels, one per step): the best recipe found for a 2-core CPU
  within 60 minutes. The parallel LMU (`plmu`, Chilkuri and Eliasmith 2021) with the
  Legendre memory of its psMNIST model (order 468 over the 784 steps) under two ReLU layers
  of 1,024 units, dropout 0.3, and random shifts of up to 2 pixels of each image before it
  is read pixel by pixel (without them one layer fits the training set within a few epochs
  and stops improving on validation); Adam at a 1e-3 peak, one epoch of warm-up then cosine decay over
  40 epochs, clipping at global norm 1. Chosen on validation accuracy among orders 468, 640
  and 784, one or two layers of 1,024 or 2,048 units, dropout 0.3 and 0.4 (docs/lab/). Its
  memory is linear and fixed (docs/models_and_tasks.md); `smnist_lem` is the recipe with a
  learned nonlinear recurrence.

      python experiments/mnist_lstm.py --preset smnist
  """
  return Config(name="smnist", task="pixels", cell="plmu", hidden_size=1024, num_layers=2,
                lmu_order=468, dropout=0.3, augment_shift=2, epochs=40, learning_rate=1e-3,
                schedule="cosine", warmup_epochs=1.0, grad_clip_norm=1.0)


def psmnist() -> Config:
  """Permuted sequential MNIST (784 pixels in a fixed random order, `permutation_seed` 0):
  the parallel LMU's psMNIST model from its paper (order 468, theta 784, 346 ReLU units,
  165,745 parameters), dropout 0.4, batch 100, Adam at a 1e-3 peak, one epoch of warm-up
  then cosine decay over 40 epochs, clipping at global norm 1. No augmentation: the pixels'
  order hides the image's geometry, as the task intends. Dropout chosen on validation
  accuracy among 0, 0.2 and 0.4 (docs/lab/).

      python experiments/mnist_lstm.py --preset psmnist
  """
  return Config(name="psmnist", task="permuted", cell="plmu", hidden_size=346, lmu_order=468,
                dropout=0.4, epochs=40, learning_rate=1e-3, schedule="cosine",
                warmup_epochs=1.0, grad_clip_norm=1.0)


def psmnist_lmu() -> Config:
  """The Legendre Memory Unit on the permuted task, as keras-lmu's psMNIST example and the
  LMU paper (Voelker et al. 2019) train it: 212 tanh units over a memory of order 256 with a
  window of the 784 steps, the memory reading the input only (`hidden_to_memory` and
  `memory_to_memory` off), the input also feeding the hidden layer, the last step read out;
  batch 100, Adam at a constant 1e-3, no clipping, 10 epochs (the paper's budget). Unlike
  `psmnist`'s parallel LMU, its hidden state is a learned nonlinear recurrence over every
  step (docs/models_and_tasks.md); its memory is computed in parallel and only that
  recurrence runs step by step.

      python experiments/mnist_lstm.py --preset psmnist_lmu
  """
  return Config(name="psmnist_lmu", task="permuted", cell="lmu", hidden_size=212,
                lmu_order=256, lmu_theta=784.0, batch_size=100, epochs=10,
                learning_rate=1e-3, schedule="constant")


def smnist_lem() -> Config:
  """Sequential MNIST with a learned nonlinear recurrence over the 784 steps: LEM 128 (Long
  Expressive Memory, Rusch et al. 2022), which keeps gradients alive over 784 steps where an
  LSTM needs chrono initialisation, on rnnjax's CPU kernel; the authors' dt 0.21, batch 128
  and Adam 1.8e-3, here as the peak of half an epoch of warm-up and a cosine decay over 13
  epochs, so that the run ends on a small learning rate within the hour; clipping at global
  norm 1.

      python experiments/mnist_lstm.py --preset smnist_lem
  """
  return Config(name="smnist_lem", task="pixels", cell="lem", hidden_size=128,
                batch_size=128, epochs=13, learning_rate=1.8e-3, schedule="cosine",
                warmup_epochs=0.5, grad_clip_norm=1.0)


def psmnist_lem() -> Config:
  """`smnist_lem`'s recipe on the permuted task, with 11 epochs to fit the hour.

      python experiments/mnist_lstm.py --preset psmnist_lem
  """
  return smnist_lem().replace(name="psmnist_lem", task="permuted", epochs=11)


def psmnist_lem_authors() -> Config:
  """LEM with its authors' psMNIST recipe (Rusch et al. 2022, tk-rusch/LEM
  src/psMNIST/psMNIST_task.py): LEM 128, dt 0.31, batch 128, Adam 7.3e-3 for 100 epochs then
  7.3e-4, clipping at global norm 1.1, 120 epochs (their log makes its last gain after the drop
  at epoch 100), and their classifier's initialisation (`head_init="he"`: He-normal
  weights, where flax's default is LeCun-normal; at this learning rate the recipe hardly
  learns in its first epochs without it). Beside `psmnist_lem` for the comparison, not for
  the hour.

      python experiments/mnist_lstm.py --preset psmnist_lem_authors
  """
  return Config(name="psmnist_lem_authors", task="permuted", cell="lem", hidden_size=128,
                cell_dt=0.31, batch_size=128, epochs=120, learning_rate=7.3e-3,
                schedule="step", lr_drop_epoch=100.0, final_lr_fraction=0.1,
                grad_clip_norm=1.1, head_init="he")


PRESETS: dict[str, Callable[[], Config]] = {
    "default": default, "tutorial": tutorial, "tiny": tiny, "row_gru": row_gru,
    "row_bilstm": row_bilstm, "smnist": smnist, "psmnist": psmnist, "psmnist_lmu": psmnist_lmu,
    "smnist_lem": smnist_lem, "psmnist_lem": psmnist_lem,
    "psmnist_lem_authors": psmnist_lem_authors}


def get(name: str = "default") -> Config:
  """Returns the preset called `name` (one of `PRESETS`)."""
  try:
    return PRESETS[name]()
  except KeyError:
    raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
