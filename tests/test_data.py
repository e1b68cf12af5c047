import gzip
import hashlib
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, requires_mnist, synthetic_split
from rnnjax import data


def write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_read_idx_round_trip(tmp_path):
  a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  write_idx(tmp_path / "x.gz", a)
  np.testing.assert_array_equal(data.read_idx(tmp_path / "x.gz"), a)


def test_read_idx_truncated(tmp_path):
  a = np.zeros((5, 28, 28), np.uint8)
  header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in a.shape)
  (tmp_path / "t.gz").write_bytes(gzip.compress(header + a.tobytes()[:-10]))
  with pytest.raises(data.DataError, match="t.gz.*truncated"):
    data.read_idx(tmp_path / "t.gz")


def test_missing_files_offline_names_all_four(tmp_path, monkeypatch):
  monkeypatch.delenv(data.MANUAL_DIR_ENV, raising=False)
  monkeypatch.setattr(data.sources, "network_available", lambda *a, **k: False)
  with pytest.raises(data.DataError) as e:
    data.load_split("train", "idx", data_dir=str(tmp_path))
  for name in data.ALL_FILES:
    assert name in str(e.value)
  assert "--manual-dir" in str(e.value)


def test_manual_dir_missing_folder(tmp_path):
  with pytest.raises(data.DataError, match="does not exist"):
    data.load_split("test", "idx", manual_dir=str(tmp_path / "nope"))


def test_wrong_checksum_names_the_file(tmp_path):
  for name in data.ALL_FILES:
    write_idx(tmp_path / name, np.zeros((3, 28, 28)))  # right format, wrong content
  with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte.gz.*wrong checksum"):
    data.load_split("test", "idx", manual_dir=str(tmp_path))


def test_epoch_order_is_pure_function_of_seed_and_epoch():
  a, b = data.epoch_permutation(3, 5, 1000), data.epoch_permutation(3, 5, 1000)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, data.epoch_permutation(3, 6, 1000))
  assert not np.array_equal(a, data.epoch_permutation(4, 5, 1000))
  np.testing.assert_array_equal(np.sort(a), np.arange(1000))


def test_train_batches_shapes_order_and_resume():
  split = synthetic_split(50, 0)
  batches = list(data.train_batches(split, 16, seed=1, epoch=2))
  assert len(batches) == 3  # 50 // 16; the remainder is dropped
  for b in batches:
    assert b["image"].shape == (16, 28, 28) and b["image"].dtype == np.float32
    assert b["label"].shape == (16,) and b["label"].dtype == np.int32
    assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
  # Each example at most once per epoch, exactly the permutation's first 48.
  perm = data.epoch_permutation(1, 2, 50)
  seen = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(np.sort(seen), np.sort(split.labels[perm[:48]]))
  # Starting mid-epoch gives the same later batches.
  later = list(data.train_batches(split, 16, seed=1, epoch=2, start_step=1))
  for x, y in zip(batches[1:], later):
    np.testing.assert_array_equal(x["image"], y["image"])
  # Pixel scaling: uint8 v -> v / 255.
  idx = np.sort(perm[:16])
  np.testing.assert_array_equal(batches[0]["image"], split.images[idx] / np.float32(255))


def test_shift_images_hand_computed():
  img = np.zeros((3, 5, 5), np.uint8)
  img[:, 2, 2] = 7  # one bright pixel in the centre
  img[2, 0, 0] = 9  # and one in the corner of the third image
  out = data.shift_images(img, np.array([[1, -2], [0, 0], [-1, 1]]))
  assert out[0, 3, 0] == 7 and out[0].sum() == 7  # down 1, left 2
  np.testing.assert_array_equal(out[1], img[1])  # no shift
  assert out[2, 1, 3] == 7 and out[2].sum() == 7  # up 1, right 1: the corner pixel left
  assert out.dtype == np.uint8 and img[0, 2, 2] == 7  # input untouched


def test_augmented_batches_pure_resumable_and_bounded():
  split = synthetic_split(48, 2)
  split.images[:, :2] = 0  # a 2-pixel empty frame: shifts by <= 2 lose no pixel
  split.images[:, -2:] = 0
  split.images[:, :, :2] = 0
  split.images[:, :, -2:] = 0
  plain = list(data.train_batches(split, 16, seed=3, epoch=1))
  a = list(data.train_batches(split, 16, seed=3, epoch=1, max_shift=2))
  b = list(data.train_batches(split, 16, seed=3, epoch=1, max_shift=2, start_step=1))
  other = list(data.train_batches(split, 16, seed=3, epoch=2, max_shift=2))
  for x, y in zip(a[1:], b):  # resuming mid-epoch: the same shifted images
    np.testing.assert_array_equal(x["image"], y["image"])
  for x, p in zip(a, plain):
    np.testing.assert_array_equal(x["label"], p["label"])  # same examples, same order
    np.testing.assert_allclose(x["image"].sum((1, 2)), p["image"].sum((1, 2)), rtol=1e-6)
  assert any(not np.array_equal(x["image"], p["image"]) for x, p in zip(a, plain))
  assert not np.array_equal(a[0]["image"], other[0]["image"])
  # Each image is its plain version moved by the epoch's shift for its position.
  perm = data.epoch_permutation(3, 1, 48)
  shifts = data.epoch_shifts(3, 1, 48, 2)
  order = np.argsort(perm[:16], kind="stable")
  for k in range(16):
    dy, dx = shifts[order[k]]
    np.testing.assert_array_equal(np.roll(plain[0]["image"][k], (dy, dx), (0, 1)),
                                  a[0]["image"][k])
  assert np.abs(shifts).max() == 2


@pytest.mark.parametrize("n,batch", [(95, 20), (40, 40), (7, 100)])
def test_eval_batches_cover_each_example_once(n, batch):
  split = synthetic_split(n, 0)
  batches = list(data.eval_batches(split, batch))
  assert len(batches) == -(-n // batch)
  assert all(b["image"].shape == (batch, 28, 28) for b in batches)
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == n and (mask[:n] == 1).all()
  labels = np.concatenate([b["label"] for b in batches])[:n]
  np.testing.assert_array_equal(labels, split.labels)


def test_tfds_order_matches_tfds_hashing():
  # tfds's Hasher: md5(salt) updated with str(key), compared as a 128-bit integer.
  keys = [int(hashlib.md5(b"test" + str(i).encode()).hexdigest(), 16) for i in range(200)]
  np.testing.assert_array_equal(data.tfds_order("test", 200), np.argsort(keys))


def test_import_rnnjax_is_light():
  code = ("import sys, rnnjax, rnnjax.config, rnnjax.data, rnnjax.models, rnnjax.steps, "
          "rnnjax.train; bad = [m for m in ('tensorflow', 'tensorflow_datasets') "
          "if m in sys.modules]; print(bad); sys.exit(bool(bad))")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
  assert r.returncode == 0, r.stdout + r.stderr


@requires_mnist
@pytest.mark.slow
def test_idx_source_real_files(mnist_dir):
  train, test = (data.load_split(s, "idx", manual_dir=str(mnist_dir)) for s in ("train", "test"))
  assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
  # Published facts: first training labels and the class counts of the test set.
  np.testing.assert_array_equal(train.labels[:8], [5, 0, 4, 1, 9, 2, 1, 3])
  np.testing.assert_array_equal(np.bincount(test.labels),
                                [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])


@requires_mnist
@pytest.mark.slow
@pytest.mark.xdist_group("tfds")  # one worker prepares tfds's MNIST for both tests
def test_tfds_and_idx_sources_identical(mnist_dir, tfds_data_dir):
  data_dir = tfds_data_dir
  for split in ("train", "test"):
    a = data.load_split(split, "tfds", data_dir=str(data_dir), manual_dir=str(mnist_dir))
    b = data.load_split(split, "idx", manual_dir=str(mnist_dir))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    batch_a = next(data.train_batches(a, 100, seed=0, epoch=0))
    batch_b = next(data.train_batches(b, 100, seed=0, epoch=0))
    np.testing.assert_array_equal(batch_a["image"], batch_b["image"])


def test_a_stopped_preparation_leaves_no_unfinished_folder_or_file(tmp_path):
  """tfds's unfinished work is `incomplete.*` folders and, for a download being extracted,
  files: both go when made since the run started; older ones and finished files stay."""
  import os
  import time
  extracted = tmp_path / "downloads" / "extracted"
  extracted.mkdir(parents=True)
  started = time.time()
  half_file = extracted / "incomplete.6154e565_GZIP.train-labels-idx1-ubyte.gz"
  half_file.write_bytes(b"\x00" * 10)
  half_dir = tmp_path / "mnist" / "3.0.1.incomplete.x" / "incomplete.abc"
  half_dir.mkdir(parents=True)
  (half_dir / "part").write_text("x")
  old = extracted / "incomplete.old_GZIP.x.gz"
  old.write_text("y")
  os.utime(old, (started - 3600, started - 3600))  # another run's, an hour before
  done = extracted / "ZIP.finished.gz"
  done.write_text("z")
  removed = data.remove_unfinished(tmp_path, "mnist", started)
  assert sorted(removed) == sorted([half_file, half_dir])
  assert not half_file.exists() and not half_dir.exists()
  assert old.exists() and done.exists()
