"""The workdir's guards: one writer at a time, files of the right kind, and a record of
every config the run was trained under (config.json never rewritten)."""

import json
import os
import subprocess
import sys
import time

import pytest

from rnnjax import presets
from rnnjax import train
from rnnjax import workdir as workdir_lib
from tests.helpers import REPO, TINY, check_refused, requires_mnist, run_cli, snapshot

# The tiny run on real MNIST: 120 steps of 500 images per epoch, a few seconds.
REAL_TINY = ["--preset", "tutorial", "--hidden-size", "8", "--batch-size", "500",
             "--data-source", "idx", "--no-progress"]

HOLD = """
import sys, time
from rnnjax import workdir
lock = workdir.Lock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(path, seconds=60):
  """Another process that holds `path`'s lock, as a training run does."""
  p = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], cwd=REPO,
                       stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "held"
  return p


@pytest.fixture
def good_workdir(tmp_path, tiny_splits):
  workdir = tmp_path / "run"
  train.train_and_evaluate(presets.get("tiny"), workdir, tiny_splits, log=lambda s: None)
  return workdir


def test_a_second_trainer_stops_at_once_naming_the_first(good_workdir, tiny_splits):
  before = snapshot(good_workdir)
  files = {p.name: p.read_bytes() for p in good_workdir.iterdir() if p.is_file()}
  holder = hold_lock(good_workdir)
  try:
    t0 = time.perf_counter()
    with pytest.raises(workdir_lib.WorkdirBusy, match=rf"in use by another training run "
                       rf"\(process {holder.pid} on .*wait for it to finish"):
      train.train_and_evaluate(presets.get("tiny").replace(epochs=3), good_workdir,
                               tiny_splits, log=lambda s: None)
    assert time.perf_counter() - t0 < 5  # at once, before any data or compilation
    # The command line: one line, exit 1; while readers still work beside the holder.
    r = run_cli("--workdir", good_workdir, *TINY, "--epochs", "3")
    check_refused(r, good_workdir, before, f"process {holder.pid} on", "another --workdir")
    r = run_cli("evaluate", "--workdir", good_workdir, "--data-source", "idx")
    assert r.returncode == 0 and "recorded by the training run" in r.stdout, r.stderr
    assert "in use" not in r.stdout + r.stderr
  finally:
    holder.kill()
    holder.wait()
  # Nothing the first run wrote was touched (library.log and the lock file aside).
  after = {p.name: p.read_bytes() for p in good_workdir.iterdir() if p.is_file()}
  for name in files:
    if name not in ("library.log", "lock"):
      assert after[name] == files[name], name
  # The lock died with its holder (kill -9): no stale file blocks the next run.
  train.train_and_evaluate(presets.get("tiny").replace(epochs=2), good_workdir,
                           tiny_splits, log=lambda s: None)
  assert len((good_workdir / "metrics.jsonl").read_text().splitlines()) == 2


@requires_mnist
def test_two_commands_at_once_leave_one_record(tmp_path):
  """The reported case: the same command twice at once. One trains, one is refused."""
  workdir = tmp_path / "c1"
  args = ["--workdir", workdir, *REAL_TINY, "--epochs", "3", "--checkpoint-every", "20"]
  procs = [subprocess.Popen([sys.executable, str(REPO / "experiments" / "mnist_lstm.py"),
                             *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  codes = sorted(p.returncode for p in procs)
  assert codes == [0, 1], outs
  refused = next(o for p, o in zip(procs, outs) if p.returncode == 1)
  assert "in use by another training run" in refused[1] and "Traceback" not in refused[1]
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in lines] == [1, 2, 3]
  assert len(list(workdir.glob("events.out.tfevents.*"))) == 1


@pytest.mark.parametrize("name,make", [
    ("checkpoints", lambda p: p.write_text("not a folder")),
    ("metrics.jsonl", lambda p: p.mkdir()),
    ("config.json", lambda p: p.mkdir()),
])
def test_workdir_files_of_the_wrong_kind_are_refused_before_writing(tmp_path, tiny_splits,
                                                                     name, make):
  workdir = tmp_path / "w"
  workdir.mkdir()
  make(workdir / name)
  with pytest.raises(workdir_lib.WorkdirError, match=f"{name} is not a"):
    train.train_and_evaluate(presets.get("tiny"), workdir, tiny_splits,
                             log=lambda s: None)
  assert sorted(p.name for p in workdir.iterdir()) == [name]  # nothing written


def test_checkpoints_replaced_by_a_file_keeps_metrics(good_workdir):
  metrics = (good_workdir / "metrics.jsonl").read_bytes()
  ckpts = good_workdir / "checkpoints"
  os.rename(ckpts, good_workdir / "moved")
  ckpts.write_text("x")
  r = run_cli("--workdir", good_workdir, *TINY, "--epochs", "2")
  assert r.returncode == 1 and "checkpoints is not a folder" in r.stderr, r.stderr
  assert "Traceback" not in r.stderr and "disk" not in r.stderr
  assert (good_workdir / "metrics.jsonl").read_bytes() == metrics


@pytest.mark.parametrize("content,messages", [
    ("5\n", ["does not hold a config (a JSON object of fields, found int 5)"] * 2),
    ("{broken", ["is unreadable (JSONDecodeError"] * 2),
    ('{"hidden_size": "8"}', ["hidden_size: '8' in the workdir, 8 now",
                              "hidden_size must be a positive integer, got '8'"]),
])
def test_damaged_config_json_is_a_clear_error_everywhere(good_workdir, content, messages):
  before = snapshot(good_workdir)
  (good_workdir / "config.json").write_text(content)
  (good_workdir / "configs.jsonl").unlink()  # config.json is then the only record
  for command, message in zip(([], ["evaluate"]), messages):
    r = run_cli(*command, "--workdir", good_workdir, *(TINY if not command else []),
                *(["--epochs", "2"] if not command else []))
    check_refused(r, good_workdir, before, message)
  assert (good_workdir / "config.json").read_text() == content  # not rewritten either


def test_resuming_with_other_settings_warns_and_records_every_config(tmp_path, tiny_splits,
                                                                     capsys):
  workdir = tmp_path / "w"
  tiny = presets.get("tiny")
  train.train_and_evaluate(tiny.replace(epochs=2), workdir, tiny_splits, log=lambda s: None)
  first = (workdir / "config.json").read_bytes()
  capsys.readouterr()
  changed = tiny.replace(name="default", epochs=3, learning_rate=2e-3, progress=False,
                         steps_per_call=1)
  train.train_and_evaluate(changed, workdir, tiny_splits, log=lambda s: None)
  err = capsys.readouterr().err
  assert ("warning: resuming with changed settings (name: 'tiny' -> 'default', epochs: 2 -> 3,"
          " learning_rate: 0.001 -> 0.002); they apply from epoch 3 on") in err
  assert (workdir / "config.json").read_bytes() == first  # history is not rewritten
  lines = [json.loads(x) for x in (workdir / "configs.jsonl").read_text().splitlines()]
  assert [(r["epoch"], r["step"], r["config"]["name"]) for r in lines] == [
      (0, 0, "tiny"), (2, 8, "default")]  # 64 images / batch 16 = 4 steps per epoch
  assert lines[1]["changes"] == {"name": ["tiny", "default"], "epochs": [2, 3],
                                 "learning_rate": [0.001, 0.002],
                                 "steps_per_call": [10, 1]}
  assert workdir_lib.describe_configs(workdir) == "tiny (from epoch 1 to 2), default (from epoch 3 on)"
  assert workdir_lib.current_config(workdir) == changed
  # Resuming again with the same settings adds nothing; a place-only change adds a line
  # without a warning.
  train.train_and_evaluate(changed, workdir, tiny_splits, log=lambda s: None)
  assert len((workdir / "configs.jsonl").read_text().splitlines()) == 2
  train.train_and_evaluate(changed.replace(epochs=3, steps_per_call=10), workdir, tiny_splits,
                           log=lambda s: None)
  assert "warning" not in capsys.readouterr().err


def test_an_older_workdir_with_only_config_json_keeps_its_first_config(tmp_path, tiny_splits):
  workdir = tmp_path / "w"
  tiny = presets.get("tiny")
  train.train_and_evaluate(tiny, workdir, tiny_splits, log=lambda s: None)
  (workdir / "configs.jsonl").unlink()  # as a workdir written before the record existed
  train.train_and_evaluate(tiny.replace(epochs=2, learning_rate=5e-4), workdir, tiny_splits,
                           log=lambda s: None)
  lines = [json.loads(x) for x in (workdir / "configs.jsonl").read_text().splitlines()]
  assert [(r["epoch"], r["config"]["learning_rate"]) for r in lines] == [(0, 1e-3), (1, 5e-4)]


# ----------------------------------------------------------------------------------------
# The record is the truth: configs.jsonl and the checkpoints, not config.json alone.

HELD_OUT = presets.get("tiny").replace(validation_size=16, epochs=2)  # 3 steps / epoch


@pytest.fixture
def held_out_workdir(tmp_path, tiny_splits):
  workdir = tmp_path / "held"
  train.train_and_evaluate(HELD_OUT, workdir, tiny_splits, log=lambda s: None)
  return workdir


def test_moving_config_json_away_does_not_turn_the_refusals_off(held_out_workdir, tiny_splits):
  """config.json moved away, as its error advises: configs.jsonl still refuses training on
  the validation images; with that gone too, the checkpoint's own record does; with an
  older checkpoint's record (no config in it), its history's validation count does."""
  workdir = held_out_workdir
  before = snapshot(workdir)
  (workdir / "config.json").unlink()
  resumed = HELD_OUT.replace(epochs=3, validation_size=0)
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r"validation_size: 16 in the workdir, 0 now .*as its configs.jsonl"):
    train.train_and_evaluate(resumed, workdir, tiny_splits, log=lambda s: None)
  (workdir / "configs.jsonl").unlink()
  with pytest.raises(workdir_lib.WorkdirError, match=r"checkpoint .*/6 does not fit .*"
                     r"validation_size: 16 in the workdir, 0 now .*as its record says"):
    train.train_and_evaluate(resumed, workdir, tiny_splits, log=lambda s: None)
  meta = workdir_lib.check_checkpoint_record  # a record from before checkpoints held a config
  with pytest.raises(workdir_lib.WorkdirError, match="validation_size: 16 in the checkpoint"):
    meta({"epoch": 1, "history": [{"val_count": 16}]}, resumed, "c")
  meta({"epoch": 1, "history": [{"val_count": 16}]}, HELD_OUT, "c")  # the same split: fine
  assert snapshot(workdir) == before
  assert not (workdir / "config.json").exists()  # nothing written, not even the record


def test_changing_the_dataset_on_resume_is_refused(held_out_workdir, tiny_splits):
  before = snapshot(held_out_workdir)
  with pytest.raises(workdir_lib.WorkdirError,
                     match="dataset: 'mnist' in the workdir, 'fashion_mnist' now"):
    train.train_and_evaluate(HELD_OUT.replace(epochs=3, dataset="fashion_mnist"),
                             held_out_workdir, tiny_splits, log=lambda s: None)
  assert snapshot(held_out_workdir) == before


def test_a_half_written_configs_line_is_cut_before_the_next_one(held_out_workdir, tiny_splits,
                                                                capsys):
  workdir = held_out_workdir
  path = workdir / "configs.jsonl"
  whole = path.read_bytes()
  path.write_bytes(whole + b'{"epoch": 2, "config": {"na')  # a crash mid-write
  assert workdir_lib.describe_configs(workdir) is None  # readable: one config so far
  train.train_and_evaluate(HELD_OUT.replace(epochs=3, learning_rate=5e-4), workdir,
                           tiny_splits, log=lambda s: None)
  err = capsys.readouterr().err
  assert "configs.jsonl ended in a half-written line (27 bytes); removed it" in err
  assert "learning_rate: 0.001 -> 0.0005); they apply from epoch 3 on" in err
  lines = [json.loads(x) for x in path.read_text().splitlines()]
  assert path.read_bytes().startswith(whole)
  assert [(r["epoch"], r["config"]["learning_rate"]) for r in lines] == [(0, 1e-3), (2, 5e-4)]
  assert workdir_lib.describe_configs(workdir) == \
      "tiny (from epoch 1 to 2), tiny (from epoch 3 on)"


@pytest.mark.parametrize("damage", ["half line", "missing", "garbage"])
def test_rerunning_a_finished_run_repairs_its_metrics(held_out_workdir, tiny_splits, damage,
                                                      capsys):
  path = held_out_workdir / "metrics.jsonl"
  whole = path.read_bytes()
  if damage == "half line":
    path.write_bytes(whole[:-40])
  elif damage == "missing":
    path.unlink()
  else:
    path.write_text("not json\n")
  train.train_and_evaluate(HELD_OUT, held_out_workdir, tiny_splits, log=lambda s: None)
  assert path.read_bytes() == whole
  assert "did not hold the run's 2 epochs; rewrote it from the last checkpoint" in \
      capsys.readouterr().err
  configs = held_out_workdir / "configs.jsonl"
  recorded = configs.read_bytes()
  configs.write_bytes(recorded + b'{"epoch": 2, "co')
  train.train_and_evaluate(HELD_OUT, held_out_workdir, tiny_splits, log=lambda s: None)
  assert configs.read_bytes() == recorded  # cut back to its last complete line
  train.train_and_evaluate(HELD_OUT, held_out_workdir, tiny_splits, log=lambda s: None)
  assert "rewrote" not in capsys.readouterr().err  # intact now: left alone


def test_non_finite_numbers_are_written_as_null(tmp_path):
  from rnnjax import reporting
  path = tmp_path / "m.jsonl"
  reporting.append_jsonl(path, {"train_loss": float("nan"), "x": [1.5, float("-inf")]})
  reporting.write_json_atomic(tmp_path / "c.json", {"a": float("inf")})

  def strict(text):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in {text!r}"))
  assert strict(path.read_text()) == {"train_loss": None, "x": [1.5, None]}
  assert strict((tmp_path / "c.json").read_text()) == {"a": None}


# ----------------------------------------------------------------------------------------
# The permuted task's pixel order.

PERMUTED = presets.get("tiny").replace(task="permuted", permutation_seed=3)


def test_a_stored_permutation_must_be_integers_of_the_seed(tmp_path, capsys):
  workdir = tmp_path / "p"
  workdir.mkdir()
  task = workdir_lib.load_task(workdir, PERMUTED)  # none stored: drawn from the seed
  workdir_lib.store_task(workdir, PERMUTED, task)
  order = task.permutation.tolist()
  assert workdir_lib.load_task(workdir, PERMUTED).permutation.tolist() == order
  path = workdir / workdir_lib.PERMUTATION_FILE
  cases = [
      ({"permutation_seed": 3, "permutation": [float(i) for i in order]},
       "not the 784 pixel indices as integers"),
      ({"permutation_seed": 4, "permutation": workdir_lib.load_task(
          workdir.parent, PERMUTED.replace(permutation_seed=4)).permutation.tolist()},
       "holds the pixel order of permutation_seed 4, not 3"),
      ({"permutation_seed": 3, "permutation": order[:-1] + [order[0]]},
       "not the 784 pixel indices"),
  ]
  for stored, message in cases:
    path.write_text(json.dumps(stored))
    with pytest.raises(workdir_lib.WorkdirError) as e:
      workdir_lib.load_task(workdir, PERMUTED)
    assert message in str(e.value), str(e.value)
  # An order this NumPy would not draw from the recorded seed: the stored one, with a word.
  path.write_text(json.dumps({"permutation_seed": 3, "permutation": order[1:] + order[:1]}))
  assert workdir_lib.load_task(workdir, PERMUTED).permutation.tolist() == order[1:] + order[:1]
  assert "holds another order than permutation_seed 3 draws here" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# Checks before work: the checkpoints/ folder itself.

def test_checkpoints_that_cannot_be_written_are_refused_before_training(good_workdir,
                                                                         tiny_splits):
  """A checkpoints/ folder on a file system nobody may write (sysfs, even for root), a link
  or a file where the next step's folder goes, and a path too long for Orbax's files: each
  named before the first step, nothing trained or written."""
  ckpts = good_workdir / "checkpoints"
  more = presets.get("tiny").replace(epochs=2)

  def refused(match):
    with pytest.raises(workdir_lib.WorkdirError, match=match):
      train.train_and_evaluate(more, good_workdir, tiny_splits, log=lambda s: None)
    assert len((good_workdir / "metrics.jsonl").read_text().splitlines()) == 1

  (ckpts / "8").symlink_to(good_workdir.parent)
  refused(r"checkpoints/8 is a symbolic link, where a checkpoint's folder goes")
  (ckpts / "8").unlink()
  (ckpts / "8").write_text("")
  refused(r"checkpoints/8 is a file, where a checkpoint's folder goes")
  (ckpts / "8").unlink()
  if os.path.isdir("/sys/kernel"):
    os.rename(ckpts, good_workdir / "moved")
    ckpts.symlink_to("/sys/kernel")
    refused(r"checkpoints cannot be written in .*checkpoints: it is (not writable|unusable)")
    ckpts.unlink()
    os.rename(good_workdir / "moved", ckpts)
  deep = good_workdir.parent / "d"
  while len(str(deep)) < 3750:
    deep = deep / ("x" * 200)
  deep = deep / ("y" * (3980 - len(str(deep)) - 1))  # the workdir fits in 4096 bytes, Orbax's
  assert len(str(deep)) == 3980                       # files below checkpoints/ would not
  deep.mkdir(parents=True)
  with pytest.raises(workdir_lib.WorkdirError, match=r"too long for checkpoints \(\d+ bytes"):
    train.train_and_evaluate(more, deep / "run", tiny_splits, log=lambda s: None)
  assert not (deep / "run" / "metrics.jsonl").exists()
  train.train_and_evaluate(more, good_workdir, tiny_splits, log=lambda s: None)  # all clear


def test_a_link_planted_as_the_lock_file_is_never_followed(tmp_path):
  victim = tmp_path / "victim"
  victim.write_text("precious")
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "lock").symlink_to(victim)
  with pytest.raises(workdir_lib.WorkdirError, match="cannot create .*lock"):
    workdir_lib.Lock(workdir).acquire()
  assert victim.read_text() == "precious"
