"""Row-wise MNIST LSTM: an LSTM reads each image as 28 rows of 28 pixels; and the command
line of every rnnjax run (rnnjax/cli.py; installed, it is also the `rnnjax` command).

Command (from the repository root):

    python experiments/mnist_lstm.py --workdir runs/default          # train (or resume)
    python experiments/mnist_lstm.py evaluate --workdir runs/default # test loss, accuracy,
                                                                     # per-class accuracy
    python experiments/mnist_lstm.py predict --workdir runs/default digit.png ...

Each preset's recipe: its docstring in rnnjax/presets.py; what it reached, where and in how
long: docs/results.md, generated from the recorded runs (`rnnjax results`).

Stop it with Ctrl-C or SIGTERM (it saves its position inside the epoch) or kill it: the
same command resumes, and ends exactly as an uninterrupted run would. Offline, the four
MNIST files are found through --manual-dir, $RNNJAX_MANUAL_DIR, or ../shared/data/mnist
beside this repository.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout, not installed

from rnnjax.cli import *  # noqa: E402,F401,F403 - the command line lives in the package
from rnnjax.cli import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main())
