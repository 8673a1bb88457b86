"""Entry points exit promptly with a telling status; user errors print no traceback."""

import os
import subprocess
import sys
import types

import pytest

from t5x_ext import errors
from t5x_ext.launch import flags as cli
from t5x_ext.training import checkpointing, memory_plan, run_lock
from t5x_ext.training.trainer import NonFiniteLossError


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
    errors.UserError("BATCH_SIZE = 0: must be a positive int."),
    memory_plan.PlanTooLargeError("The train step needs 9 GiB per device; BATCH_SIZE ..."),
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
  assert _status(_raise(errors.UserError("bad"))) == cli.USER_ERROR_EXIT
  assert "Traceback" in capsys.readouterr().err


def test_a_plain_value_error_from_inside_is_a_bug(capsys, monkeypatch):
  monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)

  def main(argv):
    return int("not a number")  # an internal ValueError, not a setting

  assert _status(main) == 1
  err = capsys.readouterr().err
  assert "Traceback" in err and "ValueError: invalid literal" in err and "error: " not in err


@pytest.mark.parametrize(
  "error",
  [
    NonFiniteLossError("Training stopped: the loss became nan at step 7. Nothing was saved."),
    checkpointing.NonFiniteStateError("Refusing to checkpoint step 7: the state holds NaN."),
  ],
)
def test_divergence_has_its_own_status_and_one_line(error, capsys, monkeypatch):
  monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
  assert _status(_raise(error)) == cli.DIVERGED_EXIT == 3
  err = capsys.readouterr().err
  assert err.splitlines()[0] == f"error: {error}" and "step 7" in err and "Traceback" not in err


def test_the_message_alone_without_gin_and_tf_context(capsys, monkeypatch):
  # gin appends the configurable it called; a TF error the node it ran in.
  import gin

  monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)

  @gin.configurable("guard_test_fn")
  def fn():
    raise errors.UserError("bad input data: /c.jsonl:3: invalid JSON\n\t [[{{node EagerPyFunc}}]]")

  assert _status(lambda argv: gin.get_configurable("guard_test_fn")()) == cli.USER_ERROR_EXIT
  err = capsys.readouterr().err.splitlines()
  assert err[0] == "error: bad input data: /c.jsonl:3: invalid JSON"
  assert not any("In call to configurable" in line or "node" in line for line in err)


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


def test_an_old_macro_name_still_works_with_one_line(capsys):
  # EVAL_SUITE_PARTS was renamed EVAL_PARTS (the ablation runner's name): both set it.
  import gin

  try:
    for binding in ("EVAL_SUITE_PARTS = ('probes',)", "EVAL_PARTS = ('probes',)"):
      gin.clear_config()
      cli.parse_gin(["runs/eval_suite.gin"], [binding])
      assert cli.macro_value("EVAL_PARTS") == ("probes",)
      assert str(cli.macro_value("EVAL_SUITE_PARTS")) == "%EVAL_PARTS"
      warnings = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
      old = binding.startswith("EVAL_SUITE_PARTS")
      assert warnings == (
        ["warning: EVAL_SUITE_PARTS is deprecated; use EVAL_PARTS (set it instead)."] if old else []
      )
  finally:
    gin.clear_config()
