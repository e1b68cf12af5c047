"""The command line, driven as a user drives it: in a subprocess."""

import json
import os
import sys

import numpy as np
import pytest

from rnnjax import presets
from rnnjax.config import Config
from tests.helpers import REPO, requires_mnist, run_cli


@pytest.mark.parametrize("args,message", [
    (["--hidden-size", "0"], "--hidden-size: expected a positive integer, got 0"),
    (["--batch-size", "-5"], "--batch-size: expected a positive integer, got -5"),
    (["--epochs", "two"], "--epochs: expected a positive integer, got 'two'"),
    (["--learning-rate=-1e-3"], "--learning-rate: expected a positive finite number"),
    (["--learning-rate", "nan"], "--learning-rate: expected a positive finite number"),
    (["--preset", "huge"], "--preset: invalid choice: 'huge'"),
    (["--data-source", "hub"], "--data-source: invalid choice: 'hub'"),
    (["--augment-shift", "20"], "augment_shift must be an integer in [0, 13], got 20"),
    (["--dropout", "1.5"], "dropout must be in [0, 1), got 1.5"),
    (["--cell", "gru", "--forget-bias", "1"], "forget_bias applies to the LSTM cells only"),
    (["--task", "columns"], "--task: invalid choice: 'columns'"),
    (["--dataset", "cifar10"], "--dataset: invalid choice: 'cifar10'"),
    (["--lstm-kernel", "gpu"], "--lstm-kernel: invalid choice: 'gpu'"),
])
def test_invalid_values_exit_2(args, message, tmp_path):
  r = run_cli("--workdir", tmp_path / "w", *args)
  assert r.returncode == 2, r.stderr
  assert message in r.stderr and "usage:" in r.stderr
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "w").exists()


def test_steps_per_call_flag_reaches_the_config():
  sys.path.insert(0, str(REPO / "experiments"))
  import mnist_lstm
  parse = mnist_lstm.make_parser().parse_args
  assert mnist_lstm.build_config(parse(["--preset", "tiny"])).steps_per_call == 10
  config = mnist_lstm.build_config(parse(["--preset", "tiny", "--steps-per-call", "1"]))
  assert config.steps_per_call == 1
  with pytest.raises(SystemExit):
    parse(["--steps-per-call", "0"])


def test_rnn_kernel_flag_and_its_old_name_reach_the_config():
  """`--rnn-kernel` sets `Config.rnn_kernel`; `--lstm-kernel`, its name before it covered
  LEM layers too, still does."""
  sys.path.insert(0, str(REPO / "experiments"))
  import mnist_lstm
  parse = mnist_lstm.make_parser().parse_args
  assert mnist_lstm.build_config(parse(["--preset", "tiny"])).rnn_kernel == "auto"
  for flag in ("--rnn-kernel", "--lstm-kernel"):
    config = mnist_lstm.build_config(parse(["--preset", "tiny", flag, "xla"]))
    assert config.rnn_kernel == "xla"


def test_a_stored_config_with_the_old_field_name_reads_as_the_new():
  """A config stored before `lstm_kernel` became `rnn_kernel` keeps its choice."""
  stored = presets.get("tiny").replace(rnn_kernel="xla").to_dict()
  stored["lstm_kernel"] = stored.pop("rnn_kernel")
  assert Config.from_dict(stored) == presets.get("tiny").replace(rnn_kernel="xla")


def test_rnn_kernel_cpu_where_it_cannot_run_is_a_clear_error(tmp_path):
  """No compiler (and an empty kernel cache): `--rnn-kernel cpu` stops before any data or
  training with one line that names the cause and the alternatives."""
  r = run_cli("--workdir", tmp_path / "w", "--preset", "tiny", "--rnn-kernel", "cpu",
              env={"CXX": str(tmp_path / "no-g++"), "RNNJAX_KERNEL_CACHE": str(tmp_path / "k")})
  assert r.returncode == 1, r.stderr[-2000:]
  assert "error: --rnn-kernel cpu cannot run here: " in r.stderr
  assert "Use auto (the nn.RNN scan where the kernel cannot run) or xla." in r.stderr
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()
  assert not (tmp_path / "w" / "config.json").exists()


def test_wrong_manual_dir_is_a_clear_error(tmp_path):
  r = run_cli("--workdir", tmp_path / "w", "--preset", "tiny", "--data-source", "idx",
              "--manual-dir", tmp_path / "missing")
  assert r.returncode == 1
  assert "missing' does not exist" in r.stderr and "train-images-idx3-ubyte.gz" in r.stderr
  assert "Traceback" not in r.stderr


def test_changed_hidden_size_is_refused_and_nothing_lost(tmp_path, tiny_splits):
  from rnnjax import train
  workdir = tmp_path / "w"
  train.train_and_evaluate(presets.get("tiny"), workdir, tiny_splits, log=lambda s: None)
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.name != "library.log"}
  r = run_cli("--workdir", workdir, "--preset", "tiny", "--hidden-size", "16",
              "--data-source", "idx")
  assert r.returncode == 1
  assert "hidden_size: 8 in the workdir, 16 now" in r.stderr and "new --workdir" in r.stderr
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.name != "library.log"} == before


@requires_mnist
@pytest.mark.slow
@pytest.mark.xdist_group("tfds")  # one worker prepares tfds's MNIST for both tests
def test_end_to_end_on_real_mnist(tmp_path, tfds_data_dir, mnist_dir, monkeypatch):
  """The main command on the real files through tfds (one epoch of a small LSTM), a resume
  that finds the run finished, then evaluate and predict on its workdir. One test, so that
  the run is made once (a fixture shared by several tests may be made on each worker). The
  commands run as users run them, with XLA's default flags (tests/conftest.py)."""
  monkeypatch.setenv("XLA_FLAGS", "")
  workdir = tmp_path / "run"
  args = ["--workdir", workdir, "--preset", "tutorial", "--epochs", "1", "--hidden-size", "64",
          "--learning-rate", "3e-3", "--data-dir", tfds_data_dir, "--manual-dir", mnist_dir]
  r = run_cli(*args)
  assert r.returncode == 0, r.stderr[-3000:]
  record = json.loads((workdir / "metrics.jsonl").read_text())
  assert record["test_count"] == 10000
  # 64 units, one epoch: 94.8% with either matmul engine (32 units gave 89.95% and 91.13%:
  # after one epoch at a constant 3e-3 the summation order moves it by points).
  assert record["test_accuracy"] > 0.90, record
  assert f"test accuracy {100 * record['test_accuracy']:.2f}%" in r.stdout
  if "GLIBC_TUNABLES" not in os.environ and sys.platform.startswith("linux"):
    assert "malloc glibc.malloc.hugetlb=1" in r.stdout  # restarted with the tuned allocator
  for name in ("curves.png", "confusion_matrix.png"):
    assert (workdir / name).stat().st_size > 20_000
  assert list(workdir.glob("events.out.tfevents.*"))
  r2 = run_cli(*args)
  assert r2.returncode == 0 and "run already finished: 1 of 1 epochs" in r2.stdout
  check_evaluate_matches_training(workdir)
  check_predict_png_of_a_test_digit_as_the_model_classifies_the_array(workdir, mnist_dir,
                                                                      tmp_path)
  check_evaluate_and_predict_bad_inputs_are_one_line_errors(workdir, tmp_path)


def check_evaluate_matches_training(workdir):
  record = json.loads((workdir / "metrics.jsonl").read_text())
  r = run_cli("evaluate", "--workdir", workdir)  # the run's own data settings
  assert r.returncode == 0, r.stdout + r.stderr
  assert (f"accuracy {100 * record['test_accuracy']:.2f}% ({record['test_correct']:,} of "
          "10,000)") in r.stdout
  assert f"{100 * record['test_accuracy']:.2f}% ({record['test_correct']}): the same" in r.stdout
  m = np.asarray(record["test_confusion"])
  assert m.sum() == 10000 and np.trace(m) == record["test_correct"]
  for k in range(10):
    assert f"  {k}: {100 * m[k, k] / m[k].sum():6.2f}% ({m[k, k]:,} of {m[k].sum():,};" in r.stdout


def check_predict_png_of_a_test_digit_as_the_model_classifies_the_array(workdir, mnist_dir,
                                                                       tmp_path):
  from PIL import Image
  from rnnjax import data, inference
  test = data.load_idx("test", manual_dir=mnist_dir)
  run = inference.load_run(workdir)
  picks = [0, 1, 2, 3]
  expected = inference.predict(run, test.images[picks])
  files = []
  for k in picks:
    light = tmp_path / f"digit{k}.png"
    Image.fromarray(test.images[k]).save(light)
    dark = tmp_path / f"digit{k}_on_paper.png"
    Image.fromarray(255 - test.images[k]).convert("RGB").save(dark)  # dark on light, RGB
    files += [light, dark]
  # A larger photo-like image: digit 0 scaled up 4x, dark on white paper, off-centre, JPEG.
  big = np.full((160, 200), 255, np.uint8)
  big[20:132, 70:182] = 255 - np.kron(test.images[0], np.ones((4, 4), np.uint8))
  Image.fromarray(big).save(tmp_path / "big.jpg", quality=95)
  r = run_cli("predict", "--workdir", workdir, "--top", "2", *files, tmp_path / "big.jpg")
  assert r.returncode == 0, r.stdout + r.stderr
  for k, p in zip(picks, expected):
    top = np.argsort(-p)[:2]
    want = ", ".join(f"{c} ({100 * p[c]:.1f}%)" for c in top)
    assert f"digit{k}.png: {want}" in r.stdout, r.stdout
    assert f"digit{k}_on_paper.png: {want}" in r.stdout, r.stdout
  assert f"big.jpg: {int(np.argmax(expected[0]))} (" in r.stdout, r.stdout


def check_evaluate_and_predict_bad_inputs_are_one_line_errors(workdir, tmp_path):
  (tmp_path / "notes.png").write_text("hello")
  r = run_cli("predict", "--workdir", workdir, tmp_path / "notes.png")
  assert r.returncode == 1 and "error: " in r.stderr
  assert "notes.png: not a readable image" in r.stderr and "Traceback" not in r.stderr
  r = run_cli("evaluate", "--workdir", tmp_path / "missing")
  assert r.returncode == 1 and "no workdir" in r.stderr and "Traceback" not in r.stderr
  # A step that is not there: tests/test_inspect.py (in process).


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_a_preset_docstring_gives_its_recipe_and_command_not_its_figures(name):
  """What a preset reached is recorded data (docs/results/), not prose: its docstring gives
  the recipe and the command, and names no machine, commit or measured figure. Every preset
  but `tiny` (for tests) has a recorded run."""
  import re
  doc = presets.PRESETS[name].__doc__
  if name != "tiny":
    assert f"python experiments/mnist_lstm.py{'' if name == 'default' else ' --preset ' + name}" \
        in doc, name
    from rnnjax import results
    assert any(s["preset"] == name for s in results.records()), f"no record of {name}"
  assert not re.search(r"\d+(\.\d+)? ?(%|img/s|s per epoch)|\b[0-9a-f]{7}\b|Xeon|EPYC|"
                       r"Zen|AMD|Intel", doc), (name, doc)


def flag_and_value(field, kind, base):
  """A flag that sets `field` to a valid value unlike `base`'s, from its metadata alone."""
  spec = field.metadata
  flag = spec["flag"] or "--" + field.name.replace("_", "-")
  value = getattr(base, field.name)
  if kind is bool:
    return [flag if not value else "--no-" + flag[2:]]
  if spec["choices"] is not None:
    return [flag, next(c for c in spec["choices"] if c != value)]
  if kind is str:
    return [flag, "/tmp/elsewhere"]
  low, high = spec["low"], spec["high"]
  start = value if value is not None else (low if low is not None else 0)
  for new in (start + 1, start / 2 if kind is float else start - 1, start + 0.25):
    if kind is int and new != int(new):
      continue
    new = kind(new)
    fits = ((low is None or new > low or (new == low and not spec["open_low"]))
            and (high is None or new < high or (new == high and not spec["open_high"])))
    if fits and new != value:
      return [flag, str(new)]
  raise AssertionError(f"no value for {field.name}")


def test_every_config_field_has_a_flag():
  """Each field of Config is set by its flag (a value unlike the preset's, derived from the
  field's metadata), and the flag reaches that field, the rest unchanged. A field read by
  some cells only is set with such a cell."""
  import dataclasses
  from rnnjax import cli, config as config_lib
  parse = cli.make_parser().parse_args
  base = cli.build_config(parse(["--preset", "tutorial"]))
  for field, kind, _ in config_lib.fields():
    readers = [k for k, spec in config_lib.CELLS.items() if field.name in spec.reads()]
    cell = [] if not readers or base.cell in readers else ["--cell", readers[0]]
    needs = {"weight_decay": ["--optimizer", "adamw"],
             "lr_drop_epoch": ["--schedule", "step"]}.get(field.name, [])
    flag = flag_and_value(field, kind, base)
    changed = cli.build_config(parse(["--preset", "tutorial", *cell, *needs, *flag]))
    assert getattr(changed, field.name) != getattr(base, field.name), field.name
    if not cell and not needs and field.name != "dataset":  # a dataset brings its own
      # default offline folder
      assert dataclasses.replace(changed, **{field.name: getattr(base, field.name)}) == base, \
          field.name
  assert cli.build_config(parse(["--preset", "tiny"])).name == "tiny"


@pytest.mark.parametrize("value", ["abc", "-3", "1.5", ""])
def test_a_checkpoint_that_is_not_best_latest_or_a_step_is_a_usage_error(tmp_path, value):
  r = run_cli("evaluate", "--workdir", tmp_path, "--checkpoint", value)
  assert r.returncode == 2, r.stderr
  assert f"argument --checkpoint: expected best, latest or a step number, got {value!r}" in \
      r.stderr
