"""Row-wise bidirectional LSTM on MNIST: `nn.Bidirectional` of two
`nn.RNN(nn.OptimizedLSTMCell(256))`,
the readout on the forward direction's last and the backward direction's first state; the
`default` recipe (Adam 2e-3, cosine, clipping at 1, shifts of up to 2 pixels, 20 epochs).

Command (from the repository root; the same flags as mnist_lstm.py, which override the
preset):

    python experiments/row_bilstm.py                          # train in runs/row_bilstm; rerun to resume
    python experiments/row_bilstm.py evaluate                 # test accuracy of its best checkpoint

Its measured time and result: the `row_bilstm` preset's docstring (rnnjax/presets.py), and
docs/results.md with hardware and commit.
"""

import sys

from mnist_lstm import main  # experiments/ is on sys.path when this script runs

if __name__ == "__main__":
  sys.exit(main(preset="row_bilstm"))
