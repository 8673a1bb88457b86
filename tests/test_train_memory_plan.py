"""train() plans the train step's memory before the first step (`t5x_ext.training.memory_plan`).

A run whose `device_memory` is too small stops before any step or checkpoint, with a message
naming the setting and the numbers. That a normal run prints the plan, and then runs the very
executable the plan compiled, is checked in test_train_main_job.py.
"""

from __future__ import annotations

import re

import pytest

import tasks  # noqa: F401 - registered before conftest snapshots the registries
from t5x_ext import train as train_lib
from t5x_ext.training import fit as fit_lib
from t5x_ext.training import memory_plan
from t5x_ext.training.trainer import Trainer

FLAGS = [
  "--gin_file=local/tiny_model.gin",
  "--gin_file=runs/pretrain.gin",
  "--gin.MIXTURE_OR_TASK_NAME='pydocs_topic_classification_v1'",
  "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
  "--gin.BATCH_SIZE=2",
  "--gin.TRAIN_STEPS=2",
  "--gin.EVAL_PERIOD=0",
  "--gin.train_script.train.progress_bar=False",
]


def test_device_memory_too_small_fails_before_any_step_or_checkpoint(tmp_path, monkeypatch):
  def no_step(*args, **kwargs):
    raise AssertionError("a train step ran although the plan does not fit")

  monkeypatch.setattr(Trainer, "train_step", no_step)
  with pytest.raises(memory_plan.PlanTooLargeError) as info:
    train_lib.main(
      [*FLAGS, f"--gin.MODEL_DIR='{tmp_path}'", "--gin.train_script.train.device_memory='1MiB'"]
    )
  message = str(info.value)
  # The setting and its value, the plan's total and the memory in bytes, what to change.
  assert "(device_memory = '1MiB')" in message
  assert "more than the 1.00 MiB (1048576 bytes) of device memory" in message
  assert re.search(r"needs [0-9.]+ MiB per device \([0-9]+ bytes: parameters ", message)
  # 1 MiB is less than the parameters alone: the remedy is sharding, not a smaller batch.
  assert "Parameters and optimizer state alone do not fit" in message and "MESH_SHAPE" in message
  assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
  assert not (tmp_path / "metrics" / "train.jsonl").exists()


def test_device_memory_setting_is_checked_before_compiling(tmp_path, monkeypatch):
  def forbidden(*args, **kwargs):
    raise AssertionError("the setting should have failed before the Trainer was built")

  monkeypatch.setattr(fit_lib, "Trainer", forbidden)
  with pytest.raises(ValueError, match=r"device_memory = 'lots': expected bytes or a size"):
    train_lib.main(
      [*FLAGS, f"--gin.MODEL_DIR='{tmp_path}'", "--gin.train_script.train.device_memory='lots'"]
    )
