"""Fine-tuning tasks with UL2 mode switching: the mode prefix starts every `inputs`.

UL2 fine-tunes with the paradigm token that suits the task ([UL2] Sec. 3.1.3, Tay et al.
2022): `[NLU]` for classification, `[S2S]` for sequence-to-sequence such as summarization.
The prefix is encoded with the task's vocabulary exactly as the pretraining mixture encodes it
(`t5x_ext.objectives.mode_prefix_tokens`), so a fine-tuned model sees the same ids it was
pretrained with. Each factory takes `mode` (any of `t5x_ext.objectives.MODES`; "" for none) and
puts it in the task name.

Registered by `import tasks`:
  glue_sst2_nlu_v1              TFDS glue/sst2, targets "negative"/"positive", accuracy
  cnn_dailymail_s2s_v1          TFDS cnn_dailymail, article -> highlights, ROUGE
  pydocs_topic_classification_v1  embedded corpus (no download): which stdlib package a
                                  docstring paragraph comes from, 8 label words, accuracy
"""

from __future__ import annotations

import functools
import zlib

import seqio
import tensorflow as tf

from t5x_ext import objectives
from t5x_ext.errors import UserError
from tasks import c4, corpus, metrics, pretraining, vocab

SST2_LABELS = ("negative", "positive")
# Packages of the embedded corpus with enough distinct prose to learn from; `_pydecimal` is the
# pure-Python `decimal`.
TOPIC_PACKAGES = {
  "asyncio": "asyncio",
  "email": "email",
  "http": "http",
  "logging": "logging",
  "turtle": "turtle",
  "unittest": "unittest",
  "xml": "xml",
  "_pydecimal": "decimal",
}
TOPIC_PER_CLASS = 150
TOPIC_MAX_CHARS = 600


def _mode_slug(mode: str) -> str:
  return mode.strip("[]").lower() or "nomode"


def _check_mode(mode: str, name: str) -> None:
  if mode not in objectives.MODES:
    raise UserError(f"task {name!r}: mode={mode!r} is not one of {objectives.MODES}")


def prepend_mode(dataset, output_features, mode: str):
  """Prepends the mode prefix's token ids to tokenized `inputs`.

  Example ("[NLU]" encodes to [11, 12]): {"inputs": [5, 6]} -> {"inputs": [11, 12, 5, 6]}.

  Args:
    dataset: examples with tokenized `inputs`.
    output_features: the task's features (the `inputs` vocabulary encodes the mode).
    mode: "[NLU]", "[NLG]", "[S2S]" or "" (no change).

  Returns:
    The dataset with the prefix in front of `inputs`.
  """
  if not mode:
    return dataset
  (ids,) = objectives.mode_prefix_tokens(
    [objectives.Denoiser("finetune", "causal_lm", mode=mode)],
    vocabulary=output_features["inputs"].vocabulary,
  )
  prefix = tf.constant(ids, tf.int32)

  def fn(ex):
    ex = dict(ex)
    ex["inputs"] = tf.concat([prefix, tf.cast(ex["inputs"], tf.int32)], axis=0)
    return ex

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _tfds_vocab(vocabulary, vocabulary_path, extra_ids):
  if vocabulary is not None:
    return vocabulary
  return seqio.SentencePieceVocabulary(vocabulary_path, extra_ids=extra_ids)


def _chain(format_fn, mode):
  return [
    format_fn,
    seqio.preprocessors.tokenize,
    functools.partial(prepend_mode, mode=mode),
    seqio.preprocessors.append_eos_after_trim,
  ]


@seqio.map_over_dataset
def _sst2_format(ex):
  return {
    "inputs": tf.strings.join(["sst2 sentence: ", ex["sentence"]]),
    "targets": tf.gather(tf.constant(SST2_LABELS), tf.maximum(ex["label"], 0)),
  }


def register_sst2(
  *,
  mode: str = objectives.MODE_NLU,
  name: str | None = None,
  version: str = "2.0.0",
  vocabulary: seqio.Vocabulary | None = None,
  vocabulary_path: str = c4.DEFAULT_VOCABULARY_PATH,
  extra_ids: int = 100,
) -> str:
  """Registers GLUE SST-2 sentiment classification with a mode prefix.

  Before/after: {"sentence": "a gem", "label": 1} ->
  {"inputs": "[NLU] sst2 sentence: a gem", "targets": "positive"} (then tokenized + EOS).

  Args:
    mode: the mode prefix.
    name: task name (default `glue_sst2_<mode>_v1`).
    version: TFDS version of `glue/sst2`.
    vocabulary: the vocabulary (default: `vocabulary_path` with `extra_ids`).
    vocabulary_path: SentencePiece model path (T5's by default).
    extra_ids: extra ids of that model.

  Returns:
    The task name.
  """
  name = name or f"glue_sst2_{_mode_slug(mode)}_v1"
  _check_mode(mode, name)
  voc = _tfds_vocab(vocabulary, vocabulary_path, extra_ids)
  pretraining.register_task(
    name,
    source=seqio.TfdsDataSource(tfds_name=f"glue/sst2:{version}", splits=("train", "validation")),
    preprocessors=_chain(_sst2_format, mode),
    output_features=pretraining.output_features(voc),
    metric_fns=[metrics.accuracy],
  )
  return name


@seqio.map_over_dataset
def _cnn_format(ex):
  return {
    "inputs": tf.strings.join(["summarize: ", ex["article"]]),
    "targets": ex["highlights"],
  }


def register_cnn_dailymail(
  *,
  mode: str = objectives.MODE_S2S,
  name: str | None = None,
  version: str = "3.4.0",
  vocabulary: seqio.Vocabulary | None = None,
  vocabulary_path: str = c4.DEFAULT_VOCABULARY_PATH,
  extra_ids: int = 100,
) -> str:
  """Registers CNN/DailyMail summarization (article -> highlights) with a mode prefix.

  Args:
    mode: the mode prefix.
    name: task name (default `cnn_dailymail_<mode>_v1`).
    version: TFDS version of `cnn_dailymail`.
    vocabulary: the vocabulary (default: `vocabulary_path` with `extra_ids`).
    vocabulary_path: SentencePiece model path (T5's by default).
    extra_ids: extra ids of that model.

  Returns:
    The task name.
  """
  name = name or f"cnn_dailymail_{_mode_slug(mode)}_v1"
  _check_mode(mode, name)
  voc = _tfds_vocab(vocabulary, vocabulary_path, extra_ids)
  pretraining.register_task(
    name,
    source=seqio.TfdsDataSource(
      tfds_name=f"cnn_dailymail:{version}", splits=("train", "validation", "test")
    ),
    preprocessors=_chain(_cnn_format, mode),
    output_features=pretraining.output_features(voc),
    metric_fns=[metrics.rouge],
  )
  return name


def topic_examples(split: str) -> list[dict]:
  """The examples of the embedded topic-classification task.

  Paragraphs (>= 80 characters, cut to 600) of the docstrings of eight stdlib packages; the
  label is the package. At most 150 per class, chosen by a stable hash of the text;
  duplicates dropped; about 10% of paragraphs (by hash) are the validation split.

  Args:
    split: "train" or "validation".

  Returns:
    A list of `{"text", "label"}` dicts in a fixed order.
  """
  if split not in corpus.SPLITS:
    raise UserError(f"split={split!r} is not one of {corpus.SPLITS}")
  by_label: dict[str, list[tuple[int, str, str]]] = {}
  seen = set()
  for d in corpus.documents():
    label = TOPIC_PACKAGES.get(d["package"])
    if label is None:
      continue
    for para in d["text"].split("\n\n"):
      para = " ".join(para.split())
      if len(para) < 80:
        continue
      para = para[:TOPIC_MAX_CHARS]
      if para in seen:  # the stdlib repeats some docstrings; keep splits disjoint
        continue
      seen.add(para)
      key = zlib.crc32(para.encode())
      by_label.setdefault(label, []).append((key, para, label))
  chosen = []
  for label in sorted(by_label):
    chosen += sorted(by_label[label])[:TOPIC_PER_CLASS]
  chosen.sort()
  want_val = split == "validation"
  return [{"text": t, "label": lab} for key, t, lab in chosen if (key % 10 == 0) == want_val]


def _topic_dataset(split: str, shuffle_files: bool = False, seed: int | None = None):
  del shuffle_files, seed
  exs = topic_examples(split)
  return tf.data.Dataset.from_tensor_slices(
    {"text": [e["text"] for e in exs], "label": [e["label"] for e in exs]}
  )


@seqio.map_over_dataset
def _topic_format(ex):
  return {"inputs": tf.strings.join(["topic: ", ex["text"]]), "targets": ex["label"]}


def register_pydocs_topic(*, mode: str = objectives.MODE_NLU, name: str | None = None) -> str:
  """Registers the embedded topic-classification task (no download) with a mode prefix.

  Before/after: {"text": "Create a new event loop ...", "label": "asyncio"} ->
  {"inputs": "[NLU] topic: Create a new event loop ...", "targets": "asyncio"}.

  Args:
    mode: the mode prefix.
    name: task name (default `pydocs_topic_classification_v1` for `[NLU]`, else
      `pydocs_topic_classification_<mode>_v1`).

  Returns:
    The task name.
  """
  if name is None:
    suffix = "" if mode == objectives.MODE_NLU else f"_{_mode_slug(mode)}"
    name = f"pydocs_topic_classification{suffix}_v1"
  _check_mode(mode, name)
  pretraining.register_task(
    name,
    source=corpus.InMemorySource(_topic_dataset, corpus.SPLITS),
    preprocessors=_chain(_topic_format, mode),
    output_features=pretraining.output_features(vocab.default_vocabulary()),
    metric_fns=[metrics.accuracy],
  )
  return name


def register() -> list[str]:
  """Registers the default fine-tuning tasks (idempotent).

  The embedded topic task is registered with each of the three mode prefixes
  (`pydocs_topic_classification{,_nlg,_s2s}_v1`), so a command line can compare them.

  Returns:
    Their names.
  """
  topic = [
    register_pydocs_topic(mode=m)
    for m in (objectives.MODE_NLU, objectives.MODE_NLG, objectives.MODE_S2S)
  ]
  return [register_sst2(), register_cnn_dailymail(), *topic]
