"""Row-wise LSTM on MNIST: `nn.RNN(nn.OptimizedLSTMCell(256))` reads 28 rows of 28 pixels;
the `default` recipe (Adam 2e-3, cosine with 1 warm-up epoch, clipping at 1, random shifts
of up to 2 pixels, 20 epochs, batch 100).

Command (from the repository root; the same flags as mnist_lstm.py, which override the
preset):

    python experiments/row_lstm.py                          # train in runs/row_lstm; rerun to resume
    python experiments/row_lstm.py evaluate                 # test accuracy of its best checkpoint

Its measured time and result: the `row_lstm` preset's docstring (rnnjax/presets.py), and
docs/results.md with hardware and commit.
"""

import sys

from mnist_lstm import main  # experiments/ is on sys.path when this script runs

if __name__ == "__main__":
  sys.exit(main(preset="row_lstm"))
