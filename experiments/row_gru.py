"""Row-wise GRU on MNIST: `nn.RNN(nn.GRUCell(256))` over 28 rows of 28 pixels, with the
`default` recipe (Adam 2e-3, cosine, clipping at 1, shifts of up to 2 pixels, 20 epochs).

Command (from the repository root; the same flags as mnist_lstm.py, which override the
preset):

    python experiments/row_gru.py                          # train in runs/row_gru; rerun to resume
    python experiments/row_gru.py evaluate                 # test accuracy of its best checkpoint

Its measured time and result: the `row_gru` preset's docstring (rnnjax/presets.py), and
docs/results.md with hardware and commit.
"""

import sys

from mnist_lstm import main  # experiments/ is on sys.path when this script runs

if __name__ == "__main__":
  sys.exit(main(preset="row_gru"))
