"""Eval-only SeqIO tasks of the evaluation suite (`t5x_ext.evaluation`).

Three kinds, each registered on demand by the suite (registering again replaces a task with an
identical one, so calling a factory twice is harmless):

  <corpus>_eval_family_{r,x,s}_v1   UL2's R, X or S denoisers over a corpus's validation text,
      WITHOUT mode prefixes: the suite generates the examples once and puts each prefix
      (`[NLU]`, `[NLG]`, `[S2S]` or none) in front of the same examples, so the mode-prefix
      matrix compares prefixes on identical inputs and targets. The corpus is anything
      registered with `tasks.pretraining.register_objectives` (its source and vocabulary are
      read from `<corpus>_ul2_mod_v1` or another of its objectives).
  <name>_rank_<k>shot_<mode>_v1      rank classification: one row per (example, label option),
      with `idx` and `is_correct`, for zero-shot (k = 0) or k-shot scoring without fine-tuning
      (`register_rank_classification`; the default is the embedded topic task).
  pydocs_first_sentence_v1          generation probe: write the first sentence of a paragraph
      of the embedded corpus from the rest of it (`[S2S]`, ROUGE); `_nomode` without prefix.
      Paragraphs follow the corpus's document split, so validation text is text that
      pretraining on the corpus's train split never saw.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
import zlib
from collections.abc import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from t5x_ext import objectives
from t5x_ext.errors import UserError
from tasks import corpus, finetune, metrics, pretraining, vocab

VERSION = "v1"
# Families of UL2's denoisers and the mode prefix each was trained with ([UL2] Sec. 3.1.3).
FAMILY_MODES = {"R": objectives.MODE_NLU, "X": objectives.MODE_NLG, "S": objectives.MODE_S2S}


def family_denoisers(
  family: str, denoisers: Sequence[objectives.Denoiser] = objectives.UL2_DENOISERS
) -> tuple[objectives.Denoiser, ...]:
  """The denoisers of one family (those with the family's mode), with the mode removed.

  Args:
    family: "R", "X" or "S".
    denoisers: the mixture to take them from (UL2's by default).

  Returns:
    The family's denoisers, `mode=""` (the suite adds prefixes itself).

  Raises:
    ValueError: for an unknown family or a family with no denoiser in `denoisers`.
  """
  if family not in FAMILY_MODES:
    raise UserError(f"family={family!r} is not one of {tuple(FAMILY_MODES)}")
  out = tuple(dataclasses.replace(d, mode="") for d in denoisers if d.mode == FAMILY_MODES[family])
  if not out:
    raise UserError(f"No denoiser of family {family!r} (mode {FAMILY_MODES[family]}).")
  return out


def corpus_task(corpus_name: str) -> seqio.Task:
  """A registered pretraining task over `corpus_name` (its `ul2_mod` task if there is one).

  Args:
    corpus_name: the `name_prefix` given to `register_objectives` ("pydocs", "c4", ...).

  Returns:
    The task, whose source, reading steps, vocabulary and text key the eval tasks reuse.

  Raises:
    ValueError: nothing is registered under that prefix.
  """
  names = [f"{corpus_name}_{o}_{VERSION}" for o in ("ul2_mod", *pretraining.OBJECTIVES)]
  for name in names:
    if name in seqio.TaskRegistry.names():
      return seqio.get_mixture_or_task(name)
  raise UserError(
    f"corpus={corpus_name!r}: none of {names[:3]}... is registered; register the corpus with "
    "tasks.register_text_files / tasks.pretraining.register_objectives first."
  )


def mode_prefix_settings(task: seqio.Task) -> dict:
  """How a pretraining task encodes its mode prefixes: `mode_prefix` and `mode_token_ids`.

  Args:
    task: a task registered by `register_objectives`.

  Returns:
    `{"mode_prefix": "text" | "token", "mode_token_ids": dict | None}`.
  """
  p = objectives.mod_preprocessor(task)
  if p is not None:
    return {
      "mode_prefix": p.keywords.get("mode_prefix", "text"),
      "mode_token_ids": p.keywords.get("mode_token_ids"),
    }
  return {"mode_prefix": "text", "mode_token_ids": None}


def family_task_name(corpus_name: str, family: str) -> str:
  """`<corpus>_eval_family_<family>_v1`.

  Args:
    corpus_name: the corpus prefix.
    family: "R", "X" or "S".

  Returns:
    The task name.
  """
  return f"{corpus_name}_eval_family_{family.lower()}_{VERSION}"


def register_family_task(
  corpus_name: str,
  family: str,
  *,
  denoisers: Sequence[objectives.Denoiser] | None = None,
) -> str:
  """Registers one family's denoisers, without mode prefixes, over a corpus.

  Before/after (R, tiny): {"text": "a b c d"} -> {"inputs": [a <extra_id_0> d EOS],
  "targets": [<extra_id_0> b c EOS], "denoiser_id": 0} (no `[NLU]` in front).

  The task reads the corpus as its pretraining tasks do: the same source and the same
  reading steps (`pretraining.reading_preprocessors`: for `register_text_files` corpora the
  step that turns numbered JSONL or text lines into documents), then the family's chain.

  Args:
    corpus_name: a corpus registered with `register_objectives` ("pydocs", "c4", ...).
    family: "R", "X" or "S".
    denoisers: the family's denoisers (default `family_denoisers(family)`); the suite passes
      the subset that fits its lengths.

  Returns:
    The task name.
  """
  base = corpus_task(corpus_name)
  chosen = tuple(denoisers) if denoisers is not None else family_denoisers(family)
  name = family_task_name(corpus_name, family)
  pretraining.validate(chosen, name)
  pretraining.register_task(
    name,
    source=base.source,
    preprocessors=[
      *pretraining.reading_preprocessors(base),
      *pretraining.denoising_preprocessors(chosen, pretraining.text_key(base)),
    ],
    output_features=pretraining.output_features(base.output_features["targets"].vocabulary),
    metric_fns=[],
  )
  return name


# ---------------------------------------------------------------------------------- ranking


def mode_ids(mode: str, vocabulary: seqio.Vocabulary) -> list[int]:
  """The ids of a text mode prefix, as the pretraining tasks encode it ([] for "").

  Args:
    mode: "[NLU]", "[NLG]", "[S2S]" or "".
    vocabulary: the vocabulary.

  Returns:
    The ids.
  """
  (ids,) = objectives.mode_prefix_tokens(
    [objectives.Denoiser("prefix", "causal_lm", mode=mode)], vocabulary=vocabulary
  )
  return list(ids)


def _slug(mode: str) -> str:
  return mode.strip("[]").lower() or "nomode"


def rank_task_name(name: str, num_shots: int, mode: str) -> str:
  """`<name>_rank_<k>shot_<mode>_v1`, e.g. `pydocs_topic_rank_0shot_nlu_v1`.

  Args:
    name: the classification task's short name.
    num_shots: demonstrations per input.
    mode: the mode prefix ("" for none).

  Returns:
    The task name.
  """
  return f"{name}_rank_{num_shots}shot_{_slug(mode)}_{VERSION}"


def rank_rows(
  examples: Sequence[Mapping[str, str]],
  labels: Sequence[str],
  *,
  demonstrations: Sequence[Mapping[str, str]] = (),
  num_shots: int = 0,
  seed: int = 0,
  answer_prefix: str = " label:",
  shot_max_chars: int = 200,
) -> list[dict]:
  """Expands classification examples into one row per (example, label option).

  Example (labels ("a", "b"), zero-shot): {"inputs": "topic: x", "targets": "b"} ->
  {"inputs": "topic: x label:", "targets": "a", "idx": 0, "is_correct": 0},
  {"inputs": "topic: x label:", "targets": "b", "idx": 0, "is_correct": 1}.
  With `num_shots` = k, k demonstrations (drawn per example with `seed`, inputs cut to
  `shot_max_chars`) come first, each followed by its answer.

  Args:
    examples: dicts with `inputs` and `targets` text; `targets` must be one of `labels`.
    labels: the label options.
    demonstrations: examples to draw demonstrations from (the train split).
    num_shots: demonstrations per example.
    seed: seed of the demonstration draw.
    answer_prefix: text between an input and its answer.
    shot_max_chars: demonstrations' inputs are cut to this many characters.

  Returns:
    Rows with `inputs`, `targets` (an option), `idx` (the example) and `is_correct` (0/1).

  Raises:
    ValueError: a target is not a label, or too few demonstrations.
  """
  if num_shots and len(demonstrations) < num_shots:
    raise UserError(f"num_shots={num_shots} but only {len(demonstrations)} demonstrations")
  rng = random.Random(seed)
  rows = []
  for idx, ex in enumerate(examples):
    if ex["targets"] not in labels:
      raise UserError(f"example {idx}: target {ex['targets']!r} is not one of {list(labels)}")
    shots = rng.sample(list(demonstrations), num_shots) if num_shots else []
    context = "".join(
      f"{d['inputs'][:shot_max_chars]}{answer_prefix} {d['targets']} " for d in shots
    )
    query = f"{context}{ex['inputs']}{answer_prefix}"
    for label in labels:
      rows.append(
        {
          "inputs": query,
          "targets": label,
          "idx": idx,
          "is_correct": int(label == ex["targets"]),
        }
      )
  return rows


def keep_inputs_end(dataset, sequence_length, output_features, reserve: int = 0):
  """Cuts tokenized `inputs` from the left so that they fit with `reserve` more tokens and EOS.

  Few-shot inputs can be longer than the inputs length; the query and its answer prompt are
  at the end, so the oldest demonstrations are what goes. Example (length 5, reserve 2):
  {"inputs": [1, 2, 3, 4, 5]} -> {"inputs": [4, 5]}.

  Args:
    dataset: tokenized examples.
    sequence_length: the feature lengths.
    output_features: unused (the SeqIO signature).
    reserve: tokens that will be added later (the mode prefix).

  Returns:
    The dataset with short enough `inputs`.
  """
  del output_features
  keep = int(sequence_length["inputs"]) - 1 - reserve
  if keep < 1:
    raise UserError(f"inputs length {sequence_length['inputs']} leaves no room for the input")

  def fn(ex):
    ex = dict(ex)
    ex["inputs"] = ex["inputs"][-keep:]
    return ex

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def register_rank_classification(
  name: str,
  examples_fn: Callable[[str], Sequence[Mapping[str, str]]],
  labels: Sequence[str],
  *,
  num_shots: int = 0,
  mode: str = objectives.MODE_NLU,
  vocabulary: seqio.Vocabulary | None = None,
  seed: int = 0,
  answer_prefix: str = " label:",
  shot_max_chars: int = 200,
) -> str:
  """Registers a rank-classification task for any classification with a small label set.

  Every validation example becomes one row per label (see `rank_rows`); the suite scores each
  row's target with the model and picks the best option per `idx`. The `train` split holds the
  same rows made from training examples (demonstrations drawn from the rest of it).

  Args:
    name: short name, e.g. "pydocs_topic".
    examples_fn: split -> list of `{"inputs", "targets"}` text dicts.
    labels: the label options (targets).
    num_shots: demonstrations (from the train split) per input; 0 for zero-shot.
    mode: the mode prefix put in front of the inputs ("" for none).
    vocabulary: default: the embedded corpus's.
    seed: seed of the demonstration draw.
    answer_prefix: text between an input and its answer.
    shot_max_chars: demonstrations' inputs are cut to this many characters.

  Returns:
    The task name (`rank_task_name(name, num_shots, mode)`).
  """
  task_name = rank_task_name(name, num_shots, mode)
  if mode not in objectives.MODES:
    raise UserError(f"task {task_name!r}: mode={mode!r} is not one of {objectives.MODES}")
  voc = vocabulary or vocab.default_vocabulary()
  labels = tuple(labels)

  @functools.cache
  def rows(split: str) -> list[dict]:
    demos = examples_fn("train") if num_shots else ()
    return rank_rows(
      examples_fn(split),
      labels,
      demonstrations=demos,
      num_shots=num_shots,
      seed=seed + zlib.crc32(split.encode()),
      answer_prefix=answer_prefix,
      shot_max_chars=shot_max_chars,
    )

  def dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None):
    del shuffle_files, seed
    r = rows(split)
    return tf.data.Dataset.from_tensor_slices(
      {
        "inputs": [x["inputs"] for x in r],
        "targets": [x["targets"] for x in r],
        "idx": tf.constant([x["idx"] for x in r], tf.int32),
        "is_correct": tf.constant([x["is_correct"] for x in r], tf.int32),
      }
    )

  prefix_len = len(mode_ids(mode, voc))
  pretraining.register_task(
    task_name,
    source=corpus.InMemorySource(dataset_fn, corpus.SPLITS),
    preprocessors=[
      seqio.preprocessors.tokenize,
      functools.partial(keep_inputs_end, reserve=prefix_len),
      functools.partial(finetune.prepend_mode, mode=mode),
      seqio.preprocessors.append_eos_after_trim,
    ],
    output_features=pretraining.output_features(voc),
    metric_fns=[],
  )
  return task_name


def topic_examples(split: str) -> list[dict]:
  """The embedded topic task as `{"inputs", "targets"}` text (as its fine-tuning task words it).

  Args:
    split: "train" or "validation".

  Returns:
    The examples, in the task's fixed order.
  """
  return [
    {"inputs": f"topic: {e['text']}", "targets": e["label"]} for e in finetune.topic_examples(split)
  ]


TOPIC_LABELS = tuple(sorted(set(finetune.TOPIC_PACKAGES.values())))
# The suite's default rank-classification task (see `t5x_ext.evaluation.suite.run_suite`).
TOPIC_RANK_TASK = {"name": "pydocs_topic", "examples_fn": topic_examples, "labels": TOPIC_LABELS}


def rank_vocabulary(spec: Mapping) -> seqio.Vocabulary:
  """The vocabulary of a rank-task spec (its "vocabulary", else the embedded corpus's).

  Args:
    spec: {"name", "examples_fn", "labels", optional "vocabulary"}.

  Returns:
    The vocabulary.
  """
  return spec.get("vocabulary") or vocab.default_vocabulary()


def register_topic_rank_classification(
  *, num_shots: int = 0, mode: str = objectives.MODE_NLU, seed: int = 0
) -> str:
  """Rank classification on the embedded topic task (8 label words).

  Args:
    num_shots: demonstrations per input.
    mode: the mode prefix ("" for none).
    seed: seed of the demonstration draw.

  Returns:
    The task name, e.g. `pydocs_topic_rank_0shot_nlu_v1`.
  """
  return register_rank_classification(
    "pydocs_topic", topic_examples, TOPIC_LABELS, num_shots=num_shots, mode=mode, seed=seed
  )


# ------------------------------------------------------------------------------- generation

_FIRST_SENTENCE = re.compile(r"(.{20,160}?[.!?])\s+([A-Z].{60,})")
FIRST_SENTENCE_MAX_CHARS = 400


def _split_paragraphs(split: str) -> list[tuple[str, str, str]]:
  out = []
  for d in corpus.split_documents(split):
    for para in d["text"].split("\n\n"):
      m = _FIRST_SENTENCE.match(" ".join(para.split()))
      if m:
        out.append((m.group(0), m.group(1), m.group(2)))
  return out


@functools.cache
def first_sentence_examples(split: str) -> list[dict]:
  """Paragraphs of the embedded corpus split into a first sentence and the rest.

  A paragraph qualifies when its first sentence has 20-160 characters and the rest at least
  60; the rest is cut to 400 characters. Documents keep the corpus's split, and validation
  drops paragraphs that also occur in training documents (the stdlib repeats some).

  Args:
    split: "train" or "validation".

  Returns:
    `{"rest", "first"}` dicts in corpus order, duplicates dropped.
  """
  if split not in corpus.SPLITS:
    raise UserError(f"split={split!r} is not one of {corpus.SPLITS}")
  seen = {p for p, _, _ in _split_paragraphs("train")} if split != "train" else set()
  out = []
  for para, first, rest in _split_paragraphs(split):
    if para not in seen:
      seen.add(para)
      out.append({"rest": rest[:FIRST_SENTENCE_MAX_CHARS], "first": first})
  return out


def _first_sentence_dataset(split: str, shuffle_files: bool = False, seed: int | None = None):
  del shuffle_files, seed
  exs = first_sentence_examples(split)
  return tf.data.Dataset.from_tensor_slices(
    {"rest": [e["rest"] for e in exs], "first": [e["first"] for e in exs]}
  )


@seqio.map_over_dataset
def _first_sentence_format(ex):
  return {"inputs": tf.strings.join(["first sentence: ", ex["rest"]]), "targets": ex["first"]}


def register_first_sentence(
  *,
  mode: str = objectives.MODE_S2S,
  vocabulary: seqio.Vocabulary | None = None,
  tag: str = "",
) -> str:
  """Registers the generation probe: the first sentence of a paragraph from the rest.

  Before/after: {"rest": "It returns ...", "first": "Parse a header."} ->
  {"inputs": "[S2S] first sentence: It returns ...", "targets": "Parse a header."}.

  Args:
    mode: the mode prefix ("" for none).
    vocabulary: default: the embedded corpus's.
    tag: put in the name (for another vocabulary, e.g. the corpus name "c4").

  Returns:
    `pydocs_first_sentence_v1` for `[S2S]`, else `pydocs_first_sentence_<mode>_v1`
    (`..._<tag>_v1` with a tag).
  """
  suffix = "" if mode == objectives.MODE_S2S else f"_{_slug(mode)}"
  name = f"pydocs_first_sentence{suffix}{'_' + tag if tag else ''}_{VERSION}"
  if mode not in objectives.MODES:
    raise UserError(f"task {name!r}: mode={mode!r} is not one of {objectives.MODES}")
  pretraining.register_task(
    name,
    source=corpus.InMemorySource(_first_sentence_dataset, corpus.SPLITS),
    preprocessors=[
      _first_sentence_format,
      seqio.preprocessors.tokenize,
      functools.partial(finetune.prepend_mode, mode=mode),
      seqio.preprocessors.append_eos_after_trim,
    ],
    output_features=pretraining.output_features(vocabulary or vocab.default_vocabulary()),
    metric_fns=[metrics.rouge],
  )
  return name


def _topic_text_dataset(split: str, shuffle_files: bool = False, seed: int | None = None):
  del shuffle_files, seed
  exs = topic_examples(split)
  return tf.data.Dataset.from_tensor_slices(
    {"inputs": [e["inputs"] for e in exs], "targets": [e["targets"] for e in exs]}
  )


def register_topic_classification(
  *, mode: str = objectives.MODE_NLU, vocabulary: seqio.Vocabulary | None = None, tag: str = ""
) -> str:
  """The embedded topic task for the classification probe, in any vocabulary.

  With the embedded vocabulary and no tag this is `tasks.finetune`'s
  `pydocs_topic_classification{,_nlg,_s2s,_nomode}_v1`; otherwise the same examples and
  metric as `pydocs_topic_classification_<mode>_<tag>_v1`.

  Args:
    mode: the mode prefix ("" for none).
    vocabulary: default: the embedded corpus's.
    tag: put in the name (for another vocabulary, e.g. the corpus name "c4").

  Returns:
    The task name.
  """
  if vocabulary is None and not tag:
    return finetune.register_pydocs_topic(mode=mode)
  name = f"pydocs_topic_classification_{_slug(mode)}{'_' + tag if tag else ''}_{VERSION}"
  if mode not in objectives.MODES:
    raise UserError(f"task {name!r}: mode={mode!r} is not one of {objectives.MODES}")
  pretraining.register_task(
    name,
    source=corpus.InMemorySource(_topic_text_dataset, corpus.SPLITS),
    preprocessors=[
      seqio.preprocessors.tokenize,
      functools.partial(finetune.prepend_mode, mode=mode),
      seqio.preprocessors.append_eos_after_trim,
    ],
    output_features=pretraining.output_features(vocabulary or vocab.default_vocabulary()),
    metric_fns=[metrics.accuracy],
  )
  return name
