"""Short fine-tuning probes from a checkpoint: classification and generation.

Each probe fine-tunes a copy of the checkpoint's params for a few steps with
`t5x_ext.training.fit.fit(restore_params_from=...)` into its own folder under `work_dir`, then
scores it with `t5x_ext.evaluation.task_eval.evaluate` (the task's SeqIO metrics on greedy predictions of the
validation split):

  probe/classification/accuracy    embedded topic task (8 label words), percent
  probe/generation/<metric>        first sentence of a corpus paragraph from the rest
                                   (`pydocs_first_sentence_v1`), ROUGE-1/2/L F in percent

Both tasks are written with the prefix UL2 fine-tunes them with (`[NLU]` for
classification, `[S2S]` for generation) or with none (`prefix="none"`). A probe folder that
already holds its final checkpoint is evaluated again without training (the ablation resumes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from t5x_ext.errors import UserError
from t5x_ext.modes import MODE_NLU, MODE_S2S
from t5x_ext.training import partitioning

CLASSIFICATION_LENGTHS = {"inputs": 192, "targets": 8}
GENERATION_LENGTHS = {"inputs": 160, "targets": 48}


def probe_tasks(prefix: str = "matching", corpus: str = "pydocs") -> dict[str, str]:
  """Registers and names the probes' tasks for a prefix choice, in the corpus's vocabulary.

  Args:
    prefix: "matching" (`[NLU]` classification, `[S2S]` generation) or "none".
    corpus: the corpus the model was pretrained on; its vocabulary encodes the probe tasks
      (the embedded corpus's tasks keep their usual names; others get the corpus in the name).

  Returns:
    {"classification": task name, "generation": task name}.
  """
  from tasks import evaluation as eval_tasks
  from tasks import vocab as vocab_lib

  if prefix not in ("matching", "none"):
    raise UserError(f"probe prefix={prefix!r}: use 'matching' or 'none'")
  matching = prefix == "matching"
  voc = eval_tasks.corpus_task(corpus).output_features["targets"].vocabulary
  tag = "" if voc == vocab_lib.default_vocabulary() else corpus
  voc = voc if tag else None
  return {
    "classification": eval_tasks.register_topic_classification(
      mode=MODE_NLU if matching else "", vocabulary=voc, tag=tag
    ),
    "generation": eval_tasks.register_first_sentence(
      mode=MODE_S2S if matching else "", vocabulary=voc, tag=tag
    ),
  }


def run_probe(
  *,
  model: Any,
  checkpoint_path: str,
  task_name: str,
  task_feature_lengths: Mapping[str, int],
  probe_dir: str,
  steps: int,
  batch_size: int,
  learning_rate: float,
  eval_examples: int | None,
  mesh_shape: Mapping[str, int] | None = None,
  logical_axis_rules: partitioning.Rules = partitioning.DEFAULT_RULES,
  seed: int = 0,
) -> dict[str, float]:
  """Fine-tunes from `checkpoint_path` for `steps` steps, then runs the task's metrics.

  Args:
    model: the model.
    checkpoint_path: the params to start from.
    task_name: a fine-tuning task with SeqIO metric functions.
    task_feature_lengths: its lengths.
    probe_dir: the fine-tuning run's MODEL_DIR.
    steps: fine-tuning steps.
    batch_size: rows per step (and per eval batch).
    learning_rate: constant Adafactor learning rate.
    eval_examples: validation examples decoded for the metrics (None: all).
    mesh_shape: MESH_SHAPE.
    logical_axis_rules: rules.
    seed: data order and dropout.

  Returns:
    The task's metrics, `{"<metric>": value}` (e.g. `accuracy`, `rouge1`).
  """
  from t5x_ext.evaluation.task_eval import evaluate
  from t5x_ext.training.fit import fit

  fit(
    model=model,
    mixture_or_task_name=task_name,
    task_feature_lengths=task_feature_lengths,
    train_steps=steps,
    model_dir=probe_dir,
    batch_size=batch_size,
    mesh_shape=mesh_shape,
    logical_axis_rules=logical_axis_rules,
    learning_rate=learning_rate,
    seed=seed,
    checkpoint_every=steps,
    keep_checkpoints=1,
    async_checkpointing=False,
    restore_params_from=checkpoint_path,
    log_every=max(steps, 1),
    tensorboard=False,
    progress_bar=False,
  )
  results = evaluate(
    model=model,
    mixture_or_task_name=task_name,
    task_feature_lengths=task_feature_lengths,
    model_dir=probe_dir,
    batch_size=batch_size,
    mesh_shape=mesh_shape,
    logical_axis_rules=logical_axis_rules,
    max_batches=1,
    max_predict_examples=eval_examples,
    seed=seed,
    verbose=False,
  )
  head = f"eval/{task_name}/"
  return {k[len(head) :]: v for k, v in results.items() if k.startswith(head)}


def run_probes(
  *,
  model: Any,
  checkpoint_path: str,
  work_dir: str,
  steps: int,
  batch_size: int = 16,
  learning_rate: float = 1e-3,
  eval_examples: int | None = 128,
  prefix: str = "matching",
  corpus: str = "pydocs",
  which: tuple[str, ...] = ("classification", "generation"),
  mesh_shape: Mapping[str, int] | None = None,
  logical_axis_rules: partitioning.Rules = partitioning.DEFAULT_RULES,
  seed: int = 0,
) -> dict[str, float]:
  """Both probes, each in `work_dir/probe_<name>`.

  Args:
    model: the model.
    checkpoint_path: the params to start from.
    work_dir: where the probes' runs go.
    steps: fine-tuning steps per probe.
    batch_size: rows per step.
    learning_rate: constant learning rate.
    eval_examples: validation examples decoded per probe (None: all).
    prefix: "matching" or "none" (see `probe_tasks`).
    corpus: the pretraining corpus (its vocabulary encodes the tasks).
    which: the probes to run.
    mesh_shape: MESH_SHAPE.
    logical_axis_rules: rules.
    seed: seed.

  Returns:
    `probe/classification/accuracy`, `probe/generation/rouge1`, ... .
  """
  names = probe_tasks(prefix, corpus)
  lengths = {"classification": CLASSIFICATION_LENGTHS, "generation": GENERATION_LENGTHS}
  out: dict[str, float] = {}
  for probe in which:
    metrics = run_probe(
      model=model,
      checkpoint_path=checkpoint_path,
      task_name=names[probe],
      task_feature_lengths=lengths[probe],
      probe_dir=os.path.join(work_dir, f"probe_{probe}"),
      steps=steps,
      batch_size=batch_size,
      learning_rate=learning_rate,
      eval_examples=eval_examples,
      mesh_shape=mesh_shape,
      logical_axis_rules=logical_axis_rules,
      seed=seed,
    )
    out.update({f"probe/{probe}/{k}": v for k, v in metrics.items()})
  return out
