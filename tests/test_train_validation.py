"""Bad settings fail before anything is built or compiled, naming the setting and value."""

from __future__ import annotations

import pytest

from t5x_ext import train as train_lib
from t5x_ext.training import fit as fit_lib

TINY = "--gin_file=gin/local/ul2_tiny.gin"


@pytest.fixture(autouse=True)
def _no_compiling(monkeypatch):
  """Any path that gets as far as building the Trainer fails the test."""

  def forbidden(*args, **kwargs):
    raise AssertionError("validation should have failed before the Trainer was built")

  monkeypatch.setattr(fit_lib, "Trainer", forbidden)


def _run(tmp_path, *bindings):
  return train_lib.main([TINY, f"--gin.MODEL_DIR='{tmp_path}'", *bindings])


def test_unknown_task_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"MIXTURE_OR_TASK_NAME = 'pydocs_no_such_task_v1'"):
    _run(tmp_path, "--gin.MIXTURE_OR_TASK_NAME='pydocs_no_such_task_v1'")


def test_missing_required_macro_is_named():
  with pytest.raises(ValueError, match=r"Required gin macro MODEL_DIR is not set"):
    train_lib.main([TINY])


def test_missing_macro_without_a_run_file_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"TRAIN_STEPS"):
    train_lib.main(
      [
        "--gin_file=models/t5_1_1/tiny.gin",
        "--gin_file=runs/pretrain.gin",
        f"--gin.MODEL_DIR='{tmp_path}'",
        "--gin.MIXTURE_OR_TASK_NAME='pydocs_ul2_mod_v1'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 128}",
      ]
    )


def test_mesh_that_does_not_divide_the_devices(tmp_path):
  # One CPU device here: a mesh of 2 x 1 cannot be built.
  with pytest.raises(ValueError, match=r"MESH_SHAPE = \{'data': 2\}.*1"):
    _run(tmp_path, "--gin.MESH_SHAPE={'data': 2}")


def test_unknown_mesh_axis_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"MESH_SHAPE has unknown axis 'tensor'"):
    _run(tmp_path, "--gin.MESH_SHAPE={'tensor': 1}")


def test_feature_lengths_too_short_for_a_denoiser(tmp_path):
  with pytest.raises(ValueError, match=r"TASK_FEATURE_LENGTHS = .*'inputs': 128.*X_mu64"):
    _run(tmp_path, "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 64}")


def test_bad_train_steps_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"TRAIN_STEPS = 0"):
    _run(tmp_path, "--gin.TRAIN_STEPS=0")


def test_unknown_gin_file_is_named():
  with pytest.raises(FileNotFoundError, match="no_such.gin"):
    train_lib.main(["--gin_file=no_such.gin"])
