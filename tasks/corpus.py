"""The embedded default corpus: documentation text that ships with CPython.

Nothing is downloaded: the corpus is built from the standard library of the running Python
(module, class and function docstrings, read with `ast` so no module is imported) and from
`pydoc_data.topics.topics` (the language reference topics `help()` shows). One document per
module and one per pydoc topic, in sorted order, so the same Python gives the same corpus.
A different Python version gives a different corpus; `corpus_fingerprint()` tells them
apart and keys the cached vocabulary.

A document is a dict `{"id", "source", "package", "text"}`: `source` is the module path
(`json.decoder`) or `pydoc:<topic>`, `package` the top-level package (`json`, `pydoc`).
About 5% of documents (chosen by a hash of `id`) form the validation split.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import pathlib
import sys
import sysconfig
import tempfile
import zlib

import seqio

from t5x_ext.errors import UserError

# Parts of the standard library that are tests, demos or GUI code rather than prose.
# The codec modules in `encodings` are ~100 near-identical generated files.
_SKIP_TOP = frozenset(
  {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "__phello__",
    "encodings",
  }
)
VALIDATION_PERCENT = 5
SPLITS = ("train", "validation")


def cache_dir() -> pathlib.Path:
  """Directory for cached corpus and vocabulary files.

  Returns:
    `$T5X_EXT_CACHE` if set, else `~/.cache/t5x_ext` (created if missing).
  """
  path = pathlib.Path(os.environ.get("T5X_EXT_CACHE") or pathlib.Path.home() / ".cache" / "t5x_ext")
  path.mkdir(parents=True, exist_ok=True)
  return path


def atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
  """Writes `data` to `path` via a temporary file and an atomic rename.

  Two processes building the same cache file at once both succeed; the reader never sees a
  partial file.

  Args:
    path: destination.
    data: file contents.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared by users of the machine.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _module_documents(stdlib: pathlib.Path) -> list[dict]:
  docs = []
  for path in sorted(stdlib.rglob("*.py")):
    rel = path.relative_to(stdlib)
    top = rel.parts[0]
    if top in _SKIP_TOP or top.startswith("config-") or "test" in rel.parts or "tests" in rel.parts:
      continue
    try:
      tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
      continue
    parts = []
    doc = ast.get_docstring(tree)
    if doc:
      parts.append(doc.strip())
    for node in ast.walk(tree):
      if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        if node.name.startswith("_") and not node.name.startswith("__init"):
          continue
        d = ast.get_docstring(node)
        if d and len(d) >= 40:
          parts.append(f"{node.name}: {d.strip()}")
    if not parts:
      continue
    mod = ".".join(rel.with_suffix("").parts)
    mod = mod.removesuffix(".__init__")
    docs.append(
      {
        "id": f"module:{mod}",
        "source": mod,
        "package": mod.split(".")[0],
        "text": "\n\n".join(parts),
      }
    )
  return docs


def _topic_documents() -> list[dict]:
  from pydoc_data import topics

  return [
    {"id": f"pydoc:{k}", "source": f"pydoc:{k}", "package": "pydoc", "text": v.strip()}
    for k, v in sorted(topics.topics.items())
    if v.strip()
  ]


def split_of(doc_id: str) -> str:
  """The split ("train" or "validation") a document belongs to, by a stable hash of its id.

  Args:
    doc_id: the document's `id`.

  Returns:
    "validation" for about `VALIDATION_PERCENT`% of ids, else "train".
  """
  return "validation" if zlib.crc32(doc_id.encode()) % 100 < VALIDATION_PERCENT else "train"


def _build_documents() -> list[dict]:
  stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
  docs = _module_documents(stdlib) + _topic_documents()
  for d in docs:
    d["split"] = split_of(d["id"])
  return docs


@functools.cache
def documents() -> tuple[dict, ...]:
  """All documents of the embedded corpus, built once per process and cached on disk.

  Returns:
    A tuple of dicts with keys `id`, `source`, `package`, `split`, `text`, in a fixed order.
  """
  # Parsing the stdlib takes a few seconds; cache the result per Python build.
  key = hashlib.sha256(f"v1|{sys.version}|{sysconfig.get_paths()['stdlib']}".encode()).hexdigest()[
    :16
  ]
  path = cache_dir() / f"pydocs-corpus-{key}.jsonl"
  if path.exists():
    with open(path, encoding="utf-8") as f:
      return tuple(json.loads(line) for line in f)
  docs = _build_documents()
  data = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
  atomic_write_bytes(path, data.encode("utf-8"))
  return tuple(docs)


def split_documents(split: str) -> list[dict]:
  """Documents of one split.

  Args:
    split: "train" or "validation".

  Returns:
    The documents of that split, in corpus order.

  Raises:
    ValueError: for an unknown split.
  """
  if split not in SPLITS:
    raise UserError(f"split={split!r} is not one of {SPLITS} for the embedded pydocs corpus")
  return [d for d in documents() if d["split"] == split]


@functools.cache
def corpus_fingerprint() -> str:
  """A short hash of the corpus text; different Python versions give different fingerprints.

  Returns:
    16 hex digits.
  """
  h = hashlib.sha256()
  for d in documents():
    h.update(d["id"].encode())
    h.update(b"\0")
    h.update(d["text"].encode("utf-8"))
    h.update(b"\0")
  return h.hexdigest()[:16]


def text_dataset(split: str, shuffle_files: bool = False, seed: int | None = None):
  """A `tf.data.Dataset` of `{"text": tf.string}` documents of the embedded corpus.

  The signature is what `seqio.FunctionDataSource` calls. The corpus is a single "file", so
  `shuffle_files` and `seed` do not change the order (shuffling happens later in SeqIO).

  Args:
    split: "train" or "validation".
    shuffle_files: unused (one shard).
    seed: unused.

  Returns:
    A dataset of dicts with `text` and `source` strings.
  """
  import tensorflow as tf

  del shuffle_files, seed
  docs = split_documents(split)
  return tf.data.Dataset.from_tensor_slices(
    {"text": [d["text"] for d in docs], "source": [d["source"] for d in docs]}
  )


class InMemorySource(seqio.FunctionDataSource):
  """A `seqio.FunctionDataSource` for corpora built in memory (one "file", fixed order).

  SeqIO warns on every shuffled read of a function source that file-level shuffling is
  missing; with one in-memory shard there are no files to shuffle (SeqIO still shuffles the
  examples), so this source reads unshuffled and stays quiet.

  Args:
    dataset_fn: `(split, shuffle_files, seed) -> tf.data.Dataset`.
    splits: the split names.
  """

  def __init__(self, dataset_fn, splits):
    super().__init__(dataset_fn=dataset_fn, splits=splits, caching_permitted=False)

  def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **kwargs):
    """See `seqio.FunctionDataSource.get_dataset`; `shuffle` has nothing to shuffle here."""
    del shuffle
    return super().get_dataset(split, shuffle=False, seed=seed, shard_info=shard_info, **kwargs)
