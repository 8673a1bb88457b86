"""Resuming through the real entry point continues exactly, and a crash during an async
checkpoint save restarts from the last complete checkpoint."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from t5x_ext import train as train_lib
from t5x_ext.training import metric_writers as metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
# The main job's file with a small task and short sequences, so that each run takes seconds.
FLAGS = [
  "--gin_file=gin/local/ul2_tiny.gin",
  "--gin.MIXTURE_OR_TASK_NAME='pydocs_span_corruption_v1'",
  "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
  "--gin.BATCH_SIZE=4",
  "--gin.LOG_EVERY=1",
  "--gin.CHECKPOINT_EVERY=5",
  "--gin.EVAL_PERIOD=0",  # no evaluation: it is not what these tests check, and costs seconds
  "--gin.train_script.train.samples_per_mode=0",
  "--gin.train_script.train.progress_bar=False",
  "--gin.train_script.train.tensorboard=False",
]


def _losses(model_dir) -> dict[int, float]:
  rows = metrics.read_jsonl(pathlib.Path(model_dir) / "metrics" / "train.jsonl")
  return {r["step"]: r["loss"] for r in rows}


def _train(model_dir, steps):
  return train_lib.main([*FLAGS, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}"])


def test_stop_and_resume_and_a_kill_during_a_save_give_the_same_losses(tmp_path, capsys):
  # One test, so that the straight 10-step reference is trained once (as a module fixture,
  # the two xdist workers could each train it).
  _train(tmp_path / "straight", 10)
  straight = _losses(tmp_path / "straight")
  _check_stop_and_resume(tmp_path / "stopped", straight, capsys)
  _check_killed_during_async_save(tmp_path / "killed", straight)


def _check_stop_and_resume(tmp_path, straight, capsys):
  """Stopping after 5 steps and resuming to 10 gives the straight run's losses."""
  first = _train(tmp_path, 5)
  assert int(first.state.step) == 5
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["5"]
  second = _train(tmp_path, 10)
  assert "Resumed from step 5" in capsys.readouterr().out
  assert int(second.state.step) == 10
  resumed = _losses(tmp_path)
  assert sorted(resumed) == list(range(1, 11))  # one line per step, none duplicated
  for step in range(6, 11):
    assert resumed[step] == pytest.approx(straight[step], abs=1e-6), step
  assert straight[10] < straight[1]


def _check_killed_during_async_save(tmp_path, straight):
  """A crash during step 10's async save restarts from step 5, the last complete one."""
  cmd = [
    sys.executable,
    "-m",
    "tests._kill_during_save",
    "10",
    "--",
    *FLAGS,
    f"--gin.MODEL_DIR='{tmp_path}'",
    "--gin.TRAIN_STEPS=12",
  ]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert "KILLING during the async save of step 10" in proc.stdout, proc.stderr[-3000:]
  assert proc.returncode == -9
  ckpt_dir = tmp_path / "checkpoints"
  complete = sorted(p.name for p in ckpt_dir.iterdir() if p.name.isdigit())
  assert complete == ["5"], sorted(os.listdir(ckpt_dir))  # step 10 never committed
  result = _train(tmp_path, 10)
  assert int(result.state.step) == 10
  losses = _losses(tmp_path)
  for step in range(6, 11):
    assert losses[step] == pytest.approx(straight[step], abs=1e-6), step
  assert sorted(p.name for p in ckpt_dir.iterdir() if p.name.isdigit()) == ["10", "5"]
