"""Orbax checkpoints: round trip, retention, crash/corruption recovery, SIGTERM, params only."""

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from t5x_ext.training import checkpointing, optimizers

HERE = os.path.dirname(__file__)
CHILD = os.path.join(HERE, "checkpoint_child.py")


@flax.struct.dataclass
class _State:
  """Shaped like the trainer's TrainState: step, params, optax state."""

  step: jax.Array
  params: dict
  opt_state: optax.OptState


def _params(scale=1.0):
  return {
    "encoder": {"kernel": jnp.arange(130 * 4, dtype=jnp.float32).reshape(130, 4) * scale},
    "scale": jnp.ones((4,), jnp.float32) * scale,
  }


def _state(step, scale=1.0):
  params = _params(scale)
  tx = optimizers.adafactor(0.01, min_dim_size_to_factor=4)
  opt_state = tx.init(params)
  # One real update, so the optimizer state holds non-trivial values to compare.
  grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, params)
  _, opt_state = tx.update(grads, opt_state, params)
  return _State(step=jnp.int32(step), params=params, opt_state=opt_state)


def _abstract(state):
  return jax.eval_shape(lambda: state)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _checkpointer(tmp_path, **kwargs):
  kwargs.setdefault("handle_sigterm", False)
  return checkpointing.Checkpointer(tmp_path, **kwargs)


def test_round_trip_restores_params_optimizer_state_step_and_data_position(tmp_path):
  ckpt = _checkpointer(tmp_path, save_interval_steps=5)
  assert ckpt.restore_latest(_abstract(_state(0))) is None  # fresh run
  state = _state(5, scale=2.0)
  assert ckpt.should_save(5) and not ckpt.should_save(4)
  assert ckpt.save(5, state, {"batches": 5, "shard": [0, 1], "seed": 42})
  ckpt.close()
  assert (tmp_path / "checkpoints" / "5" / "state").is_dir()

  ckpt = _checkpointer(tmp_path)
  restored, data, step = ckpt.restore_latest(_abstract(_state(0)))
  ckpt.close()
  assert step == 5
  assert data == {"batches": 5, "shard": [0, 1], "seed": 42}
  assert isinstance(restored, _State)
  _assert_trees_equal(restored, state)


def test_keeps_the_last_k_on_the_interval(tmp_path):
  ckpt = _checkpointer(tmp_path, save_interval_steps=2, max_to_keep=2)
  saved = [s for s in range(1, 10) if ckpt.maybe_save(s, _state(s), {"batches": s})]
  ckpt.close()
  assert saved == [2, 4, 6, 8]
  assert ckpt.all_steps() == [6, 8]
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["6", "8"]


def test_saving_an_existing_step_again_is_a_no_op(tmp_path):
  ckpt = _checkpointer(tmp_path, save_interval_steps=2)
  assert ckpt.save(2, _state(2))
  assert not ckpt.save(2, _state(2))  # the loop's "last step" save after the interval
  ckpt.close()
  assert ckpt.all_steps() == [2]


def test_non_finite_state_is_never_written(tmp_path):
  ckpt = _checkpointer(tmp_path, save_interval_steps=1)
  bad = _state(3)
  bad = bad.replace(params={**bad.params, "scale": bad.params["scale"].at[1].set(jnp.nan)})
  with pytest.raises(checkpointing.NonFiniteStateError, match="step 3"):
    ckpt.save(3, bad)
  ckpt.close()
  assert ckpt.all_steps() == []
  assert not any("3" in p.name for p in (tmp_path / "checkpoints").iterdir())


def test_check_finite():
  assert checkpointing.check_finite({"a": jnp.ones(3), "i": jnp.int32(7)})
  assert not checkpointing.check_finite({"a": jnp.array([1.0, jnp.inf])})
  assert not checkpointing.check_finite([jnp.ones(2, jnp.bfloat16), jnp.array(jnp.nan)])
  assert checkpointing.check_finite({"i": jnp.arange(3)})


def test_incomplete_checkpoint_is_skipped_with_a_warning(tmp_path, caplog):
  ckpt = _checkpointer(tmp_path, save_interval_steps=1)
  ckpt.save(4, _state(4), {"batches": 4})
  ckpt.close()
  # What a crash in the middle of an async save leaves behind.
  partial = tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1795820000"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "junk").write_text("half written")
  with caplog.at_level(logging.WARNING, logger="t5x_ext.training.checkpointing"):
    ckpt = _checkpointer(tmp_path, save_interval_steps=1)
  assert "Skipping incomplete checkpoint" in caplog.text and "6.orbax-checkpoint-tmp" in caplog.text
  _, data, step = ckpt.restore_latest(_abstract(_state(0)))
  assert (step, data) == (4, {"batches": 4})
  # The run continues and can save step 6 for real.
  assert ckpt.save(6, _state(6), {"batches": 6})
  ckpt.close()
  assert ckpt.all_steps() == [4, 6]


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
  ckpt = _checkpointer(tmp_path, save_interval_steps=1, max_to_keep=3)
  for s in (1, 2):
    ckpt.save(s, _state(s, scale=float(s)), {"batches": s})
  ckpt.close()
  # Lose the array data of step 2 after it was committed (e.g. a disk problem).
  state_dir = tmp_path / "checkpoints" / "2" / "state"
  for child in state_dir.iterdir():
    if child.is_dir():
      shutil.rmtree(child)
  (state_dir / "manifest.ocdbt").unlink()

  ckpt = _checkpointer(tmp_path, save_interval_steps=1, max_to_keep=3)
  with caplog.at_level(logging.WARNING, logger="t5x_ext.training.checkpointing"):
    restored, data, step = ckpt.restore_latest(_abstract(_state(0)))
  assert (step, data) == (1, {"batches": 1})
  _assert_trees_equal(restored, _state(1, scale=1.0))
  assert "step 2" in caplog.text and "corrupt" in caplog.text
  assert (tmp_path / "checkpoints.corrupt" / "2").is_dir()
  # Step 2 can be written again by the resumed run.
  assert ckpt.save(2, _state(2, scale=2.0), {"batches": 2})
  ckpt.close()
  assert ckpt.all_steps() == [1, 2]


def test_a_target_that_matches_no_checkpoint_raises_and_moves_nothing(tmp_path):
  ckpt = _checkpointer(tmp_path, save_interval_steps=1)
  ckpt.save(1, _state(1))
  ckpt.save(2, _state(2))
  ckpt.wait()
  wrong = _State(step=jnp.int32(0), params={"other": jnp.zeros((3, 3))}, opt_state=())
  with pytest.raises(RuntimeError, match="restores into the given state"):
    ckpt.restore_latest(_abstract(wrong))
  ckpt.close()
  assert ckpt.all_steps() == [1, 2]
  assert not (tmp_path / "checkpoints.corrupt").exists()


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(save_interval_steps=0), "save_interval_steps = 0"),
    (dict(max_to_keep=0), "max_to_keep = 0"),
  ],
)
def test_bad_settings_fail_early(tmp_path, kwargs, match):
  with pytest.raises(ValueError, match=match):
    checkpointing.Checkpointer(tmp_path, **kwargs)


def _child_env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.path.dirname(HERE))


def test_sigterm_saves_then_stops(tmp_path):
  stderr_path = tmp_path / "stderr.txt"
  with open(stderr_path, "w") as stderr:  # a file: a full stderr pipe could block the child
    proc = subprocess.Popen(
      [sys.executable, CHILD, "sigterm", str(tmp_path / "run")],
      stdout=subprocess.PIPE,
      stderr=stderr,
      text=True,
      env=_child_env(),
    )
    watchdog = threading.Timer(300, proc.kill)  # never hang the suite on a stuck child
    watchdog.start()
    try:
      for line in proc.stdout:
        if line.startswith("step 5"):
          proc.send_signal(signal.SIGTERM)
          break
      out, _ = proc.communicate(timeout=120)
    finally:
      watchdog.cancel()
      if proc.poll() is None:
        proc.kill()
  assert proc.returncode == 0, stderr_path.read_text()[-3000:]
  stopped = int(out.split("stopped at ")[1].split()[0])
  assert stopped >= 5
  ckpt = _checkpointer(tmp_path / "run")
  restored, data, step = ckpt.restore_latest(
    {"params": {"w": jnp.zeros((64, 64))}, "step": jnp.int32(0)}
  )
  ckpt.close()
  assert step == stopped and data == {"batches": stopped}
  assert int(restored["step"]) == stopped


def test_signal_handler_is_restored_on_close(tmp_path):
  before = signal.getsignal(signal.SIGTERM)
  ckpt = checkpointing.Checkpointer(tmp_path)
  assert signal.getsignal(signal.SIGTERM) is not before
  ckpt.request_stop()
  assert ckpt.should_save(7)  # off the interval, but a stop was requested
  ckpt.save(7, _state(7))
  assert ckpt.stop_requested and ckpt.all_steps() == [7]
  ckpt.close()
  assert signal.getsignal(signal.SIGTERM) is before


def test_process_killed_during_an_async_save_restarts_from_the_last_complete_one(tmp_path, caplog):
  start = time.time()
  proc = subprocess.run(
    [sys.executable, CHILD, "kill", str(tmp_path)],
    capture_output=True,
    text=True,
    env=_child_env(),
    timeout=300,
  )
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert "saving step 2" in proc.stdout
  leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
  assert "1" in leftovers and "2" not in leftovers, leftovers
  with caplog.at_level(logging.WARNING, logger="t5x_ext.training.checkpointing"):
    ckpt = _checkpointer(tmp_path)
  assert any(".orbax-checkpoint-tmp" in name for name in leftovers) == (
    "Skipping incomplete checkpoint" in caplog.text
  )
  restored, data, step = ckpt.restore_latest(
    {"params": {"w": jnp.zeros((64, 64))}, "step": jnp.int32(0)}
  )
  ckpt.close()
  assert (step, data) == (1, {"batches": 1})
  np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), 1.0)
  assert time.time() - start < 120


# ------------------------------------------------------------------ params only


def test_params_only_restore_from_a_run_a_step_and_a_converted_checkpoint(tmp_path, monkeypatch):
  ckpt = _checkpointer(tmp_path / "run", save_interval_steps=1)
  ckpt.save(3, _state(3, scale=3.0))
  ckpt.save(8, _state(8, scale=8.0))
  ckpt.close()
  target = _abstract(_params())
  for path, scale in [
    (tmp_path / "run", 8.0),
    (tmp_path / "run" / "checkpoints", 8.0),
    (tmp_path / "run" / "checkpoints" / "3", 3.0),
  ]:
    _assert_trees_equal(checkpointing.restore_params(path, target), _params(scale))

  # Converted Transformers weights: `ocp.StandardCheckpointer().save(OUT / 'params', ...)`,
  # with or without the {'params': ...} wrapper, possibly in another dtype.
  with ocp.StandardCheckpointer() as writer:
    writer.save(tmp_path / "hf" / "params", {"params": _params(5.0)})
    writer.save(
      tmp_path / "hf2" / "params", jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params(0.5))
    )
  _assert_trees_equal(
    checkpointing.restore_params(tmp_path / "hf" / "params", target), _params(5.0)
  )
  # The converter's OUT directory itself (it writes OUT/params).
  _assert_trees_equal(checkpointing.restore_params(tmp_path / "hf", target), _params(5.0))
  restored = checkpointing.restore_params(tmp_path / "hf2" / "params", target)
  assert restored["scale"].dtype == jnp.float32
  # A path relative to the working directory works too (Orbax alone loses its metadata).
  monkeypatch.chdir(tmp_path)
  _assert_trees_equal(checkpointing.restore_params("hf", target), _params(5.0))
  np.testing.assert_allclose(restored["scale"], 0.5)


def test_params_only_restore_names_mismatches(tmp_path):
  with ocp.StandardCheckpointer() as writer:
    writer.save(tmp_path / "params", _params())
  wrong_shape = {**_params(), "scale": jnp.ones((5,))}
  with pytest.raises(ValueError, match=r"shapes .* differ: .*scale.*\(4,\), \(5,\)"):
    checkpointing.restore_params(tmp_path / "params", _abstract(wrong_shape))
  missing = {**_params(), "decoder": {"kernel": jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match=r"missing \[.*decoder.*kernel"):
    checkpointing.restore_params(tmp_path / "params", _abstract(missing))
  with pytest.raises(FileNotFoundError, match="No checkpoint at"):
    checkpointing.restore_params(tmp_path / "nowhere", _abstract(_params()))


def test_async_save_is_safe_when_the_state_is_donated_right_after(tmp_path):
  # The train loop donates the state to the next step right after `save` returns: the
  # checkpoint must hold the values at save time, not whatever reuses the buffers.
  ckpt = _checkpointer(tmp_path, save_interval_steps=1)
  state = {"params": {"w": jnp.arange(512 * 512, dtype=jnp.float32).reshape(512, 512)}}
  expected = np.asarray(state["params"]["w"]).copy()
  ckpt.save(1, state, {"batches": 1})
  step = jax.jit(lambda s: jax.tree.map(lambda x: x * 0 - 1, s), donate_argnums=0)
  for _ in range(3):
    state = step(state)
  ckpt.close()
  ckpt = _checkpointer(tmp_path)
  restored, _, _ = ckpt.restore_latest(
    {"params": {"w": jax.ShapeDtypeStruct((512, 512), jnp.float32)}}
  )
  ckpt.close()
  np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), expected)


def test_data_position_with_numpy_values_is_stored_as_json_and_bad_values_fail_early(tmp_path):
  ckpt = _checkpointer(tmp_path, save_interval_steps=1)
  ckpt.save(1, _state(1), {"batches": np.int64(7), "rng": np.array([1, 2], np.uint32)})
  with pytest.raises(TypeError, match="data_state holds .* not JSON-able"):
    ckpt.save(2, _state(2), {"iterator": object()})
  ckpt.close()
  assert ckpt.all_steps() == [1]
  ckpt = _checkpointer(tmp_path)
  _, data, _ = ckpt.restore_latest(_abstract(_state(0)))
  ckpt.close()
  assert data == {"batches": 7, "rng": [1, 2]}


def test_keep_period_keeps_multiples_besides_the_last_k(tmp_path):
  with _checkpointer(tmp_path, save_interval_steps=1, max_to_keep=1, keep_period=4) as ckpt:
    for s in range(1, 10):
      ckpt.save(s, {"w": jnp.full((2,), float(s))})
  ckpt.close()  # closing again (e.g. in a `finally`) is harmless
  assert ckpt.all_steps() == [4, 8, 9]
