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

import collections
import json
import logging
from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from t5x_ext.errors import UserError
from tasks import pretraining, vocab

FORMATS = ("text", "jsonl")
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


# Errors in a user's files cross tf.data as the message of a TF error; the batch iterator
# (t5x_ext.data.pipeline) finds this mark and re-raises the rest as a plain ValueError.
DATA_ERROR_MARK = "[input data error] "
# Lines skipped with skip_bad_lines=True, per file (this process).
SKIPPED_LINES: collections.Counter = collections.Counter()
_SKIP_LOG_FIRST = 5


def _read_numbered_lines(filename):
  """A file's lines with their file name and 1-based line number (for error messages)."""
  lines = tf.data.TextLineDataset(filename)
  return lines.enumerate(start=1).map(
    lambda number, line: {"line": line, "file": filename, "line_number": number}
  )


def _line_problem(raw: bytes, format: str, text_key: str) -> tuple[str | None, str]:
  """(problem or None, document text) of one raw line."""
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    return f"not UTF-8 (byte {e.start} of the line: {raw[e.start : e.start + 4]!r})", ""
  if format == "text":
    return None, line
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    return f"invalid JSON ({e.msg} at column {e.colno})", ""
  if not isinstance(obj, dict):
    return f"a JSON {type(obj).__name__}, not an object", ""
  if text_key not in obj:
    return f"no field text_key={text_key!r} (keys: {sorted(obj)[:10]})", ""
  if not isinstance(obj[text_key], str):
    return f"field {text_key!r} is a {type(obj[text_key]).__name__}, not a string", ""
  return None, obj[text_key]


def _lines_to_documents(format: str, text_key: str, skip_bad_lines: bool = False):
  """Preprocessor: numbered lines -> {"text": document}, dropping blank lines.

  Plain text: bytes that are not UTF-8 are replaced by U+FFFD. JSONL: a bad line (not UTF-8,
  not JSON, not an object, no string `text_key`) is an error naming the file, the line
  number and the problem, or, with `skip_bad_lines`, is dropped and counted per file in
  `SKIPPED_LINES` (logged as it happens).
  """

  def parse(raw, filename, number):
    problem, text = _line_problem(raw.numpy(), format, text_key)
    if problem is None:
      return text
    where = f"{filename.numpy().decode('utf-8', 'replace')}:{int(number.numpy())}"
    if not skip_bad_lines:
      raise ValueError(f"{DATA_ERROR_MARK}{where}: {problem}")
    file = where.rsplit(":", 1)[0]
    SKIPPED_LINES[file] += 1
    count = SKIPPED_LINES[file]
    if count <= _SKIP_LOG_FIRST or count % 1000 == 0:
      logging.warning(
        "Skipped line %s: %s (%d bad lines skipped in this file so far).", where, problem, count
      )
    return ""

  def one(ex):
    if format == "text":
      # Plain text stays in TF (no Python per line): bytes that are not UTF-8 become U+FFFD.
      text = tf.strings.unicode_transcode(ex["line"], "UTF-8", "UTF-8", errors="replace")
      return {"text": text}
    text = tf.py_function(parse, [ex["line"], ex["file"], ex["line_number"]], tf.string)
    text.set_shape([])
    return {"text": text}

  def fn(dataset):
    dataset = dataset.filter(lambda ex: tf.strings.length(tf.strings.strip(ex["line"])) > 0)
    dataset = dataset.map(one, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.filter(lambda ex: tf.strings.length(ex["text"]) > 0)  # skipped lines

  return fn


def _check_not_empty(splits: Mapping[str, Sequence[str]]) -> None:
  """Fails at registration when a split's local files hold no non-blank line."""
  for split, patterns in splits.items():
    if any("://" in p for p in patterns):
      continue  # remote files are read when the data is
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(p)})
    if not files:
      raise UserError(f"file patterns of split {split!r} {list(patterns)} match no file.")
    if not any(_has_a_line(f) for f in files):
      raise UserError(
        f"split {split!r} is empty: its files {list(patterns)} ({len(files)} matched) hold no "
        "non-blank line."
      )


def _has_a_line(path: str) -> bool:
  with tf.io.gfile.GFile(path, "rb") as f:
    for line in f:
      if line.strip():
        return True
  return False


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
  skip_bad_lines: bool = False,
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
    skip_bad_lines: JSONL: drop lines that are not UTF-8 JSON objects with a string
      `text_key`, counted per file in `SKIPPED_LINES`, instead of stopping with an error that
      names the file and line. (Plain text never stops: non-UTF-8 bytes become U+FFFD.)

  Returns:
    The registered task names.

  Raises:
    ValueError: an unknown format, no file patterns, or a split whose local files match
      nothing or hold no non-blank line (naming the split and its patterns).
  """
  if format not in FORMATS:
    raise UserError(f"format={format!r} is not one of {FORMATS}")
  if isinstance(file_patterns, str):
    file_patterns = {"train": [file_patterns]}
  elif not isinstance(file_patterns, Mapping):
    file_patterns = {"train": list(file_patterns)}
  splits = {k: [v] if isinstance(v, str) else list(v) for k, v in file_patterns.items()}
  if not splits or not all(splits.values()):
    raise UserError(f"file_patterns={file_patterns!r} names no files")
  if vocabulary is None:
    vocabulary = vocab.default_vocabulary()
  elif isinstance(vocabulary, str):
    vocabulary = seqio.SentencePieceVocabulary(vocabulary, extra_ids=extra_ids)
  _check_not_empty(splits)
  source = seqio.FileDataSource(read_file_fn=_read_numbered_lines, split_to_filepattern=splits)
  # The source yields numbered lines; this reading step turns them into documents. It is
  # part of every task over the corpus, the evaluation suite's included
  # (`pretraining.reading_preprocessors`).
  return pretraining.register_objectives(
    name_prefix,
    source,
    vocabulary,
    objectives_map=objectives,
    mode_prefix=mode_prefix,
    mode_token_ids=mode_token_ids,
    reading_preprocessors=[_lines_to_documents(format, text_key, skip_bad_lines)],
  )


def _guess_format(splits: Mapping[str, Sequence[str]]) -> str:
  patterns = [p for ps in splits.values() for p in ps]
  if all(p.endswith(_JSONL_SUFFIXES) for p in patterns):
    return "jsonl"
  if any(p.endswith(_JSONL_SUFFIXES) for p in patterns):
    raise UserError(
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
  skip_bad_lines: bool = False,
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
    skip_bad_lines: skip (and count per file) JSONL lines that would stop the run
      (TEXT_SKIP_BAD_LINES).

  Returns:
    The registered task name.

  Raises:
    ValueError: an unknown objective or format, or no file patterns.
  """
  if objective not in pretraining.OBJECTIVES:
    raise UserError(
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
        raise UserError(f"TEXT_FILES[{split!r}] = {pattern!r} matches no file.")
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
    skip_bad_lines=skip_bad_lines,
  )
  return name
