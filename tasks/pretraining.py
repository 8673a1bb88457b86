"""Registering the pretraining objectives (UL2 MoD, UL2R, T5 span corruption, prefix LM,
causal LM) over any text source.

Every source registers one task per objective of `OBJECTIVES`, `<prefix>_<objective>_v1`,
whose preprocessors are:

  rekey(text -> targets) -> tokenize -> mixture_of_denoisers(denoisers, append_eos=True)

(`append_eos=True` gives what a following `seqio.preprocessors.append_eos_after_trim`
would, added to whole batches instead of example by example.)

Before/after (UL2 MoD, tiny): {"text": "a b c d"} -> {"inputs": [[NLU] a <extra_id_0> d EOS],
"targets": [<extra_id_0> b c EOS], "denoiser_id": 0}.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence

import seqio

from t5x_ext import objectives
from t5x_ext.errors import UserError
from t5x_ext.objectives import codet5p

VERSION = "v1"

# [UL2] Sec. 4 ablations: the UL2 mixture without its mode prefixes (the same denoisers and
# rates, `mode=""`), and SCLM, T5 span corruption (mu=3, r=0.15) and a causal LM mixed in
# equal parts, both without prefixes, as the paper describes its SCLM baseline.
UL2_DENOISERS_NO_PREFIX: tuple = tuple(
  dataclasses.replace(d, mode="") for d in objectives.UL2_DENOISERS
)
SCLM_DENOISERS: tuple = (
  dataclasses.replace(objectives.T5_SPAN_CORRUPTION[0], rate=0.5),
  dataclasses.replace(objectives.CAUSAL_LM[0], rate=0.5),
)

# Objective name -> denoisers; the name is part of the task name.
OBJECTIVES: dict[str, tuple] = {
  "ul2_mod": objectives.UL2_DENOISERS,
  "ul2r_mod": objectives.UL2R_DENOISERS,
  "span_corruption": objectives.T5_SPAN_CORRUPTION,
  "prefix_lm": objectives.PREFIX_LM,
  "causal_lm": objectives.CAUSAL_LM,
  "ul2_mod_noprefix": UL2_DENOISERS_NO_PREFIX,
  "sclm": SCLM_DENOISERS,
  # [BART] the released BART-large noises: text infilling (mask 30% of words, Poisson(3.5)
  # spans, one mask each, 10% random), every sentence permuted (`objectives/bart.py`).
  "bart": objectives.BART_LARGE,
  # [CodeT5+] Sec. 3.1, first stage: span denoising, seq2seq causal LM (pivot in 10-90%),
  # causal LM with only `[CLM]` in the encoder; equal rates (`objectives/codet5p.py`).
  "codet5p": codet5p.CODET5P_DENOISERS,
}


def register_task(name: str, **kwargs) -> seqio.Task:
  """Registers a SeqIO task, replacing one of the same name (so registering is idempotent).

  Args:
    name: task name.
    **kwargs: `seqio.Task` arguments.

  Returns:
    The registered task.
  """
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kwargs)


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """The `inputs`/`targets` features every task here uses (both get EOS).

  Args:
    vocabulary: the task's vocabulary.

  Returns:
    A dict of `seqio.Feature`s.
  """
  return {
    "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
    "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


def denoising_preprocessors(
  denoisers: Sequence,
  text_key: str = "text",
  mode_prefix: str = "text",
  mode_token_ids: Mapping[str, int] | None = None,
) -> list:
  """The preprocessor chain that turns raw documents into MoD examples.

  Args:
    denoisers: the mixture (`t5x_ext.objectives.Denoiser`s).
    text_key: the source feature holding the document text.
    mode_prefix: "text" (mode prefix encoded as text, what released UL2 checkpoints saw) or
      "token" (one reserved token per mode).
    mode_token_ids: for "token": {mode: id}, e.g. {"[NLU]": 8000, "[NLG]": 8001, "[S2S]": 8002}.

  Returns:
    A list of SeqIO preprocessors.
  """
  return [
    functools.partial(seqio.preprocessors.rekey, key_map={"targets": text_key}),
    seqio.preprocessors.tokenize,
    functools.partial(
      objectives.mixture_of_denoisers,
      denoisers=tuple(denoisers),
      mode_prefix=mode_prefix,
      mode_token_ids=dict(mode_token_ids) if mode_token_ids else None,
      append_eos=True,
    ),
  ]


def validate(
  denoisers: Sequence,
  name: str,
  *,
  mode_prefix: str = "text",
  mode_token_ids: Mapping[str, int] | None = None,
  vocabulary: seqio.Vocabulary | None = None,
  sequence_length: Mapping[str, int] | None = None,
) -> None:
  """Checks a denoiser configuration at registration, naming the task on failure.

  Without `sequence_length` only the settings are checked (densities, span lengths, rates,
  modes): registering must not load a vocabulary. With it (and the vocabulary) the lengths are
  planned too, so lengths too short for a denoiser or needing more sentinels than extra ids
  fail here rather than when the data is first read.

  Args:
    denoisers: the mixture.
    name: task name, for the error message.
    mode_prefix: "text" or "token".
    mode_token_ids: {mode: id} for "token".
    vocabulary: the task's vocabulary (needed with `sequence_length`).
    sequence_length: feature lengths to plan for, optional.

  Raises:
    ValueError: if the objectives package rejects the configuration.
  """
  try:
    objectives.validate_denoisers(
      tuple(denoisers),
      vocabulary=vocabulary if sequence_length is not None else None,
      sequence_length=sequence_length,
      mode_prefix=mode_prefix,
      mode_token_ids=mode_token_ids,
    )
  except ValueError as e:
    raise UserError(f"task {name!r}: {e}") from e


def register_objectives(
  name_prefix: str,
  source: seqio.DataSource,
  vocabulary: seqio.Vocabulary,
  *,
  text_key: str = "text",
  objectives_map: Mapping[str, Sequence] | None = None,
  mode_prefix: str = "text",
  mode_token_ids: Mapping[str, int] | None = None,
  version: str = VERSION,
  check_lengths: Mapping[str, int] | None = None,
  reading_preprocessors: Sequence = (),
) -> list[str]:
  """Registers `<name_prefix>_<objective>_<version>` for each objective over `source`.

  Args:
    name_prefix: e.g. "pydocs" or "c4".
    source: a SeqIO data source; after `reading_preprocessors` its examples hold `text_key`
      strings.
    vocabulary: the vocabulary of `inputs` and `targets`.
    text_key: the source's text feature.
    objectives_map: objective name -> denoisers; default `OBJECTIVES` (all of them; with
      `mode_prefix="token"`, those whose modes have no id in `mode_token_ids`, e.g. CodeT5+'s
      `[CLM]`, are skipped with a warning: name them in `objectives_map` to get an error).
    mode_prefix: "text" or "token" (see `denoising_preprocessors`).
    mode_token_ids: {mode: id} for "token".
    version: version suffix of the names.
    check_lengths: if given, plan each objective for these feature lengths now (loads the
      vocabulary) so bad lengths fail at registration.
    reading_preprocessors: the corpus's reading steps, run before the denoising chain (e.g.
      `tasks.text_files`' numbered lines -> documents). Every task derived from the corpus
      (the evaluation suite's) reuses them: see `reading_preprocessors`.

  Returns:
    The registered task names.

  Raises:
    ValueError: a denoiser configuration is invalid (named with the task).
  """
  names = []
  for objective, denoisers in (objectives_map or OBJECTIVES).items():
    name = f"{name_prefix}_{objective}_{version}"
    missing = {d.mode for d in denoisers if d.mode} - set(mode_token_ids or {})
    if objectives_map is None and mode_prefix == "token" and mode_token_ids and missing:
      logging.warning(
        "Not registering %s: its modes %s have no id in mode_token_ids.", name, sorted(missing)
      )
      continue
    validate(
      denoisers,
      name,
      mode_prefix=mode_prefix,
      mode_token_ids=mode_token_ids,
      vocabulary=vocabulary,
      sequence_length=check_lengths,
    )
    register_task(
      name,
      source=source,
      preprocessors=[
        *reading_preprocessors,
        *denoising_preprocessors(denoisers, text_key, mode_prefix, mode_token_ids),
      ],
      output_features=output_features(vocabulary),
      metric_fns=[],
    )
    names.append(name)
  return names


# The denoisers a task applies (None for other tasks): the library's one definition.
task_denoisers = objectives.denoisers_of


def _denoising_start(task: seqio.Task) -> int | None:
  """Index of the denoising chain's first step (`rekey(targets <- text)`, then `tokenize`)."""
  steps = list(task.preprocessors)
  for i in range(len(steps) - 2, -1, -1):
    p = steps[i]
    if (
      isinstance(p, functools.partial)
      and p.func is seqio.preprocessors.rekey
      and set(p.keywords.get("key_map", {})) == {"targets"}
      and steps[i + 1] is seqio.preprocessors.tokenize
    ):
      return i
  return None


def reading_preprocessors(task: seqio.Task) -> tuple:
  """The reading steps of a corpus's task: its preprocessors before the denoising chain.

  A task derived from the same corpus (another mixture, the evaluation suite's per-family
  tasks) runs these on the corpus's source before its own chain, so it reads the corpus
  exactly as pretraining does (JSONL or text lines -> documents, a user's filters). Example:
  a `register_text_files` task's steps are `[lines_to_documents, rekey, tokenize, mixture]`
  and this returns `(lines_to_documents,)`; a `pydocs` task's return `()`.

  Args:
    task: a task registered by `register_objectives` (its chain starts with
      `rekey(targets <- text_key)` then `tokenize`).

  Returns:
    The steps before that chain (all steps if the task has no such chain).
  """
  start = _denoising_start(task)
  steps = tuple(task.preprocessors)
  return steps if start is None else steps[:start]


def text_key(task: seqio.Task) -> str:
  """The document feature a task's denoising chain reads (after its reading steps).

  Args:
    task: a task registered by `register_objectives`.

  Returns:
    The key its `rekey` step maps to `targets` ("text" when there is none).
  """
  start = _denoising_start(task)
  if start is None:
    return "text"
  return task.preprocessors[start].keywords["key_map"]["targets"]
