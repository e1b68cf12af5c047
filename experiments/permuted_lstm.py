"""Permuted sequential MNIST: as seq_lstm, the 784 pixels in a fixed random
order (drawn from --permutation-seed, 0 by default, and stored in the workdir as
permutation.json, so resuming and `evaluate` read pixels in the same order).

Command (from the repository root; the same flags as mnist_lstm.py, which override the
preset):

    python experiments/permuted_lstm.py                          # train in runs/permuted_lstm; rerun to resume
    python experiments/permuted_lstm.py evaluate                 # test accuracy of its best checkpoint

Its measured time and result: the `permuted_lstm` preset's docstring (rnnjax/presets.py), and
docs/results.md with hardware and commit.
"""

import sys

from mnist_lstm import main  # experiments/ is on sys.path when this script runs

if __name__ == "__main__":
  sys.exit(main(preset="permuted_lstm"))
