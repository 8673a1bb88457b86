"""Metrics of one checkpoint on one task's split: what `python -m t5x_ext.eval` computes.

`evaluate(model=..., mixture_or_task_name=..., task_feature_lengths=..., model_dir=...)`
restores the params of the newest checkpoint in MODEL_DIR (or `checkpoint_path`), computes
the teacher-forced metrics over the split and the task's SeqIO metrics, appends them to
MODEL_DIR/metrics/eval.jsonl and returns them. A plain function: the command binds it with
gin (`gin/runs/eval.gin`), the fine-tuning probes call it directly.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

import jax

from t5x_ext.evaluation import seqio_metrics as seqio_metrics_lib
from t5x_ext.evaluation.teacher_forced import teacher_forced_metrics
from t5x_ext.training import checkpointing, hosts, partitioning, run_paths, run_setup
from t5x_ext.training import metric_writers as metrics_lib


def evaluate(
  *,
  model: Any,
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  model_dir: str,
  checkpoint_path: str | None = None,
  split: str = "validation",
  batch_size: int = 32,
  mesh_shape: Mapping[str, int] | None = None,
  logical_axis_rules: partitioning.Rules = partitioning.DEFAULT_RULES,
  max_batches: int | None = None,
  seqio_metrics: bool = True,
  decode_len: int | None = None,
  max_predict_examples: int | None = None,
  pack: bool = False,
  seed: int = 0,
  verbose: bool = True,
) -> dict[str, float]:
  """Teacher-forced and SeqIO metrics of a checkpoint on a split.

  Args:
    model: the model (gin: %MODEL).
    mixture_or_task_name: MIXTURE_OR_TASK_NAME.
    task_feature_lengths: TASK_FEATURE_LENGTHS.
    model_dir: MODEL_DIR: where checkpoints are read (unless `checkpoint_path`) and
      metrics/eval.jsonl is written.
    checkpoint_path: read params from here instead (a MODEL_DIR, step dir or converted
      weights).
    split: the split to evaluate.
    batch_size: global rows per batch.
    mesh_shape: MESH_SHAPE.
    logical_axis_rules: rules.
    max_batches: stop teacher-forced evaluation after this many batches (None: all).
    seqio_metrics: also run the task's predict/score metric functions.
    decode_len: decoding length for predictions (default: the targets length).
    max_predict_examples: limit the examples decoded for SeqIO metrics.
    pack: pack the teacher-forced batches (faster; same per-token metrics).
    seed: seed of the tasks' random preprocessors (fixed, so every checkpoint sees the same
      eval examples).
    verbose: print the results (JSON).

  Returns:
    `{"step": step, "eval/loss": ..., "eval/<task>/<metric>": ...}`.
  """
  from t5x_ext.data import pipeline

  run = run_setup.prepare(
    model,
    mixture_or_task_name,
    task_feature_lengths,
    batch_size=batch_size,
    mesh_shape=mesh_shape,
    split=split,
  )
  data = pipeline.get_batches(
    mixture_or_task_name,
    run.lengths,
    split=split,
    batch_size=run.local_rows,
    feature_converter_name=model.feature_converter_name,
    pack=pack,
    shuffle=False,
    seed=seed,
    shard_id=run.shard_id,
    num_shards=run.num_shards,
    repeat=False,
  )
  first = next(data)
  source = checkpoint_path or model_dir
  trainer, params = checkpointing.load_params(
    model,
    first,
    source,
    mesh_shape=mesh_shape,
    logical_axis_rules=logical_axis_rules,
    denoiser_names=run.denoiser_names,
  )
  local = itertools.chain([first], data)
  if max_batches is not None:
    local = itertools.islice(local, max_batches)
  # Shards of unequal length: the shorter ones run zero batches (no loss weight) meanwhile.
  zeros = hosts.zero_batch(first)
  batches = hosts.lockstep(local, lambda: zeros)
  results: dict[str, Any] = {"step": checkpointing.checkpoint_step(source) or 0}
  tf_metrics = teacher_forced_metrics(
    trainer,
    params,
    batches,
    denoiser_groups=run.denoiser_groups,
  )
  results.update({f"eval/{k}": v for k, v in tf_metrics.items()})
  if seqio_metrics:
    seq = seqio_metrics_lib.seqio_metrics(
      trainer,
      params,
      run.provider,
      run.lengths,
      split=split,
      batch_size=run.batch_size,
      decode_len=decode_len or run.lengths.get("targets", 64),
      max_examples=max_predict_examples,
      seed=seed,
      shard=(run.shard_id, run.num_shards),
    )
    results.update({f"eval/{k}": v for k, v in seq.items()})
  if jax.process_index() == 0:
    writer = metrics_lib.JsonlWriter(run_paths.path(model_dir, "metrics", "eval.jsonl"))
    writer.write_scalars(results["step"], {k: v for k, v in results.items() if k != "step"})
    writer.close()
    if verbose:
      print(json.dumps(results, indent=1, sort_keys=True))
  return results
