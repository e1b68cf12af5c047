"""Sequential (pixel-by-pixel) MNIST: an LSTM with 128 units reads each image as 784 steps
of one pixel, in raster order; forget-gate bias 1, Adam 5e-4 (1 warm-up epoch, then cosine
decay over 100 epochs), clipping at 1, batch 100.

Command (from the repository root; the same flags as mnist_lstm.py, which override the
preset):

    python experiments/seq_lstm.py                          # train in runs/seq_lstm; rerun to resume
    python experiments/seq_lstm.py evaluate                 # test accuracy of its best checkpoint

Measured on this project's 2-core CPU machine (no GPU), README "Results":
  not yet a working recipe. 2 of its 100 epochs fit in the time (about 6 min per epoch,
  179-192 img/s, 2-core Intel Xeon, 2026-11-27): 32.87% test accuracy after epoch 1, then a
  collapse to 9.80% in epoch 2 (at Adam 1e-3 likewise: 34.83% -> 11.53%); the final hidden
  state stops depending on the image. Published for LSTMs on this task: 98.2-98.9%.
  Needs tuning (learning rate, warm-up, readout) with a GPU's budget.
"""

import sys

from mnist_lstm import main  # experiments/ is on sys.path when this script runs

if __name__ == "__main__":
  sys.exit(main(preset="seq_lstm"))
