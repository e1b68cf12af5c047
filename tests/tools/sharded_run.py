"""One training process on N simulated CPU devices, for tests/test_parallel.py.

    python tests/tools/sharded_run.py --devices 4 --workdir W --epochs 2 --out params.npz \\
        [--coordinator 127.0.0.1:PORT --num-processes 2 --process-id 0] [--copy-after-epoch-1 D]

Trains a tiny LSTM on synthetic MNIST-shaped data with the library's whole loop
(`train.train_and_evaluate`, resuming from W's checkpoints if any) and, in process 0,
writes the final parameters to --out and one JSON line (devices, processes, history) to
stdout. With --copy-after-epoch-1 D it trains epoch 1, copies W to D, and resumes W to
--epochs in the same process.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout: tests.helpers


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--devices", type=int, required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--out", required=True)
  p.add_argument("--coordinator")
  p.add_argument("--num-processes", type=int)
  p.add_argument("--process-id", type=int)
  p.add_argument("--copy-after-epoch-1")
  args = p.parse_args()

  import jax
  jax.config.update("jax_num_cpu_devices", args.devices)  # before any JAX work
  import numpy as np
  from tests.helpers import synthetic_split
  from rnnjax import presets
  from rnnjax import parallel, train

  parallel.initialize(args.coordinator, args.num_processes, args.process_id)
  # 128 examples of batch 16: 8 steps per epoch, run as 3 + 3 in scans (batches stacked and
  # sharded along axis 1) and 2 single steps.
  cfg = presets.get("tiny").replace(epochs=args.epochs, batch_size=args.batch_size,
                                          hidden_size=8, learning_rate=1e-2, steps_per_call=3)
  splits = synthetic_split(128, 0), synthetic_split(64, 1)
  try:
    if args.copy_after_epoch_1:
      train.train_and_evaluate(cfg.replace(epochs=1), args.workdir, splits=splits,
                               log=lambda line: None)
      shutil.copytree(args.workdir, args.copy_after_epoch_1)
    state, history = train.train_and_evaluate(cfg, args.workdir, splits=splits,
                                              log=lambda line: None)
  except parallel.ParallelError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  params = parallel.to_host(state.params)
  if parallel.is_main_process():
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(args.out, **flat)
    print(json.dumps({"devices": jax.device_count(), "processes": jax.process_count(),
                      "history": history}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
