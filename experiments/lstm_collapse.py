"""Why the LSTM collapsed on sequential MNIST, in figures: the first LSTM recipe (forget-gate
bias 1, Adam 1e-3 after a 1-epoch warm-up) against the same recipe with chrono
initialisation (the same peak learning rate, warm-up and clipping), trained side by
side from the same seed for the same steps, probed every `--probe-every` steps:

* the learning rate at that step and the global gradient norm (mean and max since the last
  probe, before clipping),
* accuracy on the first `--probe-images` validation images,
* the hidden-state spread: the standard deviation across those images of the last step's
  hidden state, averaged over the units (0: every image ends in the same state, so the
  readout cannot tell them apart),
* the forget gate: its mean over units, images and the last 200 steps, and the fraction of
  units whose mean forget gate there is above 0.99 (units that keep a memory for hundreds of
  steps).

Command (from the repository root; 6-7 minutes per recipe and 1,100 steps on a 2-core
CPU)::

    python experiments/lstm_collapse.py [--steps 1100] [--workdir runs/lstm_collapse]

Writes `RECIPE.jsonl` (one line per probe) and `collapse.png` to the workdir; the figures
as measured are in docs/lab/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def recipes():
  """The two sequential-MNIST LSTM recipes: LSTM 128, batch 100, Adam 1e-3 peak after a
  1-epoch warm-up then cosine over 12 epochs, clipping at 1; forget bias 1 (the first) or
  chrono initialisation (keeping memories of up to 784 steps from the start)."""
  from rnnjax.config import Config
  recipe = Config(name="seq_lstm", task="pixels", hidden_size=128, batch_size=100, epochs=12,
                  learning_rate=1e-3, schedule="cosine", warmup_epochs=1.0,
                  grad_clip_norm=1.0, chrono_init=True)
  collapsing = recipe.replace(name="seq_lstm_first", epochs=100, chrono_init=False,
                              forget_bias=1.0)
  return {"forget_bias_1": collapsing, "chrono": recipe}


def hidden_states(params, images):
  """The LSTM layer's hidden state at every step `<[b, 784, H]>` and the forget gate's
  pre-activations it implies, via the `nn.RNN` scan (the reference path)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  cell = params["rnn_0"]["cell"]
  hidden = cell["hf"]["kernel"].shape[0]
  rnn = nn.RNN(nn.OptimizedLSTMCell(hidden))
  h = rnn.apply({"params": params["rnn_0"]}, images)
  previous = jnp.concatenate([jnp.zeros_like(h[:, :1]), h[:, :-1]], axis=1)
  forget = jax.nn.sigmoid(images @ cell["if"]["kernel"] + previous @ cell["hf"]["kernel"]
                          + cell["hf"]["bias"])
  return np.asarray(h), np.asarray(forget)


def probe(state, config, images, labels) -> dict:
  import jax
  from rnnjax import steps
  logits = jax.jit(state.apply_fn)({"params": state.params}, images)
  h, forget = hidden_states(state.params, images)
  late = forget[:, -200:, :].mean(axis=(0, 1))  # per unit
  return {"probe_accuracy": float(np.mean(np.argmax(np.asarray(logits), -1) == labels)),
          "probe_loss": float(np.mean(np.asarray(steps.cross_entropy(logits, labels)))),
          "hidden_spread": float(np.std(h[:, -1, :], axis=0).mean()),
          "forget_mean_last200": float(late.mean()),
          "forget_above_0.99": float(np.mean(late > 0.99))}


def run(name, config, train, images, labels, args, workdir: Path):
  import jax
  from rnnjax import data, steps
  task = data.make_task(config.task)
  per_epoch = data.steps_per_epoch(len(train), config.batch_size)
  state = steps.create_train_state(config, jax.random.key(config.seed))
  tx = steps.make_optimizer(config, per_epoch)
  state = state.replace(tx=tx, opt_state=tx.init(state.params))
  schedule = steps.make_schedule(config, per_epoch)
  many = jax.jit(steps.train_steps, donate_argnums=0)
  out = (workdir / f"{name}.jsonl").open("w")
  norms, losses, start, step, epoch = [], [], time.perf_counter(), 0, 0
  while step < args.steps:
    batches = data.train_batches(train, config.batch_size, config.seed, epoch, task=task)
    chunk = []
    for batch in batches:
      chunk.append(batch)
      if len(chunk) < args.probe_every and step + len(chunk) < args.steps:
        continue
      stacked = {k: np.stack([b[k] for b in chunk]) for k in chunk[0]}
      state, metrics = many(state, stacked)
      metrics = jax.device_get(metrics)
      norms += list(metrics["grad_norm"])
      losses += list(metrics["loss_sum"] / metrics["count"])
      step += len(chunk)
      chunk = []
      record = {"recipe": name, "step": step, "epoch": step / per_epoch,
                "learning_rate": float(schedule(step - 1)),
                "grad_norm_mean": float(np.mean(norms)), "grad_norm_max": float(np.max(norms)),
                "train_loss": float(np.mean(losses)),
                **probe(state, config, images, labels),
                "seconds": round(time.perf_counter() - start, 1)}
      norms, losses = [], []
      out.write(json.dumps(record) + "\n")
      out.flush()
      print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in record.items()), flush=True)
      if step >= args.steps:
        break
    epoch += 1
  out.close()


def plot(workdir: Path, names) -> Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = [("probe_accuracy", "validation accuracy (probe images)", False),
            ("grad_norm_mean", "gradient norm (mean since last probe)", True),
            ("hidden_spread", "hidden-state spread at the last step", False),
            ("forget_mean_last200", "mean forget gate, last 200 steps", False),
            ("forget_above_0.99", "units with forget gate > 0.99", False),
            ("learning_rate", "learning rate", False)]
  fig, axes = plt.subplots(2, 3, figsize=(13, 7))
  for name in names:
    rows = [json.loads(line) for line in (workdir / f"{name}.jsonl").read_text().splitlines()]
    x = [r["step"] for r in rows]
    for ax, (key, title, log) in zip(axes.flat, panels):
      ax.plot(x, [r[key] for r in rows], label=name)
      ax.set_title(title, fontsize=10)
      ax.set_xlabel("step")
      if log:
        ax.set_yscale("log")
  axes.flat[0].legend()
  fig.suptitle("LSTM 128 on sequential MNIST: forget bias 1 against chrono initialisation")
  fig.tight_layout()
  path = workdir / "collapse.png"
  fig.savefig(path, dpi=90)
  return path


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=1100, help="training steps per recipe")
  p.add_argument("--probe-every", type=int, default=25, help="steps between probes")
  p.add_argument("--probe-images", type=int, default=500, help="validation images probed")
  p.add_argument("--recipes", default="forget_bias_1,chrono",
                 help=f"comma-separated, from {', '.join(recipes())}")
  p.add_argument("--workdir", default="runs/lstm_collapse")
  args = p.parse_args(argv)
  names = args.recipes.split(",")
  unknown = [n for n in names if n not in recipes()]
  if unknown:
    p.error(f"unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(recipes())}")
  from rnnjax import allocator
  allocator.use_tuned_allocator()  # before JAX starts, as the command line does
  from rnnjax import data
  workdir = Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config = recipes()[names[0]].replace(manual_dir=data.find_manual_dir())
  train, _ = data.load_dataset(config)
  train, validation = data.hold_out(train, config.validation_size)
  task = data.make_task("pixels")
  images = task(data.to_float(validation.images[:args.probe_images]))
  labels = validation.labels[:args.probe_images]
  for name in names:
    run(name, recipes()[name], train, images, labels, args, workdir)
  print(f"wrote {plot(workdir, names)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
