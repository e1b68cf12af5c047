"""Row-wise MNIST LSTM: an LSTM reads each image as 28 rows of 28 pixels.

Command (from the repository root):

    python experiments/mnist_lstm.py --workdir runs/default

Expected on a 2-core x86 CPU (AMD EPYC, no GPU), as measured (see README "Results"):
  --preset default   20 epochs, about 12 minutes, 99.35-99.41% test accuracy (3 seeds)
  --preset tutorial  13 epochs, about 7.5 minutes, about 98.7% test accuracy (98.2-98.9
                     over the last epochs: it wanders)

Stop it with Ctrl-C or SIGTERM (it saves its position inside the epoch) or kill it: the
same command resumes, and ends exactly as an uninterrupted run would.

Rerunning the same command resumes from the newest checkpoint in --workdir. Offline, the
four MNIST files are found through --manual-dir, $RNNJAX_MANUAL_DIR, or ../shared/data/mnist
beside this repository.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rnnjax import config as config_lib  # noqa: E402  (light: no JAX, no TF)

SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


def positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
  return value


def non_negative_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
  if value < 0:
    raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
  return value


def positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
  if not value > 0 or value == float("inf"):
    raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
  return value


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      description="Train an LSTM on row-wise MNIST; rerun the same command to resume.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--workdir", default="runs/default",
                 help="where config.json, metrics.jsonl and checkpoints/ go")
  p.add_argument("--preset", default="default", choices=sorted(config_lib.PRESETS),
                 help="starting configuration; the flags below override it")
  p.add_argument("--epochs", type=positive_int)
  p.add_argument("--batch-size", type=positive_int)
  p.add_argument("--eval-batch-size", type=positive_int)
  p.add_argument("--hidden-size", type=positive_int)
  p.add_argument("--num-layers", type=positive_int)
  p.add_argument("--learning-rate", type=positive_float)
  p.add_argument("--augment-shift", type=non_negative_int,
                 help="random training-image shifts of up to this many pixels (0: off)")
  p.add_argument("--seed", type=non_negative_int)
  p.add_argument("--data-source", choices=config_lib.DATA_SOURCES,
                 help="tfds, idx (NumPy reader, no TensorFlow) or auto (tfds if installed)")
  p.add_argument("--data-dir", help="tfds data dir (default: tfds's, ~/tensorflow_datasets)")
  p.add_argument("--manual-dir",
                 help="folder with the four MNIST files for offline use (default: "
                      "$RNNJAX_MANUAL_DIR, else ../shared/data/mnist when it exists)")
  p.add_argument("--checkpoint-every", type=non_negative_int, metavar="STEPS",
                 help="also checkpoint every STEPS training steps (default: after each "
                      "epoch, and on SIGTERM/SIGINT)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  return p


def build_config(args: argparse.Namespace) -> config_lib.Config:
  overrides = {
      "epochs": args.epochs, "batch_size": args.batch_size,
      "eval_batch_size": args.eval_batch_size, "hidden_size": args.hidden_size,
      "num_layers": args.num_layers, "learning_rate": args.learning_rate, "seed": args.seed,
      "augment_shift": args.augment_shift,
      "checkpoint_every_steps": args.checkpoint_every,
      "data_source": args.data_source, "data_dir": args.data_dir,
  }
  overrides = {k: v for k, v in overrides.items() if v is not None}
  manual_dir = args.manual_dir or os.environ.get("RNNJAX_MANUAL_DIR") or None
  if manual_dir is None and SHARED_MNIST.is_dir():
    manual_dir = str(SHARED_MNIST)
  overrides["manual_dir"] = manual_dir
  if args.no_progress:
    overrides["progress"] = False
  return config_lib.get_config(args.preset).replace(**overrides)


def library_output_to(workdir: Path):
  """Sends what the libraries print (Orbax and absl logs, TensorFlow's C++ logs, tracebacks
  that background threads print) to `workdir/library.log`, and returns a stream to the
  terminal for rnnjax's own lines, progress bar and one-line errors. When the workdir cannot
  be made, changes nothing and returns stderr (the run then explains)."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(workdir / "library.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  except OSError:
    return sys.stderr
  sys.stderr.flush()
  terminal = os.fdopen(os.dup(2), "w", buffering=1)
  os.dup2(log_fd, 2)  # sys.stderr and every C library now write to the log
  os.close(log_fd)
  logging.raiseExceptions = False  # a full disk may refuse the log too: stay quiet about it
  return terminal


def main(argv=None) -> int:
  parser = make_parser()
  args = parser.parse_args(argv)
  try:
    config = build_config(args)
  except ValueError as e:  # a value or combination argparse cannot check on its own
    parser.error(str(e))  # usage, the message, exit status 2

  # Imported after parsing, so that --help and usage errors are instant.
  from rnnjax import checkpointing, data, reporting, train
  terminal = library_output_to(Path(args.workdir))
  reporting.set_console(terminal)

  print(f"rnnjax: preset {config.name}, workdir {args.workdir}, data "
        f"{config.manual_dir or config.data_dir or 'tfds default'}", flush=True)
  try:
    _, history = train.train_and_evaluate(config, args.workdir)
  except (data.DataError, train.WorkdirError, checkpointing.CheckpointError,
          train.TrainingDiverged) as e:
    print(f"error: {e}", file=terminal)
    return 1
  except train.Preempted as e:
    print(f"{e}", file=terminal)
    return 128 + e.signum
  except KeyboardInterrupt:
    print(f"\ninterrupted; rerun the same command to resume from the last checkpoint in "
          f"{args.workdir}", file=terminal)
    return 130
  except Exception:  # a bug, not a user mistake: the whole story, where the user looks
    traceback.print_exc(file=terminal)
    return 1
  if history:
    last = history[-1]
    print(f"test accuracy {100 * last['test_accuracy']:.2f}% after {last['epoch']} epochs; "
          f"results in {args.workdir} (metrics.jsonl, config.json, checkpoints/)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
