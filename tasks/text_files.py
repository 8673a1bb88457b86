"""A factory that registers the pretraining objectives over your own text or JSONL files.

  import tasks
  tasks.register_text_files("mydocs", {"train": "/data/docs-*.txt", "validation": "/data/val.txt"})
  # -> mydocs_ul2_mod_v1, mydocs_span_corruption_v1, ... with the embedded vocabulary

`format="text"`: each line is one document. `format="jsonl"`: each line a JSON object whose
`text_key` field is the document.

From the command line (no Python), `gin/runs/text_files.gin` calls `text_files_task`, which
registers one objective over the files named by the `TEXT_FILES` macro and returns its task
name as `MIXTURE_OR_TASK_NAME`:

  python -m t5x_ext.train --gin_file=local/ul2_tiny.gin --gin_file=runs/text_files.gin \
    --gin.TEXT_FILES="{'train': '/data/*.jsonl', 'validation': '/data/val.jsonl'}" \
    --gin.MODEL_DIR="'/tmp/mine'"
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from tasks import pretraining, vocab

FORMATS = ("text", "jsonl")
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


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


def _guess_format(splits: Mapping[str, Sequence[str]]) -> str:
  patterns = [p for ps in splits.values() for p in ps]
  if all(p.endswith(_JSONL_SUFFIXES) for p in patterns):
    return "jsonl"
  if any(p.endswith(_JSONL_SUFFIXES) for p in patterns):
    raise ValueError(
      f"TEXT_FILES {patterns} mixes JSONL and other files: set TEXT_FORMAT to 'text' or 'jsonl'."
    )
  return "text"


def text_files_task(
  file_patterns: str | Sequence[str] | Mapping[str, str | Sequence[str]],
  *,
  objective: str = "ul2_mod",
  name_prefix: str = "text_files",
  format: str = "auto",
  text_key: str = "text",
  vocabulary: seqio.Vocabulary | str | None = None,
  extra_ids: int = 100,
) -> str:
  """Registers one pretraining objective over text or JSONL files and returns its task name.

  What `gin/runs/text_files.gin` binds to `MIXTURE_OR_TASK_NAME`, so that a run on your
  own files needs only command-line flags (T5X and SeqIO otherwise ask for a Python module of
  task registrations). Registering again replaces the task, so the entry points may call it
  more than once.

  Example: `text_files_task({"train": "/d/a-*.jsonl"}, objective="span_corruption")`
  registers and returns "text_files_span_corruption_v1".

  Args:
    file_patterns: a glob or list of globs (the `train` split), or a dict split -> glob(s),
      e.g. {"train": "/data/train-*.jsonl", "validation": "/data/val.jsonl"}.
    objective: a key of `tasks.pretraining.OBJECTIVES` ("ul2_mod", "span_corruption",
      "prefix_lm", "causal_lm", ...).
    name_prefix: the task is `<name_prefix>_<objective>_v1`.
    format: "text" (one document per line), "jsonl" (one JSON object per line), or "auto"
      ("jsonl" when every pattern ends in .jsonl/.json/.ndjson, else "text").
    text_key: the JSONL field holding the document.
    vocabulary: None (the embedded corpus's vocabulary), a `seqio.Vocabulary`, or a
      SentencePiece model path (given `extra_ids`).
    extra_ids: sentinel ids added to a vocabulary given as a path.

  Returns:
    The registered task name.

  Raises:
    ValueError: an unknown objective or format, or no file patterns.
  """
  if objective not in pretraining.OBJECTIVES:
    raise ValueError(
      f"OBJECTIVE = {objective!r} is not one of {sorted(pretraining.OBJECTIVES)} "
      "(tasks.pretraining.OBJECTIVES)."
    )
  if isinstance(file_patterns, str):
    splits = {"train": [file_patterns]}
  elif isinstance(file_patterns, Mapping):
    splits = {k: [v] if isinstance(v, str) else list(v) for k, v in file_patterns.items()}
  else:
    splits = {"train": list(file_patterns)}
  for split, patterns in splits.items():
    for pattern in patterns:
      # Local files are checked now (a typo would otherwise surface as a tf.data error
      # after the model is built); remote ones (gs://...) when they are read.
      if "://" not in pattern and not tf.io.gfile.glob(pattern):
        raise ValueError(f"TEXT_FILES[{split!r}] = {pattern!r} matches no file.")
  if format == "auto":
    format = _guess_format(splits)
  (name,) = register_text_files(
    name_prefix,
    splits,
    format=format,
    text_key=text_key,
    vocabulary=vocabulary,
    objectives={objective: pretraining.OBJECTIVES[objective]},
    extra_ids=extra_ids,
  )
  return name
