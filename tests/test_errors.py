"""What a user sees when something goes wrong: one `error:` line and a non-zero exit.

The error boundary of every command, tested by injecting a failure; the platform JAX cannot
start; numeric flags checked against what they will meet, at parse time (exit 2); the
memory a run would need, refused before anything is allocated; damaged checkpoint records.
"""

import json
import signal
import subprocess
import sys
import time

import pytest

from rnnjax import presets
from rnnjax import checkpointing, inference, resources, steps, train
from tests.helpers import REPO, SCRIPT, TINY, check_refused, requires_mnist, run_cli, snapshot


# Runs a command's main() with one library function replaced by one that raises.
INJECT = """
import sys
sys.path[:0] = [{experiments!r}, {benchmarks!r}]
import importlib
module = importlib.import_module(sys.argv[1])
def boom(*a, **k):
  raise RuntimeError("injected failure")
setattr(module, sys.argv[2], boom)
script = importlib.import_module(sys.argv[3])
sys.exit(script.main(sys.argv[4:]))
"""


def inject(module, name, script, *args):
  code = INJECT.format(experiments=str(REPO / "experiments"),
                      benchmarks=str(REPO / "benchmarks"))
  return subprocess.run([sys.executable, "-c", code, module, name, script, *map(str, args)],
                        capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def good_workdir(tmp_path_factory, tiny_splits):
  workdir = tmp_path_factory.mktemp("errors") / "run"
  # 16 of the 64 images held out for validation (which ranks the best checkpoint): 3 steps
  # per epoch, checkpoints at steps 2, 3 (epoch 1), 4 and 6 (epoch 2).
  tiny = presets.get("tiny").replace(epochs=2, checkpoint_every_steps=2,
                                           validation_size=16)
  train.train_and_evaluate(tiny, workdir, tiny_splits, log=lambda s: None)
  return workdir


def check_one_error_line(r, where):
  assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, r.stderr
  assert "RuntimeError: injected failure" in errors[0]
  assert "Traceback" not in r.stderr + r.stdout
  log = errors[0].split("the full traceback is in ")[1].split(". Please")[0]
  assert where in log
  text = open(log).read()
  assert "Traceback" in text and "injected failure" in text


@pytest.mark.parametrize("command,module,name", [
    ("evaluate", "rnnjax.inference", "load_run"),
    ("predict", "rnnjax.inference", "predict"),
    ("train", "rnnjax.train", "train_and_evaluate"),
])
def test_every_command_ends_an_unexpected_failure_with_one_line(good_workdir, tmp_path,
                                                                command, module, name):
  workdir = tmp_path / "w"
  import shutil
  shutil.copytree(good_workdir, workdir)
  extra = {"evaluate": [], "train": TINY}.get(command)
  if command == "predict":
    from PIL import Image
    import numpy as np
    image = tmp_path / "digit.png"
    a = np.full((40, 30), 255, np.uint8)
    a[5:35, 14:16] = 0
    Image.fromarray(a).save(image)
    extra = [image]
  args = ([command] if command != "train" else []) + ["--workdir", workdir, *extra]
  r = inject(module, name, "mnist_lstm", *args)
  check_one_error_line(r, str(workdir / "library.log"))


def test_benchmark_ends_an_unexpected_failure_with_one_line():
  r = inject("rnnjax.allocator", "wanted", "throughput", "--settings", "tutorial")
  check_one_error_line(r, "rnnjax-benchmark-")


def test_a_platform_jax_cannot_start_is_one_line(good_workdir):
  env = {"JAX_PLATFORMS": "cuda"}  # no GPU here
  for args in (["--workdir", good_workdir, *TINY], ["evaluate", "--workdir", good_workdir],
               ["predict", "--workdir", good_workdir, "x.png"]):
    r = run_cli(*args, env=env)
    assert r.returncode == 1, r.stderr
    assert ("error: JAX could not start the platform JAX_PLATFORMS='cuda' asks for"
            in r.stderr), r.stderr
    assert "Unset JAX_PLATFORMS" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "70000"], "batch_size 70000 exceeds the 60,000 training images"),
    (["--eval-batch-size", "20000"], "eval_batch_size 20000 exceeds the 10,000 test images"),
    (["--epochs", "100000000000000000000"], "epochs must be at most 10,000"),
    (["--weight-decay", "inf", "--optimizer", "adamw"],
     "weight_decay must be a finite number >= 0, got inf"),
    (["--weight-decay", "0.1"], "weight_decay is used by optimizer 'adamw' only"),
    (["--grad-clip-norm", "inf"], "grad_clip_norm must be a finite number >= 0, got inf"),
    (["--warmup-epochs", "nan"], "warmup_epochs must be a finite number >= 0, got nan"),
    (["--forget-bias=-inf"], "forget_bias must be a finite number, got -inf"),
    (["--schedule", "cosine", "--warmup-epochs", "5", "--epochs", "2"],
     "warmup_epochs 5.0 is longer than the run (2 epochs)"),
    (["--seed", str(2**64)], "seed must be an integer in [0, 2**63 - 1]"),
    (["--hidden-size", "100000000"], "this run would need about 8.0e+17 bytes"),
    (["--hidden-size", "512", "--memory-limit", "0.01"],
     "more than the limit of 0.01 GiB"),
    (["--workdir", ""], "--workdir is empty (an unset shell variable?)"),
])
def test_numbers_are_checked_against_what_they_meet_at_parse_time(good_workdir, args, message):
  before = snapshot(good_workdir)
  t0 = time.perf_counter()
  r = run_cli("--workdir", good_workdir, *TINY, *args)
  check_refused(r, good_workdir, before, message, "usage:", code=2)
  assert time.perf_counter() - t0 < 30  # before data, before JAX


def test_evaluate_with_an_empty_workdir_flag_is_refused_as_training_is():
  r = run_cli("evaluate", "--workdir", "")
  assert r.returncode == 2 and "--workdir is empty" in r.stderr


def test_the_parameter_count_of_the_estimate_is_the_models():
  import jax
  for changes in ({}, {"cell": "gru"}, {"cell": "tanh", "num_layers": 2},
                  {"bidirectional": True, "num_layers": 2, "task": "pixels"},
                  {"cell": "lem", "num_layers": 2}, {"cell": "cornn"},
                  {"cell": "lru", "num_layers": 3, "state_size": 5}):
    c = presets.get("tiny").replace(hidden_size=12, **changes)
    state = jax.eval_shape(lambda: steps.create_train_state(c, jax.random.key(0)))
    real = sum(x.size for x in jax.tree.leaves(state.params))
    assert resources.parameter_count(c) == real, changes


def test_memory_is_refused_in_the_library_too(tmp_path, tiny_splits):
  c = presets.get("tiny").replace(hidden_size=4096, memory_limit_gib=0.5)
  e = resources.estimate(c)
  # 4 * 4096 * (28 + 4096 + 1) + 4096 * 10 + 10 parameters, five float32 copies of them.
  assert e["parameters"] == 4 * 4096 * 4125 + 40970
  assert e["train_state_bytes"] == 5 * 4 * e["parameters"]
  with pytest.raises(resources.ResourceError, match=r"would need about 1\.4 GiB .*more than "
                     r"the limit of 0\.5 GiB"):
    train.train_and_evaluate(c, tmp_path / "w", tiny_splits, log=lambda s: None)
  assert not (tmp_path / "w").exists()


def _edit_meta(workdir, step, edit):
  path = workdir / "checkpoints" / str(step) / "meta" / "metadata"
  meta = json.loads(path.read_text())
  edit(meta)
  path.write_text(json.dumps(meta))


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(epoch="2"), "its record's epoch is '2', not an integer"),
    (lambda m: m.pop("history"), "its record has no history"),
    (lambda m: m.update(partial={"loss_sum": "x"}), "running totals (partial) are malformed"),
])
def test_a_damaged_checkpoint_record_falls_back_to_an_older_checkpoint(good_workdir, tmp_path,
                                                                       edit, message):
  import shutil
  workdir = tmp_path / "w"
  shutil.copytree(good_workdir, workdir)
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", read_only=True)
  newest, older = ckpt.steps()[-1], ckpt.steps()[-2]
  ckpt.close()
  _edit_meta(workdir, newest, edit)
  r = run_cli("--workdir", workdir, *TINY, "--epochs", "1",  # restores, nothing to train
              "--validation-size", "16")
  assert r.returncode == 0 and "run already finished" in r.stdout, r.stderr
  assert message in r.stdout + r.stderr and "Traceback" not in r.stderr
  assert f"resumed from {workdir / 'checkpoints' / str(older)}" in r.stdout
  assert (workdir / "unreadable_checkpoints" / str(newest)).is_dir()  # kept, set aside


def damage(workdir, step):
  for f in (workdir / "checkpoints" / str(step) / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"")


def test_readers_fall_back_through_older_checkpoints_and_say_which(good_workdir, tmp_path):
  import shutil
  workdir = tmp_path / "w"
  shutil.copytree(good_workdir, workdir)
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", read_only=True)
  kept, best = ckpt.steps(), ckpt.best_step()
  ckpt.close()
  assert len(kept) >= 2
  damage(workdir, kept[-1])
  before = snapshot(workdir)
  run = inference.load_run(workdir, "latest")
  assert run.step == kept[-2] and run.skipped == [kept[-1]]
  assert "the newest readable one, in place of latest" in run.which
  r = run_cli("evaluate", "--workdir", workdir, "--checkpoint", "latest", "--data-source",
              "idx")
  out = r.stdout + r.stderr
  assert f"checkpoint {workdir / 'checkpoints' / str(kept[-1])} is unreadable" in out
  assert f"checkpoint {kept[-2]} ({kept[-2]}, the newest readable one" in out
  assert "Move the folder" not in out and "move the folder" not in out
  assert snapshot(workdir) == before  # readers move and delete nothing
  # A damaged best falls back the same way.
  damage(workdir, best)
  run = inference.load_run(workdir, "best")
  assert run.step not in (best, kept[-1]) and best in run.skipped
  # Only when none is readable does the message speak of moving the folder away.
  for s in kept:
    damage(workdir, s)
  with pytest.raises(inference.InferenceError, match="no checkpoint under .* could be read "
                     ".*move the folder away"):
    inference.load_run(workdir, "latest")
  # A step asked for by number is that one: no fallback, the others named.
  shutil.rmtree(workdir)
  shutil.copytree(good_workdir, workdir)
  damage(workdir, kept[0])
  with pytest.raises(inference.InferenceError, match=f"tried steps {kept[0]}\\); the others "
                     f"\\({', '.join(map(str, sorted(kept[1:], reverse=True)))}\\) may be"):
    inference.load_run(workdir, str(kept[0]))


@requires_mnist
def test_sigterm_while_tfds_prepares_says_so_and_leaves_no_unfinished_folder(tmp_path,
                                                                               mnist_dir):
  pytest.importorskip("tensorflow_datasets")
  data_dir = tmp_path / "tfds"
  p = subprocess.Popen([sys.executable, str(SCRIPT), "--workdir", str(tmp_path / "w"), *TINY,
                        "--data-source", "tfds", "--data-dir", str(data_dir), "--manual-dir",
                        str(mnist_dir)], cwd=REPO, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and p.poll() is None:
    if list(data_dir.rglob("*incomplete*")):
      break
    time.sleep(0.05)
  assert p.poll() is None, p.communicate()
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 128 + signal.SIGTERM, (out, err)
  assert "stopped by SIGTERM before training began; nothing was written" in err
  assert "Traceback" not in err
  assert not list(data_dir.rglob("*incomplete*"))
  written = {f.name for f in (tmp_path / "w").rglob("*") if f.is_file()}
  assert written <= {"library.log", "lock"}, written  # no record, no checkpoint
