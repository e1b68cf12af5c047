"""Independent float64 NumPy implementations, written from the equations, used by tests only.

Nothing here calls Flax or JAX. Parameters use rnnjax's documented layout (see
`rnnjax.models.SequenceClassifier`): `params['rnn_k']['cell'][gate]['kernel'|'bias']`.
"""

import numpy as np


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def lstm_layer(cell, x, c=None, h=None):
  """One LSTM layer over `x <f64>[batch, time, in]`; returns (outputs [b, t, H], (c, h)).

    i = sigmoid(x W_ii + h W_hi + b_i)     f = sigmoid(x W_if + h W_hf + b_f)
    g = tanh(x W_ig + h W_hg + b_g)        o = sigmoid(x W_io + h W_ho + b_o)
    c' = f * c + i * g                     h' = o * tanh(c')
  """
  p = {k: {n: np.asarray(a, np.float64) for n, a in v.items()} for k, v in cell.items()}
  batch, hidden = x.shape[0], p["hi"]["kernel"].shape[0]
  c = np.zeros((batch, hidden)) if c is None else c
  h = np.zeros((batch, hidden)) if h is None else h
  pre = lambda g, xt: xt @ p["i" + g]["kernel"] + h @ p["h" + g]["kernel"] + p["h" + g]["bias"]
  outputs = []
  for t in range(x.shape[1]):
    xt = x[:, t]
    i, f, g, o = sigmoid(pre("i", xt)), sigmoid(pre("f", xt)), np.tanh(pre("g", xt)), \
        sigmoid(pre("o", xt))
    c = f * c + i * g
    h = o * np.tanh(c)
    outputs.append(h)
  return np.stack(outputs, 1), (c, h)


def classifier_logits(params, x):
  """Stacked LSTM layers then the dense head on the last hidden state."""
  x = np.asarray(x, np.float64)
  k = 0
  while f"rnn_{k}" in params:
    x, _ = lstm_layer(params[f"rnn_{k}"]["cell"], x)
    k += 1
  head = params["head"]
  return x[:, -1] @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64)


def cross_entropy(logits, labels):
  """Mean softmax cross-entropy, stable log-sum-exp."""
  m = logits.max(-1, keepdims=True)
  lse = m[:, 0] + np.log(np.exp(logits - m).sum(-1))
  return float(np.mean(lse - logits[np.arange(len(labels)), labels]))


def adam(params, grads, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8):
  """One Adam step (Kingma & Ba, Algorithm 1) on flat lists of arrays; t counts from 1."""
  new_p, new_m, new_v = [], [], []
  for p, g, mi, vi in zip(params, grads, m, v):
    mi = b1 * mi + (1 - b1) * g
    vi = b2 * vi + (1 - b2) * g * g
    m_hat, v_hat = mi / (1 - b1 ** t), vi / (1 - b2 ** t)
    new_p.append(p - lr * m_hat / (np.sqrt(v_hat) + eps))
    new_m.append(mi)
    new_v.append(vi)
  return new_p, new_m, new_v
