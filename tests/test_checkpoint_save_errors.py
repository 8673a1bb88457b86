"""A failed checkpoint save stops training at once, with one message, and leaves the last
complete checkpoint as it was (t5x_ext.training.checkpointing.Checkpointer.check_save_errors)."""

import errno
import logging
import time

import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.path import async_path

from t5x_ext.training import checkpointing


def _state(v):
  return {"params": {"w": jnp.full((4, 4), float(v))}}


@pytest.fixture
def full_disk(monkeypatch):
  """Makes Orbax's commit (the rename of the tmp directory) fail like a full disk."""

  def enable():
    async def fail(src, dst):
      raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(async_path, "rename", fail)

  return enable


def test_failed_async_save_stops_at_the_next_step(tmp_path, full_disk, caplog):
  caplog.set_level(logging.INFO)
  ckpt = checkpointing.Checkpointer(tmp_path, save_interval_steps=2, handle_sigterm=False)
  assert ckpt.should_save(2)
  ckpt.save(2, _state(2), {"batches": 2})
  ckpt.wait()
  full_disk()
  ckpt.save(4, _state(4), {"batches": 4})
  deadline = time.monotonic() + 60
  with pytest.raises(checkpointing.CheckpointSaveError) as info:
    while time.monotonic() < deadline:  # the step after the save notices, once it has failed
      ckpt.should_save(5)
      time.sleep(0.05)
  message = str(info.value)
  # One message: Orbax's own tracebacks of the failure (from its threads) are not logged.
  assert not [r for r in caplog.records if r.name == "absl" and r.levelno >= logging.ERROR]
  assert "step 4" in message and "No space left" in message
  assert "last complete checkpoint is step 2" in message and "removed" in message
  ckpt.close()  # the error was reported once; closing is quiet
  names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  assert names == ["2"], names
  restored = checkpointing.Checkpointer(tmp_path, handle_sigterm=False)
  state, data, step = restored.restore_latest(_state(0))
  restored.close()
  assert step == 2 and data == {"batches": 2}
  np.testing.assert_array_equal(state["params"]["w"], np.full((4, 4), 2.0))


def test_failed_final_save_raises_from_close(tmp_path, full_disk):
  ckpt = checkpointing.Checkpointer(tmp_path, save_interval_steps=1, handle_sigterm=False)
  full_disk()
  ckpt.save(1, _state(1))
  with pytest.raises(checkpointing.CheckpointSaveError, match="no complete checkpoint exists"):
    ckpt.close()
  assert not any((tmp_path / "checkpoints").iterdir())
