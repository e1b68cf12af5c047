"""Writes tests/fixtures/torch_lstm.json from PyTorch, for tests/test_interop.py.

Needs torch (not a test dependency): `pip install torch==2.13.0 numpy`, then
`python tests/tools/make_torch_fixture.py`. The fixture records, for a small random
`nn.LSTM` + `nn.Linear`: weights, inputs, labels, logits, the mean cross-entropy, its
gradients, the final carry, and the parameters after one `torch.optim.Adam` step.
`bias_hh` is frozen (random but not trained): PyTorch's two biases add up to Flax's one, and
training both would move their sum twice as fast as a single bias does.
"""

import json
from pathlib import Path

import numpy as np
import torch

BATCH, TIME, FEATURES, HIDDEN, CLASSES, LR = 3, 5, 6, 4, 10, 1e-3
OUT = Path(__file__).parents[1] / "fixtures" / "torch_lstm.json"


class Net(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.lstm = torch.nn.LSTM(FEATURES, HIDDEN, 1, batch_first=True)
    self.fc = torch.nn.Linear(HIDDEN, CLASSES)

  def forward(self, x):
    out, (h, c) = self.lstm(x)
    return self.fc(out[:, -1]), (h, c)


def as_list(t):
  # Shortest decimal that round-trips to the same float32.
  return [float(np.format_float_positional(v, unique=True))
          for v in t.detach().numpy().astype(np.float32).ravel()]


def main():
  torch.manual_seed(0)
  net = Net()
  net.lstm.bias_hh_l0.requires_grad_(False)
  x = torch.rand(BATCH, TIME, FEATURES)
  y = torch.tensor([1, 7, 3])
  params = {k: v.clone() for k, v in net.state_dict().items()}
  logits, (h, c) = net(x)
  loss = torch.nn.functional.cross_entropy(logits, y)
  loss.backward()
  grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
  opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=LR)
  opt.step()
  after = net.state_dict()
  fixture = {
      "torch_version": torch.__version__, "lr": LR,
      "shapes": {k: list(v.shape) for k, v in params.items()},
      "params": {k: as_list(v) for k, v in params.items()},
      "x": as_list(x), "x_shape": list(x.shape), "labels": y.tolist(),
      "logits": as_list(logits), "loss": loss.item(),
      "h_n": as_list(h), "c_n": as_list(c),
      "grads": {k: as_list(v) for k, v in grads.items()},
      "params_after_adam": {k: as_list(v) for k, v in after.items()},
  }
  OUT.parent.mkdir(exist_ok=True)
  OUT.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
  print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
  main()
