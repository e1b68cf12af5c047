"""Writes tests/fixtures/keras_lmu.json from keras-lmu, for tests/test_lmu.py.

Needs TensorFlow (installed with rnnjax's test extras) and keras-lmu, which is not a test
dependency: `pip install keras-lmu==0.9.0`, then `python tests/tools/make_keras_lmu_fixture.py`.
For each connection setting (the memory reading the input only, or the hidden state and the
memory too), the fixture records a small random `RNN(LMUCell(...))` + `Dense`: the weights
as keras-lmu names them, the inputs, the logits, and the final carry. Weights are drawn at
random (not keras-lmu's initial ones, which leave the input encoders at one), so that a
transposed or misplaced matrix shows.
"""

import json
from pathlib import Path

import numpy as np
import tensorflow as tf
import keras_lmu

BATCH, TIME, FEATURES, HIDDEN, ORDER, THETA, CLASSES = 3, 12, 2, 5, 4, 6.0, 10  # ORDER != HIDDEN
OUT = Path(__file__).parents[1] / "fixtures" / "keras_lmu.json"


def as_list(a):
  # Shortest decimal that round-trips to the same float32.
  return [float(np.format_float_positional(v, unique=True))
          for v in np.asarray(a, np.float32).ravel()]


def case(rng, hidden_to_memory: bool, memory_to_memory: bool) -> dict:
  cell = keras_lmu.LMUCell(memory_d=1, order=ORDER, theta=THETA,
                           hidden_cell=tf.keras.layers.SimpleRNNCell(HIDDEN),
                           hidden_to_memory=hidden_to_memory,
                           memory_to_memory=memory_to_memory, input_to_hidden=True)
  inputs = tf.keras.Input((TIME, FEATURES))
  sequence, *carry = tf.keras.layers.RNN(cell, return_state=True)(inputs)
  logits = tf.keras.layers.Dense(CLASSES)(sequence)
  model = tf.keras.Model(inputs, [logits, *carry])
  weights = {}
  for w in model.weights:
    value = (rng.standard_normal(w.shape) / np.sqrt(w.shape[0] if len(w.shape) > 1 else 10)
             ).astype(np.float32)
    w.assign(value)
    # By role, without keras's numbered layer names: "lmu_cell/kernel" (the memory's input
    # encoder over [x, h]), "simple_rnn_cell/kernel" (the hidden layer's over [m, x]), ...
    layer, name = w.path.split("/")[-2:]
    weights[f"{layer.rstrip('_0123456789')}/{name}"] = {"shape": list(w.shape),
                                                        "value": as_list(value)}
  x = rng.random((BATCH, TIME, FEATURES), dtype=np.float32)
  logits, *carry = model(x)
  carry = {"memory" if c.shape[-1] == ORDER else "hidden": as_list(c) for c in carry}
  return {"hidden_to_memory": hidden_to_memory, "memory_to_memory": memory_to_memory,
          "weights": weights, "inputs": as_list(x), "logits": as_list(logits),
          "carry": carry}


def main():
  tf.random.set_seed(0)
  rng = np.random.default_rng(0)
  fixture = {
      "source": f"keras-lmu {keras_lmu.__version__}, TensorFlow {tf.__version__}",
      "batch": BATCH, "time": TIME, "features": FEATURES, "hidden": HIDDEN, "order": ORDER,
      "theta": THETA, "classes": CLASSES,
      "cases": [case(rng, False, False), case(rng, True, True)]}
  OUT.write_text(json.dumps(fixture, indent=1) + "\n")
  print(f"wrote {OUT}")


if __name__ == "__main__":
  main()
