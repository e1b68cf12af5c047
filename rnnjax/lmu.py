"""The Legendre Memory Unit (Voelker, Kajic and Eliasmith, NeurIPS 2019, "Legendre Memory
Units: Continuous-Time Representation in Recurrent Neural Networks"), and its memory
computed in parallel over time.

**Memory.** A linear time-invariant system of order d holds a sliding window of the last
`theta` steps of its input u, as the coefficients of the window in the shifted Legendre
polynomials::

    theta m'(t) = A m(t) + B u(t)
    A[i, j] = (2i + 1) * (-1 if i < j else (-1)^(i - j + 1)),   B[i] = (2i + 1) (-1)^i

discretised by zero-order hold with a time step of one sequence step (`zoh`):
`[[A_d, B_d], [0, 1]] = expm([[A, B], [0, 0]] / theta)`. A and B are fixed; only the
encoders and the hidden layer learn.

**Cell** (`LMUCell`), per step, with a memory of `memory_d` such systems::

    u_t = e_x x_t  [+ e_h h_{t-1}]  [+ e_m m_{t-1}]      (hidden_to_memory, memory_to_memory)
    m_t = A_d m_{t-1} + B_d u_t                           (each of the memory_d systems)
    h_t = tanh(W_m m_t + W_x x_t + W_h h_{t-1} + b)

The output is `h_t`, the carry `(m, h)`. Without `hidden_to_memory` and `memory_to_memory`
the memory reads the input only, and all T memories are a convolution of the encoded input
with the system's impulse response `H[k] = A_d^k B_d`. `LMUCell.sequence` then computes the
hidden layer's memory term for every step at once (`W_m m_t = sum_k u_{t-k} (H W_m)[k]`:
by default through the memory's state at blocks of 16 steps, `memory_drive_by_blocks`,
dense matmuls; or an FFT convolution, `memory_method="fft"`, slower where measured,
docs/performance.md) and runs only the hidden recurrence `h_t = tanh(p_t + W_h h_{t-1})` step
by step, one small matmul per step: on rnnjax's CPU kernel where it runs (`kernel="cpu"`,
`kernel_layers.tanh_recurrence`; `Config.rnn_kernel` decides, as for LSTM and LEM layers),
else as a `lax.scan`. `LMULayer`, an `nn.RNN(LMUCell)`, uses it where it applies; the plain
`nn.RNN` scan of the same cell is what it is tested against.

The hidden state is a learned, nonlinear recurrence over every step (`W_h`); the memory is
linear and fixed. `LMUClassifier` stacks LMU layers and reads out the last step (or the
mean over time) with a dense layer, as keras-lmu's psMNIST example does.

Parameters (`params[...]` under `rnn_{k}/cell`), input features F, hidden H, memory
`memory_d` x `order` = M::

    encoder_x/kernel <[F, memory_d]>      (initialised to ones, keras-lmu's psMNIST setting)
    encoder_h/kernel <[H, memory_d]>      (hidden_to_memory only; Glorot uniform)
    encoder_m/kernel <[M, memory_d]>      (memory_to_memory only; orthogonal)
    memory/kernel <[M, H]>                (W_m, Glorot uniform)
    input/{kernel <[F, H]>, bias <[H]>}   (W_x Glorot uniform, b zeros)
    hidden/kernel <[H, H]>                (W_h, orthogonal)
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from rnnjax import models


def legendre_delay(order: int) -> tuple[np.ndarray, np.ndarray]:
  """The continuous Legendre delay system `(A <[d, d]>, B <[d]>)` for `theta = 1`
  (float64)."""
  q = np.arange(order, dtype=np.float64)
  r = 2 * q + 1
  i, j = np.meshgrid(q, q, indexing="ij")
  a = np.where(i < j, -1.0, (-1.0) ** (i - j + 1)) * r[:, None]
  b = (-1.0) ** q * r
  return a, b


@functools.cache
def zoh(order: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
  """`(A_d, B_d)`: the delay system of `order` and window `theta` steps, discretised by
  zero-order hold over one step (float64; read-only arrays, cached)."""
  a, b = legendre_delay(order)
  augmented = np.zeros((order + 1, order + 1))
  augmented[:order, :order], augmented[:order, order] = a / theta, b / theta
  e = scipy.linalg.expm(augmented)
  ad, bd = e[:order, :order], e[:order, order]
  ad.flags.writeable = bd.flags.writeable = False
  return ad, bd


@functools.cache
def impulse_response(order: int, theta: float, steps: int) -> np.ndarray:
  """`H <[steps, order]>`, `H[k] = A_d^k B_d`: the memory `k` steps after a unit input
  (float64, read-only, cached)."""
  ad, bd = zoh(order, theta)
  out = np.empty((steps, order))
  m = bd.copy()
  for k in range(steps):
    out[k] = m
    m = ad @ m
  out.flags.writeable = False
  return out


def causal_convolution(u: jax.Array, g: jax.Array) -> jax.Array:
  """`z[b, t] = sum_j sum_{k <= t} u[b, t - k, j] g[j, k]`: `u <[B, T, J]>` with filters
  `g <[J, T, H]>` -> `<[B, T, H]>`, by FFT over time (zero-padded to 2T: no wrap-around)."""
  steps = u.shape[1]
  n = 2 * steps
  spectrum = jnp.einsum("bfj,jfh->bfh", jnp.fft.rfft(u, n, axis=1), jnp.fft.rfft(g, n, axis=1))
  return jnp.fft.irfft(spectrum, n, axis=1)[:, :steps].astype(u.dtype)


@functools.cache
def _block_powers(order: int, theta: float, block: int) -> np.ndarray:
  """`A_d^(l + 1)` for `l < block`, `<[block, order, order]>` (float64, read-only, cached)."""
  ad, _ = zoh(order, theta)
  out = np.empty((block, order, order))
  power = np.eye(order)
  for l in range(block):
    power = ad @ power
    out[l] = power
  out.flags.writeable = False
  return out


def memory_drive_by_blocks(u: jax.Array, w_m: jax.Array, order: int, theta: float,
                           block: int = 16) -> jax.Array:
  """`W_m m_t` for every step: encoded inputs `u <[B, T, J]>` of J memory systems, `w_m
  <[J * order, H]>` -> `<[B, T, H]>`, what `causal_convolution(u, H W_m)` gives, by blocks
  of `block` steps through the memory's own state. The state before each block, `s_c`,
  comes from a scan over the T / block blocks (`s_{c+1} = A_d^L s_c + the block's input
  through the response`); within block c, step l then reads
  `m = A_d^(l+1) s_c + sum_{i <= l} H[l - i] u_i`, so that `W_m m` is one matmul of every
  block's state with `[A_d^(l+1) W_m]_l`, `[B T / L, J order] x [J order, L H]`, plus the
  block's own inputs through the response, `[B T / L, J L] x [J L, L H]`: dense matmuls
  where the FFT's spectra are bound by memory traffic."""
  batch, steps, systems = u.shape
  hidden = w_m.shape[-1]
  blocks = -(-steps // block)
  u = jnp.pad(u, ((0, 0), (0, blocks * block - steps), (0, 0))).reshape(
      batch, blocks, block, systems)
  response = jnp.asarray(impulse_response(order, theta, block), u.dtype)  # [L, order]
  powers = jnp.asarray(_block_powers(order, theta, block), u.dtype)  # A_d^(l+1)
  w = w_m.reshape(systems, order, hidden)
  # A block's input into the state after it: u_i through H[L - 1 - i].
  inject = jnp.einsum("bcij,io->cbjo", u, response[::-1])

  def advance(state, block_input):
    return state @ powers[-1].T + block_input, state

  _, starts = jax.lax.scan(advance, jnp.zeros_like(inject[0]), inject)  # [C, B, J, order]
  carried = jnp.einsum("cbjo,jolh->bclh", starts, jnp.einsum("lqo,jqh->jolh", powers, w))
  lag = jnp.arange(block)[None, :] - jnp.arange(block)[:, None]  # [i, l]: l - i
  response_w = jnp.einsum("ko,joh->jkh", response, w)  # [J, L, H]: H[k] W_m
  within = jnp.where((lag >= 0)[None, :, :, None], response_w[:, jnp.clip(lag, 0)], 0.0)
  local = jnp.einsum("bcij,jilh->bclh", u, within)
  return (carried + local).reshape(batch, blocks * block, hidden)[:, :steps]


@jax.custom_vjp
def tanh_recurrence(drive: jax.Array, w: jax.Array, h0: jax.Array) -> jax.Array:
  """`h_t = tanh(drive_t + h_{t-1} @ w)` from `h0 <[B, H]>` over time-major
  `drive <[T, B, H]>`: every `h_t`, `<[T, B, H]>`.

  Its backward pass runs the recurrence in reverse for the cotangents of `drive` alone (one
  `[B, H] x [H, H]` matmul per step), then gets the gradient of `w` as one matmul over all
  steps and batch rows, where differentiating the scan would add a second matmul per step."""
  return _tanh_recurrence_fwd(drive, w, h0)[0]


def _tanh_recurrence_fwd(drive, w, h0):
  def step(h, d):
    h = jnp.tanh(d + h @ w)
    return h, h

  _, hs = jax.lax.scan(step, h0, drive)
  return hs, (hs, w, h0)


def _tanh_recurrence_bwd(residuals, d_hs):
  hs, w, h0 = residuals

  def step(d_next, x):
    h, d_h = x
    d_drive = (d_h + d_next) * (1 - h * h)
    return d_drive @ w.T, d_drive

  d_h0, d_drive = jax.lax.scan(step, jnp.zeros_like(h0), (hs, d_hs), reverse=True)
  previous = jnp.concatenate([h0[None], hs[:-1]])
  d_w = jnp.einsum("tbi,tbj->ij", previous, d_drive)
  return d_drive, d_w, d_h0


tanh_recurrence.defvjp(_tanh_recurrence_fwd, _tanh_recurrence_bwd)


MEMORY_METHODS = ("fft", "blocks")  # how `LMUCell.sequence` computes W_m m_t for every step


class LMUCell(nn.RNNCellBase):
  """One LMU step (module docstring): carry `(m <[B, memory_d * order]>, h <[B, H]>)`,
  output `h`."""

  features: int
  order: int = 256
  theta: float = 784.0
  memory_d: int = 1
  hidden_to_memory: bool = False
  memory_to_memory: bool = False
  kernel: str = "xla"
  memory_method: str = "blocks"

  def setup(self):
    if self.memory_method not in MEMORY_METHODS:
      raise ValueError(f"memory_method must be one of {MEMORY_METHODS}, "
                       f"got {self.memory_method!r}")
    glorot, orthogonal = nn.initializers.glorot_uniform(), nn.initializers.orthogonal()
    self.encoder_x = nn.Dense(self.memory_d, use_bias=False, kernel_init=nn.initializers.ones)
    if self.hidden_to_memory:
      self.encoder_h = nn.Dense(self.memory_d, use_bias=False, kernel_init=glorot)
    if self.memory_to_memory:
      self.encoder_m = nn.Dense(self.memory_d, use_bias=False, kernel_init=orthogonal)
    self.memory = nn.Dense(self.features, use_bias=False, kernel_init=glorot)
    self.input = nn.Dense(self.features, kernel_init=glorot)
    self.hidden = nn.Dense(self.features, use_bias=False, kernel_init=orthogonal)

  @property
  def input_only(self) -> bool:
    """Whether the memory reads the input alone (then `sequence` applies)."""
    return not (self.hidden_to_memory or self.memory_to_memory)

  def __call__(self, carry, x):
    m, h = carry
    u = self.encoder_x(x)
    if self.hidden_to_memory:
      u = u + self.encoder_h(h)
    if self.memory_to_memory:
      u = u + self.encoder_m(m)
    ad, bd = (jnp.asarray(a, x.dtype) for a in zoh(self.order, self.theta))
    memory = m.reshape(*m.shape[:-1], self.memory_d, self.order)
    memory = memory @ ad.T + u[..., None] * bd
    m = memory.reshape(m.shape)
    h = jnp.tanh(self.memory(m) + self.input(x) + self.hidden(h))
    return (m, h), h

  def sequence(self, x: jax.Array):
    """The whole sequence `x <[B, T, F]>` from the zero carry, the memory in parallel:
    `((m_T, h_T), h <[B, T, H]>)`, what the step-by-step scan gives. Needs `input_only`."""
    if not self.input_only:
      raise ValueError("LMUCell.sequence needs a memory that reads the input only "
                       "(hidden_to_memory and memory_to_memory off); scan the cell instead")
    batch, steps, _ = x.shape
    u = self.encoder_x(x)  # [B, T, memory_d]
    response = jnp.asarray(impulse_response(self.order, self.theta, steps), x.dtype)
    if self.memory_method == "fft":
      # Memory system j's impulse response through W_m: the block of W_m that reads it.
      blocks = (jnp.eye(self.memory_d, dtype=x.dtype)[:, None, :, None]
                * response[None, :, None, :]).reshape(self.memory_d, steps, -1)
      memory = causal_convolution(u, self.memory(blocks))
    else:
      w_m = self.memory(jnp.eye(self.memory_d * self.order, dtype=x.dtype))  # W_m itself
      memory = memory_drive_by_blocks(u, w_m, self.order, self.theta)
    drive = memory + self.input(x)
    w_h = self.hidden(jnp.eye(self.features, dtype=x.dtype))  # W_h itself
    recurrence = tanh_recurrence
    if self.kernel == "cpu":
      from rnnjax import cpu_kernel, kernel_layers
      cpu_kernel.require()
      recurrence = kernel_layers.tanh_recurrence
    hs = recurrence(jnp.swapaxes(drive, 0, 1), w_h, jnp.zeros((batch, self.features), x.dtype))
    m_last = jnp.einsum("btj,tk->bjk", u[:, ::-1], response).reshape(batch, -1)
    return (m_last, hs[-1]), jnp.swapaxes(hs, 0, 1)

  def initialize_carry(self, rng, input_shape):
    batch = input_shape[:-1]
    return (jnp.zeros((*batch, self.memory_d * self.order), jnp.float32),
            jnp.zeros((*batch, self.features), jnp.float32))

  @property
  def num_feature_axes(self) -> int:
    return 1


class LMULayer(nn.RNN):
  """`nn.RNN(LMUCell)` with the same fields, parameters and call, whose calls compute the
  memory in parallel (`LMUCell.sequence`) where that gives the scan's result: `parallel`
  on, a memory that reads the input only, batch-major, forward, the zero initial carry,
  whole sequences. Anything else, and `init`, runs `nn.RNN`'s own scan, from a zero carry
  in the input's dtype where none is given."""

  parallel: bool = True

  def __call__(self, inputs, *, initial_carry=None, init_key=None, seq_lengths=None,
               return_carry=None, time_major=None, reverse=None, keep_order=None):
    pick = lambda given, field: field if given is None else given  # noqa: E731
    scan = (not self.parallel or self.is_initializing() or initial_carry is not None
            or seq_lengths is not None or not self.cell.input_only
            or pick(time_major, self.time_major) or pick(reverse, self.reverse)
            or inputs.ndim != 3)
    if not scan:
      carry, outputs = self.cell.sequence(inputs)
      return (carry, outputs) if pick(return_carry, self.return_carry) else outputs
    if initial_carry is None:
      batch = inputs.shape[1:-1] if pick(time_major, self.time_major) else inputs.shape[:-2]
      shapes = jax.eval_shape(lambda: self.cell.initialize_carry(
          jax.random.key(0), (*batch, inputs.shape[-1])))
      initial_carry = jax.tree.map(lambda s: jnp.zeros(s.shape, inputs.dtype), shapes)
    return super().__call__(inputs, initial_carry=initial_carry, init_key=init_key,
                            seq_lengths=seq_lengths, return_carry=return_carry,
                            time_major=time_major, reverse=reverse, keep_order=keep_order)


class LMUClassifier(nn.Module):
  """`num_layers` LMU layers (`dropout` on each one's outputs in training), then a dense
  readout of the last step (or of the mean over time, `readout="mean"`). Called as
  `SequenceClassifier` is: `<[batch, T, F]>` -> logits `<[batch, C]>`; `all_steps=True`:
  the readout after every step, `<[batch, T, C]>`. `parallel=False` scans every layer step
  by step (`nn.RNN`'s scan), with the same parameters."""

  hidden_size: int = 212
  num_layers: int = 1
  num_classes: int = 10
  order: int = 256
  theta: float = 784.0
  hidden_to_memory: bool = False
  memory_to_memory: bool = False
  readout: str = "last"
  dropout: float = 0.0
  parallel: bool = True
  kernel: str = "xla"
  head_init: str = "lecun"
  memory_method: str = "blocks"

  @nn.compact
  def __call__(self, inputs: jax.Array, all_steps: bool = False,
               train: bool = False) -> jax.Array:
    x = inputs
    for k in range(self.num_layers):
      cell = LMUCell(self.hidden_size, self.order, self.theta,
                     hidden_to_memory=self.hidden_to_memory,
                     memory_to_memory=self.memory_to_memory, kernel=self.kernel,
                     memory_method=self.memory_method, parent=None)
      x = LMULayer(cell, parallel=self.parallel, name=f"rnn_{k}")(x)
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    head = models.dense_head(self.num_classes, x.shape[-1], self.head_init)
    return models.read_out(head, x, self.readout, all_steps)


class ParallelLMU(nn.Module):
  """The parallel LMU (Chilkuri and Eliasmith, ICML 2021, "Parallelizing Legendre Memory
  Unit Training"): the LMU's memory without the hidden recurrence. Per step::

      u_t = e_x x_t,   m_t = A_d m_{t-1} + B_d u_t,   o_t = relu(W_m m_t + b)

  then `dropout`, `num_layers - 1` more ReLU layers of the same width over o_t (each with
  dropout; the paper has none), and a dense readout of the last step (or of the mean over
  time). The
  memory is the only state carried across steps, and it is linear and fixed (A_d, B_d as
  `LMUCell`'s); o_t reads m_t alone. So `m_t = sum_k H[k] u_{t-k}` (H the impulse
  response): reading the last step, `m_T` is one matmul of the reversed sequence with H;
  every step (`readout="mean"`, `all_steps`), one FFT convolution through W_m. Run step by
  step, it is an RNN of state m with a feedforward output.

  Parameters: `encoder_x/kernel <[F, 1]>` (ones), `memory/kernel <[order, H]>` (W_m, Glorot
  uniform), `bias <[H]>` (zeros), `hidden_{k}/{kernel, bias}` (k = 1 .. num_layers - 1),
  `head/{kernel, bias}`. The paper's psMNIST model: order 468, theta 784, 346 units, one
  layer, 165,745 parameters."""

  hidden_size: int = 346
  num_layers: int = 1
  num_classes: int = 10
  order: int = 468
  theta: float = 784.0
  readout: str = "last"
  dropout: float = 0.0
  head_init: str = "lecun"

  @nn.compact
  def __call__(self, inputs: jax.Array, all_steps: bool = False,
               train: bool = False) -> jax.Array:
    steps = inputs.shape[1]
    u = nn.Dense(1, use_bias=False, kernel_init=nn.initializers.ones,
                 name="encoder_x")(inputs)  # [B, T, 1]
    response = jnp.asarray(impulse_response(self.order, self.theta, steps), inputs.dtype)
    memory = nn.Dense(self.hidden_size, use_bias=False,
                      kernel_init=nn.initializers.glorot_uniform(), name="memory")  # W_m
    bias = self.param("bias", nn.initializers.zeros, (self.hidden_size,), inputs.dtype)
    head = models.dense_head(self.num_classes, self.hidden_size, self.head_init)
    dropout = nn.Dropout(self.dropout, deterministic=not train)
    def layers(pre):
      o = dropout(nn.relu(pre))
      for k in range(1, self.num_layers):
        o = dropout(nn.relu(nn.Dense(self.hidden_size, name=f"hidden_{k}")(o)))
      return o

    if self.readout == "last" and not all_steps:
      m_last = u[:, ::-1, 0] @ response  # [B, order]
      return head(layers(memory(m_last) + bias))
    pre = causal_convolution(u, memory(response)[None]) + bias
    return models.read_out(head, layers(pre), self.readout, all_steps)


def from_config(config) -> LMUClassifier:
  """The model a `Config` with `cell="lmu"` describes (its registration,
  `rnnjax.config.CELLS`)."""
  return LMUClassifier(hidden_size=config.hidden_size, num_layers=config.num_layers,
                       num_classes=config.num_classes, order=config.lmu_order,
                       theta=config.lmu_theta,
                       hidden_to_memory=config.lmu_hidden_to_memory,
                       memory_to_memory=config.lmu_memory_to_memory, readout=config.readout,
                       dropout=config.dropout, head_init=config.head_init,
                       kernel="cpu" if models.resolve(config.rnn_kernel) == "cpu" else "xla")


def parallel_from_config(config) -> ParallelLMU:
  """The model a `Config` with `cell="plmu"` describes (`num_layers` ReLU layers)."""
  return ParallelLMU(hidden_size=config.hidden_size, num_layers=config.num_layers,
                     num_classes=config.num_classes,
                     order=config.lmu_order, theta=config.lmu_theta, readout=config.readout,
                     dropout=config.dropout, head_init=config.head_init)
