"""Self-pretraining tasks: a denoising objective over a downstream task's own inputs.

"Never train from scratch" (Amos, Berant, Gupta 2023, arXiv:2310.02980): before fine-tuning,
pretrain on the downstream task's own inputs with a denoising objective. For a registered
task `<task>`, `register_self_pretraining(<task>, objective)` registers
`<task>_self_<objective>_v1`, whose

  source         the TRAIN split of `<task>` only (the task has no other split), each example
                 reduced to one document: the text of its `inputs` (`inputs_pretokenized`
                 after the task's own preprocessors; decoded `inputs` ids where the task keeps
                 no text). Targets and labels are dropped: the documents hold nothing else.
  preprocessors  the objective's denoising chain, as every corpus's pretraining tasks
                 (`tasks.pretraining.denoising_preprocessors`):
                 rekey(text -> targets) -> tokenize -> mixture_of_denoisers(OBJECTIVES[...])

Before/after (topic task, objective "ul2_mod"): the train example {"inputs": "[NLU] topic:
Create a new event loop ...", "targets": "asyncio"} -> the document {"text": "topic: Create a
new event loop ..."} -> UL2 examples such as {"inputs": [[NLU] topic: Create a <extra_id_0>
event loop ... EOS], "targets": [<extra_id_0> new EOS], "denoiser_id": 0}. (The task's mode
prefix is added to the token ids after its text is kept, so it is not in the document; the
objective puts its own prefixes in front.)

The vocabulary is the downstream task's `inputs` vocabulary, so the checkpoint fine-tunes on
the task with the same ids.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from t5x_ext.errors import UserError
from tasks import pretraining

VERSION = "v1"
TRAIN_SPLIT = "train"
# The text feature seqio's `tokenize` keeps next to the ids (copy_pretokenized=True).
PRETOKENIZED_SUFFIX = "_pretokenized"


def self_pretraining_name(task_name: str, objective: str, version: str = VERSION) -> str:
  """The name `register_self_pretraining` gives the task.

  Args:
    task_name: the downstream task, e.g. "pydocs_topic_classification_v1".
    objective: the objective's name, e.g. "ul2_mod".
    version: version suffix.

  Returns:
    `<task_name>_self_<objective>_<version>`.
  """
  return f"{task_name}_self_{objective}_{version}"


def input_documents(
  task: seqio.Task,
  *,
  inputs_key: str = "inputs",
  seed: int | None = None,
  shard_info: seqio.ShardInfo | None = None,
) -> tf.data.Dataset:
  """The downstream task's train-split inputs as documents `{"text": <inputs text>}`.

  Reads the task as it reads itself (its source and every preprocessor, unshuffled, no
  trimming) and keeps only the text of `inputs_key`: `<inputs_key>_pretokenized` when the
  task's `tokenize` left it, else the ids decoded with the task's vocabulary (truncated at
  EOS; then the task's own id-level prefixes, such as a mode prefix, are in the text).

  Args:
    task: a registered SeqIO task with a train split and an `inputs_key` feature.
    inputs_key: the feature whose text becomes the documents.
    seed: seed of the task's random preprocessors, if any.
    shard_info: this host's shard of the task.

  Returns:
    A dataset of `{"text": tf.string}`.
  """
  ds = task.get_dataset(
    sequence_length=None,
    split=TRAIN_SPLIT,
    shuffle=False,
    seed=seed,
    shard_info=shard_info,
    num_epochs=1,
  )
  text_key = inputs_key + PRETOKENIZED_SUFFIX
  if text_key in ds.element_spec:
    return ds.map(lambda ex: {"text": ex[text_key]}, num_parallel_calls=tf.data.AUTOTUNE)
  vocabulary = task.output_features[inputs_key].vocabulary

  def decode(ex):
    return {"text": vocabulary.decode_tf(tf.cast(ex[inputs_key], tf.int32))}

  return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def _check_task(task: seqio.Task, task_name: str, inputs_key: str) -> None:
  if not isinstance(task, seqio.Task):
    raise UserError(
      f"{task_name!r} is a mixture: self-pretraining reads one task's inputs; name one of "
      "its tasks."
    )
  if TRAIN_SPLIT not in task.splits:
    raise UserError(
      f"task {task_name!r} has no {TRAIN_SPLIT!r} split (splits: {sorted(task.splits)}): "
      "self-pretraining reads the train split only."
    )
  if inputs_key not in task.output_features:
    raise UserError(
      f"task {task_name!r} has no {inputs_key!r} feature (features: "
      f"{sorted(task.output_features)}): nothing to pretrain on."
    )


def register_self_pretraining(
  task_name: str,
  objective: str = "ul2_mod",
  *,
  denoisers: Sequence | None = None,
  inputs_key: str = "inputs",
  mode_prefix: str = "text",
  mode_token_ids: Mapping[str, int] | None = None,
  version: str = VERSION,
  check_lengths: Mapping[str, int] | None = None,
) -> str:
  """Registers `<task_name>_self_<objective>_<version>`: `objective` over the task's inputs.

  Registering again replaces the task with an identical one (idempotent). The downstream
  task is looked up now and read when the new task is read.

  Args:
    task_name: a registered SeqIO task (not a mixture) with a train split.
    objective: a key of `tasks.pretraining.OBJECTIVES` ("ul2_mod", "bart", "span_corruption",
      ...), or any name with `denoisers` given.
    denoisers: the mixture to apply instead of `OBJECTIVES[objective]`.
    inputs_key: the downstream feature whose text becomes the documents.
    mode_prefix: "text" or "token" (`tasks.pretraining.denoising_preprocessors`).
    mode_token_ids: {mode: id} for "token".
    version: version suffix of the name.
    check_lengths: if given, plan the objective for these feature lengths now (loads the
      vocabulary), so lengths too short for a denoiser fail here.

  Returns:
    The registered task's name.

  Raises:
    UserError: (a ValueError) an unknown task or objective, a mixture, a task without a
      train split or `inputs_key`, or a denoiser configuration the objectives reject.
  """
  if not re.fullmatch(r"[A-Za-z0-9_]+", objective):
    raise UserError(f"objective = {objective!r}: use letters, digits and '_' (it is in the name).")
  if denoisers is None:
    if objective not in pretraining.OBJECTIVES:
      raise UserError(
        f"objective = {objective!r} is not one of {sorted(pretraining.OBJECTIVES)}; pass "
        "denoisers= for another mixture."
      )
    denoisers = pretraining.OBJECTIVES[objective]
  try:
    downstream = seqio.get_mixture_or_task(task_name)
  except ValueError:
    raise UserError(
      f"task {task_name!r} is not registered (import the module that registers it)."
    ) from None
  _check_task(downstream, task_name, inputs_key)
  name = self_pretraining_name(task_name, objective, version)
  vocabulary = downstream.output_features[inputs_key].vocabulary
  pretraining.validate(
    denoisers,
    name,
    mode_prefix=mode_prefix,
    mode_token_ids=mode_token_ids,
    vocabulary=vocabulary,
    sequence_length=check_lengths,
  )

  def dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files  # the examples are shuffled by the task that reads them
    if split != TRAIN_SPLIT:  # the source declares no other split; never read validation
      raise UserError(f"{name!r} has only the {TRAIN_SPLIT!r} split, not {split!r}.")
    # Look the task up when read, so a re-registered downstream task is the one read.
    return input_documents(seqio.get_mixture_or_task(task_name), inputs_key=inputs_key, seed=seed)

  pretraining.register_task(
    name,
    source=seqio.FunctionDataSource(dataset_fn, splits=(TRAIN_SPLIT,), caching_permitted=False),
    preprocessors=pretraining.denoising_preprocessors(
      denoisers, "text", mode_prefix, mode_token_ids
    ),
    output_features=pretraining.output_features(vocabulary),
    metric_fns=[],
  )
  return name
