"""Profile of one jitted train step of the tutorial model (nn.RNN(OptimizedLSTMCell)):
milliseconds per step spent in each XLA CPU operation, from a jax.profiler trace.

    python experiments/speed/profile_step.py BATCH HIDDEN

Result (experiments/speed_notes.md, item 9): about two thirds of the step in matmuls, the
rest in some 20 small element-wise fusions, stacking copies and buffer initialisation.
"""
import sys, time, glob, gzip, json, collections, tempfile
import jax, jax.numpy as jnp, numpy as np, optax, flax.linen as nn
from flax.training import train_state
B, H = int(sys.argv[1]), int(sys.argv[2])
class M(nn.Module):
  @nn.compact
  def __call__(self, x):
    z = jnp.zeros((x.shape[0], H), x.dtype)
    y = nn.RNN(nn.OptimizedLSTMCell(H, parent=None), name="rnn_0")(x, initial_carry=(z, z))
    return nn.Dense(10, name="head")(y[:, -1])
rng = np.random.default_rng(0)
x = jnp.asarray(rng.random((B, 28, 28), dtype=np.float32)); y = jnp.asarray(rng.integers(0, 10, B).astype(np.int32))
m=M(); params = m.init(jax.random.key(0), x[:1])["params"]
def step(state, x, y):
  def lf(p):
    return optax.softmax_cross_entropy_with_integer_labels(m.apply({"params": p}, x), y).mean()
  l, g = jax.value_and_grad(lf)(state.params)
  return state.apply_gradients(grads=g), l
st = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.adam(1e-3))
f = jax.jit(step, donate_argnums=0)
for _ in range(10): st, l = f(st, x, y)
l.block_until_ready()
trace_dir = tempfile.mkdtemp(prefix="rnnjax_profile_")
jax.profiler.start_trace(trace_dir)
t=time.perf_counter()
for _ in range(20): st, l = f(st, x, y)
l.block_until_ready()
print("step ms", (time.perf_counter()-t)/20*1000)
jax.profiler.stop_trace()
fn = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))[-1]
tr = json.load(gzip.open(fn))
agg = collections.Counter(); cnt=collections.Counter()
for e in tr["traceEvents"]:
  if e.get("ph")=="X":
    agg[e["name"]] += e["dur"]; cnt[e["name"]]+=1
for k,v in agg.most_common(40):
  print(f"{v/20/1000:8.2f} ms/step  {cnt[k]/20:6.1f}/step  {k[:100]}")
