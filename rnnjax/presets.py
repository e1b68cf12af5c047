"""Named configurations: each a function of no arguments returning a `Config`.

Each docstring says the preset's command, its expected wall time on named hardware and its
result as measured (docs/results.md has the table, with commits). Override any field with
flags (`--epochs 3`) or `get("tutorial").replace(epochs=3)`.
"""

from __future__ import annotations

from typing import Callable

from rnnjax.config import Config


def tutorial() -> Config:
  """The original TF1 tutorial: LSTM 256, batch 100, Adam 1e-3, 13 epochs, no schedule.

  `python experiments/mnist_lstm.py --preset tutorial`: 98.73% test accuracy after 13
  epochs (98.20-98.94% over the last 4: it wanders), 7.4 min on a 2-core AMD EPYC (the
  `nn.RNN` scan, commit 274ee12).
  """
  return Config(name="tutorial")


def default() -> Config:
  """The best single-run setup found for a 2-core CPU within 15 minutes: LSTM 256, Adam
  2e-3 peak, 1 warm-up epoch then cosine decay, clipping at global norm 1, random shifts of
  up to 2 pixels, 20 epochs.

  `python experiments/mnist_lstm.py`: 99.33% test accuracy at the best-validation
  checkpoint (epoch 14; 99.25% after epoch 20), 13.0 min from a fresh clone on a 2-core
  Intel Xeon (the CPU kernel, 5,000 images held out, commit ae47b27); 99.38% (epoch 20) in
  8.6 min from a fresh clone on a 2-core AMD EPYC Zen 4 (commit 4e6afcf); 99.30% (epoch 16,
  validation 99.32%; 99.35% after epoch 20) in 6.2 min from a fresh clone on a 2-core Intel
  Xeon, family 6 model 167 (commit 641df2d). Trained on all 60,000 (before the validation
  split; last epoch's test accuracy): 99.39% in 10.0 min on the Intel Xeon (commit
  cbbddc9); 99.35%, 99.40%, 99.41% for seeds 0-2 on a 2-core AMD EPYC (the scan, 12.1 min,
  commit 274ee12).
  """
  return Config(
      name="default", epochs=20, batch_size=100, learning_rate=2e-3, schedule="cosine",
      warmup_epochs=1.0, grad_clip_norm=1.0, augment_shift=2)


def tiny() -> Config:
  """For tests: a few units, small batches, one epoch; no progress bar, plots or TensorBoard
  events (the tests that check those turn them on). Seconds on synthetic data."""
  return Config(name="tiny", hidden_size=8, batch_size=16, eval_batch_size=32, epochs=1,
                validation_size=0, progress=False, tensorboard=False, plots=False)


# Research presets: row-wise ones share `default`'s recipe; each has a script in
# experiments/ (`python experiments/NAME.py` = `--preset NAME --workdir runs/NAME`).

def row_lstm() -> Config:
  """Row-wise LSTM 256, the `default` recipe (the same config): 99.35% (seed 0) in 12.1 min
  on a 2-core AMD EPYC (the scan, commit 274ee12)."""
  return default().replace(name="row_lstm")


def row_gru() -> Config:
  """Row-wise GRU 256, the `default` recipe: 99.36% after 20 epochs, 21-24 s per epoch
  (about 8 min) on a 2-core Intel Xeon (commit fb18b24)."""
  return default().replace(name="row_gru", cell="gru")


def row_bilstm() -> Config:
  """Row-wise bidirectional LSTM, 256 units each way, the `default` recipe: 99.40% after 20
  epochs in 24.8 min on a 2-core Intel Xeon (the scan, commit fb18b24)."""
  return default().replace(name="row_bilstm", bidirectional=True)


def smnist() -> Config:
  """Sequential MNIST (784 pixels, one per step): the best recipe found for a 2-core CPU
  within 60 minutes. LEM 128 (Long Expressive Memory, Rusch et al. 2022) on rnnjax's CPU
  kernel, the authors' dt 0.21, batch 128 and Adam 1.8e-3 (here as the peak: half an epoch
  of warm-up, then cosine decay), clipping at global norm 1, 13 epochs.

  `python experiments/mnist_lstm.py --preset smnist` from a fresh clone, install included:
  98.71% test accuracy at the best-validation checkpoint (epoch 13 of 13, validation
  98.94%), 23.9 min on a 2-core Intel Xeon, family 6 model 167 (100-111 s per epoch; commit
  57ce641). Seed 1 (`--seed 1`): 98.76% (validation 98.86%, epoch 13), 21.0 min without the
  install; seed 2: 98.78% (validation 98.96%, epoch 13), 22.3 min. Not yet timed on the AMD
  EPYCs at 13 epochs; from their 11-epoch runs, about 37 min on the Zen 4 and 50-55 min on
  the Zen 3 (docs/results.md).

  With 11 epochs (cosine over 11): 98.25%, 98.39%, 98.46% for seeds 0-2 (validation
  98.40-98.54%), 31.2-31.5 min on a 2-core AMD EPYC Zen 4 (commits 04b56a3, 343d486,
  901f428); 97.99%, 98.52%, 97.80% (validation 98.30-98.52%), 20.5-21.5 min on the Intel
  Xeon, family 6 model 167 (commit c098252). With 9 epochs: 97.70% (validation 97.94%),
  45.8 min on a 2-core Intel Xeon (commit 86e6341).
  """
  return Config(name="smnist", task="pixels", cell="lem", hidden_size=128, batch_size=128,
                epochs=13, learning_rate=1.8e-3, schedule="cosine", warmup_epochs=0.5,
                grad_clip_norm=1.0)


def psmnist() -> Config:
  """Permuted sequential MNIST (784 pixels in a fixed random order, `permutation_seed` 0):
  `smnist`'s recipe on the permuted task, with 11 epochs.

  `python experiments/mnist_lstm.py --preset psmnist` from a fresh clone, install included:
  91.21% test accuracy at the best-validation checkpoint (epoch 11 of 11, validation
  91.56%; validation 40.48, 65.16, 77.18, 83.08, 85.60, 87.28, 89.44, 90.40, 90.90, 91.54,
  91.56% after epochs 1-11), 49.1 min on a 2-core AMD EPYC Zen 3 (206-308 s per epoch;
  commit aa1b102); seed 1: 90.88% (validation 91.64%, epoch 11), 38.5 min without the
  install. Seed 2 (`--seed 2`), fresh clone, install included, on a 2-core AMD EPYC Zen 4:
  90.88% (validation 91.18%, epoch 11), 34.2 min (commit 4e6afcf). Earlier, on the Zen 4:
  90.65% (validation 91.10%, epoch 11), 37.0 min (commit 372df0a). On a 2-core Intel Xeon
  (family 6, model 167), fresh clone, install included: 91.61% (validation 91.70%, epoch
  11), 21.8 min (108-117 s per epoch; commit c098252).
  """
  return smnist().replace(name="psmnist", task="permuted", epochs=11)


def _pixel_recipe(**changes) -> Config:
  # The LSTM on 784 steps: chrono initialisation keeps memories of up to 784 steps from the
  # start (with forget bias 1 instead, Adam at 1e-3 and 5e-4 collapsed to chance in epoch 2,
  # and 1e-4 learned slowly: docs/results.md); clipping at 1; 1 warm-up epoch then cosine.
  return Config(task="pixels", hidden_size=128, batch_size=100, epochs=12,
                learning_rate=1e-3, schedule="cosine", warmup_epochs=1.0, grad_clip_norm=1.0,
                chrono_init=True).replace(**changes)


def seq_lstm() -> Config:
  """Sequential (pixel-by-pixel) MNIST, LSTM 128 on the CPU kernel, chrono initialisation,
  Adam 1e-3 peak (1 warm-up epoch, cosine decay over 12 epochs), clipping at 1, batch 100.

  `python experiments/seq_lstm.py`: no collapse; validation 64.26%, 74.76%, 83.90%, 87.78%,
  90.10%, 90.00% after epochs 1-6 (test 89.30% at the best, epoch 5), then stopped for time
  in epoch 7 (rerun to resume); 3.6-3.9 min per epoch on a 2-core Intel Xeon (commit
  fa9d9a7, where this recipe was the `smnist` preset). Not a finished result.
  """
  return _pixel_recipe(name="seq_lstm")


def permuted_lstm() -> Config:
  """Permuted sequential MNIST (pixel order from permutation_seed 0), `seq_lstm`'s recipe.

  The recipe before chrono initialisation (forget bias 1, Adam 5e-4) reached 55.07% after 2
  of 100 epochs, 5 min per epoch on a 2-core Intel Xeon (the scan); this one is not yet
  measured.
  """
  return _pixel_recipe(name="permuted_lstm", task="permuted")


def seq_lem() -> Config:
  """Sequential MNIST with LEM 128 (Long Expressive Memory, Rusch et al. 2022), the
  authors' recipe: dt 0.21, Adam 1.8e-3 constant, batch 128, clipping at 1; 20 epochs
  (the authors' log: 98.4% validation after epoch 9, 99.0% after 19; paper 99.5%).

  `python experiments/mnist_lstm.py --preset seq_lem`: not run to the end here. Its
  training step runs at 130 img/s on a 2-core Intel Xeon (the `nn.RNN` scan,
  `benchmarks/throughput.py --settings seq_lem`, commit c6caeb3): about 7 minutes per
  epoch of 55,000 images, 2.5 hours for the 20.
  """
  return Config(name="seq_lem", task="pixels", cell="lem", hidden_size=128, batch_size=128,
                epochs=20, learning_rate=1.8e-3, grad_clip_norm=1.0)


def seq_cornn() -> Config:
  """Sequential MNIST with coRNN 256 (Rusch and Mishra 2021), the authors' recipe: dt
  0.042, gamma 2.7, epsilon 4.7, Adam 2.1e-3 constant, batch 120; 20 epochs (the paper:
  99.3% after 120).

  `python experiments/mnist_lstm.py --preset seq_cornn`: not run to the end here. At
  hidden 128 its training step runs at 282 img/s on a 2-core Intel Xeon (the `nn.RNN`
  scan, `benchmarks/throughput.py --settings seq_cornn`, commit c6caeb3); at 256, with
  four times the matmul work per step, expect several minutes per epoch.
  """
  return Config(name="seq_cornn", task="pixels", cell="cornn", hidden_size=256,
                batch_size=120, epochs=20, learning_rate=2.1e-3)


def irnn() -> Config:
  """Sequential MNIST with IRNN 100 (Le et al. 2015): ReLU, identity recurrence; Adam at a
  small learning rate with clipping in place of their SGD at 1e-8. 77.98% after 6 of 100
  epochs, 61-84 s per epoch on a 2-core Intel Xeon: not a finished result."""
  return Config(name="irnn", task="pixels", cell="irnn", hidden_size=100, batch_size=100,
                epochs=100, learning_rate=1e-4, schedule="cosine", warmup_epochs=1.0,
                grad_clip_norm=1.0)


PRESETS: dict[str, Callable[[], Config]] = {
    "default": default, "tutorial": tutorial, "tiny": tiny,
    "row_lstm": row_lstm, "row_gru": row_gru, "row_bilstm": row_bilstm,
    "smnist": smnist, "psmnist": psmnist, "seq_lstm": seq_lstm, "permuted_lstm": permuted_lstm, "seq_lem": seq_lem,
    "seq_cornn": seq_cornn, "irnn": irnn}


def get(name: str = "default") -> Config:
  """Returns the preset called `name` (one of `PRESETS`)."""
  try:
    return PRESETS[name]()
  except KeyError:
    raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
