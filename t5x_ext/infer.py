"""Inference entry point: `python -m t5x_ext.infer --gin_file=FILE [--gin.KEY=VALUE ...]`.

`gin/runs/infer.gin` binds `infer`; required macros: MODEL_DIR, MIXTURE_OR_TASK_NAME,
TASK_FEATURE_LENGTHS. It decodes every example of a split with the newest checkpoint in
MODEL_DIR (or CHECKPOINT_PATH) and writes one JSON object per example:

  {"index": 0, "inputs": "[NLU] ...", "targets": "...", "prediction": "...",
   "prediction_ids": [...], "inputs_pretokenized": "...", "score": -12.3}

(`inputs` is decoded from the ids the model read, so it shows the mode prefix; `score` only
with `with_scores=True`) to MODEL_DIR/inference/<task>-<split>.jsonl (or OUTPUT_FILE); with
several processes each writes its own shard, `...-00000-of-00002.jsonl`.

Prompts in, text out: with `PROMPTS` (a list of strings) or `PROMPTS_FILE` (one prompt per
line, or JSONL with a `PROMPT_KEY` field) the model continues those instead, after the
`MODE_PREFIX` (`'[NLU]'`, `'[NLG]'`, `'[S2S]'` or None), and each prediction is printed and
written to MODEL_DIR/inference/prompts.jsonl as
`{"index": 0, "inputs": "[S2S] ...", "prompt": "...", "prediction": "...", "prediction_ids": [...]}`;
the task then only lends its vocabulary (t5x_ext.data.prompts lays the batches out).

  python -m t5x_ext.infer --gin_file=local/tiny_model.gin --gin_file=runs/infer.gin \
    --gin.MODEL_DIR="'/tmp/ul2_tiny'" --gin.MIXTURE_OR_TASK_NAME="'pydocs_ul2_mod_v1'" \
    --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 64}" \
    --gin.MODE_PREFIX="'[S2S]'" --gin.PROMPTS="['The garbage collector']"

Usable from Python: `infer(model=..., ...)`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from t5x_ext.errors import UserError
from t5x_ext.launch import scaffold as entry
from t5x_ext.training import checkpointing, hosts, partitioning, run_paths, run_setup

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
  prompts: Sequence[str] | None = None,
  prompts_file: str | None = None,
  prompt_key: str = "inputs",
  mode_prefix: str | None = None,
  print_predictions: bool | None = None,
) -> str:
  """Writes predictions of a checkpoint, for a task's split or for prompts, as JSONL.

  Args:
    model: the model (gin: %MODEL).
    mixture_or_task_name: MIXTURE_OR_TASK_NAME (with prompts: only its vocabulary is used).
    task_feature_lengths: TASK_FEATURE_LENGTHS.
    model_dir: MODEL_DIR (checkpoints are read from here unless `checkpoint_path`).
    checkpoint_path: read params from here instead.
    output_file: where to write (default MODEL_DIR/inference/<task>-<split>.jsonl, or
      MODEL_DIR/inference/prompts.jsonl for prompts).
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
    with_scores: also write the log-likelihood of the targets (`score`; task examples only).
    max_examples: stop after this many examples (over all processes).
    seed: seed of sampling and of the task's random preprocessors.
    prompts: PROMPTS: texts to continue instead of the task's examples.
    prompts_file: PROMPTS_FILE: a text file (one prompt per line) or JSONL (field
      `prompt_key`), instead of the task's examples.
    prompt_key: PROMPT_KEY, the JSONL field of a prompt.
    mode_prefix: MODE_PREFIX for prompts: "[NLU]", "[NLG]", "[S2S]" or None (as typed).
    print_predictions: print each input and prediction (default: for prompts).

  Returns:
    The path written by this process.
  """
  from t5x_ext.data import providers as run_data

  if method not in DECODE_METHODS:
    raise UserError(f"method = {method!r}: must be one of {DECODE_METHODS}.")
  if prompts is not None and prompts_file is not None:
    raise UserError("Set PROMPTS or PROMPTS_FILE, not both.")
  if isinstance(prompts, str):
    prompts = [prompts]
  use_prompts = prompts is not None or prompts_file is not None
  # Prompts need only the vocabulary and the lengths: the task's objectives are not run.
  run = run_setup.prepare(
    model,
    mixture_or_task_name,
    task_feature_lengths,
    batch_size=batch_size,
    mesh_shape=mesh_shape,
    split=None if use_prompts else split,
    plan_objectives=not use_prompts,
  )
  lengths = run.lengths
  decode_len = decode_len or lengths.get("targets", 64)
  vocab = run_data.vocabulary_of(run.provider)
  shard_id, num_shards, local_rows = run.shard_id, run.num_shards, run.local_rows

  if output_file is None:
    stem = "prompts" if use_prompts else f"{mixture_or_task_name}-{split}"
    output_file = os.fspath(run_paths.path(model_dir, "inference", f"{stem}.jsonl"))
  if num_shards > 1:
    stem = output_file[: -len(".jsonl")] if output_file.endswith(".jsonl") else output_file
    output_file = f"{stem}-{shard_id:05d}-of-{num_shards:05d}.jsonl"
  path = run_paths.path(output_file)  # MODEL_DIR may be a bucket: epath, not pathlib
  path.parent.mkdir(parents=True, exist_ok=True)

  if use_prompts:
    batches = _prompt_batches(
      prompts,
      prompts_file,
      prompt_key,
      mode_prefix,
      vocab,
      lengths,
      model.feature_converter_name,
      rows=local_rows,
      shard_id=shard_id,
      num_shards=num_shards,
      max_examples=max_examples,
    )
    with_scores = False  # prompts have no targets to score
  else:
    from t5x_ext.data import pipeline
    from t5x_ext.training import memory_plan

    pairs = pipeline.get_infer_batches(
      mixture_or_task_name,
      lengths,
      split=split,
      batch_size=local_rows,
      feature_converter_name=model.feature_converter_name,
      seed=seed,
      shard_id=shard_id,
      num_shards=num_shards,
      max_examples=hosts.shard_share(max_examples, shard_id, num_shards),
    )
    # Shards of unequal length: one that runs out decodes zero rows (written nowhere) until
    # the others are done, since each decode is one computation over all processes.
    zeros = hosts.zero_batch(memory_plan.abstract_batch(model, lengths, local_rows, pack=False))
    batches = hosts.lockstep(pairs, lambda: ([], zeros))
  if print_predictions is None:
    print_predictions = use_prompts
  trainer = params = None
  rng = jax.random.key(seed)
  index = 0
  with path.open("w") as f:
    for examples, batch in batches:
      if trainer is None:
        trainer, params = _load(
          model, batch, checkpoint_path or model_dir, mesh_shape, logical_axis_rules
        )
      rng, step_rng = jax.random.split(rng)
      pred, scores = predict(
        trainer,
        params,
        batch,
        step_rng,
        with_scores=with_scores,
        decode_len=decode_len,
        method=method,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        beam_size=beam_size,
        length_penalty=length_penalty,
      )
      for i, ex in enumerate(examples):
        record = _record(index, ex, pred[i], vocab, None if scores is None else scores[i])
        f.write(json.dumps(record) + "\n")
        if print_predictions:
          print(f"[{record['index']}] {record['inputs']}\n  -> {record['prediction']}", flush=True)
        index += 1
  if jax.process_index() == 0:
    print(f"Wrote {index} predictions to {path}")
  return str(path)


def _load(model, batch, checkpoint_path, mesh_shape, logical_axis_rules):

  return checkpointing.load_params(
    model, batch, checkpoint_path, mesh_shape=mesh_shape, logical_axis_rules=logical_axis_rules
  )


def predict(
  trainer: Any,
  params: Any,
  batch: Mapping[str, np.ndarray],
  rng: jax.Array,
  *,
  with_scores: bool = False,
  **decode_kw,
) -> tuple[np.ndarray, np.ndarray | None]:
  """Decodes one process-local numpy batch on the trainer's mesh (`t5x_ext.launch.scaffold.predict`).

  Args:
    trainer: a `Trainer` (its mesh, rules, model and `shard_batch`).
    params: the sharded params.
    batch: this process's rows (`decoder_denoiser_ids` is dropped).
    rng: sampling key.
    with_scores: also score the targets.
    **decode_kw: `predict_batch` keywords (decode_len, method, temperature, ...).

  Returns:
    `(tokens [rows, decode_len], scores [rows] or None)` for this process's rows.
  """
  return hosts.predict(trainer, params, batch, rng, with_scores=with_scores, **decode_kw)


def _record(index: int, ex: Mapping[str, Any], pred_row, vocab, score) -> dict[str, Any]:
  from t5x_ext.data import providers as run_data

  ids = [int(t) for t in pred_row]
  eos = int(getattr(vocab, "eos_id", 1))
  if eos in ids:
    ids = ids[: ids.index(eos) + 1]
  # `inputs` is what the model read (mode prefix included); the task's raw text, when it
  # keeps one, is `inputs_pretokenized`, and a typed prompt is `prompt`.
  record = {"index": index, "inputs": run_data.decode_ids(vocab, ex.get("inputs", []))}
  if "prompt" in ex:
    record["prompt"] = ex["prompt"]
  else:
    record["targets"] = ex.get("targets_pretokenized") or run_data.decode_ids(
      vocab, ex.get("targets", [])
    )
  record["prediction"] = run_data.decode_ids(vocab, ids)
  record["prediction_ids"] = ids
  if "inputs_pretokenized" in ex:
    record["inputs_pretokenized"] = ex["inputs_pretokenized"]
  if score is not None:
    record["score"] = float(score)
  return record


def _prompt_batches(
  prompts,
  prompts_file,
  prompt_key,
  mode_prefix,
  vocab,
  lengths,
  feature_converter_name,
  *,
  rows,
  shard_id,
  num_shards,
  max_examples,
) -> Iterator[tuple[list[dict], dict[str, np.ndarray]]]:
  """(examples, batch) pairs for this process's share of the prompts, like the task path."""
  from t5x_ext.data import prompts as prompts_lib

  if prompts_file is not None:
    prompts = prompts_lib.read_prompts(prompts_file, key=prompt_key)
  prompts = list(prompts)[:max_examples] if max_examples else list(prompts)
  if not prompts:
    raise UserError("PROMPTS / PROMPTS_FILE holds no prompt.")
  if "inputs" not in lengths or "targets" not in lengths:
    raise UserError(
      f"TASK_FEATURE_LENGTHS = {lengths}: prompts need 'inputs' (prompt) and 'targets' lengths."
    )
  ids = prompts_lib.encode_prompts(prompts, vocab, mode=mode_prefix, max_length=lengths["inputs"])
  mine = list(range(shard_id, len(prompts), num_shards))
  # Every process runs the same number of batches (the decode is one global computation).
  steps = -(-len(prompts) // (rows * num_shards))
  for step in range(steps):
    chunk = mine[step * rows : (step + 1) * rows]
    examples = [{"prompt": prompts[i], "inputs": ids[i]} for i in chunk]
    batch = prompts_lib.prompt_batch(
      [ids[i] for i in chunk], feature_converter_name, lengths, rows=rows
    )
    yield examples, batch


def main(argv=None) -> str:
  """Runs `infer` configured by gin flags (see `t5x_ext.launch.flags`).

  Args:
    argv: command-line arguments (default `sys.argv[1:]`).

  Returns:
    The output path.
  """
  return entry.run(
    [entry.EntryPoint(infer, REQUIRED_MACROS, "gin/runs/infer.gin", "'runs/infer.gin'")], argv
  )


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  from t5x_ext import infer as _infer_module  # the module gin binds, not `__main__`
  from t5x_ext.launch import flags as _cli

  _cli.main_guard(_infer_module.main)
