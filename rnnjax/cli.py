"""rnnjax's command line: `rnnjax train|evaluate|predict ...`, also run as
`python experiments/mnist_lstm.py ...` (train is the default command).

    rnnjax train --workdir runs/default           # train (or resume) the default preset
    rnnjax evaluate --workdir runs/default        # test loss, accuracy, per-class accuracy
    rnnjax predict --workdir runs/default digit.png ...

Every flag of `train` sets the `Config` field of the same name (`--hidden-size` ->
`hidden_size`; `--preset` picks the starting config, `--no-progress` turns `progress` off);
docs/cli.md lists them with the exit statuses. Commands restart themselves with glibc's
malloc tuned for speed (rnnjax/allocator.py; `RNNJAX_ALLOCATOR=system` turns that off).
Every command ends an unexpected failure with one `error:` line naming the file that holds
the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from rnnjax import presets
from rnnjax import allocator  # light: no JAX, no TF
from rnnjax import config as config_lib



def _find_manual_dir(dataset: str) -> str | None:
  from rnnjax.data import sources  # NumPy only; after parsing, so that --help is instant
  return sources.find_manual_dir(dataset)


def number(kind: type, low: float, open_low: bool = False):
  """An argparse type: a `kind` (int or float) number >= `low` (> `low` with `open_low`;
  floats finite). The bounds with reasons are `config.validate`'s."""
  if kind is int:
    words = "a positive integer" if low == 1 and not open_low else f"an integer >= {low}"
  else:
    words = "a positive finite number" if low == 0 and open_low else f"a finite number >= {low}"

  def convert(text: str):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}") from None
    if not (value > low or (value == low and not open_low)) or value == float("inf"):
      raise argparse.ArgumentTypeError(f"expected {words}, got {text if kind is float else value}")
    return value

  convert.__name__ = kind.__name__  # argparse names the type in its own messages
  return convert


positive_int, non_negative_int, positive_float = number(int, 1), number(int, 0), number(
    float, 0, open_low=True)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Shows a flag's default where it has one (a config flag's default is the preset's)."""

  def _get_help_string(self, action):
    return action.help if action.default is None else super()._get_help_string(action)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
  """One flag per `Config` field, from the field's metadata (`config.fields()`): its help,
  choices and kind; integers and strictly positive numbers checked for their sign as they
  are parsed. Unset flags stay None: the preset's value holds."""
  groups = {}
  for f, kind, _ in config_lib.fields():
    spec = f.metadata
    if spec["group"] not in groups:
      groups[spec["group"]] = parser.add_argument_group(spec["group"])
    kw = dict(dest=f.name, default=None, help=spec["help"])
    if spec["metavar"]:
      kw["metavar"] = spec["metavar"]
    if spec["choices"] is not None:
      kw["choices"] = spec["choices"]
    elif kind is bool:
      kw["action"] = argparse.BooleanOptionalAction
    elif kind is int or spec["open_low"]:
      kw["type"] = number(kind, spec["low"], spec["open_low"])
    elif kind is float:
      kw["type"] = float
    groups[spec["group"]].add_argument(spec["flag"] or "--" + f.name.replace("_", "-"),
                                       *spec["aliases"], **kw)


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      description="Train a recurrent classifier (by default an LSTM on row-wise MNIST); "
                  "rerun the same command to resume. "
                  "Subcommands for a trained workdir: `evaluate --workdir W` and "
                  "`predict --workdir W IMAGE...` (see `evaluate --help`).",
      formatter_class=_HelpFormatter)
  p.add_argument("--workdir",
                 help="where config.json, metrics.jsonl and checkpoints/ go (default: "
                      "runs/PRESET)")
  p.add_argument("--preset", default="default", choices=sorted(presets.PRESETS),
                 help="starting configuration; the flags below override it")
  add_config_flags(p)
  g = p.add_argument_group(
      "several processes (hosts)", "run the same command in every process, each with its "
      "own --process-id; default: $RNNJAX_COORDINATOR, $RNNJAX_NUM_PROCESSES, "
      "$RNNJAX_PROCESS_ID; none given: one process, all its devices")
  g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
  g.add_argument("--num-processes", type=positive_int)
  g.add_argument("--process-id", type=non_negative_int)
  g.add_argument("--join-timeout", type=positive_float, default=120, metavar="SECONDS",
                 help="how long to wait for every process to join before giving up (at "
                      "most a day)")
  return p


def checkpoint_choice(text: str) -> str:
  """An argparse type: `best`, `latest` or a step number (as in checkpoints/<step>)."""
  if text in ("best", "latest") or (text.isascii() and text.isdigit()):
    return text
  raise argparse.ArgumentTypeError(f"expected best, latest or a step number, got {text!r}")


checkpoint_choice.__name__ = "checkpoint"


class Stopped(Exception):
  """SIGTERM or SIGHUP reached `evaluate` or `predict` (which write nothing)."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum


def _raise_stopped(signum, frame):
  raise Stopped(signum)


def make_inspect_parser(command: str) -> argparse.ArgumentParser:
  what = {"evaluate": "Evaluate a trained run's checkpoint on the test set: loss, accuracy "
                      "and per-class accuracy.",
          "predict": "Classify image files (PNG, JPEG: any size, dark-on-light or "
                     "light-on-dark) with a trained run's checkpoint."}[command]
  p = argparse.ArgumentParser(prog=f"{Path(sys.argv[0]).name} {command}", description=what,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--workdir", default="runs/default", help="the run's workdir")
  p.add_argument("--checkpoint", default="best", type=checkpoint_choice,
                 help="best (by validation accuracy; the latest where the run held out no "
                      "validation images), latest, or a step number")
  if command == "evaluate":
    p.add_argument("--data-source", choices=config_lib.DATA_SOURCES,
                   help="override the run's data source")
    p.add_argument("--manual-dir", help="folder with the dataset's four files (offline); "
                   "default: the run's, else $RNNJAX_MANUAL_DIR or ../shared/data/DATASET")
  else:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files of digits")
    p.add_argument("--top", type=positive_int, default=3, help="classes shown per image")
  return p


def inspect_main(command: str, argv: list[str], preset: str = "default",
                 state: dict | None = None) -> int:
  """`evaluate` and `predict`: read-only uses of a workdir."""
  parser = make_inspect_parser(command)
  parser.set_defaults(workdir=f"runs/{preset}")
  args = parser.parse_args(argv)
  check_workdir_flag(parser, args.workdir)
  workdir = Path(args.workdir)
  if not workdir.is_dir():
    print(f"error: no workdir {workdir}; train first: python experiments/mnist_lstm.py "
          f"--workdir {workdir}", file=sys.stderr)
    return 1
  from rnnjax import parallel, reporting
  try:
    parallel.devices()  # JAX_PLATFORMS naming a platform this machine lacks
  except parallel.ParallelError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 1
  terminal = library_output_to(workdir)
  if state is not None and terminal is not sys.stderr:
    state["log"] = workdir / "library.log"
  reporting.set_console(terminal)
  import signal
  previous = {}
  if threading.current_thread() is threading.main_thread():
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM,
                                                                    signal.SIGHUP)}
  try:
    return _inspect(command, args, workdir, terminal)
  except (KeyboardInterrupt, Stopped) as e:
    signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
    try:
      print(f"\n{command} stopped by {signal.Signals(signum).name}; nothing was written",
            file=terminal, flush=True)
    except OSError:
      pass  # the terminal is gone
    return 128 + signum
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def _inspect(command: str, args, workdir: Path, terminal) -> int:
  """evaluate or predict, once the workdir and the terminal are set up."""
  from rnnjax import data, inference, reporting
  try:
    if command == "predict":
      images = inference.load_images(args.images)  # bad files fail before the restore
    run = inference.load_run(workdir, args.checkpoint)
    recorded = run.record or {}
    print(f"checkpoint {run.step} ({run.which}) of {workdir}: {run.config.name} preset, "
          f"epoch {recorded.get('epoch', '?')}", flush=True)
    from rnnjax import workdir as workdir_lib
    history = workdir_lib.describe_configs(workdir)
    if history:
      print(f"trained under: {history} (configs.jsonl)")
    if command == "evaluate":
      return _evaluate(run, args, recorded)
    probs = inference.predict(run, images)
    for path, p in zip(args.images, probs):
      top = np.argsort(-p)[:args.top]
      print(f"{reporting.shown(path)}: " + ", ".join(f"{k} ({100 * p[k]:.1f}%)" for k in top))
    return 0
  except (inference.InferenceError, data.DataError) as e:
    print(f"error: {e}", file=terminal)
    return 1


def _evaluate(run, args, recorded: dict) -> int:
  from rnnjax import data, inference
  config = run.config
  manual_dir = args.manual_dir or config.manual_dir
  if not args.manual_dir and (not manual_dir or not Path(manual_dir).is_dir()):
    manual_dir = _find_manual_dir(config.dataset)  # the run's folder is not here
  load = lambda split: data.load_split(split, args.data_source or config.data_source,  # noqa
                                       config.data_dir, manual_dir, config.dataset)
  if config.validation_size:  # the images the run held out: what chose its best checkpoint
    _, val = data.hold_out(load("train"), config.validation_size)
    _report("validation", inference.evaluate_run(run, val), recorded, "val")
  r = inference.evaluate_run(run, load("test"))
  _report("test", r, recorded, "test")
  m = r["confusion"]
  print("per-class test accuracy:")
  for k, acc in enumerate(r["per_class_accuracy"]):
    wrong = np.argsort(-np.where(np.arange(len(m)) == k, -1, m[k]))[0]
    print(f"  {k}: {100 * acc:6.2f}% ({m[k, k]:,} of {m[k].sum():,}; most often taken for "
          f"{wrong}: {m[k, wrong]})")
  return 0


def _report(what: str, r: dict, recorded: dict, key: str) -> None:
  print(f"{what} loss {r['loss']:.4f}, accuracy {100 * r['accuracy']:.2f}% "
        f"({r['correct']:,} of {r['count']:,})")
  if f"{key}_accuracy" in recorded:
    same = "the same" if r["correct"] == recorded.get(f"{key}_correct") else "DIFFERENT"
    print(f"recorded by the training run for this checkpoint: "
          f"{100 * recorded[f'{key}_accuracy']:.2f}% ({recorded.get(f'{key}_correct')}): "
          f"{same}")


def build_config(args: argparse.Namespace) -> config_lib.Config:
  """The preset `args.preset` with every flag given (not None) applied; the manual dir
  defaults to `default_manual_dir` of the dataset."""
  overrides = {f.name: getattr(args, f.name) for f, _, _ in config_lib.fields()
               if getattr(args, f.name) is not None}
  base = presets.get(args.preset)
  overrides["manual_dir"] = args.manual_dir or _find_manual_dir(
      overrides.get("dataset", base.dataset))
  return base.replace(**overrides)


def library_output_to(workdir: Path):
  """Sends what the libraries print (Orbax and absl logs, TensorFlow's C++ logs, tracebacks
  that background threads print) to `workdir/library.log`, and returns a stream to the
  terminal for rnnjax's own lines, progress bar and one-line errors. When the workdir cannot
  be made, changes nothing and returns stderr (the run then explains)."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(workdir / "library.log",
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
  except OSError:
    return sys.stderr
  sys.stderr.flush()
  terminal = os.fdopen(os.dup(2), "w", buffering=1)
  os.dup2(log_fd, 2)  # sys.stderr and every C library now write to the log
  os.close(log_fd)
  logging.raiseExceptions = False  # a full disk may refuse the log too: stay quiet about it
  return terminal


def main(argv=None, preset: str = "default") -> int:
  """The command: `argv` None reads sys.argv (and restarts with the tuned allocator);
  `preset` is the default of --preset (the experiments/<preset>.py scripts set it).

  Every command ends an unexpected failure with one `error:` line naming it and the file
  that holds its traceback (the workdir's library.log), exit status 1.
  """
  command = argv is None  # run as a command, not called from Python
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv and argv[0] == "results":  # tables of finished runs: no JAX, no allocator
    from rnnjax import results
    return results.main(argv[1:])
  name = argv[0] if argv and argv[0] in ("evaluate", "predict", "train") else "train"
  state = {"log": None}  # library.log, once the command has opened it
  try:
    if name in ("evaluate", "predict"):
      return inspect_main(name, argv[1:], preset, state)
    return train_main(argv[1:] if argv and argv[0] == "train" else argv, preset, command,
                      state)
  except Exception:  # noqa: BLE001 - the error boundary: one line, the traceback in a file
    from rnnjax import parallel, reporting
    if parallel.peer_lost(wait=5):  # a collective failed first: the watch says why, exits
      return 1
    return reporting.unexpected_error(name, state["log"])


def check_workdir_flag(parser, workdir: str | None) -> None:
  if workdir is not None and not workdir.strip():
    parser.error("--workdir is empty (an unset shell variable?); give a folder, or leave the "
                 "flag out for the default")


def train_main(argv: list[str], preset: str, command: bool, state: dict) -> int:
  parser = make_parser()
  parser.set_defaults(preset=preset)
  args = parser.parse_args(argv)
  check_workdir_flag(parser, args.workdir)
  if args.join_timeout > 86400:
    parser.error(f"--join-timeout must be at most 86400 (a day), got {args.join_timeout:g}")
  args.workdir = args.workdir or f"runs/{args.preset}"
  try:
    config = build_config(args)
  except ValueError as e:  # a value or combination argparse cannot check on its own
    parser.error(str(e))  # usage, the message, exit status 2
  if command:  # restart with the tuned allocator (rnnjax/allocator.py)
    try:
      allocator.use_tuned_allocator()
    except ValueError as e:
      parser.error(str(e))
  from rnnjax import resources
  try:  # before any allocation (the count traces the model, starting no device)
    resources.check_memory(config)
  except ValueError as e:
    parser.error(str(e))

  # Imported after parsing, so that --help and usage errors are instant.
  from rnnjax import parallel, reporting
  terminal = sys.stderr
  try:
    parallel.initialize(args.coordinator, args.num_processes, args.process_id,
                        timeout=args.join_timeout)
  except parallel.ParallelError as e:
    parser.error(str(e))
  except parallel.JoinFailed as e:
    print(f"error: {e}", file=terminal, flush=True)
    return 1
  try:
    devices = parallel.devices()  # JAX_PLATFORMS naming a platform this machine lacks
  except parallel.ParallelError as e:
    print(f"error: {e}", file=terminal, flush=True)
    return 1
  main_process = parallel.is_main_process()
  terminal = library_output_to(Path(args.workdir))
  if terminal is not sys.stderr:
    state["log"] = Path(args.workdir) / "library.log"
  reporting.set_console(terminal)
  if not main_process:  # process 0 speaks for the run; the others report only errors
    sys.stdout = open(os.devnull, "w")
  return run_training(config, args, devices, terminal)


def run_training(config, args, devices, terminal) -> int:
  """Trains with the one-line errors and exit statuses of the command line."""
  import jax

  from rnnjax import checkpointing, data, parallel, resources, signals, train
  from rnnjax import workdir as workdir_lib

  from rnnjax import models
  from rnnjax.cpu_kernel import KernelUnavailable
  try:
    layers = models.describe(config)
  except KernelUnavailable as e:
    print(f"error: {e}", file=terminal)
    return 1
  print(f"rnnjax: preset {config.name}, workdir {args.workdir}, data "
        f"{config.manual_dir or config.data_dir or 'tfds default'}, malloc "
        f"{os.environ.get('GLIBC_TUNABLES') or 'system defaults'}; {len(devices)} "
        f"{devices[0].platform} device(s) in {jax.process_count()} process(es); {layers}",
        flush=True)
  try:
    from rnnjax import results
    _, history = train.train_and_evaluate(
        config, args.workdir, started=time.perf_counter() - results.process_seconds())
  except (data.DataError, workdir_lib.WorkdirError, checkpointing.CheckpointError,
          train.TrainingDiverged, parallel.ParallelError, resources.ResourceError,
          KernelUnavailable) as e:
    print(f"error: {e}", file=terminal)
    parallel.finish(error=str(e))
    return 1
  except signals.Preempted as e:
    print(f"{e}", file=terminal)
    return 128 + e.signum
  except signals.Interrupted as e:
    print(f"\n{e}", file=terminal)
    return 128 + e.signum
  except KeyboardInterrupt:
    print(f"\ninterrupted; rerun the same command to resume from the last checkpoint in "
          f"{args.workdir}", file=terminal)
    return 130
  parallel.finish()
  if history:
    print(f"{summary_line(history)}; results in {args.workdir} (metrics.jsonl, curves.png, "
          "confusion_matrix.png, TensorBoard events, checkpoints/)")
  return 0


def summary_line(history: list[dict]) -> str:
  """The run's result: test accuracy at the best-validation checkpoint (selected on
  validation, reported on test), or after the last epoch when no images were held out."""
  from rnnjax import plots
  last, best = history[-1], plots.best_epoch(history)
  epochs = f"{last['epoch']} epoch" + ("s" if last["epoch"] != 1 else "")
  if "val_accuracy" not in best:
    return f"test accuracy {100 * last['test_accuracy']:.2f}% after {epochs}"
  return (f"test accuracy {100 * best['test_accuracy']:.2f}% at the best-validation "
          f"checkpoint (epoch {best['epoch']} of {last['epoch']}: validation "
          f"{100 * best['val_accuracy']:.2f}%); after the last epoch: test "
          f"{100 * last['test_accuracy']:.2f}%")


if __name__ == "__main__":
  sys.exit(main())
