"""A factory that registers the pretraining objectives over your own text or JSONL files.

  import tasks
  tasks.register_text_files("mydocs", {"train": "/data/docs-*.txt", "validation": "/data/val.txt"})
  # -> mydocs_ul2_mod_v1, mydocs_span_corruption_v1, ... with the embedded vocabulary

`format="text"`: each line is one document. `format="jsonl"`: each line a JSON object whose
`text_key` field is the document.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from tasks import pretraining, vocab

FORMATS = ("text", "jsonl")


def _lines_to_documents(format: str, text_key: str):
  """Preprocessor: raw lines (strings) -> {"text": document}, dropping blank lines."""

  def parse(line):
    obj = json.loads(line.numpy().decode("utf-8"))
    if text_key not in obj:
      raise ValueError(f"JSONL line has no field text_key={text_key!r}: keys {sorted(obj)}")
    return str(obj[text_key])

  def one(line):
    if format == "jsonl":
      text = tf.py_function(parse, [line], tf.string)
      text.set_shape([])
    else:
      text = line
    return {"text": text}

  def fn(dataset):
    dataset = dataset.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
    return dataset.map(one, num_parallel_calls=tf.data.AUTOTUNE)

  return fn


def register_text_files(
  name_prefix: str,
  file_patterns: str | Sequence[str] | Mapping[str, str | Sequence[str]],
  *,
  format: str = "text",
  text_key: str = "text",
  vocabulary: seqio.Vocabulary | str | None = None,
  objectives: Mapping[str, Sequence] | None = None,
  mode_prefix: str = "text",
  mode_token_ids: Mapping[str, int] | None = None,
  extra_ids: int = 100,
) -> list[str]:
  """Registers `<name_prefix>_<objective>_v1` for each objective over local or remote files.

  Args:
    name_prefix: prefix of the task names.
    file_patterns: a glob or list of globs (the `train` split), or a dict split -> glob(s).
    format: "text" (one document per line) or "jsonl" (one JSON object per line).
    text_key: the JSONL field holding the document (format "jsonl").
    vocabulary: a `seqio.Vocabulary`, a SentencePiece model path (given `extra_ids`), or None
      for the embedded corpus's vocabulary.
    objectives: objective name -> denoisers; default all of `tasks.pretraining.OBJECTIVES`.
    mode_prefix: "text" or "token".
    mode_token_ids: {mode: id} for "token" (ids in the extra-id range reduce the sentinels).
    extra_ids: extra ids added to a vocabulary given as a path.

  Returns:
    The registered task names.

  Raises:
    ValueError: an unknown format or no file patterns.
  """
  if format not in FORMATS:
    raise ValueError(f"format={format!r} is not one of {FORMATS}")
  if isinstance(file_patterns, str):
    file_patterns = {"train": [file_patterns]}
  elif not isinstance(file_patterns, Mapping):
    file_patterns = {"train": list(file_patterns)}
  splits = {k: [v] if isinstance(v, str) else list(v) for k, v in file_patterns.items()}
  if not splits or not all(splits.values()):
    raise ValueError(f"file_patterns={file_patterns!r} names no files")
  if vocabulary is None:
    vocabulary = vocab.default_vocabulary()
  elif isinstance(vocabulary, str):
    vocabulary = seqio.SentencePieceVocabulary(vocabulary, extra_ids=extra_ids)
  source = seqio.TextLineDataSource(split_to_filepattern=splits)
  names = pretraining.register_objectives(
    name_prefix,
    source,
    vocabulary,
    objectives_map=objectives,
    mode_prefix=mode_prefix,
    mode_token_ids=mode_token_ids,
  )
  # TextLineDataSource yields bare strings: turn them into documents before the shared chain.
  for name in names:
    task = seqio.get_mixture_or_task(name)
    pretraining.register_task(
      name,
      source=source,
      preprocessors=[_lines_to_documents(format, text_key), *task.preprocessors],
      output_features=task.output_features,
      metric_fns=[],
    )
  return names
