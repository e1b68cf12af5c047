"""LEM's psMNIST recipe, epoch by epoch: the authors' PyTorch loop against rnnjax's
`train_step` on the same initial weights and the same batches.

The authors' code (tk-rusch/LEM, `src/psMNIST/`: `network.py` copied below as it is, the
loop of `psMNIST_task.py` and the split of `utils.py`) draws, from `torch.manual_seed(seed)`
and in this order: the pixel permutation, the model's weights, the 57,000 / 3,000 split of
the training images, then each epoch's shuffle. This script makes the same draws on the
local IDX files (the same images and order as torchvision's MNIST, scaled to [0, 1] as its
`ToTensor` does), trains their model with their loop (Adam 7.3e-3, clipping at 1.1, batch
128, dt 0.31), and records the initial weights and every batch's image indices. rnnjax then
trains from those weights on those batches with its own `train_step` (the
`psmnist_lem_authors` preset's optimizer); `--init rnnjax` starts it from its own
initialisation (`jax.random.key(--jax-seed)`) instead. Both evaluate on the same 3,000
validation images and the 10,000 test images after each epoch.

    python benchmarks/probes/lem_authors_epoch.py --epochs 1 [--seed 5544] [--out FILE]

`--float64` runs both sides in float64 and `--clip torch` gives rnnjax PyTorch's clipping:
together they show whether the two compute the same step, bit for bit, until rounding
grows. Needs torch (`pip install torch==2.13.0`). Prints, per epoch, each side's validation
and test accuracy, and the first step where the two losses part by more than 1e-3
(relative). Its figures are in docs/lab/2026-12-results-log.md ("LEM with its authors'
psMNIST recipe").
"""
import argparse
import json
import math
import pathlib
import pickle
import sys
import time

import numpy as np
import torch
from torch import nn

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1])]


# --- tk-rusch/LEM src/psMNIST/network.py, as it is --------------------------------------
class LEMCell(nn.Module):
  def __init__(self, ninp, nhid, dt):
    super(LEMCell, self).__init__()
    self.ninp = ninp
    self.nhid = nhid
    self.dt = dt
    self.inp2hid = nn.Linear(ninp, 4 * nhid)
    self.hid2hid = nn.Linear(nhid, 3 * nhid)
    self.transform_z = nn.Linear(nhid, nhid)
    self.reset_parameters()

  def reset_parameters(self):
    std = 1.0 / math.sqrt(self.nhid)
    for w in self.parameters():
      w.data.uniform_(-std, std)

  def forward(self, x, y, z):
    transformed_inp = self.inp2hid(x)
    transformed_hid = self.hid2hid(y)
    i_dt1, i_dt2, i_z, i_y = transformed_inp.chunk(4, 1)
    h_dt1, h_dt2, h_y = transformed_hid.chunk(3, 1)

    ms_dt_bar = self.dt * torch.sigmoid(i_dt1 + h_dt1)
    ms_dt = self.dt * torch.sigmoid(i_dt2 + h_dt2)

    z = (1. - ms_dt) * z + ms_dt * torch.tanh(i_y + h_y)
    y = (1. - ms_dt_bar) * y + ms_dt_bar * torch.tanh(self.transform_z(z) + i_z)

    return y, z


class LEM(nn.Module):
  def __init__(self, ninp, nhid, nout, dt=1.):
    super(LEM, self).__init__()
    self.nhid = nhid
    self.cell = LEMCell(ninp, nhid, dt)
    self.classifier = nn.Linear(nhid, nout)
    self.init_weights()

  def init_weights(self):
    for name, param in self.named_parameters():
      if 'classifier' in name and 'weight' in name:
        nn.init.kaiming_normal_(param.data)

  def forward(self, input):
    y = input.data.new(input.size(1), self.nhid).zero_()
    z = input.data.new(input.size(1), self.nhid).zero_()
    for x in input:
      y, z = self.cell(x, y, z)
    out = self.classifier(y)
    return out
# -----------------------------------------------------------------------------------------


def load_mnist(folder: pathlib.Path):
  from rnnjax.data import sources
  images = {s: sources.read_idx(folder / f"{p}-images-idx3-ubyte.gz").astype(np.float32) / 255
            for s, p in (("train", "train"), ("test", "t10k"))}
  labels = {s: sources.read_idx(folder / f"{p}-labels-idx1-ubyte.gz").astype(np.int64)
            for s, p in (("train", "train"), ("test", "t10k"))}
  return images, labels


def torch_accuracy(model, images, labels, perm):
  model.eval()
  correct = 0
  with torch.no_grad():
    for i in range(0, len(images), 1000):
      x = torch.from_numpy(images[i:i + 1000]).reshape(-1, 1, 784).permute(2, 0, 1)[perm]
      x = x.to(next(model.parameters()).dtype)
      correct += int((model(x).argmax(1).numpy() == labels[i:i + 1000]).sum())
  return 100.0 * correct / len(images)


def run_torch(args, images, labels):
  """The authors' loop; returns the initial weights, the permutation, the split, every
  epoch's batches (index arrays into the training images) and the per-step losses."""
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  np.random.seed(args.seed)
  perm = torch.randperm(784)
  model = LEM(1, 128, 10, 0.31)
  if args.float64:
    model = model.double()
  init = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  index = torch.utils.data.TensorDataset(torch.arange(60000))
  train_set, valid_set = torch.utils.data.random_split(index, [57000, 3000])
  loader = torch.utils.data.DataLoader(train_set, batch_size=128, shuffle=True)
  valid = np.asarray(valid_set.indices)
  objective = nn.CrossEntropyLoss()
  optimizer = torch.optim.Adam(model.parameters(), lr=7.3e-3)
  out = {"batches": [], "loss": [], "valid": [], "test": [], "seconds": []}
  for epoch in range(args.epochs):
    model.train()
    t0 = time.time()
    for step, (idx,) in enumerate(loader):
      if args.steps and step == args.steps:
        break
      idx = idx.numpy()
      out["batches"].append(idx)
      x = torch.from_numpy(images["train"][idx]).reshape(-1, 1, 784).permute(2, 0, 1)[perm]
      x = x.double() if args.float64 else x
      optimizer.zero_grad()
      loss = objective(model(x), torch.from_numpy(labels["train"][idx]))
      loss.backward()
      nn.utils.clip_grad_norm_(model.parameters(), 1.1)
      optimizer.step()
      out["loss"].append(loss.item())
    out["seconds"].append(time.time() - t0)
    out["valid"].append(torch_accuracy(model, images["train"][valid], labels["train"][valid], perm))
    out["test"].append(torch_accuracy(model, images["test"], labels["test"], perm))
    print(f"torch  epoch {epoch + 1}: valid {out['valid'][-1]:.2f}  test {out['test'][-1]:.2f}"
          f"  ({out['seconds'][-1]:.0f} s)", flush=True)
  return init, perm.numpy(), valid, out


def to_rnnjax(sd):
  """The authors' state_dict -> rnnjax's LEM classifier params. Their input chunks are
  (dt_bar, dt_z, into y's tanh, into z's tanh); rnnjax's (dt_bar, dt_z, into z's tanh, into
  y's tanh): chunks 3 and 4 swap. Their two biases per gate are rnnjax's two as well."""
  def swap(a, axis):
    c = np.split(a, 4, axis=axis)
    return np.concatenate([c[0], c[1], c[3], c[2]], axis=axis)
  cell = {"input": {"kernel": swap(sd["cell.inp2hid.weight"].T, 1),
                    "bias": swap(sd["cell.inp2hid.bias"], 0)},
          "hidden": {"kernel": sd["cell.hid2hid.weight"].T, "bias": sd["cell.hid2hid.bias"]},
          "z": {"kernel": sd["cell.transform_z.weight"].T, "bias": sd["cell.transform_z.bias"]}}
  return {"rnn_0": {"cell": cell}, "head": {"kernel": sd["classifier.weight"].T,
                                            "bias": sd["classifier.bias"]}}


def torch_clip(max_norm):
  """`torch.nn.utils.clip_grad_norm_` as an optax transformation: the gradient times
  `min(1, max_norm / (norm + 1e-6))`, where `optax.clip_by_global_norm` scales by
  `max_norm / norm` above `max_norm`."""
  import jax
  import jax.numpy as jnp
  import optax

  def update(updates, state, params=None):
    del params
    scale = jnp.minimum(1.0, max_norm / (optax.global_norm(updates) + 1e-6))
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def run_rnnjax(args, images, labels, init, perm, valid, batches):
  import jax
  import jax.numpy as jnp
  import optax
  if args.float64:
    jax.config.update("jax_enable_x64", True)
  from rnnjax import presets, steps
  kernel = "xla" if args.float64 and args.rnn_kernel == "auto" else args.rnn_kernel
  config = presets.get("psmnist_lem_authors").replace(rnn_kernel=kernel)
  dtype = np.float64 if args.float64 else np.float32
  per_epoch = len(batches) // args.epochs
  state = steps.create_train_state(config, jax.random.key(args.jax_seed),
                                   steps_per_epoch=per_epoch)
  if args.clip == "torch":
    state = state.replace(tx=optax.chain(torch_clip(config.grad_clip_norm),
                                         optax.adam(config.learning_rate)))
  params = state.params
  if args.init == "torch":
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), to_rnnjax(init))
  state = state.replace(params=params, opt_state=state.tx.init(params))
  train_step = jax.jit(steps.train_step)
  eval_step = jax.jit(steps.eval_step)
  seq = lambda x: x.reshape(-1, 784)[:, perm][..., None].astype(dtype)  # noqa: E731

  def accuracy(x, y):
    correct = sum(int(eval_step(state, {"image": seq(x[i:i + 1000]),
                                        "label": y[i:i + 1000].astype(np.int32)})["correct"])
                  for i in range(0, len(x), 1000))
    return 100.0 * correct / len(x)

  out = {"loss": [], "valid": [], "test": [], "seconds": []}
  for epoch in range(args.epochs):
    t0 = time.time()
    for idx in batches[epoch * per_epoch:(epoch + 1) * per_epoch]:
      batch = {"image": seq(images["train"][idx]),
               "label": labels["train"][idx].astype(np.int32)}
      state, metrics = train_step(state, batch)
      out["loss"].append(float(metrics["loss_sum"]) / len(idx))
    out["seconds"].append(time.time() - t0)
    out["valid"].append(accuracy(images["train"][valid], labels["train"][valid]))
    out["test"].append(accuracy(images["test"], labels["test"]))
    print(f"rnnjax epoch {epoch + 1}: valid {out['valid'][-1]:.2f}  test {out['test'][-1]:.2f}"
          f"  ({out['seconds'][-1]:.0f} s)", flush=True)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--seed", type=int, default=5544, help="the authors' torch seed")
  parser.add_argument("--init", choices=("torch", "rnnjax"), default="torch")
  parser.add_argument("--jax-seed", type=int, default=0, help="rnnjax's key with --init rnnjax")
  parser.add_argument("--clip", choices=("optax", "torch"), default="optax",
                      help="rnnjax's clipping: the preset's optax.clip_by_global_norm, or "
                      "PyTorch's clip_grad_norm_ with its 1e-6 (then with a constant rate)")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--rnn-kernel", default="auto", help="how rnnjax's LEM runs: auto, "
                      "cpu (its kernel) or xla (the nn.RNN scan)")
  parser.add_argument("--float64", action="store_true",
                      help="both sides in float64 (rnnjax's LEM then runs the nn.RNN scan)")
  parser.add_argument("--steps", type=int, default=0, help="stop each epoch after this many "
                      "batches (0: the whole epoch); for a quick look")
  parser.add_argument("--mnist", default=str(HERE.parents[2] / "shared/data/mnist"))
  parser.add_argument("--torch-cache", help="keep the PyTorch side's run in this file and "
                      "reuse it when it exists (same other arguments)")
  parser.add_argument("--out", help="write every figure as JSON here")
  args = parser.parse_args()
  images, labels = load_mnist(pathlib.Path(args.mnist))
  cache = pathlib.Path(args.torch_cache) if args.torch_cache else None
  if cache and cache.exists():
    with open(cache, "rb") as f:
      init, perm, valid, theirs = pickle.load(f)
  else:
    init, perm, valid, theirs = run_torch(args, images, labels)
    if cache:
      with open(cache, "wb") as f:
        pickle.dump((init, perm, valid, theirs), f)
  ours = run_rnnjax(args, images, labels, init, perm, valid, theirs["batches"])
  rel = np.abs(np.subtract(ours["loss"], theirs["loss"])) / np.abs(theirs["loss"])
  parted = int(np.argmax(rel > 1e-3)) if (rel > 1e-3).any() else None
  print(f"losses part by more than 1e-3 (relative) first at step {parted}; "
        f"mean loss over the last 100 steps: torch {np.mean(theirs['loss'][-100:]):.4f}, "
        f"rnnjax {np.mean(ours['loss'][-100:]):.4f}")
  if args.out:
    theirs = {k: v for k, v in theirs.items() if k != "batches"}
    pathlib.Path(args.out).write_text(json.dumps(
        {"args": vars(args), "torch": theirs, "rnnjax": ours, "parted_at": parted}) + "\n")


if __name__ == "__main__":
  main()
