"""One writer per MODEL_DIR: t5x_ext.training.run_lock."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from t5x_ext.training import run_lock

_HOLDER = textwrap.dedent(
  """
  import sys, time
  from t5x_ext.training import run_lock
  run_lock.RunLock(sys.argv[1]).acquire()
  print("locked", flush=True)
  time.sleep(120)
  """
)


def _start_holder(model_dir):
  proc = subprocess.Popen(
    [sys.executable, "-c", _HOLDER, str(model_dir)], stdout=subprocess.PIPE, text=True
  )
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_second_writer_fails_naming_the_holder(tmp_path):
  proc = _start_holder(tmp_path)
  try:
    with pytest.raises(run_lock.RunLockError, match=rf"in use by another run \(pid {proc.pid} "):
      run_lock.RunLock(tmp_path).acquire()
  finally:
    proc.kill()
    proc.wait(timeout=30)


def test_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
  proc = _start_holder(tmp_path)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait(timeout=30)
  lock = run_lock.RunLock(tmp_path)
  with caplog.at_level("WARNING"), lock:
    assert lock.took_over is not None and lock.took_over["pid"] == proc.pid
    assert f"pid {proc.pid}" in caplog.text and "no longer running" in caplog.text
    with pytest.raises(run_lock.RunLockError, match=f"pid {os.getpid()}"):
      run_lock.RunLock(tmp_path).acquire()  # a second lock in the same process is refused too


def test_release_lets_the_next_run_in_without_a_takeover_message(tmp_path):
  with run_lock.RunLock(tmp_path / "new_dir") as first:
    assert first.took_over is None
  second = run_lock.RunLock(tmp_path / "new_dir").acquire()
  try:
    assert second.took_over is None
  finally:
    second.release()
  second.release()  # idempotent


# Object stores (a lease instead of an flock): tests/test_gcs_model_dir.py, on an emulator.
