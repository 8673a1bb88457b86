"""Optimizers (Adafactor as in T5, AdamW), global-norm clipping and gradient accumulation.

`make_optimizer` is what gin configures (the run files bind its `name`, `grad_clip` and the
optimizer's own settings; the trainer calls it with the learning-rate schedule); schedules live
in `t5x_ext.training.schedules`. Parameters and optimizer state are float32 (bf16 is for compute only).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from t5x_ext.errors import UserError

LearningRate = float | Callable[[jax.Array], jax.Array]


def adafactor(
  learning_rate: LearningRate,
  *,
  decay_rate: float = 0.8,
  clipping_threshold: float | None = 1.0,
  multiply_by_parameter_scale: bool = True,
  momentum: float | None = None,
  min_dim_size_to_factor: int = 128,
  epsilon: float = 1e-30,
  weight_decay_rate: float | None = None,
) -> optax.GradientTransformation:
  """Adafactor with T5's settings (Shazeer & Stern 2018; Raffel et al. 2020).

  Per parameter, every step (t counting from 0):
    beta2_t = 1 - (t + 1) ** -decay_rate                    # 0 at the first step
    matrices with two dims >= `min_dim_size_to_factor`: row and column means of g^2 + eps,
      v ~ outer(row, col) / mean(row)                       # factored second moment
    other params: v = beta2_t v + (1 - beta2_t)(g^2 + eps)
    u = g / sqrt(v);  u /= max(1, rms(u) / clipping_threshold)      # update clipping
    step = -lr * max(1e-3, rms(param)) * u                  # relative step (parameter scale)
  No first moment (momentum) by default, as in T5.

  Args:
    learning_rate: float or schedule.
    decay_rate: exponent of the second-moment decay schedule (T5: 0.8).
    clipping_threshold: update clipping threshold d (T5: 1.0); None = off.
    multiply_by_parameter_scale: scale steps by the parameter's RMS (T5: True).
    momentum: optional first-moment decay (T5: None).
    min_dim_size_to_factor: only factor matrices whose two largest dims are at least this.
    epsilon: added to g^2 (T5's epsilon1: 1e-30).
    weight_decay_rate: optional decoupled weight decay (T5: None).

  Returns:
    An optax GradientTransformation.
  """
  if not 0 < decay_rate:
    raise UserError(f"decay_rate = {decay_rate!r}: must be > 0 (T5 uses 0.8).")
  if clipping_threshold is not None and clipping_threshold <= 0:
    raise UserError(f"clipping_threshold = {clipping_threshold!r}: must be > 0 or None.")
  tx = optax.adafactor(
    learning_rate=learning_rate,
    min_dim_size_to_factor=min_dim_size_to_factor,
    decay_rate=decay_rate,
    multiply_by_parameter_scale=multiply_by_parameter_scale,
    clipping_threshold=clipping_threshold,
    momentum=momentum,
    weight_decay_rate=weight_decay_rate,
    eps=epsilon,
    factored=True,
  )
  return _factored_as_matrices(tx)


def factoring_shape(path: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The shape Adafactor sees a parameter in: every kernel as one matrix, as in T5X.

  T5X stores an attention kernel as one matrix ([embed, heads * head_dim], or its transpose
  for the output projection), so its Adafactor factors the second moment over those two
  axes. Here the kernels keep their heads axis ([embed, heads, head_dim]); handed to optax
  as they are, the two largest axes would be embed and head_dim, and with head_dim below
  `min_dim_size_to_factor` (64 < 128 in T5.1.1 XL/XXL) the whole second moment would be
  stored (an extra full-size copy of every attention kernel). So the axes of a kernel are
  split into two adjacent groups (the split with the largest smaller side: [embed] and
  [heads, head_dim] for the query, [heads, head_dim] and [embed] for the output), and the
  stacked-layers axis of scanned stacks (a path key 'layers') stays a separate leading axis,
  as in T5X where it is a batch axis of the factoring.

  Args:
    path: the parameter's tree path (jax key path).
    shape: its shape.

  Returns:
    The shape to factor (equal to `shape` for vectors and matrices).
  """
  names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
  lead = 1 if "layers" in names and len(shape) >= 3 else 0
  batch, dims = tuple(shape[:lead]), tuple(shape[lead:])
  if len(dims) <= 2:
    return tuple(shape)
  best = max(
    range(1, len(dims)),
    key=lambda i: (min(math.prod(dims[:i]), math.prod(dims[i:])), -i),
  )
  return batch + (math.prod(dims[:best]), math.prod(dims[best:]))


def _factored_as_matrices(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Runs `inner` on every parameter reshaped by `factoring_shape` (a view: no copy).

  Adafactor's update is elementwise apart from the factored statistics and two RMS values
  taken over the whole parameter, so only the factoring changes.
  """

  def view(tree):
    if tree is None:
      return None
    return jax.tree_util.tree_map_with_path(
      lambda path, x: x.reshape(factoring_shape(path, x.shape)), tree
    )

  def init(params):
    return inner.init(view(params))

  def update(updates, state, params=None):
    new, state = inner.update(view(updates), state, view(params))
    return jax.tree.map(lambda u, g: u.reshape(g.shape), new, updates), state

  return optax.GradientTransformation(init, update)


def _matrices_only(params: Any) -> Any:
  # Norm scales (and any bias) are vectors; decaying them towards 0 hurts, so only
  # parameters with two or more dims are decayed.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def adamw(
  learning_rate: LearningRate,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  decay_vectors: bool = False,
) -> optax.GradientTransformation:
  """AdamW (Loshchilov & Hutter 2019) via optax.

  Args:
    learning_rate: float or schedule.
    b1: first-moment decay.
    b2: second-moment decay.
    eps: denominator epsilon.
    weight_decay: decoupled weight decay (multiplied by the learning rate, as optax does).
    decay_vectors: also decay 0/1-dim parameters (norm scales); default no.

  Returns:
    An optax GradientTransformation.
  """
  if weight_decay < 0:
    raise UserError(f"weight_decay = {weight_decay!r}: must be >= 0.")
  mask = None if decay_vectors else _matrices_only
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)


_OPTIMIZERS = {"adafactor": adafactor, "adamw": adamw}


def make_optimizer(
  name: str = "adafactor",
  learning_rate: LearningRate = 0.01,
  grad_clip: float | None = None,
  **kwargs,
) -> optax.GradientTransformation:
  """The optimizer the trainer uses; the one gin binds.

  Args:
    name: 'adafactor' (T5's settings, see `adafactor`) or 'adamw'.
    learning_rate: float or schedule (see `t5x_ext.training.schedules`).
    grad_clip: clip gradients to this global L2 norm before the optimizer; None = off
      (T5 relies on Adafactor's update clipping alone).
    **kwargs: passed to `adafactor` / `adamw` (e.g. `weight_decay=0.1`).

  Returns:
    An optax GradientTransformation.

  Raises:
    ValueError: on an unknown name or a non-positive `grad_clip`.
  """
  if name not in _OPTIMIZERS:
    raise UserError(f"optimizer name = {name!r}: must be one of {sorted(_OPTIMIZERS)}.")
  tx = _OPTIMIZERS[name](learning_rate, **kwargs)
  if grad_clip is None:
    return tx
  if not grad_clip > 0:
    raise UserError(f"grad_clip = {grad_clip!r}: must be > 0 or None.")
  return optax.chain(optax.clip_by_global_norm(grad_clip), tx)


def learning_rate_at(learning_rate: LearningRate, step) -> jax.Array:
  """The learning rate at `step`, for logging (a float or a schedule).

  Args:
    learning_rate: float or schedule.
    step: the optimizer's update count.

  Returns:
    float32 scalar.
  """
  if callable(learning_rate):
    return jnp.asarray(learning_rate(step), jnp.float32)
  return jnp.asarray(learning_rate, jnp.float32)


# ---------------------------------------------------------------------------------------
# Gradient accumulation
# ---------------------------------------------------------------------------------------

_WEIGHTINGS = ("num_tokens", "sum", "mean")


def accumulation_weighting(loss_normalizing_factor: Any = None) -> str:
  """The `accumulate_gradients` weighting that reproduces a model's full-batch loss.

  Args:
    loss_normalizing_factor: the model's setting (see `t5x_ext.model.losses.normalize`): None or
      'NUM_REAL_TARGET_TOKENS' (mean over target tokens), 'NUM_TOTAL_TARGET_TOKENS' (mean
      over all B*T positions), 'AVERAGE_PER_SEQUENCE', or a positive constant.

  Returns:
    'num_tokens', 'mean' or 'sum'. For 'AVERAGE_PER_SEQUENCE' it is 'mean', which is exact
    only when every microbatch holds the same number of sequences with targets (a warning
    says so).
  """
  if loss_normalizing_factor in (None, "NUM_REAL_TARGET_TOKENS"):
    return "num_tokens"
  if loss_normalizing_factor == "NUM_TOTAL_TARGET_TOKENS":
    return "mean"
  if loss_normalizing_factor == "AVERAGE_PER_SEQUENCE":
    logging.warning(
      "Gradient accumulation with loss_normalizing_factor='AVERAGE_PER_SEQUENCE' averages "
      "microbatch losses: equal to the full batch only if microbatches hold equally many sequences."
    )
    return "mean"
  if isinstance(loss_normalizing_factor, int | float) and not isinstance(
    loss_normalizing_factor, bool
  ):
    return "sum"
  raise UserError(
    f"loss_normalizing_factor = {loss_normalizing_factor!r}: no accumulation weighting for it."
  )


def accumulate_gradients(
  loss_fn: Callable[
    [Any, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]
  ],
  params: Any,
  batch: Mapping[str, jax.Array],
  num_microbatches: int | None,
  rng: jax.Array | None,
  *,
  weighting: str = "num_tokens",
) -> tuple[jax.Array, dict[str, jax.Array], Any]:
  """Loss, aux and gradients of the full batch, computed over microbatches with `lax.scan`.

  The model's loss is a per-batch mean, `loss_sum / num_tokens` (internals.md), so averaging
  microbatch losses would weight a microbatch with few target tokens like one with many.
  Instead each microbatch's loss and gradient are multiplied by its `aux['num_tokens']`,
  summed, and divided once by the total number of tokens: the full-batch loss and gradient,
  up to float rounding. The microbatch gradients are accumulated in float32.

  Microbatch m takes rows m, m+M, m+2M, ... (M = num_microbatches), so each one keeps an
  equal share of every device's batch slice when the batch is sharded over ('data', 'fsdp').

  Args:
    loss_fn: `(params, batch, dropout_rng) -> (loss, aux)` as `Model.loss_fn`. `aux` holds
      scalars (summed over microbatches) and per-example arrays with a leading batch dim
      (e.g. `token_loss` [B, L], put back in batch order).
    params: unboxed params.
    batch: dict of arrays with the global batch on axis 0.
    num_microbatches: None or 1 = one pass over the whole batch.
    rng: dropout rng (or None: deterministic); microbatch m uses `fold_in(rng, m)`.
    weighting: 'num_tokens' (loss is a mean over `aux['num_tokens']`; the default),
      'sum' (the loss is already a sum, or divides by a constant: microbatch losses add up),
      'mean' (plain average of microbatch losses: for per-example-mean losses).

  Returns:
    `(loss, aux, grads)` for the whole batch.

  Raises:
    ValueError: if the batch size does not divide by `num_microbatches`, or an unknown weighting.
  """
  if weighting not in _WEIGHTINGS:
    raise UserError(f"weighting = {weighting!r}: must be one of {_WEIGHTINGS}.")
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if not num_microbatches or num_microbatches == 1:
    (loss, aux), grads = grad_fn(params, batch, rng)
    return loss, dict(aux), grads

  batch_size = jax.tree.leaves(batch)[0].shape[0]
  if num_microbatches < 1 or batch_size % num_microbatches:
    raise UserError(
      f"num_microbatches = {num_microbatches} does not divide the batch size {batch_size}."
    )
  m, mb = num_microbatches, batch_size // num_microbatches

  def split(x):  # [B, ...] -> [M, B/M, ...]; row b goes to microbatch b % M
    return jnp.swapaxes(x.reshape((mb, m) + x.shape[1:]), 0, 1)

  def merge(y):  # inverse of split
    return jnp.swapaxes(y, 0, 1).reshape((batch_size,) + y.shape[2:])

  micro = jax.tree.map(split, batch)

  def weight_of(aux):
    if weighting == "num_tokens":
      return jnp.asarray(aux["num_tokens"], jnp.float32)
    return jnp.float32(1.0)

  def body(carry, xs):
    index, microbatch = xs
    mb_rng = None if rng is None else jax.random.fold_in(rng, index)
    (loss, aux), grads = grad_fn(params, microbatch, mb_rng)
    w = weight_of(aux)
    g_sum, loss_sum, w_sum, scalars = carry
    g_sum = jax.tree.map(lambda a, g: a + w * g.astype(jnp.float32), g_sum, grads)
    scalars = {k: scalars[k] + aux[k] for k in scalars}
    per_example = {k: v for k, v in aux.items() if k not in scalars}
    return (g_sum, loss_sum + w * loss, w_sum + w, scalars), per_example

  # Trace one microbatch to learn which aux entries are scalars (summed) vs per-example.
  aux_shapes = jax.eval_shape(lambda: loss_fn(params, jax.tree.map(lambda x: x[0], micro), rng)[1])
  for k, v in aux_shapes.items():
    if v.ndim and v.shape[0] != mb:
      raise ValueError(
        f"aux[{k!r}] has shape {v.shape}: neither a scalar nor per-example [{mb}, ...]."
      )
  scalars0 = {k: jnp.zeros(v.shape, v.dtype) for k, v in aux_shapes.items() if v.ndim == 0}
  g0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  init = (g0, jnp.float32(0.0), jnp.float32(0.0), scalars0)
  (g_sum, loss_sum, w_sum, scalars), per_example = jax.lax.scan(body, init, (jnp.arange(m), micro))

  if weighting == "num_tokens":
    denom = jnp.maximum(w_sum, 1.0)
  elif weighting == "mean":
    denom = jnp.float32(m)
  else:
    denom = jnp.float32(1.0)
  grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), g_sum, params)
  aux = dict(scalars)
  aux.update({k: merge(v) for k, v in per_example.items()})
  return loss_sum / denom, aux, grads
