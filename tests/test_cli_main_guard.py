"""Entry points exit promptly with a telling status; user errors print no traceback."""

import os
import subprocess
import sys
import types

import pytest

from t5x_ext.launch import flags as cli
from t5x_ext.training import checkpointing, run_lock


def _status(main_fn):
  codes = []
  cli.main_guard(main_fn, [], exit_fn=codes.append)
  assert len(codes) == 1
  return codes[0]


def _raise(error):
  def main(argv):
    raise error

  return main


@pytest.mark.parametrize(
  "error",
  [
    ValueError("BATCH_SIZE = 0: must be a positive int."),
    FileNotFoundError("No checkpoint at /nowhere"),
    run_lock.RunLockError("MODEL_DIR = '/x' is in use by another run (pid 1)"),
    checkpointing.CheckpointSaveError("Checkpoint of step 4 could not be written"),
  ],
)
def test_user_errors_print_the_message_without_traceback(error, capsys, monkeypatch):
  monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
  assert _status(_raise(error)) == cli.USER_ERROR_EXIT
  err = capsys.readouterr().err
  assert f"error: {error}" in err and "Traceback" not in err


def test_traceback_on_request(capsys, monkeypatch):
  monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
  assert _status(_raise(ValueError("bad"))) == cli.USER_ERROR_EXIT
  assert "Traceback" in capsys.readouterr().err


def test_bugs_keep_their_traceback_and_exit_1(capsys):
  assert _status(_raise(ZeroDivisionError("oops"))) == 1
  assert "Traceback" in capsys.readouterr().err


def test_exit_statuses():
  assert _status(lambda argv: None) == 0
  stopped = types.SimpleNamespace(stopped_by_signal=True)
  assert _status(lambda argv: stopped) == cli.STOPPED_EXIT == 143
  assert _status(_raise(SystemExit(3))) == 3
  assert _status(_raise(SystemExit("usage: ..."))) == cli.USER_ERROR_EXIT
  assert _status(_raise(KeyboardInterrupt())) == 130


def test_typod_macro_from_the_command_line(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != cli.TRACEBACK_ENV}
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "t5x_ext.train",
      "--gin_file=local/ul2_tiny.gin",
      f"--gin.MODEL_DIR='{tmp_path}'",
      "--gin.TRAIN_STEPZ=5",
    ],
    capture_output=True,
    text=True,
    timeout=180,
    env=env,
  )
  assert proc.returncode == cli.USER_ERROR_EXIT, proc.stderr
  assert "error: --gin.TRAIN_STEPZ" in proc.stderr and "Did you mean TRAIN_STEPS?" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "checkpoints").exists()
