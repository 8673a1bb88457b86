"""Evaluation entry point: `python -m t5x_ext.eval --gin_file=FILE [--gin.KEY=VALUE ...]`.

`gin/runs/eval.gin` binds `evaluate`; its required macros are MODEL_DIR,
MIXTURE_OR_TASK_NAME and TASK_FEATURE_LENGTHS. Two kinds of metrics, for the newest
checkpoint in MODEL_DIR (or CHECKPOINT_PATH):

  teacher-forced   loss, accuracy and per-denoiser losses over the split, from the same
                   eval step as training (`eval/loss`, `eval/loss/<denoiser>`, ...)
  SeqIO metrics    the task's `predict_metric_fns` on decoded predictions and its
                   `score_metric_fns` on log-likelihoods, after its postprocessor
                   (`eval/<task>/<metric>`)

Results go to MODEL_DIR/metrics/eval.jsonl (one line per evaluated checkpoint step) and are
returned as a dict. Usable from Python without gin: `evaluate(model=..., ...)`.

`gin/runs/eval_suite.gin` instead binds the evaluation suite
(`t5x_ext.evaluation.suite.run_suite`: per-family losses, the mode-prefix matrix, rank
classification, fine-tuning probes; required macro MODEL_DIR); `main` runs whichever of the
two the gin files configure.
"""

from __future__ import annotations

import itertools
import json
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax

from t5x_ext.launch import scaffold as entry
from t5x_ext.training import checkpointing, hosts, partitioning
from t5x_ext.training import metric_writers as metrics_lib
from t5x_ext.training.trainer import Trainer

REQUIRED_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS")


def checkpoint_step(path: str) -> int | None:
  """The step of the newest complete checkpoint under `path` (a MODEL_DIR), if any.

  Args:
    path: a MODEL_DIR or its checkpoints directory.

  Returns:
    The step, or None.
  """
  for root in (pathlib.Path(path) / "checkpoints", pathlib.Path(path)):
    if root.is_dir():
      steps = [int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "state").is_dir()]
      if steps:
        return max(steps)
  return None


def load_params(
  model: Any,
  batch: Mapping[str, np.ndarray],
  checkpoint_path: str,
  *,
  mesh_shape: Mapping[str, int] | None = None,
  logical_axis_rules: partitioning.Rules = partitioning.DEFAULT_RULES,
  denoiser_names=(),
) -> tuple[Trainer, Any]:
  """Builds a Trainer (no optimizer) and restores only the params, sharded on the mesh.

  Args:
    model: the model.
    batch: a numpy batch with the shapes to evaluate on.
    checkpoint_path: MODEL_DIR, a checkpoints/step directory, or converted weights.
    mesh_shape: MESH_SHAPE.
    logical_axis_rules: rules.
    denoiser_names: for per-denoiser metrics.

  Returns:
    `(trainer, params)`.
  """
  mesh = partitioning.make_mesh(mesh_shape)
  trainer = Trainer(
    model, optax.identity(), mesh, logical_axis_rules, denoiser_names=denoiser_names
  )
  abstract = trainer.abstract_state(batch)
  params = checkpointing.restore_params(checkpoint_path, abstract.params)
  return trainer, params


def _teacher_forced(trainer, params, data, *, max_batches, denoiser_groups) -> dict[str, float]:
  acc = metrics_lib.MetricAccumulator()
  for i, batch in enumerate(data):
    if max_batches is not None and i >= max_batches:
      break
    acc.add(jax.device_get(trainer.eval_step(params, trainer.shard_batch(batch))))
  if not acc.steps:
    return {}
  out = metrics_lib.summarize(
    acc, denoiser_names=trainer.denoiser_names, denoiser_groups=denoiser_groups
  )
  # Over a whole split the per-token mean is the meaningful loss, not the mean of batches.
  keep = {k: v for k, v in out.items() if not k.endswith("_per_s") and k != "steps_per_s"}
  if "cross_entropy" in keep and "z_loss" in keep:
    keep["loss"] = keep["cross_entropy"] + keep["z_loss"]
  return keep


def _seqio_metrics(
  trainer,
  params,
  provider,
  lengths,
  *,
  split,
  batch_size,
  decode_len,
  max_examples,
  seed,
  shard: tuple[int, int] | None = None,
) -> dict[str, float]:
  """The tasks' SeqIO metrics; each process decodes its shard, the metrics see all shards.

  Args:
    trainer: the `Trainer`.
    params: the sharded params.
    provider: the task or mixture (each task with metric functions is evaluated).
    lengths: TASK_FEATURE_LENGTHS.
    split: the split.
    batch_size: global rows per decoding step.
    decode_len: decoding length.
    max_examples: examples decoded per task over all processes (None: the whole split).
    seed: seed of the task's random preprocessors.
    shard: `(shard_id, num_shards)` of this process; default from the trainer's mesh.

  Returns:
    `{"<task>/<metric>": value}`, the same on every process.
  """
  from t5x_ext.data import pipeline
  from t5x_ext.data import providers as run_data
  from t5x_ext.training import memory_plan

  shard_id, num_shards = shard or partitioning.process_batch_shard(trainer.mesh)
  rows = batch_size // num_shards
  out: dict[str, float] = {}
  for task in getattr(provider, "tasks", None) or [provider]:
    predict_fns = list(getattr(task, "predict_metric_fns", []) or [])
    score_fns = list(getattr(task, "score_metric_fns", []) or [])
    if not (predict_fns or score_fns) or split not in task.splits:
      continue
    vocab = run_data.vocabulary_of(task)
    # A shard that runs out first decodes zero rows while the others finish (one global
    # decode per step); its padding is dropped below.
    zeros = {
      k: np.zeros(v.shape, v.dtype)
      for k, v in memory_plan.abstract_batch(trainer.model, lengths, rows, pack=False).items()
    }
    pairs = pipeline.get_infer_batches(
      task.name,
      lengths,
      split=split,
      batch_size=rows,
      feature_converter_name=trainer.model.feature_converter_name,
      seed=seed,
      shard_id=shard_id,
      num_shards=num_shards,
      max_examples=hosts.shard_share(max_examples, shard_id, num_shards),
    )
    targets, predictions, scores = [], [], []
    for examples, batch in hosts.lockstep(pairs, lambda z=zeros: ([], z)):
      pred, sc = hosts.predict(
        trainer,
        params,
        batch,
        decode=bool(predict_fns),
        with_scores=bool(score_fns),
        decode_len=decode_len,
      )
      for i, ex in enumerate(examples):
        target_text = ex.get("targets_pretokenized", "")
        targets.append(task.postprocess_fn(target_text, example=ex, is_target=True))
        if predict_fns:
          text = run_data.decode_ids(vocab, pred[i])
          predictions.append(task.postprocess_fn(text, example=ex, is_target=False))
        if score_fns:
          scores.append(float(sc[i]))
    # Every process gets every shard's results once, and computes the same metrics.
    targets, predictions, scores = (
      [x for part in parts for x in part]
      for parts in zip(*hosts.gather_shards((targets, predictions, scores), shard_id))
    )
    for fn in predict_fns:
      for k, v in fn(targets, predictions).items():
        out[f"{task.name}/{k}"] = float(getattr(v, "value", v))
    for fn in score_fns:
      for k, v in fn(targets, scores).items():
        out[f"{task.name}/{k}"] = float(getattr(v, "value", v))
  return out


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
  from t5x_ext.data import providers as run_data

  run = entry.prepare(
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
  trainer, params = load_params(
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
  zeros = {k: np.zeros_like(v) for k, v in first.items()}
  batches = hosts.lockstep(local, lambda: zeros)
  results: dict[str, Any] = {"step": checkpoint_step(source) or 0}
  tf_metrics = _teacher_forced(
    trainer,
    params,
    batches,
    max_batches=None,
    denoiser_groups=run_data.denoiser_groups(run.denoisers),
  )
  results.update({f"eval/{k}": v for k, v in tf_metrics.items()})
  if seqio_metrics:
    seq = _seqio_metrics(
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
    writer = metrics_lib.JsonlWriter(pathlib.Path(model_dir) / "metrics" / "eval.jsonl")
    writer.write_scalars(results["step"], {k: v for k, v in results.items() if k != "step"})
    writer.close()
    if verbose:
      print(json.dumps(results, indent=1, sort_keys=True))
  return results


SUITE_REQUIRED_MACROS = ("MODEL_DIR",)


def _configured_function(gin, fn):
  """`fn` as gin configures it, or None (see `t5x_ext.launch.scaffold.configured_function`)."""
  del gin
  return entry.configured_function(fn)


def main(argv=None) -> dict[str, float]:
  """Runs `evaluate`, or the evaluation suite, as the gin flags configure it (`t5x_ext.launch.flags`).

  `runs/eval.gin` configures `evaluate`; `runs/eval_suite.gin` configures
  `t5x_ext.evaluation.suite.run_suite` (then the suite runs, and its required macros are
  checked instead).

  Args:
    argv: command-line arguments (default `sys.argv[1:]`).

  Returns:
    The metrics dict.
  """
  from t5x_ext.evaluation import suite

  return entry.run(
    [
      entry.EntryPoint(
        suite.run_suite, SUITE_REQUIRED_MACROS, "gin/runs/eval_suite.gin", "'runs/eval_suite.gin'"
      ),
      entry.EntryPoint(evaluate, REQUIRED_MACROS, "gin/runs/eval.gin", "'runs/eval.gin'"),
    ],
    argv,
  )


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  from t5x_ext import eval as _eval_module  # the module gin binds, not `__main__`
  from t5x_ext.launch import flags as _cli

  _cli.main_guard(_eval_module.main)
