"""An earlier run's `config.gin`, which names the modules by their old top-level paths,
still parses and resumes the run (the re-export modules t5x_ext.network, models, ...)."""

from __future__ import annotations

import pathlib

from t5x_ext import train as train_lib
from t5x_ext.training import metric_writers as metrics

FLAGS = [
  "--gin_file=gin/local/ul2_tiny.gin",
  "--gin.MIXTURE_OR_TASK_NAME='pydocs_span_corruption_v1'",
  "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
  "--gin.BATCH_SIZE=4",
  "--gin.LOG_EVERY=1",
  "--gin.CHECKPOINT_EVERY=2",
  "--gin.EVAL_PERIOD=0",
  "--gin.train_script.train.samples_per_mode=0",
  "--gin.train_script.train.progress_bar=False",
  "--gin.train_script.train.tensorboard=False",
  "--gin.train_script.train.plan_memory=False",
]
# What every run wrote before the library moved into model/ and training/.
OLD_IMPORTS = [
  "from t5x_ext import models",
  "from t5x_ext import network",
  "from t5x_ext import optimizers",
  "from t5x_ext import schedules",
  "from t5x_ext import train as train_script",
]


def test_an_old_config_gin_resumes_its_run(tmp_path, capsys):
  model_dir = tmp_path / "run"
  train_lib.main([*FLAGS, f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=2"])
  config = (model_dir / "config.gin").read_text()
  for line in OLD_IMPORTS:
    assert line in config, line
  old = tmp_path / "old_config.gin"
  old.write_text(config)
  capsys.readouterr()
  result = train_lib.main([f"--gin_file={old}", "--gin.TRAIN_STEPS=3"])
  assert "Resumed from step 2" in capsys.readouterr().out
  assert int(result.state.step) == 3
  rows = metrics.read_jsonl(pathlib.Path(model_dir) / "metrics" / "train.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 3]
