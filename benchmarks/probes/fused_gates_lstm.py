"""Measured at 413b94d (2026-11-27); historical, not maintained: the code has moved on since.

Experiment (not adopted, see docs/lab/2026-11-speed-notes.md, item 10): an LSTM layer that
returns only its final carry (what the `last` readout needs), with the gates kept as one
`[B, 4H]` array (`trick`: sigmoid(z) = 0.5 tanh(z/2) + 0.5, so one tanh covers all four
gates) and a hand-written backward pass like custom_vjp_lstm.py.

    python benchmarks/probes/fused_gates_lstm.py HIDDEN BATCH base where trick

prints the logits and gradient differences against nn.RNN, then images/s alternating.
"""
import functools, sys, time, statistics
import jax, jax.numpy as jnp, numpy as np, optax
import pathlib
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from rnnjax import presets, models

def consts(h, dtype):
  col = jnp.arange(4 * h)
  is_g = (col >= 2 * h) & (col < 3 * h)
  return is_g

def _fwd_scan(w_i, w_h, b, x, c0, h0, keep, trick):
  B, T, F = x.shape; H = w_h.shape[0]
  xw = (jnp.swapaxes(x, 0, 1).reshape(T * B, F) @ w_i).reshape(T, B, 4 * H)
  is_g = consts(H, x.dtype)
  s = jnp.where(is_g, 1.0, 0.5).astype(x.dtype); off = jnp.where(is_g, 0.0, 0.5).astype(x.dtype)
  def step(carry, xw_t):
    c, h = carry
    z = (h @ w_h + b) + xw_t
    if trick:
      act = jnp.tanh(z * s) * s + off
    else:
      act = jnp.where(is_g, jnp.tanh(z), jax.nn.sigmoid(z))
    i, f, g, o = act[:, :H], act[:, H:2*H], act[:, 2*H:3*H], act[:, 3*H:]
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (c, h), ((act, c, h) if keep else None)
  return jax.lax.scan(step, (c0, h0), xw)

@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def lstm_last(w_i, w_h, b, x, c0, h0, trick=False):
  (c, h), _ = _fwd_scan(w_i, w_h, b, x, c0, h0, False, trick)
  return c, h

def _f(w_i, w_h, b, x, c0, h0, trick):
  (c, h), (acts, cs, hs) = _fwd_scan(w_i, w_h, b, x, c0, h0, True, trick)
  return (c, h), (w_i, w_h, x, c0, h0, acts, cs, hs)

def _b(trick, res, ct):
  w_i, w_h, x, c0, h0, acts, cs, hs = res
  dc_T, dh_T = ct
  H = w_h.shape[0]; T, B, _ = acts.shape
  is_g = consts(H, x.dtype)
  c_prev = jnp.concatenate([c0[None], cs[:-1]], 0)
  w_h_t = w_h.T
  def step(carry, inp):
    dc, dh = carry
    act, c, cp = inp
    i, f, g, o = act[:, :H], act[:, H:2*H], act[:, 2*H:3*H], act[:, 3*H:]
    tc = jnp.tanh(c)
    dc = dc + dh * o * (1 - tc * tc)
    d_act = jnp.concatenate([dc * g, dc * cp, dc * i, dh * tc], -1)
    dz = d_act * jnp.where(is_g, 1 - act * act, act * (1 - act))
    return (dc * f, dz @ w_h_t), dz
  (dc0, dh0), dz = jax.lax.scan(step, (dc_T, dh_T), (acts, cs, c_prev), reverse=True)
  dz = dz.reshape(T * B, 4 * H)
  h_prev = jnp.concatenate([h0[None], hs[:-1]], 0).reshape(T * B, H)
  x_t = jnp.swapaxes(x, 0, 1).reshape(T * B, -1)
  d_x = jnp.swapaxes((dz @ w_i.T).reshape(T, B, -1), 0, 1)
  return x_t.T @ dz, h_prev.T @ dz, dz.sum(0), d_x, dc0, dh0

lstm_last.defvjp(_f, _b)

H, B = int(sys.argv[1]), int(sys.argv[2]); which = sys.argv[3:]
cfg = presets.get('tutorial').replace(hidden_size=H, batch_size=B)
model = models.model_from_config(cfg)
rng = np.random.default_rng(0)
batch = {"image": jnp.asarray(rng.random((B, 28, 28), dtype=np.float32)),
         "label": jnp.asarray(rng.integers(0, 10, B).astype(np.int32))}
params = model.init(jax.random.key(0), batch["image"][:1])["params"]
tx = optax.adam(1e-3)
def fast(p, x, trick):
  cp = p["rnn_0"]["cell"]
  Wi = jnp.concatenate([cp[k]["kernel"] for k in ("ii", "if", "ig", "io")], 1)
  Wh = jnp.concatenate([cp[k]["kernel"] for k in ("hi", "hf", "hg", "ho")], 1)
  b = jnp.concatenate([cp[k]["bias"] for k in ("hi", "hf", "hg", "ho")])
  z = jnp.zeros((x.shape[0], H), x.dtype)
  c, h = lstm_last(Wi, Wh, b, x, z, z, trick)
  return h @ p["head"]["kernel"] + p["head"]["bias"]
base = lambda p, x: model.apply({"params": p}, x)
loss = lambda fn: (lambda p: optax.softmax_cross_entropy_with_integer_labels(fn(p, batch["image"]), batch["label"]).mean())
for trick in (False, True):
  fx = lambda p, x: fast(p, x, trick)
  print("trick", trick, "logits diff", float(jnp.max(jnp.abs(base(params, batch["image"]) - fx(params, batch["image"])))))
  g1 = jax.grad(loss(base))(params); g2 = jax.grad(loss(fx))(params)
  print("  grad rel diff", max(float(jnp.max(jnp.abs(a-b))/jnp.max(jnp.abs(a))) for a,b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2))))
def make_step(fn):
  def step(p, o, batch):
    l, g = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(fn(p, batch["image"]), batch["label"]).mean())(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, l
  return jax.jit(step, donate_argnums=(0, 1))
fns = {"base": base, "where": lambda p, x: fast(p, x, False), "trick": lambda p, x: fast(p, x, True)}
res = {w: [] for w in which}; sts = {}
for w in which:
  st = make_step(fns[w]); p, o = jax.tree.map(jnp.array, params), tx.init(params)
  p, o, l = st(p, o, batch); l.block_until_ready(); sts[w] = [st, p, o]
for rep in range(5):
  for w in which:
    st, p, o = sts[w]
    t = time.perf_counter()
    for _ in range(20): p, o, l = st(p, o, batch)
    l.block_until_ready(); res[w].append(20 * B / (time.perf_counter() - t)); sts[w] = [st, p, o]
for w in which:
  print(f"H{H} B{B} {w:6s} median {statistics.median(res[w]):7.0f}  {[round(r) for r in res[w]]}")
