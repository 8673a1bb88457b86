"""The evaluation suite: what a UL2-style checkpoint is good at, in one flat dict.

  from t5x_ext.evaluation import suite
  results = suite.run_suite(model=model, checkpoint_path=model_dir, corpus="pydocs",
                            task_feature_lengths={"inputs": 512, "targets": 128})

Parts (`parts=`), cheapest first:

  family_loss          teacher-forced loss on the corpus's validation split for each family of
                       UL2's denoisers (R, X, S) under `family_prefix`, plus each denoiser's
                       (`t5x_ext.evaluation.mode_matrix`)
  mode_matrix          the same examples under every prefix ([NLU], [NLG], [S2S], none)
  rank_classification  zero- and few-shot rank classification on the embedded topic task
                       under every prefix, no fine-tuning (`rank_classification`)
  probes               short fine-tunes from the checkpoint: classification and generation
                       (`probes`)

Keys (floats; losses in nats per target token, accuracies and ROUGE in percent):

  family_loss/<F>, family_accuracy/<F>, denoiser_loss/<denoiser>     F in R, X, S
  mode_matrix/<F>/<prefix>                  prefix in [NLU], [NLG], [S2S], none
  rank_classification/{zero_shot,few_shot}/<prefix>/accuracy
  probe/classification/accuracy, probe/generation/{rouge1,rouge2,rougeL}

From the command line: `python -m t5x_ext.eval --gin_file=local/tiny_model.gin
--gin_file=runs/eval_suite.gin --gin.MODEL_DIR="'/tmp/run'"` (writes
MODEL_DIR/metrics/eval_suite.json and prints a Markdown table).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from t5x_ext.errors import UserError
from t5x_ext.evaluation import mode_matrix, report
from t5x_ext.evaluation import probes as probes_lib
from t5x_ext.evaluation import rank_classification as rank_lib
from t5x_ext.training import partitioning, run_paths

FAMILIES = mode_matrix.FAMILIES
PREFIXES = mode_matrix.COLUMNS
FAMILY_MODES = mode_matrix.FAMILY_MODES
PARTS = ("family_loss", "mode_matrix", "rank_classification", "probes")
DEFAULT_LENGTHS = {"inputs": 512, "targets": 128}
RESULTS_FILE = "eval_suite.json"
ZERO_SHOT_INPUTS = 256


def _check(parts: Sequence[str], family_prefix: str, batch_size: int, max_eval_batches) -> None:
  unknown = [p for p in parts if p not in PARTS]
  if unknown:
    raise UserError(f"EVAL_PARTS = {tuple(parts)!r}: unknown {unknown}; choose from {PARTS}.")
  mode_matrix.family_column("R", family_prefix)  # raises on a bad value
  if not isinstance(batch_size, int) or batch_size < 1:
    raise UserError(f"BATCH_SIZE = {batch_size!r}: must be a positive int.")
  if max_eval_batches is not None and (
    not isinstance(max_eval_batches, int) or max_eval_batches < 1
  ):
    raise UserError(f"MAX_EVAL_BATCHES = {max_eval_batches!r}: must be a positive int or None.")


def _family_batches(
  model: Any,
  corpus: str,
  lengths: Mapping[str, int],
  columns: Sequence[str],
  *,
  batch_size: int,
  max_eval_batches: int | None,
  seed: int,
  mesh,
  denoiser_names: Sequence[str],
) -> dict[str, dict[str, list]]:
  from t5x_ext.evaluation import examples as ex_lib

  ids = ex_lib.prefix_ids(corpus, [mode_matrix.column_mode(c) for c in PREFIXES])
  reserve = max(len(v) for v in ids.values())
  shard_id, num_shards = partitioning.process_batch_shard(mesh)
  local_batch = batch_size // num_shards
  num = batch_size * max_eval_batches if max_eval_batches else 1 << 30
  out: dict[str, dict[str, list]] = {}
  for family in FAMILIES:
    examples = ex_lib.family_examples(
      corpus,
      family,
      lengths,
      num_examples=num,
      seed=seed,
      reserve=reserve,
      denoiser_names=denoiser_names,
    )
    if not examples:
      continue
    num_batches = math.ceil(len(examples) / batch_size)
    mine = examples[shard_id::num_shards]
    out[family] = {
      column: ex_lib.to_batches(
        ex_lib.with_prefix(mine, ids[mode_matrix.column_mode(column)]),
        lengths,
        feature_converter_name=model.feature_converter_name,
        batch_size=local_batch,
        num_batches=num_batches,
      )
      for column in columns
    }
  return out


def _rank_tasks(rank_task, corpus: str, lengths, num_shots: int, seed: int):
  """Registers the rank tasks: {(shots key, column): name}, their lengths, the labels."""
  from tasks import evaluation as eval_tasks
  from tasks import vocab as vocab_lib

  spec = dict(rank_task or eval_tasks.TOPIC_RANK_TASK)
  labels = tuple(spec["labels"])
  if "vocabulary" not in spec:  # the model's: the corpus's vocabulary
    corpus_vocab = eval_tasks.corpus_task(corpus).output_features["targets"].vocabulary
    if corpus_vocab != vocab_lib.default_vocabulary():
      spec["vocabulary"] = corpus_vocab
      spec["name"] = f"{spec['name']}_{corpus}"
  vocab = eval_tasks.rank_vocabulary(spec)
  # Targets hold the longest option and EOS, so no option is cut; zero-shot inputs are short
  # (the topic task's are under ~220 tokens; longer ones lose their start, never the end).
  targets_len = max(len(vocab.encode(label)) for label in labels) + 1
  names, rank_lengths = {}, {}
  for shots_key, shots in (("zero_shot", 0), ("few_shot", num_shots)):
    inputs_len = lengths["inputs"] if shots else min(lengths["inputs"], ZERO_SHOT_INPUTS)
    rank_lengths[shots_key] = {"inputs": inputs_len, "targets": targets_len}
    for column in PREFIXES:
      names[(shots_key, column)] = eval_tasks.register_rank_classification(
        spec["name"],
        spec["examples_fn"],
        labels,
        num_shots=shots,
        mode=mode_matrix.column_mode(column),
        vocabulary=vocab,
        seed=seed,
      )
  return names, rank_lengths, labels


def run_suite(
  *,
  model: Any,
  checkpoint_path: str | None = None,
  corpus: str = "pydocs",
  task_feature_lengths: Mapping[str, int] | None = None,
  batch_size: int = 16,
  max_eval_batches: int | None = 8,
  seed: int = 0,
  parts: Sequence[str] = PARTS,
  family_prefix: str = "matching",
  num_shots: int = 2,
  rank_task: Mapping[str, Any] | None = None,
  rank_max_examples: int | None = None,
  rank_length_normalize: bool = False,
  probe_steps: int = 100,
  probe_batch_size: int = 16,
  probe_learning_rate: float = 1e-3,
  probe_eval_examples: int | None = 128,
  work_dir: str | None = None,
  model_dir: str | None = None,
  mesh_shape: Mapping[str, int] | None = None,
  logical_axis_rules: partitioning.Rules = partitioning.DEFAULT_RULES,
  verbose: bool = True,
) -> dict[str, float]:
  """Runs the suite's parts on one checkpoint.

  Args:
    model: an `EncoderDecoderModel` or `DecoderOnlyModel` (gin: %MODEL).
    checkpoint_path: a MODEL_DIR (newest checkpoint), a step directory or converted weights
      (default: `model_dir`).
    corpus: the corpus prefix of registered objectives ("pydocs", "c4", or a
      `register_text_files` prefix).
    task_feature_lengths: lengths of the family examples (default inputs 512, targets 128:
      the shortest every UL2 denoiser fits); the longest mode prefix is kept free in inputs.
      The rank tasks use the same inputs length.
    batch_size: global rows per eval batch.
    max_eval_batches: family examples per family = batch_size x this (None: the whole split).
    seed: seed of the denoisers (the same examples for every checkpoint) and the probes.
    parts: which of `PARTS` to run.
    family_prefix: the column `family_loss/*` reads: "matching" (each family's own prefix),
      "none" (models trained without prefixes) or a prefix.
    num_shots: demonstrations per input for `rank_classification/few_shot`.
    rank_task: the classification task to rank-classify: {"name": short name,
      "examples_fn": split -> [{"inputs", "targets"}], "labels": options, optional
      "vocabulary"} (default: the embedded topic task, `tasks.evaluation.TOPIC_RANK_TASK`);
      without a vocabulary, the corpus's encodes it.
    rank_max_examples: rank-classify only the first examples (None: the ~120 of the split).
    rank_length_normalize: rank options by mean instead of summed log-likelihood.
    probe_steps: fine-tuning steps per probe.
    probe_batch_size: rows per probe step.
    probe_learning_rate: constant learning rate of the probes.
    probe_eval_examples: validation examples decoded per probe (None: all).
    work_dir: where probes fine-tune (default: a temporary folder, removed afterwards).
    model_dir: if given, results go to `model_dir/metrics/eval_suite.json`.
    mesh_shape: MESH_SHAPE.
    logical_axis_rules: rules.
    verbose: print the Markdown table.

  Returns:
    The flat dict of results (see the module docstring for the keys).
  """
  from t5x_ext.data import pipeline
  from t5x_ext.training import checkpointing

  _check(parts, family_prefix, batch_size, max_eval_batches)
  checkpoint_path = checkpoint_path or model_dir
  if not checkpoint_path:
    raise UserError("run_suite: give checkpoint_path (or model_dir, CHECKPOINT_PATH / MODEL_DIR).")
  lengths = {k: int(v) for k, v in (task_feature_lengths or DEFAULT_LENGTHS).items()}
  mesh = partitioning.make_mesh(mesh_shape)
  partitioning.validate_batch_size(batch_size, mesh)
  from t5x_ext import objectives

  denoiser_names = [d.name for d in objectives.UL2_DENOISERS]
  results: dict[str, float] = {}
  t0 = time.perf_counter()

  # ---- data for the teacher-forced parts, built before the params (their shapes).
  batches: dict[str, dict[str, list]] = {}
  if "family_loss" in parts or "mode_matrix" in parts:
    columns = list(PREFIXES) if "mode_matrix" in parts else []
    if "family_loss" in parts:
      for family in FAMILIES:
        col = mode_matrix.family_column(family, family_prefix)
        if col not in columns:
          columns.append(col)
    batches = _family_batches(
      model,
      corpus,
      lengths,
      columns,
      batch_size=batch_size,
      max_eval_batches=max_eval_batches,
      seed=seed,
      mesh=mesh,
      denoiser_names=denoiser_names,
    )
  rank_tasks, rank_lengths, labels = {}, {}, ()
  if "rank_classification" in parts:
    rank_tasks, rank_lengths, labels = _rank_tasks(rank_task, corpus, lengths, num_shots, seed)
  seconds = {"data": time.perf_counter() - t0}

  first = None
  for columns in batches.values():
    for rows in columns.values():
      first = first or (rows[0] if rows else None)
  if first is None and rank_tasks:
    _, first = next(
      pipeline.get_infer_batches(
        next(iter(rank_tasks.values())),
        rank_lengths["zero_shot"],
        batch_size=batch_size,
        feature_converter_name=model.feature_converter_name,
        max_examples=1,
      )
    )
  if first is not None:
    trainer, params = checkpointing.load_params(
      model,
      first,
      checkpoint_path,
      mesh_shape=mesh_shape,
      logical_axis_rules=logical_axis_rules,
      denoiser_names=denoiser_names,
    )
    seconds["restore"] = time.perf_counter() - t0 - sum(seconds.values())
    if batches:
      t = time.perf_counter()
      table = mode_matrix.score_table(trainer, params, batches)
      if "family_loss" in parts:
        results.update(mode_matrix.family_results(table, family_prefix))
      if "mode_matrix" in parts:
        results.update(mode_matrix.matrix_results(table))
      seconds["teacher_forced"] = time.perf_counter() - t
    if rank_tasks:
      t = time.perf_counter()
      scorer = rank_lib.Scorer(trainer)
      for (shots_key, column), name in rank_tasks.items():
        m = rank_lib.evaluate(
          scorer,
          params,
          name,
          rank_lengths[shots_key],
          num_options=len(labels),
          batch_size=batch_size,
          max_examples=rank_max_examples,
          length_normalize=rank_length_normalize,
        )
        results[f"rank_classification/{shots_key}/{column}/accuracy"] = m["accuracy"]
      seconds["rank_classification"] = time.perf_counter() - t
    del params

  if "probes" in parts:
    t = time.perf_counter()
    own_dir = work_dir is None
    work = work_dir or tempfile.mkdtemp(prefix="eval_suite_probes_")
    try:
      results.update(
        probes_lib.run_probes(
          model=model,
          checkpoint_path=checkpoint_path,
          work_dir=work,
          steps=probe_steps,
          batch_size=probe_batch_size,
          learning_rate=probe_learning_rate,
          eval_examples=probe_eval_examples,
          prefix="none" if family_prefix in ("none", "") else "matching",
          corpus=corpus,
          mesh_shape=mesh_shape,
          logical_axis_rules=logical_axis_rules,
          seed=seed,
        )
      )
    finally:
      if own_dir:
        shutil.rmtree(work, ignore_errors=True)
    seconds["probes"] = time.perf_counter() - t
  logging.info("Evaluation suite seconds: %s", {k: round(v, 1) for k, v in seconds.items()})

  if model_dir and jax.process_index() == 0:
    write_results(model_dir, results, checkpoint_path=checkpoint_path, seconds=seconds)
  if verbose and jax.process_index() == 0:
    print(report.markdown(results))
  return results


def write_results(
  model_dir: str,
  results: Mapping[str, float],
  *,
  checkpoint_path: str,
  seconds: Mapping[str, float] | None = None,
) -> str:
  """Writes `model_dir/metrics/eval_suite.json`: `{"step", "checkpoint_path", "results",
  "seconds"}` (`step`: the evaluated checkpoint's, None for converted weights).

  Args:
    model_dir: the run directory.
    results: `run_suite`'s dict.
    checkpoint_path: what was evaluated.
    seconds: wall time per stage.

  Returns:
    The file's path.
  """
  from t5x_ext.training import checkpointing

  path = run_paths.path(model_dir, "metrics", RESULTS_FILE)  # a bucket too: epath
  record = {
    "step": checkpointing.checkpoint_step(checkpoint_path),
    "checkpoint_path": os.fspath(checkpoint_path),
    "results": dict(results),
    "seconds": dict(seconds or {}),
  }
  run_paths.write_text_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
  logging.info("Evaluation suite results: %s", path)
  return os.fspath(path)
