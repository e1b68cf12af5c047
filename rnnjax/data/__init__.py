"""MNIST (or Fashion-MNIST, KMNIST) as NumPy arrays, and the batches and tasks made of them.

* `sources`: the datasets' registry and checksums; the tfds and IDX sources (`load_split`,
  `load_dataset`); `find_manual_dir`, the offline folder.
* `tasks`: how an image becomes a sequence (`make_task`: rows, pixels, permuted).
* `batches`: each epoch's order and augmentation (`train_batches`), and evaluation batches
  that count every image once (`eval_batches`).

Every public name of the three is also here (`data.load_split`, `data.train_batches`).
"""

from rnnjax.data.batches import (epoch_permutation, epoch_shifts, eval_batches, shift_images,
                                 steps_per_epoch, to_float, train_batches)
from rnnjax.data.sources import (ALL_FILES, FILES, MANUAL_DIR_ENV, PUBLISHED, DataError,
                                 Dataset, Split, dataset_info, default_data_dir,
                                 download_idx, find_manual_dir, hold_out, idx_download_dir,
                                 load_dataset, load_idx, load_split, load_tfds,
                                 network_available,
                                 prepare_tfds, read_idx, remove_unfinished,
                                 resolve_manual_dir, tensorflow_available, tfds_order,
                                 verify_files)
from rnnjax.data.tasks import PIXELS, Task, make_task, pixel_permutation

__all__ = [
    "epoch_permutation",
    "epoch_shifts",
    "eval_batches",
    "shift_images",
    "steps_per_epoch",
    "to_float",
    "train_batches",
    "ALL_FILES",
    "FILES",
    "MANUAL_DIR_ENV",
    "PUBLISHED",
    "DataError",
    "Dataset",
    "Split",
    "dataset_info",
    "default_data_dir",
    "download_idx",
    "find_manual_dir",
    "hold_out",
    "idx_download_dir",
    "load_dataset",
    "load_idx",
    "load_split",
    "load_tfds",
    "network_available",
    "prepare_tfds",
    "read_idx",
    "remove_unfinished",
    "resolve_manual_dir",
    "tensorflow_available",
    "tfds_order",
    "verify_files",
    "PIXELS",
    "Task",
    "make_task",
    "pixel_permutation",
]
