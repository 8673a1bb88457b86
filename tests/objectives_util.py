"""Helpers shared by the objectives tests: a vocabulary that ships with seqio, synthetic
documents, and decoding of span-corruption examples back into text."""

from __future__ import annotations

import pathlib
import string

import numpy as np
import seqio
import tensorflow as tf

# seqio's own test SentencePiece model (26 pieces); always installed with seqio. It maps
# every mode string to the same unknown pieces, so the statistics tests use
# `CharVocabulary` instead and this one checks real SentencePiece prefixes.
TEST_SPM = (
  pathlib.Path(seqio.__file__).parent / "test_data" / "sentencepiece" / "sentencepiece.model"
)
EXTRA_IDS = 100
BASE_SIZE = 1000
LENGTHS = {"inputs": 512, "targets": 512}
_CHARS = string.printable[:94]


class CharVocabulary(seqio.Vocabulary):
  """Test vocabulary: 0 pad, 1 EOS, 2 UNK, one id per printable character, filler ids up
  to `BASE_SIZE`, then `extra_ids` sentinels. Needs no file and no download."""

  def __init__(self, extra_ids: int = EXTRA_IDS):
    super().__init__(extra_ids=extra_ids)

  @property
  def eos_id(self):
    return 1

  @property
  def unk_id(self):
    return 2

  @property
  def _base_vocab_size(self):
    return BASE_SIZE

  def _encode(self, s):
    return [3 + _CHARS.index(c) if c in _CHARS else 2 for c in s]

  def _decode(self, ids):
    return "".join(_CHARS[i - 3] if 3 <= i < 3 + len(_CHARS) else f"<{i}>" for i in ids)

  def _encode_tf(self, s):
    table = tf.constant([2] * 128, tf.int32)
    table = tf.tensor_scatter_nd_update(
      table, [[ord(c)] for c in _CHARS], [3 + i for i in range(len(_CHARS))]
    )
    return tf.gather(table, tf.strings.unicode_decode(s, "UTF-8") % 128)

  def _decode_tf(self, ids):
    raise NotImplementedError


def vocabulary(extra_ids: int = EXTRA_IDS) -> CharVocabulary:
  """The test vocabulary (1,100 ids with 100 extra ids)."""
  return CharVocabulary(extra_ids)


def spm_vocabulary(extra_ids: int = EXTRA_IDS) -> seqio.SentencePieceVocabulary:
  """seqio's test SentencePiece vocabulary with `extra_ids` sentinels."""
  return seqio.SentencePieceVocabulary(str(TEST_SPM), extra_ids=extra_ids)


def features(vocab: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """inputs/targets features over one vocabulary."""
  return {"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)}


def synthetic_docs(n: int, seed: int, lo: int = 50, hi: int = 4000, vocab_hi: int = BASE_SIZE):
  """Random documents of ordinary ids in [3, vocab_hi) (below the extra ids)."""
  rng = np.random.default_rng(seed)
  return [
    rng.integers(3, vocab_hi, size=int(rng.integers(lo, hi))).astype(np.int32) for _ in range(n)
  ]


def docs_dataset(docs) -> tf.data.Dataset:
  """A tf.data dataset of {"targets": int32 [n]} documents."""
  return tf.data.Dataset.from_generator(
    lambda: ({"targets": d} for d in docs),
    output_signature={"targets": tf.TensorSpec([None], tf.int32)},
  )


def is_sentinel(ids: np.ndarray, vocab_size: int, extra_ids: int = EXTRA_IDS) -> np.ndarray:
  """Mask of ids in the extra-id range."""
  return ids >= vocab_size - extra_ids


def reconstruct(inputs: np.ndarray, targets: np.ndarray, vocab_size: int) -> np.ndarray:
  """Fills each sentinel of `inputs` with the tokens after that sentinel in `targets`."""
  sent_t = np.flatnonzero(is_sentinel(targets, vocab_size))
  spans = {}
  bounds = list(sent_t) + [len(targets)]
  for i, start in enumerate(sent_t):
    spans[int(targets[start])] = targets[start + 1 : bounds[i + 1]]
  out = []
  for t in inputs:
    out.extend(spans.pop(int(t)) if t in spans else [t])
  assert not spans, f"sentinels in targets but not in inputs: {sorted(spans)}"
  return np.asarray(out, np.int32)
