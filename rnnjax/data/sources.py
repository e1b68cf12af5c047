"""Where the images come from: the registry of datasets in MNIST's format (where each is
published, the SHA-256 of its four files), and the two sources that read them.

Two sources give the same arrays, in the same order (the order of the official IDX files):

* `tfds`: the tensorflow-datasets builder (`mnist`, `fashion_mnist`, `kmnist`), prepared
  into a data dir and read back through tf.data. Online it downloads as tfds always does;
  offline, `manual_dir` points it at a folder holding the four official files (tfds checks
  their checksums).
* `idx`: reads the four files with NumPy; no TensorFlow needed (JAX-only GPU machines).

tfds stores examples shuffled by an md5 hash of their key (the index in the IDX file, salted
with the split name); `load_tfds` undoes that, so both sources agree element for element.
TensorFlow is imported only inside `load_tfds`, and never sees a GPU.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from rnnjax.config import DATASETS

MANUAL_DIR_ENV = "RNNJAX_MANUAL_DIR"

# split -> (images file, labels file, number of examples)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
ALL_FILES = tuple(f for images, labels, _ in FILES.values() for f in (images, labels))


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Where a dataset of MNIST's format is published, and the SHA-256 of its four files
  (the values tfds registers in its url_checksums/<name>.txt)."""
  url: str
  sha256: dict[str, str]


# Every one of config.DATASETS: 28 x 28 grayscale, 10 classes, 60,000 + 10,000 images, the
# same four file names; tfds's builders for them share MNIST's code (so also its example
# keys and order).
PUBLISHED = {
    "mnist": Dataset("https://storage.googleapis.com/cvdf-datasets/mnist/", {
        "train-images-idx3-ubyte.gz":
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz":
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz":
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz":
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    }),
    "fashion_mnist": Dataset("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz":
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz":
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz":
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz":
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    }),
    "kmnist": Dataset("http://codh.rois.ac.jp/kmnist/dataset/kmnist/", {
        "train-images-idx3-ubyte.gz":
            "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
        "train-labels-idx1-ubyte.gz":
            "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
        "t10k-images-idx3-ubyte.gz":
            "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
        "t10k-labels-idx1-ubyte.gz":
            "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
    }),
}


assert tuple(PUBLISHED) == DATASETS


def dataset_info(name: str) -> Dataset:
  try:
    return PUBLISHED[name]
  except KeyError:
    raise DataError(f"unknown dataset {name!r}; rnnjax reads {', '.join(DATASETS)}") from None


class DataError(Exception):
  """The data cannot be found or read. The message says what is wrong and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in memory.

  Attributes:
    images: `<uint8>[n, 28, 28]`, as stored in the IDX file.
    labels: `<int32>[n]`.
  """
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


# ----------------------------------------------------------------------------------------
# Where the files are.

def default_data_dir() -> Path:
  """tfds's default data dir: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`."""
  return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


CHECKOUT = Path(__file__).resolve().parents[2]  # the checkout, when installed from one


def find_manual_dir(dataset: str = "mnist") -> str | None:
  """The offline folder of `dataset`'s four files, where one is set up: `$RNNJAX_MANUAL_DIR`,
  else `../shared/data/DATASET` beside the checkout when it exists; None (the sources then
  download, as tfds always does) otherwise. The command line's default for --manual-dir."""
  found = os.environ.get(MANUAL_DIR_ENV) or None
  shared = CHECKOUT.parent / "shared" / "data" / dataset
  if found is None and shared.is_dir():
    found = str(shared)
  return found


def resolve_manual_dir(manual_dir: str | os.PathLike | None) -> Path | None:
  """`manual_dir`, else `$RNNJAX_MANUAL_DIR`, else None. Checks that it is a folder."""
  if manual_dir is None:
    manual_dir = os.environ.get(MANUAL_DIR_ENV) or None
  if manual_dir is None:
    return None
  path = Path(manual_dir).expanduser()
  if not path.is_dir():
    raise DataError(
        f"manual dir {str(path)!r} does not exist or is not a folder. Point --manual-dir "
        f"(or ${MANUAL_DIR_ENV}) at the folder holding the four MNIST files: "
        f"{', '.join(ALL_FILES)}.")
  return path


def _missing_files_message(where: Path | None, missing=ALL_FILES, dataset: str = "mnist") -> str:
  place = (f"in {str(where)!r}" if where else
           f"in a folder passed as --manual-dir (or ${MANUAL_DIR_ENV})")
  url = dataset_info(dataset).url
  return (
      f"{dataset} data not found and the download server is unreachable (no network?). "
      f"Put the official files {', '.join(missing)} {place}, or run where "
      f"{url} can be reached. They are published at {url}.")


def verify_files(folder: Path, names=ALL_FILES, dataset: str = "mnist") -> None:
  """Raises DataError naming the first missing file or file with a wrong SHA-256 (for
  `dataset`: each of MNIST, Fashion-MNIST and KMNIST uses the same four file names, so each
  needs its own folder)."""
  sha256 = dataset_info(dataset).sha256
  missing = [n for n in names if not (folder / n).is_file()]
  if missing:
    raise DataError(
        f"manual dir {str(folder)!r} lacks {', '.join(missing)}. "
        + _missing_files_message(folder, missing, dataset).split(". ", 1)[1])
  for name in names:
    digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    if digest != sha256[name]:
      others = [d for d, info in PUBLISHED.items() if info.sha256[name] == digest]
      what = (f"it is {others[0]}'s {name}, not {dataset}'s: give each dataset its own folder"
              if others else "the file is corrupt, truncated, or not the official one")
      raise DataError(
          f"{str(folder / name)!r} has the wrong checksum for {dataset} (sha256 "
          f"{digest[:16]}..., expected {sha256[name][:16]}...): {what}. Replace it with "
          f"the official {name} of {dataset}.")


def _host(dataset: str) -> str:
  return urllib.parse.urlsplit(dataset_info(dataset).url).hostname


def network_available(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
  """Whether `host` resolves and accepts a TCP connection on 443 within `timeout` s."""
  try:
    with socket.create_connection((host, 443), timeout=timeout):
      return True
  except OSError:
    return False


# ----------------------------------------------------------------------------------------
# The IDX source.

def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one (gzipped) IDX file of unsigned bytes into an array of its stored shape."""
  path = Path(path)
  try:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise DataError(f"cannot read {str(path)!r} ({e}); replace it with the official file.")
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
    raise DataError(f"{str(path)!r} is not an IDX file of unsigned bytes; replace it with the "
                    "official file.")
  ndim = raw[3]
  dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
  offset = 4 + 4 * ndim
  if len(raw) != offset + int(np.prod(dims)):
    raise DataError(f"{str(path)!r} is truncated or padded (header says {dims}); replace it "
                    "with the official file.")
  return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def download_idx(folder: Path, dataset: str = "mnist") -> None:
  """Downloads the missing official files into `folder` (used by the IDX source online)."""
  folder.mkdir(parents=True, exist_ok=True)
  for name in ALL_FILES:
    if not (folder / name).exists():
      tmp = folder / (name + ".part")
      urllib.request.urlretrieve(dataset_info(dataset).url + name, tmp)
      tmp.replace(folder / name)


def idx_download_dir(data_dir, dataset: str) -> Path:
  """Where the IDX source downloads `dataset` when no manual dir is given: tfds's manual
  dir `<data_dir>/downloads/manual` for MNIST, a folder of its own for the others."""
  root = Path(data_dir or default_data_dir()).expanduser() / "downloads"
  return root / "manual" if dataset == "mnist" else root / "rnnjax" / dataset


def load_idx(split: str, manual_dir=None, data_dir=None, dataset: str = "mnist") -> Split:
  """Reads `split` ('train' or 'test') of `dataset` from its IDX files, checking their
  checksums.

  Looks in `manual_dir` (or `$RNNJAX_MANUAL_DIR`), else in `idx_download_dir`, downloading
  the files there when they are absent and the network is reachable.
  """
  images_name, labels_name, n = FILES[split]
  dataset_info(dataset)
  folder = resolve_manual_dir(manual_dir)
  if folder is None:
    folder = idx_download_dir(data_dir, dataset)
    if not all((folder / f).is_file() for f in (images_name, labels_name)):
      if not network_available(_host(dataset)):
        raise DataError(_missing_files_message(None, dataset=dataset))
      download_idx(folder, dataset)
  verify_files(folder, (images_name, labels_name), dataset)
  images, labels = read_idx(folder / images_name), read_idx(folder / labels_name)
  if images.shape != (n, 28, 28) or labels.shape != (n,):
    raise DataError(f"unexpected shapes {images.shape}, {labels.shape} in {str(folder)!r}.")
  return Split(images=images, labels=labels.astype(np.int32))


# ----------------------------------------------------------------------------------------
# The tfds source.

def _import_tfds():
  """Imports tensorflow_datasets with TensorFlow kept off every GPU."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow as tf
  except ImportError as e:
    raise DataError(
        "the tfds data source needs TensorFlow, which is not installed here "
        f"({e}). Install tensorflow-cpu, or use the IDX source (--data-source idx).") from None
  # JAX owns the accelerators; TF only decodes records on the CPU.
  tf.config.set_visible_devices([], "GPU")
  import tensorflow_datasets as tfds
  return tfds


def tfds_order(split: str, n: int) -> np.ndarray:
  """Index in the IDX file of each example tfds stores for `split`, in stored order.

  tfds's MNIST builder (and Fashion-MNIST's and KMNIST's, which inherit its code) keys
  example i by the integer i and writes examples sorted by the md5 of (split name +
  str(key)) (tensorflow_datasets/core/hashing.py).
  """
  salt = hashlib.md5(split.encode())

  def key(i):
    h = salt.copy()
    h.update(str(i).encode())
    return h.digest()  # big-endian bytes compare like tfds's int(hexdigest, 16)

  return np.array(sorted(range(n), key=key), dtype=np.int64)


def prepare_tfds(name: str = "mnist", data_dir=None, manual_dir=None):
  """Prepares the tfds builder `name` (offline from `manual_dir` if given); returns it."""
  dataset_info(name)
  tfds = _import_tfds()
  folder = resolve_manual_dir(manual_dir)
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  if folder is not None:
    verify_files(folder, dataset=name)
  else:
    default_manual = Path(data_dir or default_data_dir()).expanduser() / "downloads" / "manual"
    if (not all((default_manual / f).is_file() for f in ALL_FILES)
        and not network_available(_host(name))):
      raise DataError(_missing_files_message(None, dataset=name))
  _prepare_in_child(name, data_dir, folder)
  return tfds.builder(name, data_dir=data_dir)


# The process preparing a tfds dataset, while it runs (`_prepare_in_child`).
_preparing: subprocess.Popen | None = None

_PREPARE = """
import json, os, sys
from rnnjax.data import sources
name, data_dir, manual_dir, parent = json.loads(sys.argv[1])
sources._die_with_parent(parent)
tfds = sources._import_tfds()
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
try:
  tfds.builder(name, data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
except NonMatchingChecksumError as e:
  print(json.dumps({"checksum": str(e)}), flush=True)
  sys.exit(3)
"""


def _die_with_parent(parent: int) -> None:
  """In the child, first thing: the kernel ends it when its parent dies (kill -9); if the
  parent is already gone, it ends now. (Set by the child itself: a `preexec_fn` would run
  Python between fork and exec in a process with threads.)"""
  import ctypes
  import signal
  try:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    return
  if os.getppid() != parent:
    os._exit(1)


def _prepare_in_child(name: str, data_dir, folder: Path | None) -> None:
  """Runs tfds's `download_and_prepare` in a child process and waits for it.

  tfds prepares with worker threads that create `incomplete.*` folders and cannot be
  stopped from outside. In a child, a run that is stopped (a signal, Ctrl-C) ends the child
  and waits for it to be gone before it removes what the child left: nothing can appear
  after the clean-up (`remove_unfinished`)."""
  global _preparing
  args = json.dumps([name, None if data_dir is None else str(data_dir),
                     None if folder is None else str(folder), os.getpid()])
  _preparing = subprocess.Popen([sys.executable, "-c", _PREPARE, args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  started = time.time()
  try:
    out, err = _preparing.communicate()
  except BaseException:  # an interrupt while waiting: end the child, remove what it left
    remove_unfinished(data_dir, name, started)
    raise
  code, _preparing = _preparing.returncode, None
  sys.stderr.write(err)  # tfds's and TensorFlow's log lines (library.log under the CLI)
  if code == 3:
    raise DataError(f"a downloaded {name} file has the wrong checksum: "
                    f"{json.loads(out)['checksum']}. Delete it and retry, or pass the official "
                    "files with --manual-dir.")
  if code != 0:
    last = (err.strip().splitlines() or [f"exit status {code}"])[-1][:300]
    raise DataError(f"tfds could not prepare {name} ({last}). Retry, or use the IDX source "
                    "(--data-source idx).")


def _stop_child() -> None:
  """Ends the preparing child, if any, and waits until it is gone."""
  child = _preparing
  if child is not None and child.poll() is None:
    child.kill()
    child.wait()


def remove_unfinished(data_dir, dataset: str, since: float) -> list[Path]:
  """Stops a tfds preparation still running (its child process, waited for), then removes
  tfds's unfinished preparation folders and files (`incomplete.*` under the data dir's
  `dataset` folder or its downloads: a half-extracted download is a file) made since the
  time `since` (this run's): what a stopped preparation leaves behind."""
  import shutil
  _stop_child()
  root = Path(data_dir or default_data_dir()).expanduser()
  removed = []
  found = [f for sub in (dataset, "downloads") if (root / sub).is_dir()
           for f in (root / sub).glob("**/incomplete.*")]
  for path in found:
    try:
      if path.lstat().st_mtime < since - 1:
        continue
      if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
      else:
        path.unlink(missing_ok=True)
      removed.append(path)
    except OSError:
      continue
  return removed


def load_tfds(split: str, data_dir=None, manual_dir=None, dataset: str = "mnist") -> Split:
  """Reads `split` of `dataset` through tfds and tf.data, in the order of the IDX files."""
  tfds = _import_tfds()
  builder = prepare_tfds(dataset, data_dir, manual_dir)
  arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
  n = FILES[split][2]
  images = np.empty((n, 28, 28), np.uint8)
  labels = np.empty((n,), np.int32)
  order = tfds_order(split, n)
  images[order] = arrays["image"][..., 0]
  labels[order] = arrays["label"]
  return Split(images=images, labels=labels)


def tensorflow_available() -> bool:
  import importlib.util
  return importlib.util.find_spec("tensorflow") is not None


def load_split(split: str, source: str = "auto", data_dir=None, manual_dir=None,
               dataset: str = "mnist") -> Split:
  """Loads `split` ('train' or 'test') of `dataset` from `source` ('tfds', 'idx' or
  'auto')."""
  if split not in FILES:
    raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
  if source == "auto":
    source = "tfds" if tensorflow_available() else "idx"
  if source == "tfds":
    return load_tfds(split, data_dir, manual_dir, dataset)
  if source == "idx":
    return load_idx(split, manual_dir, data_dir, dataset)
  raise ValueError(f"source must be 'auto', 'tfds' or 'idx', got {source!r}")


def hold_out(train: Split, n: int) -> tuple[Split, Split | None]:
  """(training images, validation images): the first `n` of `train` are held out for
  validation, as TensorFlow's MNIST reader held out its first 5,000; `n` 0: (train, None)."""
  if n == 0:
    return train, None
  if not 0 < n < len(train):
    raise DataError(f"cannot hold out {n:,} of {len(train):,} training images for validation; "
                    "use a smaller --validation-size (0: none)")
  return (Split(train.images[n:], train.labels[n:]),
          Split(train.images[:n], train.labels[:n]))


def load_dataset(config) -> tuple[Split, Split]:
  """(train, test) splits for `config` (its data_source, data_dir and manual_dir): the
  whole training file (the loop holds out the validation images, `hold_out`)."""
  return tuple(load_split(s, config.data_source, config.data_dir, config.manual_dir,
                          config.dataset) for s in ("train", "test"))
