"""Pure Flax modules: recurrent layers scanned by `nn.RNN`, and a dense readout.

Parameter paths are stable and documented, because interop code maps them to other
frameworks (see `SequenceClassifier`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class SequenceClassifier(nn.Module):
  """Recurrent layers over a sequence, then a dense layer on the last hidden state.

  Each layer is `nn.RNN(nn.OptimizedLSTMCell(hidden_size))`, scanning over the time axis.

  Attributes:
    hidden_size: units of each LSTM layer.
    num_layers: stacked LSTM layers; layer k>0 reads the outputs of layer k-1.
    num_classes: logits of the readout.

  Parameters (`params[...]`), for hidden H, input features I and classes C::

    rnn_{k}/cell/{ii,if,ig,io}/kernel   <f32>[I, H]   input -> gate (k = 0; H for k > 0)
    rnn_{k}/cell/{hi,hf,hg,ho}/kernel   <f32>[H, H]   hidden -> gate
    rnn_{k}/cell/{hi,hf,hg,ho}/bias     <f32>[H]      one bias per gate
    head/kernel                         <f32>[H, C]
    head/bias                           <f32>[C]

  Gates: i input, f forget, g cell candidate, o output (PyTorch's order). The carry is
  `(c, h)`; `c' = f*c + i*g`, `h' = o*tanh(c')`, with sigmoid for i, f, o and tanh for g.
  """

  hidden_size: int = 256
  num_layers: int = 1
  num_classes: int = 10

  @nn.compact
  def __call__(self, inputs: jnp.ndarray, all_steps: bool = False) -> jnp.ndarray:
    """`<float32>[batch, time, features]` -> logits `<float32>[batch, num_classes]`.

    With `all_steps=True`, the readout is applied after every time step instead:
    `<float32>[batch, time, num_classes]` (how the prediction evolves as the rows are read;
    the last step equals the usual logits).
    """
    x = inputs
    for k in range(self.num_layers):
      # parent=None keeps the cell under the RNN's name: params['rnn_0']['cell'][...].
      cell = nn.OptimizedLSTMCell(self.hidden_size, parent=None)
      x = nn.RNN(cell, name=f"rnn_{k}")(x, initial_carry=zero_carry(x, self.hidden_size))
    return nn.Dense(self.num_classes, name="head")(x if all_steps else x[:, -1])


def zero_carry(x: jnp.ndarray, hidden_size: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Zero LSTM carry `(c, h)`, each `[batch, hidden]`, derived from `x <[batch, time, f]>`.

  Derived from the input rather than made fresh, so that it has the input's dtype (float64
  under x64) and its batch sharding (a fresh zero carry is unsharded, which a scan over a
  batch-sharded input rejects under explicit mesh axes).
  """
  zeros = jnp.broadcast_to(jnp.zeros_like(x[:, 0, :1]), (x.shape[0], hidden_size))
  return zeros, zeros


def model_from_config(config) -> SequenceClassifier:
  """The one bridge from a `Config` to the model's arguments."""
  return SequenceClassifier(hidden_size=config.hidden_size, num_layers=config.num_layers,
                            num_classes=config.num_classes)
