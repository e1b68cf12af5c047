"""IRNN on sequential MNIST (Le, Jaitly and Hinton 2015): a ReLU RNN with 100 units whose
recurrent kernel starts as the identity (input kernel N(0, 0.001^2)), reading 784 pixels
one at a time; Adam 1e-4 with clipping at 1 (the paper: SGD at 1e-8), 100 epochs.

Command (from the repository root; the same flags as mnist_lstm.py, which override the
preset):

    python experiments/irnn.py                          # train in runs/irnn; rerun to resume
    python experiments/irnn.py evaluate                 # test accuracy of its best checkpoint

Its measured time and result: the `irnn` preset's docstring (rnnjax/presets.py), and
docs/results.md with hardware and commit.
"""

import sys

from mnist_lstm import main  # experiments/ is on sys.path when this script runs

if __name__ == "__main__":
  sys.exit(main(preset="irnn"))
