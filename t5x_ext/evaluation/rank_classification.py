"""Scoring (T5X's `score` mode) and rank classification without fine-tuning.

`score` gives the log-likelihood of given targets with no decoding: `model.score_batch`,
jitted here with the params' shardings. Rank classification scores every label option of an
example (`tasks.evaluation.register_rank_classification` makes one row per option, with
`idx` and `is_correct`) and predicts the option with the highest log-likelihood; accuracy is
the share of examples whose best option is the correct one, in percent (as
`tasks.metrics.accuracy`).

Why our own metric: the pinned SeqIO (0.0.20) has neither the `rank_classification`
preprocessor nor the metric; both live in the `t5` package (`t5.data.preprocessors` and
`t5.evaluation.metrics`), which this project does not depend on. The semantics here are
theirs: argmax over the options' summed log-likelihoods (optionally divided by the number of
target tokens), one prediction per `idx`, ties broken by the first option.

Never imports TensorFlow (the data come through `t5x_ext.data.pipeline`, imported lazily).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from t5x_ext.training import hosts
from t5x_ext.training.trainer import METRIC_ONLY_FEATURES


class Scorer:
  """`model.score_batch` jitted once for a trainer's mesh and params."""

  def __init__(self, trainer: Any):
    """Wraps the trainer's model.

    Args:
      trainer: a `Trainer` (its mesh, rules and `shard_batch` are used).
    """
    self.trainer = trainer
    self._fn = jax.jit(trainer.model.score_batch)

  def __call__(self, params: Any, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """Log-likelihood of each row's targets.

    Args:
      params: the sharded params.
      batch: a numpy, unpacked batch (this process's rows).

    Returns:
      float32 [B].
    """
    model_batch = {k: v for k, v in batch.items() if k not in METRIC_ONLY_FEATURES}
    # Padded to the batch sharding and cut back, like every decode/score batch.
    out = hosts.run_rows(self.trainer, lambda b: self._fn(params, b), model_batch)
    return np.asarray(out, np.float32)


def rank_accuracy(
  idx: Sequence[int],
  is_correct: Sequence[int],
  scores: Sequence[float],
  *,
  num_tokens: Sequence[int] | None = None,
) -> dict[str, float]:
  """Accuracy of picking, per example, the option with the highest score.

  Args:
    idx: the example of each row.
    is_correct: 1 where the row's option is the right one.
    scores: the rows' log-likelihoods.
    num_tokens: target tokens per row, to rank by the mean instead of the sum.

  Returns:
    `{"accuracy": percent, "num_examples": n}`.
  """
  best: dict[int, tuple[float, int]] = {}
  for i, (k, c, s) in enumerate(zip(idx, is_correct, scores, strict=True)):
    value = float(s) / max(int(num_tokens[i]), 1) if num_tokens is not None else float(s)
    if int(k) not in best or value > best[int(k)][0]:
      best[int(k)] = (value, int(c))
  n = len(best)
  hits = sum(c for _, c in best.values())
  return {"accuracy": 100.0 * hits / n if n else 0.0, "num_examples": float(n)}


def score_task(
  scorer: Scorer,
  params: Any,
  task_name: str,
  task_feature_lengths: Mapping[str, int],
  *,
  batch_size: int,
  split: str = "validation",
  max_rows: int | None = None,
) -> tuple[list[dict], np.ndarray]:
  """Scores every row of a task (T5X's `score` mode).

  Args:
    scorer: a `Scorer`.
    params: the params.
    task_name: a registered task.
    task_feature_lengths: lengths (targets long enough for every option: nothing is cut).
    batch_size: rows per batch.
    split: the split.
    max_rows: score only the first rows.

  Returns:
    `(examples, scores)`: the decoded rows (with `idx`, `is_correct`, `targets`) and their
    log-likelihoods, in order.
  """
  from t5x_ext.data import pipeline

  examples, scores = [], []
  for exs, batch in pipeline.get_infer_batches(
    task_name,
    task_feature_lengths,
    split=split,
    batch_size=batch_size,
    feature_converter_name=scorer.trainer.model.feature_converter_name,
    max_examples=max_rows,
  ):
    s = scorer(params, batch)
    examples += exs
    scores.append(s[: len(exs)])
  return examples, np.concatenate(scores) if scores else np.zeros([0], np.float32)


def evaluate(
  scorer: Scorer,
  params: Any,
  task_name: str,
  task_feature_lengths: Mapping[str, int],
  *,
  num_options: int,
  batch_size: int,
  max_examples: int | None = None,
  length_normalize: bool = False,
) -> dict[str, float]:
  """Rank-classification accuracy on a task made by `register_rank_classification`.

  Args:
    scorer: a `Scorer`.
    params: the params.
    task_name: the rank task.
    task_feature_lengths: lengths.
    num_options: label options per example (rows per example).
    batch_size: rows per batch.
    max_examples: only the first examples (all their options).
    length_normalize: rank by mean log-likelihood per target token.

  Returns:
    `{"accuracy", "num_examples"}`.
  """
  rows = None if max_examples is None else max_examples * num_options
  examples, scores = score_task(
    scorer, params, task_name, task_feature_lengths, batch_size=batch_size, max_rows=rows
  )
  return rank_accuracy(
    [e["idx"] for e in examples],
    [e["is_correct"] for e in examples],
    scores,
    num_tokens=[len(e["targets"]) for e in examples] if length_normalize else None,
  )
