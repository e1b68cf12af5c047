"""Sequential (pixel-by-pixel) MNIST: an LSTM with 128 units reads each image as 784 steps
of one pixel, in raster order; forget-gate bias 1, Adam 1e-4 (1 warm-up epoch, then cosine
decay over 100 epochs), clipping at 1, batch 100.

Command (from the repository root; the same flags as mnist_lstm.py, which override the
preset):

    python experiments/seq_lstm.py                          # train in runs/seq_lstm; rerun to resume
    python experiments/seq_lstm.py evaluate                 # test accuracy of its best checkpoint

Measured on this project's 2-core CPU machine (no GPU), docs/results.md:
  3 of its 100 epochs fit in the time (about 6 min per epoch, 170-180 img/s, 2-core Intel
  Xeon, 2026-11-27): 43.14%, 44.56%, 46.03% test accuracy after epochs 1-3, learning
  slowly. At Adam 1e-3 and 5e-4 (earlier versions of this preset) it collapsed to chance in
  epoch 2 (34.83% -> 11.53%, 32.87% -> 9.80%). Published for LSTMs on this task:
  98.2-98.9%; a full run needs about 10 hours here, or a GPU.
"""

import sys

from mnist_lstm import main  # experiments/ is on sys.path when this script runs

if __name__ == "__main__":
  sys.exit(main(preset="seq_lstm"))
