"""Sequential (pixel-by-pixel) MNIST: an LSTM with 128 units reads each image as 784 steps
of one pixel, in raster order; chrono initialisation of its gate biases, Adam 1e-3 (1
warm-up epoch, then cosine decay over 12 epochs), clipping at 1, batch 100.

Command (from the repository root; the same flags as mnist_lstm.py, which override the
preset):

    python experiments/seq_lstm.py                          # train in runs/seq_lstm; rerun to resume
    python experiments/seq_lstm.py evaluate                 # test accuracy of its best checkpoint

Its measured time and result: the `seq_lstm` preset's docstring (rnnjax/presets.py), and
docs/results.md with hardware and commit.
"""

import sys

from mnist_lstm import main  # experiments/ is on sys.path when this script runs

if __name__ == "__main__":
  sys.exit(main(preset="seq_lstm"))
