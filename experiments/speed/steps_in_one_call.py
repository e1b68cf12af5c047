"""Experiment: K train steps in one jitted call (`lax.scan` over K stacked batches) against
K calls of the jitted step, alternating in one process.

    python experiments/speed/steps_in_one_call.py BATCH HIDDEN K

Result (experiments/speed_notes.md, item 8): +9% at the tutorial setting with
glibc.malloc.hugetlb=1, +27% with the system allocator; +5-10% at batch 128 / hidden 128.
"""
import sys, time, statistics
import jax, jax.numpy as jnp, numpy as np, optax, flax.linen as nn
from flax.training import train_state
B, H, K = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
class M(nn.Module):
  @nn.compact
  def __call__(self, x):
    z = jnp.zeros((x.shape[0], H), x.dtype)
    y = nn.RNN(nn.OptimizedLSTMCell(H, parent=None), name="rnn_0")(x, initial_carry=(z, z))
    return nn.Dense(10, name="head")(y[:, -1])
rng = np.random.default_rng(0)
xs = jnp.asarray(rng.random((K, B, 28, 28), dtype=np.float32)); ys = jnp.asarray(rng.integers(0, 10, (K, B)).astype(np.int32))
m = M(); params = m.init(jax.random.key(0), xs[0, :1])["params"]
def step(state, x, y):
  def lf(p):
    return optax.softmax_cross_entropy_with_integer_labels(m.apply({"params": p}, x), y).mean()
  l, g = jax.value_and_grad(lf)(state.params)
  return state.apply_gradients(grads=g), l
def multi(state, xs, ys):
  return jax.lax.scan(lambda s, b: step(s, *b), state, (xs, ys))
mk = lambda: train_state.TrainState.create(apply_fn=None, params=jax.tree.map(jnp.copy, params), tx=optax.adam(1e-3))
f1 = jax.jit(step, donate_argnums=0); fk = jax.jit(multi, donate_argnums=0)
s1, sk = mk(), mk()
s1, l = f1(s1, xs[0], ys[0]); sk, lk = fk(sk, xs, ys); lk.block_until_ready()
r1, rk = [], []
for rep in range(6):
  t = time.perf_counter()
  for _ in range(3):
    for i in range(K): s1, l = f1(s1, xs[i], ys[i])
  l.block_until_ready(); r1.append(3*K*B/(time.perf_counter()-t))
  t = time.perf_counter()
  for _ in range(3): sk, lk = fk(sk, xs, ys)
  lk.block_until_ready(); rk.append(3*K*B/(time.perf_counter()-t))
print(f"B{B} H{H} K{K}: single {statistics.median(r1):.0f} {[round(r) for r in r1]}  scan {statistics.median(rk):.0f} {[round(r) for r in rk]}")
