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


def gru_layer(cell, x):
  """One GRU layer (PyTorch's and Flax's form) over `x <f64>[batch, time, in]`:

    r = sigmoid(x W_ir + b_ir + h W_hr)    z = sigmoid(x W_iz + b_iz + h W_hz)
    n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
    h' = (1 - z) * n + z * h
  """
  p = {k: {n: np.asarray(a, np.float64) for n, a in v.items()} for k, v in cell.items()}
  h = np.zeros((x.shape[0], p["hr"]["kernel"].shape[0]))
  outputs = []
  for t in range(x.shape[1]):
    xt = x[:, t]
    r = sigmoid(xt @ p["ir"]["kernel"] + p["ir"]["bias"] + h @ p["hr"]["kernel"])
    z = sigmoid(xt @ p["iz"]["kernel"] + p["iz"]["bias"] + h @ p["hz"]["kernel"])
    n = np.tanh(xt @ p["in"]["kernel"] + p["in"]["bias"]
                + r * (h @ p["hn"]["kernel"] + p["hn"]["bias"]))
    h = (1 - z) * n + z * h
    outputs.append(h)
  return np.stack(outputs, 1), h


def simple_layer(cell, x, activation=np.tanh):
  """Elman RNN over `x`: h' = activation(x W_i + b_i + h W_h) (tanh RNN; IRNN with ReLU)."""
  p = {k: {n: np.asarray(a, np.float64) for n, a in v.items()} for k, v in cell.items()}
  h = np.zeros((x.shape[0], p["h"]["kernel"].shape[0]))
  outputs = []
  for t in range(x.shape[1]):
    h = activation(x[:, t] @ p["i"]["kernel"] + p["i"]["bias"] + h @ p["h"]["kernel"])
    outputs.append(h)
  return np.stack(outputs, 1), h


def relu(x):
  return np.maximum(x, 0.0)


def _f64(cell):
  return {k: {n: np.asarray(a, np.float64) for n, a in v.items()} for k, v in cell.items()}


def lem_layer(cell, x, dt=0.21):
  """Long Expressive Memory (Rusch et al. 2022, eq. 3), written from the paper: carry (z, y),
  output y."""
  p = _f64(cell)
  hidden = p["z"]["kernel"].shape[0]
  y = np.zeros((x.shape[0], hidden))
  z = np.zeros_like(y)
  outputs = []
  for t in range(x.shape[1]):
    i = x[:, t] @ p["input"]["kernel"] + p["input"]["bias"]
    h = y @ p["hidden"]["kernel"] + p["hidden"]["bias"]
    i_dt_bar, i_dt_z, i_z, i_y = np.split(i, 4, axis=1)
    h_dt_bar, h_dt_z, h_z = np.split(h, 3, axis=1)
    dt_bar = dt * sigmoid(i_dt_bar + h_dt_bar)
    dt_z = dt * sigmoid(i_dt_z + h_dt_z)
    z = (1 - dt_z) * z + dt_z * np.tanh(i_z + h_z)
    y = (1 - dt_bar) * y + dt_bar * np.tanh(z @ p["z"]["kernel"] + p["z"]["bias"] + i_y)
    outputs.append(y)
  return np.stack(outputs, 1), (z, y)


def cornn_layer(cell, x, dt=0.042, gamma=2.7, epsilon=4.7):
  """Coupled oscillatory RNN (Rusch and Mishra 2021, eq. 3), written from the paper: carry
  (z, y), output y."""
  p = _f64(cell)
  hidden = p["z"]["kernel"].shape[0]
  y = np.zeros((x.shape[0], hidden))
  z = np.zeros_like(y)
  outputs = []
  for t in range(x.shape[1]):
    drive = (x[:, t] @ p["input"]["kernel"] + p["input"]["bias"] + z @ p["z"]["kernel"]
             + y @ p["y"]["kernel"])
    z = z + dt * (np.tanh(drive) - gamma * y - epsilon * z)
    y = y + dt * z
    outputs.append(y)
  return np.stack(outputs, 1), (z, y)


LAYERS = {
    "lstm": lambda cell, x: lstm_layer(cell, x)[0],
    "lstm_cell": lambda cell, x: lstm_layer(cell, x)[0],
    "gru": lambda cell, x: gru_layer(cell, x)[0],
    "tanh": lambda cell, x: simple_layer(cell, x, np.tanh)[0],
    "irnn": lambda cell, x: simple_layer(cell, x, relu)[0],
    "lem": lambda cell, x: lem_layer(cell, x)[0],
    "cornn": lambda cell, x: cornn_layer(cell, x)[0],
}


def classifier_logits(params, x, cell="lstm", bidirectional=False, readout="last"):
  """Stacked recurrent layers, then the dense head on the last hidden state (or the mean
  over time). A bidirectional layer runs a second layer over the time-reversed sequence,
  flips its outputs back, and concatenates [forward, backward] on the feature axis; its
  `last` readout is the forward half at the last step and the backward half at the first."""
  x = np.asarray(x, np.float64)
  layer = LAYERS[cell]
  k = 0
  while f"rnn_{k}" in params:
    p = params[f"rnn_{k}"]
    if bidirectional:
      forward = layer(p["forward_rnn"]["cell"], x)
      backward = layer(p["backward_rnn"]["cell"], x[:, ::-1])[:, ::-1]
      x = np.concatenate([forward, backward], axis=-1)
    else:
      x = layer(p["cell"], x)
    k += 1
  if readout == "mean":
    features = x.mean(axis=1)
  elif bidirectional:
    hidden = x.shape[-1] // 2
    features = np.concatenate([x[:, -1, :hidden], x[:, 0, hidden:]], axis=-1)
  else:
    features = x[:, -1]
  head = params["head"]
  return features @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"],
                                                                        np.float64)


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


def lru_layer(p, u):
  """One Linear Recurrent Unit (Orvieto et al. 2023), a plain loop over time in complex128,
  written from the paper: x_t = lambda x_{t-1} + exp(gamma) (B u_t), y_t = Re(C x_t) + D u_t."""
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
  b = (p["B_re"] + 1j * p["B_im"]) * np.exp(p["gamma_log"])[:, None]
  c = p["C_re"] + 1j * p["C_im"]
  u = np.asarray(u, np.float64)
  x = np.zeros((u.shape[0], lam.shape[0]), np.complex128)
  out = []
  for t in range(u.shape[1]):
    x = lam * x + u[:, t] @ b.T
    out.append((x @ c.T).real + p["D"] * u[:, t])
  return np.stack(out, 1)


def legendre_delay(order, theta):
  """The Legendre Memory Unit's delay system (Voelker et al. 2019, eq. 2), entry by entry:
  theta m' = A m + B u, A[i, j] = (2i + 1) (-1 if i < j else (-1)^(i - j + 1)),
  B[i] = (2i + 1) (-1)^i; returned divided by theta."""
  a = np.zeros((order, order))
  b = np.zeros(order)
  for i in range(order):
    b[i] = (2 * i + 1) * (-1) ** i
    for j in range(order):
      a[i, j] = (2 * i + 1) * (-1.0 if i < j else (-1.0) ** (i - j + 1))
  return a / theta, b / theta


def expm(m, terms=30):
  """exp(m) by its Taylor series with scaling and squaring (not the Pade approximant that
  SciPy uses): the norm scaled below 1/2, the series summed, then squared back."""
  squarings = max(0, int(np.ceil(np.log2(max(np.abs(m).sum(1).max(), 1e-300) / 0.5))))
  scaled = m / 2.0 ** squarings
  term = np.eye(len(m))
  total = term.copy()
  for k in range(1, terms):
    term = term @ scaled / k
    total = total + term
  for _ in range(squarings):
    total = total @ total
  return total


def lmu_zoh(order, theta):
  """(A_d, B_d): the delay system held constant over one step (zero-order hold), from the
  exponential of the augmented system [[A, B], [0, 0]]."""
  a, b = legendre_delay(order, theta)
  augmented = np.zeros((order + 1, order + 1))
  augmented[:order, :order], augmented[:order, order] = a, b
  e = expm(augmented)
  return e[:order, :order], e[:order, order]


def lmu_layer(cell, x, theta, hidden_to_memory=False, memory_to_memory=False):
  """The Legendre Memory Unit, a plain loop over time: u = e_x x [+ e_h h] [+ e_m m],
  m' = A_d m + B_d u per memory, h' = tanh(W_m m' + W_x x + b + W_h h); output h."""
  p = _f64(cell)
  memory_d = p["encoder_x"]["kernel"].shape[1]
  order = p["memory"]["kernel"].shape[0] // memory_d
  hidden = p["hidden"]["kernel"].shape[0]
  ad, bd = lmu_zoh(order, theta)
  m = np.zeros((x.shape[0], memory_d * order))
  h = np.zeros((x.shape[0], hidden))
  outputs = []
  for t in range(x.shape[1]):
    u = x[:, t] @ p["encoder_x"]["kernel"]
    if hidden_to_memory:
      u = u + h @ p["encoder_h"]["kernel"]
    if memory_to_memory:
      u = u + m @ p["encoder_m"]["kernel"]
    m = np.concatenate([m[:, j * order:(j + 1) * order] @ ad.T + u[:, j:j + 1] * bd
                        for j in range(memory_d)], axis=1)
    h = np.tanh(m @ p["memory"]["kernel"] + x[:, t] @ p["input"]["kernel"]
                + p["input"]["bias"] + h @ p["hidden"]["kernel"])
    outputs.append(h)
  return np.stack(outputs, 1)


def parallel_lmu(params, x, theta):
  """The parallel LMU, a plain loop over time: u = e_x x, m' = A_d m + B_d u, then
  o = relu(W_m m + b) and o = relu(o W_k + b_k) for each further layer `hidden_k`, at every
  step; returns every last o, [batch, time, H]."""
  p = _f64({k: v for k, v in params.items() if k != "bias"})
  p["bias"] = np.asarray(params["bias"], np.float64)
  order = p["memory"]["kernel"].shape[0]
  ad, bd = lmu_zoh(order, theta)
  m = np.zeros((x.shape[0], order))
  outputs = []
  for t in range(x.shape[1]):
    m = m @ ad.T + (x[:, t] @ p["encoder_x"]["kernel"]) * bd
    o = np.maximum(m @ p["memory"]["kernel"] + p["bias"], 0.0)
    for k in range(1, len([n for n in p if n.startswith("hidden_")]) + 1):
      o = np.maximum(o @ p[f"hidden_{k}"]["kernel"] + p[f"hidden_{k}"]["bias"], 0.0)
    outputs.append(o)
  return np.stack(outputs, 1)
