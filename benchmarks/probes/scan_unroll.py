"""Measured at 413b94d (2026-11-27); historical, not maintained: the code has moved on since.

Experiment: `nn.RNN(..., unroll=U)` for the tutorial model, train steps with Adam,
alternating in one process (images/s, median of 5 windows of 20 steps).

    python benchmarks/probes/scan_unroll.py BATCH HIDDEN 1,2,4,7,28

Result (docs/lab/2026-11-speed-notes.md, item 7): every unroll > 1 is slower on the 2-core CPU.
"""
import sys, time, statistics
import jax, jax.numpy as jnp, numpy as np, optax, flax.linen as nn
from flax.training import train_state
B, H = int(sys.argv[1]), int(sys.argv[2])
unrolls = [int(u) for u in sys.argv[3].split(",")]
class M(nn.Module):
  unroll: int = 1
  @nn.compact
  def __call__(self, x):
    z = jnp.zeros((x.shape[0], H), x.dtype)
    y = nn.RNN(nn.OptimizedLSTMCell(H, parent=None), unroll=self.unroll, name="rnn_0")(x, initial_carry=(z, z))
    return nn.Dense(10, name="head")(y[:, -1])
rng = np.random.default_rng(0)
x = jnp.asarray(rng.random((B, 28, 28), dtype=np.float32)); y = jnp.asarray(rng.integers(0, 10, B).astype(np.int32))
params = M().init(jax.random.key(0), x[:1])["params"]
fns = {}
for u in unrolls:
  m = M(unroll=u)
  def step(state, x, y, m=m):
    def lf(p):
      return optax.softmax_cross_entropy_with_integer_labels(m.apply({"params": p}, x), y).mean()
    l, g = jax.value_and_grad(lf)(state.params)
    return state.apply_gradients(grads=g), l
  st = train_state.TrainState.create(apply_fn=None, params=jax.tree.map(jnp.copy, params), tx=optax.adam(1e-3))
  f = jax.jit(step, donate_argnums=0)
  t=time.perf_counter(); st, l = f(st, x, y); l.block_until_ready(); c=time.perf_counter()-t
  fns[u] = [f, st, c, []]
# correctness: loss after 1 step equal?
for rep in range(5):
  for u in unrolls:
    f, st, c, rates = fns[u]
    for _ in range(3): st, l = f(st, x, y)
    l.block_until_ready()
    t = time.perf_counter(); n = 20
    for _ in range(n): st, l = f(st, x, y)
    l.block_until_ready()
    rates.append(n*B/(time.perf_counter()-t)); fns[u][1] = st
for u in unrolls:
  f, st, c, rates = fns[u]
  print(f"B{B} H{H} unroll {u:3d}: compile {c:5.1f}s  img/s median {statistics.median(rates):7.0f}  all {[round(r) for r in rates]}")
