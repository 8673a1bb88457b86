"""Learning-rate schedules: T5's inverse square root, cosine, constant, warmup-stable-decay.

Each factory returns an optax schedule, `step -> learning rate`, traceable under jit. `step` is
the optimizer's update count (the `count` optax keeps in its state): it continues when a run
resumes its whole optimizer state, and restarts at 0 when only parameters are restored
(fine-tuning, or continued pretraining from a converted checkpoint).

All arguments are validated when the schedule is made, so a bad gin value fails before any
compilation, with the setting's name in the message.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from t5x_ext.errors import UserError


def _check(name: str, value, *, positive: bool = False) -> None:
  if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
    raise UserError(f"{name} = {value!r}: must be a number.")
  if value < 0 or (positive and value == 0):
    raise UserError(f"{name} = {value!r}: must be {'> 0' if positive else '>= 0'}.")


def _linear_warmup(step, warmup_steps: int, init: float, peak: float):
  if warmup_steps == 0:
    return jnp.asarray(peak, jnp.float32)
  frac = jnp.clip(step / warmup_steps, 0.0, 1.0)
  return init + (peak - init) * frac


def rsqrt_schedule(
  base_learning_rate: float = 1.0, warmup_steps: int = 10_000, linear_warmup_steps: int = 0
):
  """T5's schedule: `base / sqrt(max(step, warmup_steps))`.

  With the T5 defaults (base 1.0, 10k warmup) the rate is 0.01 for the first 10,000 steps,
  then decays as 1/sqrt(step) (Raffel et al. 2020, section 3.1.2). T5's "warmup" is this
  constant plateau; `linear_warmup_steps` optionally ramps up from 0 at the very start too.

  Args:
    base_learning_rate: the numerator.
    warmup_steps: length of the constant plateau (> 0).
    linear_warmup_steps: optional linear ramp from 0 (0 = off, as in T5).

  Returns:
    A schedule `step -> float32 learning rate`.
  """
  _check("base_learning_rate", base_learning_rate, positive=True)
  _check("warmup_steps", warmup_steps, positive=True)
  _check("linear_warmup_steps", linear_warmup_steps)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    lr = base_learning_rate / jnp.sqrt(jnp.maximum(step, warmup_steps))
    if linear_warmup_steps:
      lr = lr * jnp.minimum(1.0, step / linear_warmup_steps)
    return lr

  return schedule


def constant_schedule(learning_rate: float, warmup_steps: int = 0, init_learning_rate: float = 0.0):
  """Linear warmup from `init_learning_rate` to `learning_rate`, then constant.

  Args:
    learning_rate: the plateau value.
    warmup_steps: length of the linear warmup (0 = none).
    init_learning_rate: value at step 0.

  Returns:
    A schedule `step -> float32 learning rate`.
  """
  _check("learning_rate", learning_rate)
  _check("warmup_steps", warmup_steps)
  _check("init_learning_rate", init_learning_rate)

  def schedule(step):
    return _linear_warmup(
      jnp.asarray(step, jnp.float32), warmup_steps, init_learning_rate, learning_rate
    )

  return schedule


def cosine_schedule(
  peak_learning_rate: float,
  total_steps: int,
  warmup_steps: int = 0,
  init_learning_rate: float = 0.0,
  final_learning_rate: float = 0.0,
):
  """Linear warmup to the peak, then a half cosine down to `final_learning_rate` at `total_steps`.

  Args:
    peak_learning_rate: value at the end of warmup.
    total_steps: step at which the cosine reaches its end (warmup included); constant after.
    warmup_steps: length of the linear warmup (< total_steps).
    init_learning_rate: value at step 0.
    final_learning_rate: value at and after `total_steps`.

  Returns:
    A schedule `step -> float32 learning rate`.
  """
  _check("peak_learning_rate", peak_learning_rate)
  _check("total_steps", total_steps, positive=True)
  _check("warmup_steps", warmup_steps)
  _check("final_learning_rate", final_learning_rate)
  if warmup_steps >= total_steps:
    raise UserError(f"warmup_steps = {warmup_steps} must be < total_steps = {total_steps}.")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    frac = jnp.clip((step - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
    cos = final_learning_rate + 0.5 * (peak_learning_rate - final_learning_rate) * (
      1 + jnp.cos(jnp.pi * frac)
    )
    warm = _linear_warmup(step, warmup_steps, init_learning_rate, peak_learning_rate)
    return jnp.where(step < warmup_steps, warm, cos)

  return schedule


_DECAY_SHAPES = ("linear", "cosine", "sqrt")


def warmup_stable_decay_schedule(
  peak_learning_rate: float,
  warmup_steps: int,
  stable_steps: int,
  decay_steps: int,
  start_step: int = 0,
  init_learning_rate: float = 0.0,
  final_learning_rate: float = 0.0,
  decay_shape: str = "linear",
):
  """Warmup-stable-decay (WSD), starting at `start_step`: re-warming for continued pretraining.

  Phases, counted from `start_step` (S0):
    [S0, S0+W)            linear from `init_learning_rate` to the peak (re-warming);
    [S0+W, S0+W+S)        constant peak;
    [S0+W+S, S0+W+S+D)    decay to `final_learning_rate` (`decay_shape`: linear, cosine, or
                          1 - sqrt(progress), as in Hagele et al. 2024);
    after                 `final_learning_rate`.
  Before S0 the value is `init_learning_rate` (only reached if the step counter is earlier).

  Use `start_step = S0` when resuming a run's whole optimizer state at step S0 (its update count
  continues from S0); use 0 when only parameters are restored (the count restarts).

  Args:
    peak_learning_rate: plateau value.
    warmup_steps: W, length of the (re-)warming ramp.
    stable_steps: S, length of the plateau.
    decay_steps: D, length of the decay.
    start_step: S0, step at which warmup begins.
    init_learning_rate: value at S0 (and before).
    final_learning_rate: value at the end of the decay.
    decay_shape: 'linear', 'cosine' or 'sqrt'.

  Returns:
    A schedule `step -> float32 learning rate`.
  """
  for name, value in [
    ("peak_learning_rate", peak_learning_rate),
    ("warmup_steps", warmup_steps),
    ("stable_steps", stable_steps),
    ("decay_steps", decay_steps),
    ("start_step", start_step),
    ("init_learning_rate", init_learning_rate),
    ("final_learning_rate", final_learning_rate),
  ]:
    _check(name, value)
  if decay_shape not in _DECAY_SHAPES:
    raise UserError(f"decay_shape = {decay_shape!r}: must be one of {_DECAY_SHAPES}.")

  def schedule(step):
    t = jnp.asarray(step, jnp.float32) - start_step
    warm = _linear_warmup(t, warmup_steps, init_learning_rate, peak_learning_rate)
    if decay_steps:
      p = jnp.clip((t - warmup_steps - stable_steps) / decay_steps, 0.0, 1.0)
    else:
      p = (t >= warmup_steps + stable_steps).astype(jnp.float32)
    if decay_shape == "linear":
      keep = 1.0 - p
    elif decay_shape == "cosine":
      keep = 0.5 * (1.0 + jnp.cos(jnp.pi * p))
    else:
      keep = 1.0 - jnp.sqrt(p)
    decayed = final_learning_rate + (peak_learning_rate - final_learning_rate) * keep
    lr = jnp.where(t < warmup_steps, warm, decayed)
    return jnp.where(t < 0, jnp.asarray(init_learning_rate, jnp.float32), lr)

  return schedule
