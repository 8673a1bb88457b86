"""Learning-rate schedules: values at the phase boundaries, and early errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gin
from t5x_ext.training import optimizers, schedules


def _values(schedule, steps):
  return [float(schedule(s)) for s in steps]


def test_rsqrt_is_t5s_plateau_then_inverse_square_root():
  s = schedules.rsqrt_schedule()  # T5: base 1.0, 10k warmup
  np.testing.assert_allclose(
    _values(s, [0, 1, 10_000, 40_000, 1_000_000]), [0.01, 0.01, 0.01, 0.005, 0.001], rtol=1e-6
  )
  ramp = schedules.rsqrt_schedule(1.0, 100, linear_warmup_steps=10)
  np.testing.assert_allclose(_values(ramp, [0, 5, 10, 400]), [0.0, 0.05, 0.1, 0.05], rtol=1e-6)


def test_constant_with_warmup():
  s = schedules.constant_schedule(1e-3, warmup_steps=100)
  np.testing.assert_allclose(_values(s, [0, 50, 100, 10**6]), [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6)
  np.testing.assert_allclose(
    _values(schedules.constant_schedule(0.1), [0, 7]), [0.1, 0.1], rtol=1e-6
  )


def test_cosine_with_warmup():
  s = schedules.cosine_schedule(1.0, total_steps=110, warmup_steps=10, final_learning_rate=0.1)
  np.testing.assert_allclose(
    _values(s, [0, 5, 10, 60, 110, 500]), [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], rtol=1e-5, atol=1e-7
  )


@pytest.mark.parametrize(
  "shape, mid",  # value halfway through the decay, from peak 1.0 to final 0.0
  [("linear", 0.5), ("cosine", 0.5), ("sqrt", 1 - np.sqrt(0.5))],
)
def test_warmup_stable_decay_rewarms_from_the_start_step(shape, mid):
  s = schedules.warmup_stable_decay_schedule(
    1.0,
    warmup_steps=10,
    stable_steps=20,
    decay_steps=10,
    start_step=1000,
    init_learning_rate=0.0,
    decay_shape=shape,
  )
  steps = [0, 999, 1000, 1005, 1010, 1029, 1030, 1035, 1040, 5000]
  expected = [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, mid, 0.0, 0.0]
  np.testing.assert_allclose(_values(s, steps), expected, rtol=1e-5, atol=1e-7)
  quarter = float(s(1032.5))
  assert {"linear": 0.75, "cosine": 0.5 * (1 + np.cos(np.pi / 4)), "sqrt": 0.5}[
    shape
  ] == pytest.approx(quarter, rel=1e-5)


def test_wsd_without_decay_drops_to_the_final_value():
  s = schedules.warmup_stable_decay_schedule(2.0, 0, 5, 0, final_learning_rate=0.5)
  np.testing.assert_allclose(_values(s, [0, 4, 5, 9]), [2.0, 2.0, 0.5, 0.5], rtol=1e-6)


def test_schedules_trace_under_jit():
  s = schedules.warmup_stable_decay_schedule(1.0, 10, 10, 10, decay_shape="cosine")
  np.testing.assert_allclose(jax.jit(s)(15), 1.0)
  np.testing.assert_allclose(jax.jit(schedules.rsqrt_schedule())(40_000), 0.005, rtol=1e-6)


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda: schedules.rsqrt_schedule(warmup_steps=0), "warmup_steps = 0"),
    (lambda: schedules.rsqrt_schedule(base_learning_rate=-1.0), "base_learning_rate = -1.0"),
    (
      lambda: schedules.cosine_schedule(1.0, total_steps=10, warmup_steps=10),
      "warmup_steps = 10 must be < total_steps = 10",
    ),
    (lambda: schedules.constant_schedule("1e-3"), "learning_rate = '1e-3'"),
    (
      lambda: schedules.warmup_stable_decay_schedule(1.0, 1, 1, 1, decay_shape="exp"),
      "decay_shape = 'exp'",
    ),
    (lambda: schedules.warmup_stable_decay_schedule(1.0, 1, -1, 1), "stable_steps = -1"),
  ],
)
def test_bad_settings_fail_when_the_schedule_is_made(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_gin_binds_the_optimizer_factory_and_schedules():
  # Gin files bind these through dynamic registration; make_optimizer forwards extra
  # bindings (weight_decay, b2) to the chosen optimizer.
  gin.parse_config(
    """
    from __gin__ import dynamic_registration
    from t5x_ext.training import optimizers
    from t5x_ext.training import schedules

    LEARNING_RATE = @schedules.warmup_stable_decay_schedule()
    schedules.warmup_stable_decay_schedule:
      peak_learning_rate = 1e-3
      warmup_steps = 10
      stable_steps = 100
      decay_steps = 10
      start_step = 50
    optimizers.make_optimizer:
      name = 'adamw'
      learning_rate = %LEARNING_RATE
      grad_clip = 1.0
      weight_decay = 0.1
      b2 = 0.95
    """
  )
  tx = gin.get_configurable(optimizers.make_optimizer)()
  params = {"w": jnp.ones((2, 2))}
  state = tx.init(params)
  updates, _ = tx.update({"w": jnp.zeros((2, 2))}, state, params)
  # Step 0 is before start_step 50: learning rate 0, so not even weight decay moves w.
  np.testing.assert_allclose(updates["w"], 0.0)
  lr = gin.get_configurable(schedules.warmup_stable_decay_schedule)()
  np.testing.assert_allclose(_values(lr, [50, 55, 60, 165]), [0.0, 5e-4, 1e-3, 5e-4], rtol=1e-5)
