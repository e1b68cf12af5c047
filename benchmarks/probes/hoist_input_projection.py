"""Measured at ec5b7db (2026-11-27); historical, not maintained: the code has moved on since.

Experiment: the LSTM with its input projection hoisted out of the scan (one matmul for
all 28 rows), against nn.RNN(OptimizedLSTMCell), same parameters; train steps with Adam.

    python benchmarks/probes/hoist_input_projection.py HIDDEN BATCH

Results: docs/lab/2026-11-speed-notes.md.
"""
import time, sys, jax, jax.numpy as jnp, numpy as np, optax
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[2]))
from rnnjax import presets, models
H, B = int(sys.argv[1]), int(sys.argv[2])
cfg = presets.get('tutorial').replace(hidden_size=H, batch_size=B)
model = models.model_from_config(cfg)
rng = np.random.default_rng(0)
batch = {"image": jnp.asarray(rng.random((B, 28, 28), dtype=np.float32)),
         "label": jnp.asarray(rng.integers(0, 10, B).astype(np.int32))}
params = model.init(jax.random.key(0), batch["image"][:1])["params"]
tx = optax.adam(1e-3)

def logits_hoisted(p, x, unroll=1):
  cp = p["rnn_0"]["cell"]
  Wi = jnp.concatenate([cp[k]["kernel"] for k in ("ii", "if", "ig", "io")], 1)
  Wh = jnp.concatenate([cp[k]["kernel"] for k in ("hi", "hf", "hg", "ho")], 1)
  b = jnp.concatenate([cp[k]["bias"] for k in ("hi", "hf", "hg", "ho")])
  gx = jnp.einsum("btf,fg->tbg", x, Wi) + b
  z0 = jnp.zeros((x.shape[0], H), x.dtype)
  def step(carry, g):
    c, h = carry
    z = g + h @ Wh
    i, f, gg, o = jnp.split(z, 4, -1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), None
  (c, h), _ = jax.lax.scan(step, (z0, z0), gx, unroll=unroll)
  return h @ p["head"]["kernel"] + p["head"]["bias"]

ref = model.apply({"params": params}, batch["image"])
got = logits_hoisted(params, batch["image"])
print("max abs diff logits", float(jnp.max(jnp.abs(ref - got))))

def make_step(fn):
  def step(p, o, batch):
    def loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(fn(p, batch["image"]), batch["label"]).mean()
    l, g = jax.value_and_grad(loss)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, l
  return jax.jit(step, donate_argnums=(0, 1))

def bench(fn, name):
  st = make_step(fn)
  p, o = jax.tree.map(jnp.array, params), tx.init(params)
  p, o, l = st(p, o, batch); l.block_until_ready()
  rates = []
  for _ in range(5):
    t = time.perf_counter()
    for _ in range(30):
      p, o, l = st(p, o, batch)
    l.block_until_ready()
    rates.append(30 * B / (time.perf_counter() - t))
  print(f"{name}: {np.median(rates):,.0f} img/s")

bench(lambda p, x: model.apply({"params": p}, x), "nn.RNN(OptimizedLSTMCell)")
bench(logits_hoisted, "hoisted input projection")
bench(lambda p, x: logits_hoisted(p, x, unroll=4), "hoisted, unroll 4")
bench(lambda p, x: logits_hoisted(p, x, unroll=28), "hoisted, unroll 28")
