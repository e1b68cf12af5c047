"""Train state, loss, metrics and the steps. Pure and undecorated: the loop jits them
(with donation); a notebook may call them jitted or not.

Metrics are sums and counts, so that batches of any size add up exactly; `summarize`
divides once per epoch::

    {'loss_sum': <f32>[], 'correct': <i32>[], 'count': <i32>[]}

`eval_step` adds `'confusion': <i32>[C, C]` (rows: true class, columns: predicted).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from rnnjax import config as config_lib
from rnnjax import loop, models

TrainState = train_state.TrainState
Batch = dict[str, jnp.ndarray]
Metrics = dict[str, jnp.ndarray]


def make_schedule(config, steps_per_epoch: int | None = None) -> optax.Schedule:
  """Learning rate as a function of the step: constant; linear warm-up then cosine over
  `config.epochs` epochs of `steps_per_epoch` steps (None: `config.steps_per_epoch`, the
  full training split's); or step: the peak, then `final_lr_fraction` of it from epoch
  `lr_drop_epoch` on."""
  if config.schedule == "constant":
    return optax.constant_schedule(config.learning_rate)
  steps_per_epoch = steps_per_epoch or config.steps_per_epoch
  if config.schedule == "step":
    drop = int(round(config.lr_drop_epoch * steps_per_epoch))
    return optax.piecewise_constant_schedule(config.learning_rate,
                                             {drop: config.final_lr_fraction})
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup,
      decay_steps=max(config.epochs * steps_per_epoch, warmup + 1),
      end_value=config.learning_rate * config.final_lr_fraction)


def make_optimizer(config, steps_per_epoch: int | None = None) -> optax.GradientTransformation:
  """Clipping by global norm (identity when `grad_clip_norm` is 0), then Adam or AdamW,
  with `make_schedule(config, steps_per_epoch)`.

  The optimizer state has the same structure whatever the clipping and schedule values,
  so those may change when a run is resumed.
  """
  clip = (optax.clip_by_global_norm(config.grad_clip_norm) if config.grad_clip_norm > 0
          else optax.identity())
  schedule = make_schedule(config, steps_per_epoch)
  if config.optimizer == "adamw":
    opt = optax.adamw(schedule, weight_decay=config.weight_decay)
  else:
    opt = optax.adam(schedule)
  return optax.chain(clip, opt)


def input_shape(config) -> tuple[int, int, int]:
  """Shape of one model input with batch 1: `[1, time, features]`."""
  return (1, *config_lib.SEQUENCE_SHAPES[config.task])


def create_train_state(config, key: jax.Array,
                       steps_per_epoch: int | None = None) -> TrainState:
  """Initial parameters from `key` (the cell's own initialisation included), and the
  optimizer of `config` over epochs of `steps_per_epoch` steps (None: the full training
  split's, `config.steps_per_epoch`)."""
  model = models.model_from_config(config)
  params = models.init_params(model, key, jnp.zeros(input_shape(config), jnp.float32))
  return TrainState.create(apply_fn=model.apply, params=params,
                           tx=make_optimizer(config, steps_per_epoch))


def dropout_key(config) -> jax.Array:
  """Root key of the dropout masks (`train_step` folds the step in); from `config.seed`,
  apart from the initialisation key `jax.random.key(config.seed)`."""
  return jax.random.fold_in(jax.random.key(config.seed), 1)


# Above this largest logit, optax's `logsumexp(z) - z[label]` loses the loss to rounding
# (at 1e31, float32's spacing is 1e24: equal logits gave a loss of 0, not log C).
HUGE_LOGIT = 1024.0


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Softmax cross-entropy per example: `<f32>[b, C], <i32>[b] -> <f32>[b]`.

  optax's form, bit for bit, where the largest logit is below `HUGE_LOGIT` in magnitude
  (every healthy model: recorded runs stay reproducible); above it, the same loss from the
  logits less their maximum, which stays right for any finite logits. Both forms have the
  same gradient."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  shifted = logits - top
  label = jnp.take_along_axis(shifted, labels[..., None], axis=-1)[..., 0]
  stable = jax.nn.logsumexp(shifted, axis=-1) - label
  return jnp.where(jnp.abs(top[..., 0]) < HUGE_LOGIT, ce, stable)


def compute_metrics(logits: jnp.ndarray, labels: jnp.ndarray,
                    mask: jnp.ndarray | None = None) -> Metrics:
  """Sums and counts over the rows where `mask` is 1 (all rows when None)."""
  if mask is None:
    mask = jnp.ones(labels.shape, jnp.float32)
  correct = (jnp.argmax(logits, -1) == labels) & (mask > 0)
  return {
      "loss_sum": jnp.sum(cross_entropy(logits, labels) * mask),
      "correct": jnp.sum(correct.astype(jnp.int32)),
      "count": jnp.sum((mask > 0).astype(jnp.int32)),
  }


def train_step(state: TrainState, batch: Batch,
               key: jax.Array | None = None) -> tuple[TrainState, Metrics]:
  """One Adam step on the mean loss of `batch`.

  Args:
    state: the train state.
    batch: {'image': <f32>[b, time, features], 'label': <i32>[b]}.
    key: root of the dropout masks (see `dropout_key`; a typed key or its
      `jax.random.key_data`); the step's masks come from
      `fold_in(key, state.step)`, so a resumed run draws the same ones. Needed only when the
      model has dropout.
  Returns:
    The new state, and the batch's metrics (computed with the parameters before the step;
    `grad_norm`: the global norm of the gradient, before any clipping).
  """
  if key is not None and not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)  # raw uint32 key data (how the loop replicates it)
  rngs = {} if key is None else {"dropout": jax.random.fold_in(key, state.step)}

  def loss_fn(params):
    logits = state.apply_fn({"params": params}, batch["image"], train=True, rngs=rngs)
    return cross_entropy(logits, batch["label"]).mean(), logits

  (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {**compute_metrics(logits, batch["label"]), "grad_norm": optax.global_norm(grads)}
  return state.apply_gradients(grads=grads), metrics


def train_steps(state: TrainState, batches: Batch,
                key: jax.Array | None = None) -> tuple[TrainState, Metrics]:
  """`train_step` over a stack of batches, in one function: a `lax.scan` over their
  leading axis.

  Args:
    state: the train state.
    batches: {'image': <f32>[k, b, time, features], 'label': <i32>[k, b]}: k batches.
    key: as in `train_step` (each step folds in its own `state.step`).
  Returns:
    The state after the k steps, and each step's metrics stacked: `<[k]>` per entry.

  The updates are those of k `train_step` calls (identical bits on the CPU, tested); jitted,
  one call allocates the step's buffers once instead of k times, which is why the loop uses
  it (`Config.steps_per_call`).
  """
  return jax.lax.scan(lambda s, batch: train_step(s, batch, key), state, batches)


def confusion_matrix(logits: jnp.ndarray, labels: jnp.ndarray,
                     mask: jnp.ndarray | None = None) -> jnp.ndarray:
  """`<i32>[C, C]`: entry (t, p) counts rows of true class t predicted as p (mask > 0)."""
  num_classes = logits.shape[-1]
  weight = jnp.ones(labels.shape, jnp.int32) if mask is None else (mask > 0).astype(jnp.int32)
  true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * weight[:, None]
  pred = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes, dtype=jnp.int32)
  return true.T @ pred


def eval_step(state: TrainState, batch: Batch) -> Metrics:
  """Metrics and confusion matrix of `batch`; rows with `batch['mask'] == 0` (padding) are
  left out."""
  logits = state.apply_fn({"params": state.params}, batch["image"])
  mask = batch.get("mask")
  return {**compute_metrics(logits, batch["label"], mask),
          "confusion": confusion_matrix(logits, batch["label"], mask)}


def predict_step(state: TrainState, images: jnp.ndarray) -> jnp.ndarray:
  """Class probabilities `<f32>[b, C]` of `images <f32>[b, time, features]`."""
  return jax.nn.softmax(state.apply_fn({"params": state.params}, images))


def accumulate(totals: dict[str, Any] | None, metrics: list[Metrics]) -> dict[str, Any]:
  """Adds per-batch metrics, in order, to running host totals (`loop.accumulate`)."""
  return loop.accumulate(totals, jax.device_get(metrics))


def summarize(metrics: list[Metrics] | Metrics) -> dict[str, Any]:
  """Adds per-batch metrics on the host (float64) and divides once."""
  if isinstance(metrics, dict):
    metrics = [metrics]
  t = accumulate(None, metrics)
  out = loop.epoch_metrics(t)
  if "confusion" in t:
    out["confusion"] = t["confusion"]  # <int64>[C, C] NumPy
  return out
