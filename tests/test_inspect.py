"""A finished run at a glance and in use: plots, TensorBoard events, evaluate, predict."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.helpers import synthetic_split
from rnnjax import presets
from rnnjax import inference, train


@pytest.fixture(scope="session")  # once per worker (xdist interleaves modules)
def synthetic_run(tmp_path_factory):
  """Two epochs of a tiny LSTM on synthetic data, through the library's whole loop."""
  workdir = tmp_path_factory.mktemp("inspect") / "run"
  cfg = presets.get("tiny").replace(epochs=2, hidden_size=16, learning_rate=1e-2,
                                              plots=True, tensorboard=True)
  splits = synthetic_split(256, 0), synthetic_split(90, 1)
  _, history = train.train_and_evaluate(cfg, workdir, splits=splits, log=lambda s: None)
  return workdir, cfg, splits, history


def png_chunks(path):
  """(type, length) of every chunk of a PNG file; checks the signature and each CRC."""
  blob = path.read_bytes()
  assert blob[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
  pos, chunks = 8, []
  while pos < len(blob):
    (length,) = struct.unpack(">I", blob[pos:pos + 4])
    kind, body = blob[pos + 4:pos + 8], blob[pos + 8:pos + 8 + length]
    (crc,) = struct.unpack(">I", blob[pos + 8 + length:pos + 12 + length])
    assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in {kind}"
    chunks.append((kind, length))
    pos += 12 + length
  return chunks


def test_every_run_writes_valid_non_trivial_pngs(synthetic_run):
  workdir, *_ = synthetic_run
  for name, min_size in (("curves.png", 20_000), ("confusion_matrix.png", 20_000)):
    path = workdir / name
    chunks = png_chunks(path)
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    with Image.open(path) as im:
      width, height = im.size
      pixels = np.asarray(im.convert("L"))
    assert width >= 500 and height >= 350, (name, im.size)
    # Measured 40-60 KB; a blank or failed figure is a few KB of one colour.
    assert path.stat().st_size > min_size, (name, path.stat().st_size)
    assert len(np.unique(pixels)) > 50, f"{name} looks blank"
  assert not list(workdir.glob("*.tmp.png"))  # written atomically


def test_confusion_matrix_of_the_run_matches_its_predictions(synthetic_run):
  workdir, cfg, (_, test), history = synthetic_run
  run = inference.load_run(workdir, "latest")
  probs = inference.predict(run, test.images)
  expected = np.zeros((10, 10), np.int64)
  np.add.at(expected, (test.labels, probs.argmax(-1)), 1)  # independent count, NumPy
  assert history[-1]["test_confusion"] == expected.tolist()
  assert np.trace(expected) == history[-1]["test_correct"]


def test_tensorboard_scalars_read_back_with_tensorboards_own_reader(synthetic_run):
  from tensorboard.backend.event_processing import event_accumulator
  workdir, cfg, _, history = synthetic_run
  acc = event_accumulator.EventAccumulator(str(workdir), size_guidance={"scalars": 0})
  acc.Reload()
  tags = acc.Tags()
  for tag, key in (("train/loss", "train_loss"), ("test/accuracy", "test_accuracy"),
                   ("test/loss", "test_loss"), ("learning_rate", "learning_rate")):
    events = acc.Scalars(tag)
    assert [e.step for e in events] == [r["step"] for r in history], tag
    # Stored as float32 by TensorBoard's protobuf: equal to the JSON float32-rounded.
    np.testing.assert_array_equal([e.value for e in events],
                                  np.float32([r[key] for r in history]), err_msg=tag)
  assert tags["tensors"] == ["config/text_summary"], tags
  # The hyperparameters plugin's summary holds the whole config.
  from tensorboard.plugins.hparams import plugin_data_pb2
  content = acc.PluginTagToContent("hparams")
  start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
  hp = start.session_start_info.hparams
  assert hp["hidden_size"].number_value == cfg.hidden_size
  assert hp["learning_rate"].number_value == cfg.learning_rate
  assert hp["schedule"].string_value == cfg.schedule


def test_tensorboard_off(tmp_path, tiny_splits):
  cfg = presets.get("tiny").replace(tensorboard=False, plots=True)
  train.train_and_evaluate(cfg, tmp_path / "run", splits=tiny_splits, log=lambda s: None)
  assert not list((tmp_path / "run").glob("events.out.tfevents.*"))
  assert (tmp_path / "run" / "curves.png").is_file()


def test_evaluate_matches_the_recorded_test_accuracy_exactly(synthetic_run):
  workdir, cfg, (_, test), history = synthetic_run
  best = max(history, key=lambda r: r["test_accuracy"])
  run = inference.load_run(workdir, "best")
  assert run.step == best["step"] and run.record == best
  r = inference.evaluate_run(run, test)
  assert (r["correct"], r["count"], r["accuracy"]) == (
      best["test_correct"], best["test_count"], best["test_accuracy"])
  assert r["loss"] == pytest.approx(best["test_loss"], rel=1e-12)  # same batches, same sums
  m = np.asarray(best["test_confusion"])
  np.testing.assert_array_equal(r["confusion"], m)
  np.testing.assert_allclose(r["per_class_accuracy"], m.diagonal() / m.sum(1), rtol=1e-15)


def test_reading_a_workdir_leaves_a_running_save_alone(synthetic_run):
  """evaluate/predict may run while training writes a checkpoint: the unfinished
  (temporary) folder of that save must survive, and nothing may be written."""
  workdir, *_ = synthetic_run
  unfinished = workdir / "checkpoints" / "999.orbax-checkpoint-tmp-1795760000000000"
  (unfinished / "state").mkdir(parents=True)
  try:
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    run = inference.load_run(workdir, "latest")
    assert run.step != 999 and unfinished.is_dir()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
  finally:
    (unfinished / "state").rmdir()
    unfinished.rmdir()


def test_load_run_errors_name_the_problem(tmp_path, synthetic_run):
  with pytest.raises(inference.InferenceError, match="holds no run"):
    inference.load_run(tmp_path)
  workdir, *_ = synthetic_run
  with pytest.raises(inference.InferenceError, match="no checkpoint 7 in"):
    inference.load_run(workdir, "7")
  with pytest.raises(inference.InferenceError, match="best, latest or a step number"):
    inference.load_run(workdir, "newest")


# ----------------------------------------------------------------------------------------
# Image preprocessing, on hand-made images.

def test_to_mnist_inverts_dark_on_light_and_centres_by_mass():
  canvas = np.ones((120, 90))               # white paper
  canvas[10:70, 60:70] = 0.0                # a black vertical bar, off-centre (60 x 10)
  out = inference.to_mnist(canvas)
  assert out.dtype == np.uint8 and out.shape == (28, 28)
  assert out[0].max() == 0 and out[:, 0].max() == 0       # black background
  ys, xs = np.nonzero(out > 127)
  assert ys.max() - ys.min() + 1 == 20                     # longer side scaled to 20
  assert 3 <= xs.max() - xs.min() + 1 <= 4                 # 10 * 20/60, aspect kept
  mass = out.astype(float)
  cy = (np.arange(28)[:, None] * mass).sum() / mass.sum()
  cx = (np.arange(28)[None, :] * mass).sum() / mass.sum()
  assert abs(cy - 13.5) <= 0.5 and abs(cx - 13.5) <= 0.5   # centre of mass at the centre
  light_on_dark = inference.to_mnist(1.0 - canvas)
  np.testing.assert_array_equal(out, light_on_dark)         # polarity does not matter


def test_to_mnist_keeps_28x28_images_and_refuses_blank_ones():
  img = np.zeros((28, 28))
  img[5:20, 12] = 1.0
  np.testing.assert_array_equal(inference.to_mnist(img), np.round(img * 255).astype(np.uint8))
  np.testing.assert_array_equal(inference.to_mnist(1 - img), np.round(img * 255))
  with pytest.raises(ValueError, match="blank"):
    inference.to_mnist(np.full((50, 40), 0.7))


@pytest.mark.parametrize("content,message", [
    (b"not an image at all", "not a readable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not a readable image"),
])
def test_bad_image_files_are_named(tmp_path, content, message):
  bad = tmp_path / "digit.png"
  bad.write_bytes(content)
  with pytest.raises(inference.InferenceError, match=f"digit.png: {message}"):
    inference.load_image(bad)
  with pytest.raises(inference.InferenceError, match="nothere.png: no such file"):
    inference.load_image(tmp_path / "nothere.png")


# evaluate or predict, held inside its work (the test signals only once it is there).
HELD = """
import signal, sys, threading
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's Ctrl-C finds it
from rnnjax import cli, inference
def held(*args, **kwargs):
  print("WORKING", flush=True)
  threading.Event().wait()
inference.evaluate_run = inference.predict = held
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command,signum", [("evaluate", "SIGTERM"), ("evaluate", "SIGINT"),
                                            ("predict", "SIGHUP")])
def test_evaluate_and_predict_say_one_line_when_stopped(synthetic_run, tmp_path, command,
                                                        signum):
  import signal
  import subprocess
  import sys
  from tests.helpers import REPO
  workdir, *_ = synthetic_run
  image = tmp_path / "one.png"
  digit = np.zeros((28, 28), np.uint8)
  digit[4:24, 12:16] = 255  # a "1"
  Image.fromarray(digit).save(image)
  args = [command, "--workdir", str(workdir)] + ([str(image)] if command == "predict" else [])
  # HELD restores SIGINT's handler: a shell running the suite in the background hands its
  # children SIGINT ignored.
  p = subprocess.Popen([sys.executable, "-c", HELD, *args], cwd=REPO, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  for line in p.stdout:  # waits for the event itself: the command is at work
    if line.strip() == "WORKING":
      break
  sig = getattr(signal, signum)
  p.send_signal(sig)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 128 + sig, (out, err)
  assert err.strip() == f"{command} stopped by {signum}; nothing was written", err


def test_a_figure_that_cannot_be_written_leaves_no_temporary_file(tmp_path, monkeypatch):
  import errno
  from rnnjax import plots
  fig = plots.curves([{"epoch": 1, "train_loss": 1.0, "test_loss": 1.0, "train_accuracy": 0.5,
                       "test_accuracy": 0.5}])

  def full_disk(path, **kwargs):
    open(path, "wb").close()  # created, then the disk is full
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(fig, "savefig", full_disk)
  with pytest.raises(OSError, match="No space left"):
    plots.save(fig, tmp_path / "curves.png")
  assert list(tmp_path.iterdir()) == []
