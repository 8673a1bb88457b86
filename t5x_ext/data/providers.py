"""What the entry points need from the data side: task lookup, checks, denoisers, samples.

Imports SeqIO and TensorFlow (through `t5x_ext.data` and `tasks`), so only the entry points
import it, and only when they read a SeqIO task; the trainer never does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from t5x_ext.errors import UserError
from t5x_ext.modes import UL2_MODES


def get_provider(mixture_or_task_name: str):
  """Returns the SeqIO task or mixture, registering this project's tasks first.

  Args:
    mixture_or_task_name: the MIXTURE_OR_TASK_NAME setting.

  Returns:
    The `seqio.Task` or `seqio.Mixture`.

  Raises:
    ValueError: naming MIXTURE_OR_TASK_NAME and the value when it is not registered.
  """
  import seqio

  import tasks  # noqa: F401 - registers the project's tasks

  if not isinstance(mixture_or_task_name, str):
    raise UserError(f"MIXTURE_OR_TASK_NAME = {mixture_or_task_name!r}: must be a string.")
  try:
    return seqio.get_mixture_or_task(mixture_or_task_name)
  except ValueError:
    known = sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names())
    close = [n for n in known if mixture_or_task_name.split("_")[0] in n][:8]
    raise UserError(
      f"MIXTURE_OR_TASK_NAME = {mixture_or_task_name!r} is not a registered SeqIO task or "
      f"mixture (similar: {close or known[:8]})."
    ) from None


def denoisers_of(provider) -> tuple | None:
  """The denoisers whose ids appear in `decoder_denoiser_ids`, or None.

  `t5x_ext.objectives.denoisers_of` (imported here when called: it needs TensorFlow).

  Args:
    provider: a SeqIO task or mixture.

  Returns:
    A tuple of `t5x_ext.objectives.Denoiser`, or None for tasks without a MoD preprocessor.
  """
  from t5x_ext import objectives

  return objectives.denoisers_of(provider)


def vocabulary_of(provider):
  """The `targets` vocabulary of a task or mixture (builds the default one on first use).

  Args:
    provider: a SeqIO task or mixture.

  Returns:
    A `seqio.Vocabulary`.
  """
  return provider.output_features["targets"].vocabulary


def check_task(
  provider,
  task_feature_lengths: Mapping[str, int],
  *,
  model_vocab_size: int | None = None,
  plan: bool = True,
) -> None:
  """Fails early when the lengths or the vocabulary do not fit the task.

  Args:
    provider: the task or mixture.
    task_feature_lengths: the TASK_FEATURE_LENGTHS setting.
    model_vocab_size: the network's vocabulary size (VOCAB_SIZE), if known.
    plan: also plan the task's denoisers for these lengths (off where the task's examples
      are not read, e.g. inference on typed prompts).

  Raises:
    ValueError: naming TASK_FEATURE_LENGTHS (with the objectives' explanation) when a
      denoiser cannot fit, or VOCAB_SIZE when the task's vocabulary is larger.
  """
  from t5x_ext import objectives

  if not isinstance(task_feature_lengths, Mapping) or not task_feature_lengths:
    raise UserError(
      f"TASK_FEATURE_LENGTHS = {task_feature_lengths!r}: must be a dict like "
      "{'inputs': 512, 'targets': 114}."
    )
  for key, value in task_feature_lengths.items():
    if key not in ("inputs", "targets"):
      raise UserError(
        f"TASK_FEATURE_LENGTHS has unknown feature {key!r} (value {value!r}); "
        "use 'inputs' and 'targets'."
      )
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
      raise UserError(f"TASK_FEATURE_LENGTHS[{key!r}] = {value!r}: must be a positive int.")
  vocab = vocabulary_of(provider)
  if model_vocab_size is not None and vocab.vocab_size > model_vocab_size:
    raise UserError(
      f"VOCAB_SIZE = {model_vocab_size} is smaller than the vocabulary of "
      f"{provider.name!r} ({vocab.vocab_size} ids)."
    )
  for task in (getattr(provider, "tasks", None) or [provider]) if plan else ():
    p = objectives.mod_preprocessor(task)
    if p is None:
      continue
    kw = p.keywords
    try:
      objectives.validate_denoisers(
        tuple(kw.get("denoisers", objectives.UL2_DENOISERS)),
        vocabulary=vocab,
        sequence_length=dict(task_feature_lengths),
        mode_prefix=kw.get("mode_prefix", "text"),
        mode_token_ids=kw.get("mode_token_ids"),
      )
    except ValueError as e:
      raise UserError(
        f"TASK_FEATURE_LENGTHS = {dict(task_feature_lengths)} does not fit task {task.name!r}: {e}"
      ) from e


def sample_examples(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  *,
  feature_converter_name: str,
  modes: Sequence[str] = UL2_MODES,
  per_mode: int = 1,
  split: str = "validation",
  scan: int = 256,
) -> tuple[list[dict], dict[str, np.ndarray]]:
  """Picks validation examples made by denoisers of each mode, as one unpacked batch.

  Args:
    mixture_or_task_name: the task.
    task_feature_lengths: feature lengths.
    feature_converter_name: the model's converter.
    modes: which mode prefixes to show.
    per_mode: examples per mode.
    split: split to draw from (falls back to "train" when the task has no such split).
    scan: look at most at this many examples.

  Returns:
    `(examples, batch)`: decoded examples (with `mode` and `denoiser` names added) and their
    rows as a numpy batch, in the same order. Empty when nothing matched.
  """
  from t5x_ext.data import pipeline

  provider = get_provider(mixture_or_task_name)
  denoisers = denoisers_of(provider) or ()
  if split not in provider.splits:
    split = "train"
  wanted = {m: per_mode for m in modes}
  examples, rows = [], []
  for exs, batch in pipeline.get_infer_batches(
    mixture_or_task_name,
    task_feature_lengths,
    split=split,
    batch_size=32,
    feature_converter_name=feature_converter_name,
    max_examples=scan,
  ):
    for i, ex in enumerate(exs):
      k = ex.get("denoiser_id")
      if k is None or not 0 <= int(k) < len(denoisers):
        continue
      mode = denoisers[int(k)].mode
      if wanted.get(mode, 0) > 0:
        wanted[mode] -= 1
        examples.append({**ex, "mode": mode, "denoiser": denoisers[int(k)].name})
        rows.append({key: v[i] for key, v in batch.items()})
    if not any(wanted.values()):
      break
  if not rows:
    return [], {}
  order = sorted(range(len(examples)), key=lambda i: list(modes).index(examples[i]["mode"]))
  examples = [examples[i] for i in order]
  batch = {key: np.stack([rows[i][key] for i in order]) for key in rows[0]}
  return examples, batch


def decode_ids(vocabulary, ids: Sequence[int]) -> str:
  """Decodes ids up to the first EOS (`vocabulary.eos_id`) or padding (0), showing
  sentinels as `<extra_id_N>`.

  SeqIO's own `decode` turns sentinels into unknown tokens, which hides what a span
  denoiser asked for and what the model filled in. The splitting is `display.segments`'.

  Args:
    vocabulary: a `seqio.Vocabulary`.
    ids: token ids.

  Returns:
    The text.
  """
  from t5x_ext.data.display import segments

  ids = np.asarray(ids).reshape(-1).tolist()
  if 0 in ids:
    ids = ids[: ids.index(0)]
  pieces = []
  for seg in segments(ids, vocabulary):
    if seg[0] == "eos":
      break
    pieces.append(seg[1] if seg[0] == "text" else f"<extra_id_{seg[1]}>")
  return " ".join(pieces)
