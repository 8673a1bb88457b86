"""eval (teacher-forced + SeqIO metrics), infer (JSONL) and fine-tuning (params-only restore)
through the real entry points, on a few steps of the tiny model on the embedded topic task.

Eval's numbers are recomputed here from `model.loss_fn` on the same batches, and its and
infer's predictions from a hand-run greedy decode (a full forward pass per token, no cache).
"""

from __future__ import annotations

import copy
import json

import jax
import numpy as np
import pytest
import seqio

import gin
from t5x_ext import eval as eval_lib
from t5x_ext import infer as infer_lib
from t5x_ext import train as train_lib
from t5x_ext.data import pipeline
from t5x_ext.data import providers as run_data
from t5x_ext.training import metric_writers as metrics

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
  model = copy.deepcopy(gin.query_parameter("MODEL/macro.value"))
  return model_dir, jax.device_get(result.state.params), model


LENGTHS = {"inputs": 192, "targets": 8}


def _greedy_by_hand(model, params, encoder_tokens, decode_len=8):
  """Greedy decode of one example: argmax of a full teacher-forced pass per token."""
  logits_fn = jax.jit(model.logits)
  seq = [0]
  while len(seq) <= decode_len:
    dec = np.zeros((1, decode_len), np.int32)
    dec[0, : len(seq)] = seq
    nxt = int(np.argmax(np.asarray(logits_fn(params, encoder_tokens[None], dec))[0, len(seq) - 1]))
    seq.append(nxt)
    if nxt == 1:
      break
  return seq[1:]


def test_eval_writes_teacher_forced_and_seqio_metrics(trained):
  model_dir, params, model = trained
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
  rows = metrics.read_jsonl(model_dir / "metrics" / "eval.jsonl")
  assert rows[-1]["step"] == 3 and rows[-1]["eval/loss"] == pytest.approx(results["eval/loss"])

  # Teacher-forced: the same two batches through model.loss_fn, summed per token.
  batches = pipeline.get_batches(
    TASK,
    LENGTHS,
    split="validation",
    batch_size=4,
    feature_converter_name=model.feature_converter_name,
    pack=False,
    shuffle=False,
    seed=0,
    repeat=False,
  )
  sums = {"loss_sum": 0.0, "z_loss_sum": 0.0, "correct": 0.0, "num_tokens": 0.0}
  for _, batch in zip(range(2), batches):
    batch = {k: v for k, v in batch.items() if k != "decoder_denoiser_ids"}
    _, aux = model.loss_fn(params, batch, None)
    for k in sums:
      sums[k] += float(aux[k])
  assert results["eval/loss"] == pytest.approx(sums["loss_sum"] / sums["num_tokens"], rel=1e-4)
  assert results["eval/z_loss"] == pytest.approx(sums["z_loss_sum"] / sums["num_tokens"], rel=1e-4)
  assert results["eval/accuracy"] == pytest.approx(sums["correct"] / sums["num_tokens"], rel=1e-5)

  # SeqIO accuracy: the first 8 validation examples decoded by hand, through the task's
  # postprocessor and metric.
  task = seqio.get_mixture_or_task(TASK)
  vocab = run_data.vocabulary_of(task)
  targets, predictions = [], []
  for examples, batch in pipeline.get_infer_batches(
    TASK,
    LENGTHS,
    split="validation",
    batch_size=4,
    feature_converter_name=model.feature_converter_name,
    max_examples=8,
  ):
    for i, ex in enumerate(examples):
      ids = _greedy_by_hand(model, params, batch["encoder_input_tokens"][i])
      text = run_data.decode_ids(vocab, ids)
      predictions.append(task.postprocess_fn(text, example=ex, is_target=False))
      targets.append(task.postprocess_fn(ex["targets_pretokenized"], example=ex, is_target=True))
  assert len(targets) == 8
  (metric_fn,) = task.predict_metric_fns
  expected = float(metric_fn(targets, predictions)["accuracy"])
  assert results[f"eval/{TASK}/accuracy"] == pytest.approx(expected)


def test_infer_writes_one_json_line_per_example(trained, tmp_path):
  model_dir, params, model = trained
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
  vocab = run_data.vocabulary_of(seqio.get_mixture_or_task(TASK))
  examples = [
    (ex, batch["encoder_input_tokens"][i])
    for exs, batch in pipeline.get_infer_batches(
      TASK,
      LENGTHS,
      split="validation",
      batch_size=6,
      feature_converter_name=model.feature_converter_name,
      max_examples=6,
    )
    for i, ex in enumerate(exs)
  ]
  for r, (ex, enc) in zip(records, examples, strict=True):
    assert r["inputs"].startswith("[NLU]")
    assert r["inputs"] == run_data.decode_ids(vocab, ex["inputs"])
    assert r["targets"] == ex["targets_pretokenized"]
    assert r["prediction_ids"] == _greedy_by_hand(model, params, enc)
    assert r["prediction"] == run_data.decode_ids(vocab, r["prediction_ids"])


def test_finetune_starts_from_the_checkpoint_params(trained, tmp_path):
  model_dir, params, _ = trained
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
