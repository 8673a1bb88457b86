"""The default vocabulary: SentencePiece trained on the embedded corpus on first use.

8,000 unigram pieces with T5's special ids (pad=0, eos=1, unk=2, no bos) plus 100 extra ids
(sentinels, `<extra_id_0>` = 8099, the highest) = 8,100 ids. Networks use 8,192 (a multiple
of 128). The model file is cached under `tasks.corpus.cache_dir()` with the corpus
fingerprint in its name, so each Python version's corpus gets its own vocabulary.
"""

from __future__ import annotations

import fcntl
import io
import pathlib
import threading

import seqio

from tasks import corpus

VOCAB_PIECES = 8000
EXTRA_IDS = 100
# Enough sentences for a stable unigram model; caps training time on small machines.
_MAX_SENTENCES = 300_000
_lock = threading.Lock()


def _training_sentences() -> list[str]:
  lines = []
  for d in corpus.split_documents("train"):
    for line in d["text"].split("\n"):
      line = line.strip()
      if line:
        lines.append(line)
  return lines[:_MAX_SENTENCES]


def default_vocabulary_path() -> str:
  """Path of the SentencePiece model for the embedded corpus, training it if not cached.

  Safe when several processes call it at once: a lock file lets one of them train while the
  others wait, and the model is written to a temporary file and renamed into place, so readers
  see a whole model or none.

  Returns:
    Path to a `.model` file.
  """
  path = corpus.cache_dir() / f"pydocs-spm{VOCAB_PIECES}-{corpus.corpus_fingerprint()}.model"
  if path.exists():
    return str(path)
  with _lock, open(path.with_suffix(".lock"), "a") as lock:
    # One process trains while the others wait for it (where the filesystem supports locks);
    # the atomic rename keeps readers safe either way.
    try:
      fcntl.flock(lock, fcntl.LOCK_EX)
    except OSError:
      pass
    if not path.exists():
      _train(path)
  return str(path)


def _train(path: pathlib.Path) -> None:
  import sentencepiece as spm

  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(_training_sentences()),
    model_writer=model,
    vocab_size=VOCAB_PIECES,
    model_type="unigram",
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    character_coverage=0.9995,
    # Deterministic: no sampling of the input, one thread.
    input_sentence_size=0,
    shuffle_input_sentence=False,
    num_threads=1,
    max_sentence_length=8192,
    minloglevel=2,
  )
  corpus.atomic_write_bytes(path, model.getvalue())


class EmbeddedVocabulary(seqio.SentencePieceVocabulary):
  """`seqio.SentencePieceVocabulary` over the embedded corpus's model, trained on first use.

  Registering tasks must be cheap and training is not, so the model path is resolved (and the
  model trained if not cached) only when SeqIO first asks for ids. All instances with the same
  `extra_ids` are equal, which SeqIO mixtures require of their tasks' vocabularies.

  Args:
    extra_ids: sentinel ids appended after the 8,000 pieces (default 100).
  """

  def __init__(self, extra_ids: int = EXTRA_IDS):
    super().__init__("<pydocs spm: trained on first use>", extra_ids=extra_ids)

  @property
  def _sentencepiece_model_file(self) -> str:
    return default_vocabulary_path()

  @_sentencepiece_model_file.setter
  def _sentencepiece_model_file(self, value: str) -> None:
    del value  # Always resolved from the corpus fingerprint.


def default_vocabulary() -> EmbeddedVocabulary:
  """The vocabulary of the embedded corpus (8,100 ids: 8,000 pieces + 100 extra ids).

  Returns:
    An `EmbeddedVocabulary`; `<extra_id_0>` is id 8099.
  """
  return EmbeddedVocabulary()
