"""Measured at 5cb070a (2026-11-27); historical, not maintained: the code has moved on since.

Experiment: nn.RNN(OptimizedLSTMCell) against the hand-written custom-VJP layer in
custom_vjp_lstm.py, same parameters, train steps with Adam, alternating in one process.

    python benchmarks/probes/custom_vjp_compare.py HIDDEN BATCH TIME FEATURES base 1 base 1

prints the logits and gradient differences, then images/s for each entry (`base`, or an
unroll count for the custom layer). Results: docs/lab/2026-11-speed-notes.md.
"""
import time, sys, pathlib, jax, jax.numpy as jnp, numpy as np, optax
HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]
from rnnjax import presets, models
import custom_vjp_lstm as lstm
H, B, T, F = [int(a) for a in sys.argv[1:5]]
which = sys.argv[5:]
cfg = presets.get('tutorial').replace(hidden_size=H, batch_size=B)
model = models.model_from_config(cfg)
rng = np.random.default_rng(0)
batch = {"image": jnp.asarray(rng.random((B, T, F), dtype=np.float32)),
         "label": jnp.asarray(rng.integers(0, 10, B).astype(np.int32))}
params = model.init(jax.random.key(0), batch["image"][:1])["params"]
tx = optax.adam(1e-3)
def fast(p, x, unroll=1):
  cp = p["rnn_0"]["cell"]
  Wi = jnp.concatenate([cp[k]["kernel"] for k in ("ii", "if", "ig", "io")], 1)
  Wh = jnp.concatenate([cp[k]["kernel"] for k in ("hi", "hf", "hg", "ho")], 1)
  b = jnp.concatenate([cp[k]["bias"] for k in ("hi", "hf", "hg", "ho")])
  z = jnp.zeros((x.shape[0], H), x.dtype)
  (c, h), hs = lstm.lstm_layer(Wi, Wh, b, x, z, z, unroll)
  return hs[:, -1] @ p["head"]["kernel"] + p["head"]["bias"]
base = lambda p, x: model.apply({"params": p}, x)
def loss(fn):
  return lambda p: optax.softmax_cross_entropy_with_integer_labels(fn(p, batch["image"]), batch["label"]).mean()
print("logits diff", float(jnp.max(jnp.abs(base(params, batch["image"]) - fast(params, batch["image"])))))
g1 = jax.grad(loss(base))(params); g2 = jax.grad(loss(fast))(params)
print("grad rel diff", max(float(jnp.max(jnp.abs(a-b))/jnp.max(jnp.abs(a))) for a,b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2))))
def make_step(fn):
  def step(p, o, batch):
    l, g = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(fn(p, batch["image"]), batch["label"]).mean())(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, l
  return jax.jit(step, donate_argnums=(0, 1))
def bench(fn, name):
  st = make_step(fn)
  p, o = jax.tree.map(jnp.array, params), tx.init(params)
  p, o, l = st(p, o, batch); l.block_until_ready()
  t = time.perf_counter(); p, o, l = st(p, o, batch); l.block_until_ready()
  n = max(3, int(1.5 / (time.perf_counter() - t)))
  rates = []
  for _ in range(5):
    t = time.perf_counter()
    for _ in range(n):
      p, o, l = st(p, o, batch)
    l.block_until_ready()
    rates.append(n * B / (time.perf_counter() - t))
  print(f"{name:12s} median {np.median(rates):8.0f} img/s  (min {min(rates):.0f} max {max(rates):.0f})", flush=True)
for w in which:
  if w == "base": bench(base, "base")
  else: bench(lambda p, x, u=int(w): fast(p, x, u), f"fast u{w}")
