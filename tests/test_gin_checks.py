"""A macro set on the command line that nothing reads is an error (t5x_ext.launch.gin_checks)."""

import pytest

from t5x_ext.launch import flags as cli
from t5x_ext.launch import gin_checks


def test_typod_macro_is_rejected_with_the_close_name():
  with pytest.raises(ValueError, match=r"--gin\.TRAIN_STEPZ: .*Did you mean TRAIN_STEPS\?"):
    cli.parse_gin(["local/ul2_tiny.gin"], ["TRAIN_STEPZ = 5"])


def test_main_job_rejects_a_typo_before_building_anything(tmp_path):
  with pytest.raises(ValueError, match="BATCH_SIZ"):
    cli.run(
      lambda: pytest.fail("the run must not start"),
      ["--gin_file=local/ul2_tiny.gin", f"--gin.MODEL_DIR='{tmp_path}'", "--gin.BATCH_SIZ=4"],
    )


def test_read_and_declared_macros_are_accepted():
  # TRAIN_STEPS is read (%TRAIN_STEPS); a macro that a file declares is accepted even when
  # nothing reads it; a new macro that a binding reads is accepted too.
  cli.parse_gin(
    ["local/ul2_tiny.gin"],
    [
      "TRAIN_STEPS = 7",
      "KEEP_CHECKPOINTS = 1",
      "MY_STEPS = 3\ntrain_script.train.log_every = %MY_STEPS",
    ],
  )
  assert cli.macro_value("TRAIN_STEPS") == 7
  assert "MY_STEPS" in gin_checks.read_macros()


def test_macros_in_bindings_ignores_parameter_bindings():
  bindings = ["A = 1", "network.TransformerConfig.dtype = 'float32'", "B=2\nscope/fn.x = 3"]
  assert gin_checks.macros_in_bindings(bindings) == ["A", "B"]
