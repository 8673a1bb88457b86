"""Inference entry point: `python -m t5x_ext.infer --gin_file=FILE [--gin.KEY=VALUE ...]`.

`gin/runs/infer.gin` binds `infer`; required macros: MODEL_DIR, MIXTURE_OR_TASK_NAME,
TASK_FEATURE_LENGTHS. It decodes every example of a split with the newest checkpoint in
MODEL_DIR (or CHECKPOINT_PATH) and writes one JSON object per example:

  {"index": 0, "inputs": "[NLU] ...", "targets": "...", "prediction": "...",
   "prediction_ids": [...], "inputs_pretokenized": "...", "score": -12.3}

(`inputs` is decoded from the ids the model read, so it shows the mode prefix; `score` only
with `with_scores=True`).

to MODEL_DIR/inference/<task>-<split>.jsonl (or OUTPUT_FILE); with several processes each
writes its own shard, `...-00000-of-00002.jsonl`. Usable from Python: `infer(model=..., ...)`.
"""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from t5x_ext import partitioning

REQUIRED_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS")
DECODE_METHODS = ("greedy", "sample", "beam")


def infer(
  *,
  model: Any,
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  model_dir: str,
  checkpoint_path: str | None = None,
  output_file: str | None = None,
  split: str = "validation",
  batch_size: int = 32,
  mesh_shape: Mapping[str, int] | None = None,
  logical_axis_rules: partitioning.Rules = partitioning.DEFAULT_RULES,
  decode_len: int | None = None,
  method: str = "greedy",
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  beam_size: int = 4,
  length_penalty: float = 0.6,
  with_scores: bool = False,
  max_examples: int | None = None,
  seed: int = 0,
) -> str:
  """Writes predictions of a checkpoint for a task's split as JSONL.

  Args:
    model: the model (gin: %MODEL).
    mixture_or_task_name: MIXTURE_OR_TASK_NAME.
    task_feature_lengths: TASK_FEATURE_LENGTHS.
    model_dir: MODEL_DIR (checkpoints are read from here unless `checkpoint_path`).
    checkpoint_path: read params from here instead.
    output_file: where to write (default MODEL_DIR/inference/<task>-<split>.jsonl).
    split: the split.
    batch_size: global rows per batch.
    mesh_shape: MESH_SHAPE.
    logical_axis_rules: rules.
    decode_len: tokens to decode (default: the targets length).
    method: "greedy", "sample" or "beam".
    temperature: sampling temperature.
    top_k: sample from the k most likely tokens (0 = all).
    top_p: nucleus sampling threshold.
    beam_size: beams for "beam".
    length_penalty: beam search length penalty exponent.
    with_scores: also write the log-likelihood of the targets (`score`).
    max_examples: stop after this many examples.
    seed: seed of sampling and of the task's random preprocessors.

  Returns:
    The path written by this process.
  """
  from t5x_ext import eval as eval_lib
  from t5x_ext import run_data
  from t5x_ext.data import pipeline

  if method not in DECODE_METHODS:
    raise ValueError(f"method = {method!r}: must be one of {DECODE_METHODS}.")
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"BATCH_SIZE = {batch_size!r}: must be a positive int.")
  provider = run_data.get_provider(mixture_or_task_name)
  run_data.check_task(
    provider,
    task_feature_lengths,
    model_vocab_size=getattr(getattr(model, "config", None), "vocab_size", None),
  )
  if split not in provider.splits:
    raise ValueError(
      f"split = {split!r} is not a split of {mixture_or_task_name!r} ({list(provider.splits)})."
    )
  lengths = {k: int(v) for k, v in task_feature_lengths.items()}
  decode_len = decode_len or lengths.get("targets", 64)
  vocab = run_data.vocabulary_of(provider)
  mesh = partitioning.make_mesh(mesh_shape)
  partitioning.validate_batch_size(batch_size, mesh)
  shard_id, num_shards = partitioning.process_batch_shard(mesh)
  local_rows = batch_size // num_shards

  if output_file is None:
    output_file = str(
      pathlib.Path(model_dir) / "inference" / f"{mixture_or_task_name}-{split}.jsonl"
    )
  if num_shards > 1:
    stem = output_file[: -len(".jsonl")] if output_file.endswith(".jsonl") else output_file
    output_file = f"{stem}-{shard_id:05d}-of-{num_shards:05d}.jsonl"
  path = pathlib.Path(output_file)
  path.parent.mkdir(parents=True, exist_ok=True)

  batches = pipeline.get_infer_batches(
    mixture_or_task_name,
    lengths,
    split=split,
    batch_size=local_rows,
    feature_converter_name=model.feature_converter_name,
    seed=seed,
    shard_id=shard_id,
    num_shards=num_shards,
    max_examples=max_examples,
  )
  trainer = params = None
  rng = jax.random.key(seed)
  index = 0
  with open(path, "w") as f:
    for examples, batch in batches:
      model_batch = {k: v for k, v in batch.items() if k != "decoder_denoiser_ids"}
      if trainer is None:
        trainer, params = eval_lib.load_params(
          model,
          batch,
          checkpoint_path or model_dir,
          mesh_shape=mesh_shape,
          logical_axis_rules=logical_axis_rules,
        )
      global_batch = trainer.shard_batch(model_batch)
      rng, step_rng = jax.random.split(rng)
      with partitioning.axis_rules(trainer.mesh, trainer.rules):
        pred = trainer.model.predict_batch(
          params,
          global_batch,
          step_rng,
          decode_len=decode_len,
          method=method,
          temperature=temperature,
          top_k=top_k,
          top_p=top_p,
          beam_size=beam_size,
          length_penalty=length_penalty,
        )
        scores = trainer.model.score_batch(params, global_batch) if with_scores else None
      pred = _local_rows(pred)
      scores = _local_rows(scores) if scores is not None else None
      for i, ex in enumerate(examples):
        ids = [int(t) for t in pred[i]]
        if 1 in ids:
          ids = ids[: ids.index(1) + 1]
        # `inputs` is what the model read (mode prefix included); the task's raw text, when
        # it keeps one, is `inputs_pretokenized`.
        record = {
          "index": index,
          "inputs": run_data.decode_ids(vocab, ex.get("inputs", [])),
          "targets": ex.get("targets_pretokenized")
          or run_data.decode_ids(vocab, ex.get("targets", [])),
          "prediction": run_data.decode_ids(vocab, ids),
          "prediction_ids": ids,
        }
        if "inputs_pretokenized" in ex:
          record["inputs_pretokenized"] = ex["inputs_pretokenized"]
        if scores is not None:
          record["score"] = float(scores[i])
        f.write(json.dumps(record) + "\n")
        index += 1
  if jax.process_index() == 0:
    print(f"Wrote {index} predictions to {path}")
  return str(path)


def _local_rows(x) -> np.ndarray:
  """This process's rows of a global batch-sharded array, in order."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, rows = set(), []
    for s in shards:
      start = s.index[0].start or 0
      if start not in seen:
        seen.add(start)
        rows.append(np.asarray(s.data))
    return np.concatenate(rows)
  return np.asarray(jax.device_get(x))


def main(argv=None) -> str:
  """Runs `infer` configured by gin flags (see `t5x_ext.cli`).

  Args:
    argv: command-line arguments (default `sys.argv[1:]`).

  Returns:
    The output path.
  """
  import gin
  from t5x_ext import cli

  def configured():
    try:
      fn = gin.get_configurable(infer)
    except (KeyError, ValueError):
      raise ValueError(
        "The gin files do not configure t5x_ext.infer.infer; include 'runs/infer.gin'."
      ) from None
    return fn()

  return cli.run(configured, argv, required_macros=REQUIRED_MACROS, hint="gin/runs/infer.gin")


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  from t5x_ext import cli as _cli
  from t5x_ext import infer as _infer_module  # the module gin binds, not `__main__`

  _cli.main_guard(_infer_module.main)
