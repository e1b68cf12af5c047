"""Permuted sequential MNIST: as seq_lstm (but Adam 5e-4), the 784 pixels in a fixed random
order (drawn from --permutation-seed, 0 by default, and stored in the workdir as
permutation.json, so resuming and `evaluate` read pixels in the same order).

Command (from the repository root; the same flags as mnist_lstm.py, which override the
preset):

    python experiments/permuted_lstm.py                          # train in runs/permuted_lstm; rerun to resume
    python experiments/permuted_lstm.py evaluate                 # test accuracy of its best checkpoint

Measured on this project's 2-core CPU machine (no GPU), docs/results.md:
  2 of its 100 epochs fit in the time (about 5 min per epoch, 201-211 img/s, 2-core Intel
  Xeon, 2026-11-27): 45.62% test accuracy after epoch 1, 55.07% after epoch 2, still
  rising. Published for LSTMs on this task: 88-90%; a full run needs about 8 hours here, or
  a GPU.
"""

import sys

from mnist_lstm import main  # experiments/ is on sys.path when this script runs

if __name__ == "__main__":
  sys.exit(main(preset="permuted_lstm"))
