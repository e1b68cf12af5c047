"""IRNN on sequential MNIST (Le, Jaitly and Hinton 2015): a ReLU RNN with 100 units whose
recurrent kernel starts as the identity (input kernel N(0, 0.001^2)), reading 784 pixels
one at a time; Adam 1e-4 with clipping at 1 (the paper: SGD at 1e-8), 100 epochs.

Command (from the repository root; the same flags as mnist_lstm.py, which override the
preset):

    python experiments/irnn.py                          # train in runs/irnn; rerun to resume
    python experiments/irnn.py evaluate                 # test accuracy of its best checkpoint

Measured on this project's 2-core CPU machine (no GPU), docs/results.md:
  6 of its 100 epochs fit in the time (61-84 s per epoch, 742-1,015 img/s, 2-core Intel
  Xeon, 2026-11-27): 32.45% test accuracy after epoch 1, 57.66% after 2, 77.98% after 6,
  still rising. Published (Le et al. 2015, IRNN on this task): 97%; a full run takes about
  2 hours here.
"""

import sys

from mnist_lstm import main  # experiments/ is on sys.path when this script runs

if __name__ == "__main__":
  sys.exit(main(preset="irnn"))
