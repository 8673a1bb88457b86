"""eval (teacher-forced + SeqIO metrics), infer (JSONL) and fine-tuning (params-only restore)
through the real entry points, on a few steps of the tiny model on the embedded topic task."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from t5x_ext import eval as eval_lib
from t5x_ext import infer as infer_lib
from t5x_ext import metrics
from t5x_ext import train as train_lib

TASK = "pydocs_topic_classification_v1"
COMMON = [
  "--gin_file=local/tiny_model.gin",
  f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
  "--gin.TASK_FEATURE_LENGTHS={'inputs': 192, 'targets': 8}",
  "--gin.BATCH_SIZE=4",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("topic")
  result = train_lib.main(
    [
      *COMMON,
      "--gin_file=runs/pretrain.gin",
      f"--gin.MODEL_DIR='{model_dir}'",
      "--gin.TRAIN_STEPS=3",
      "--gin.train_script.train.progress_bar=False",
    ]
  )
  return model_dir, jax.device_get(result.state.params)


def test_eval_writes_teacher_forced_and_seqio_metrics(trained):
  model_dir, _ = trained
  results = eval_lib.main(
    [
      *COMMON,
      "--gin_file=runs/eval.gin",
      f"--gin.MODEL_DIR='{model_dir}'",
      "--gin.eval_script.evaluate.max_batches=2",
      "--gin.eval_script.evaluate.max_predict_examples=8",
    ]
  )
  assert results["step"] == 3
  assert np.isfinite(results["eval/loss"]) and results["eval/loss"] > 0
  assert 0.0 <= results["eval/accuracy"] <= 1.0
  assert 0.0 <= results[f"eval/{TASK}/accuracy"] <= 100.0
  rows = metrics.read_jsonl(model_dir / "metrics" / "eval.jsonl")
  assert rows[-1]["step"] == 3 and rows[-1]["eval/loss"] == pytest.approx(results["eval/loss"])


def test_infer_writes_one_json_line_per_example(trained, tmp_path):
  model_dir, _ = trained
  out = tmp_path / "preds.jsonl"
  path = infer_lib.main(
    [
      *COMMON,
      "--gin_file=runs/infer.gin",
      f"--gin.MODEL_DIR='{model_dir}'",
      f"--gin.OUTPUT_FILE='{out}'",
      "--gin.MAX_EXAMPLES=6",
    ]
  )
  assert path == str(out)
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["index"] for r in records] == list(range(6))
  for r in records:
    assert r["inputs"].startswith("[NLU]")
    assert r["targets"]
    assert isinstance(r["prediction"], str) and 1 <= len(r["prediction_ids"]) <= 8


def test_finetune_starts_from_the_checkpoint_params(trained, tmp_path):
  model_dir, params = trained
  # Learning rate 0: the fine-tuned params must be exactly the restored ones.
  result = train_lib.main(
    [
      "--gin_file=local/finetune_topic_tiny.gin",
      f"--gin.MODEL_DIR='{tmp_path}'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{model_dir}'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 192, 'targets': 8}",
      "--gin.BATCH_SIZE=4",
      "--gin.TRAIN_STEPS=1",
      "--gin.schedules.constant_schedule.learning_rate=0.0",
      "--gin.train_script.train.progress_bar=False",
    ]
  )
  assert int(result.state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(result.state.params), params)
