"""BART's noises (Lewis et al. 2019): configuration, named settings, vocabulary tables.

[BART] Lewis et al. 2019, "BART: Denoising Sequence-to-Sequence Pre-training for Natural
Language Generation, Translation, and Comprehension", arXiv:1910.13461, Sec. 2.2 and 5.1.
The behaviour follows fairseq's `DenoisingDataset` (`fairseq/data/denoising_dataset.py`), the
code BART was trained with; the TensorFlow implementation is `bart_noise.py` (written from
the definitions, no fairseq code). A `Denoiser(kind="bart", bart=BartNoise(...))` is one
denoiser of a mixture like UL2's (`mixture_of_denoisers`): its target is the original chunk
and its input the noised chunk, after the mode prefix if it has one.

The noises, applied in fairseq's order to a chunk of text:

1. sentence permutation (`permute_sentences` = share of sentences shuffled among
   themselves; 1.0 shuffles them all). Sentences end at a token whose piece ends in `.`, `!`
   or `?` (closing quotes and brackets allowed after it) and is followed by a word start,
   or at the chunk's end: found in the text, not at a GPT-2 id (fairseq looks for GPT-2's
   full-stop id and, for other vocabularies, for EOS, so permutation silently does nothing
   there: fairseq issue #3803).
2. masking (`mask_ratio` of the chunk's words, `ceil(ratio * words)` as fairseq counts
   it). `mask_length`: "span-poisson" (text infilling: span lengths in words from
   Poisson(`poisson_lambda`), drawn until the budget is covered, the last one trimmed to it;
   zero-length spans insert a mask), "word" (single words) or "subword" (single tokens).
   Span starts are distinct word starts drawn uniformly; overlapping spans merge (as in
   fairseq, so the realised share is a little under `mask_ratio`). `replace_length`: 1 = a
   span becomes one mask (text infilling), 0 = it is deleted (token deletion), -1 = each of
   its tokens becomes a mask (token masking). `mask_random` of the spans get a random
   ordinary token instead of the mask.
3. insertion (`insert_ratio`: `ceil(ratio * length)` tokens inserted at uniform positions;
   `mask_random` of them random tokens, the others masks).
4. document rotation (with probability `rotate_ratio` the chunk is rotated to begin at a
   token drawn uniformly: [BART] Sec. 2.2; fairseq's offset draw makes "no rotation" twice
   as likely as any one offset, which we do not copy).

Words: a word starts at a piece that begins with SentencePiece's `▁` (and at the chunk's
first token, which may continue a word cut by chunking). `whole_words=False` (and
`mask_length="subword"`) counts every token as a word: token-level masking.

The mask token is a reserved extra id of the task's vocabulary: by default the lowest one,
`vocab_size - extra_ids` (`<extra_id_{extra_ids-1}>`, id 8000 of the default 8,100-id
vocabulary), which span corruption's sentinels (counted down from the top id) then stop
above, so BART and UL2's denoisers mix without sharing ids. Random replacements are drawn
uniformly from the ordinary ids (above pad, EOS and UNK, below the extra ids), never a
special id, sentinel, mode token or the mask.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from t5x_ext.errors import UserError
from t5x_ext.objectives.denoisers import Denoiser

MASK_LENGTHS = ("span-poisson", "word", "subword")
REPLACE_LENGTHS = (-1, 0, 1)
# Closing marks allowed after a sentence's final punctuation: `end.)` or `end."`.
_CLOSERS = "\"')]}`*"
_SENTENCE_END = (".", "!", "?")
# Poisson terms below this are dropped (and the rest renormalized), as fairseq does.
_POISSON_TAIL = 1e-7
# Zero-length spans reserved for in the length plan: mean + this many standard deviations.
_ZERO_SPAN_SDS = 4.0


@dataclasses.dataclass(frozen=True)
class BartNoise:
  """BART's noise settings (fairseq `--mask ... --poisson-lambda` names).

  Attributes:
    mask_ratio: share of words masked (fairseq `--mask`), in [0, 1].
    mask_random: share of masks (spans and inserted masks) that are a random ordinary token
      instead (`--mask-random`), in [0, 1].
    insert_ratio: inserted tokens per token of the masked text (`--insert`), in [0, 1].
    rotate_ratio: probability of rotating the chunk (`--rotate`), in [0, 1].
    permute_sentences: share of sentences shuffled (`--permute-sentences`), in [0, 1].
    mask_length: "span-poisson", "word" or "subword" (`--mask-length`).
    replace_length: 1 (one mask per span), 0 (delete spans) or -1 (a mask per token)
      (`--replace-length`).
    poisson_lambda: mean span length in words for "span-poisson" (`--poisson-lambda`).
    whole_words: spans count whole words (word starts from `▁`); False counts tokens.
    mask_id: the mask token; None = the vocabulary's lowest extra id.
  """

  mask_ratio: float = 0.0
  mask_random: float = 0.0
  insert_ratio: float = 0.0
  rotate_ratio: float = 0.0
  permute_sentences: float = 0.0
  mask_length: str = "span-poisson"
  replace_length: int = 1
  poisson_lambda: float = 3.0
  whole_words: bool = True
  mask_id: int | None = None

  @property
  def token_level(self) -> bool:
    """True when every token counts as a word ("subword" or `whole_words=False`)."""
    return self.mask_length == "subword" or not self.whole_words

  def describe(self) -> str:
    """Returns a short description, e.g. `bart(mask=0.3 span-poisson(3.5) replace=1 ...)`.

    Returns:
      The description string.
    """
    parts = []
    if self.mask_ratio > 0:
      unit = "token" if self.token_level else "word"
      length = (
        f"span-poisson({self.poisson_lambda:g})"
        if self.mask_length == "span-poisson"
        else self.mask_length
      )
      parts.append(f"mask={self.mask_ratio:g}/{unit} {length} replace={self.replace_length}")
    for name, value in (
      ("random", self.mask_random),
      ("insert", self.insert_ratio),
      ("permute", self.permute_sentences),
      ("rotate", self.rotate_ratio),
    ):
      if value > 0:
        parts.append(f"{name}={value:g}")
    return "bart(" + (" ".join(parts) or "no noise") + ")"

  def check(self, where: str) -> None:
    """Checks the settings.

    Args:
      where: how errors name the denoiser.

    Raises:
      ValueError: naming the setting and its value.
    """
    for name in ("mask_ratio", "mask_random", "insert_ratio", "rotate_ratio", "permute_sentences"):
      value = getattr(self, name)
      if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
        raise UserError(f"{where}: bart.{name} must be in [0, 1], got {value!r}.")
    if self.mask_length not in MASK_LENGTHS:
      raise UserError(
        f"{where}: bart.mask_length must be one of {MASK_LENGTHS}, got {self.mask_length!r}."
      )
    if self.replace_length not in REPLACE_LENGTHS:
      raise UserError(
        f"{where}: bart.replace_length must be one of {REPLACE_LENGTHS}, got "
        f"{self.replace_length!r}."
      )
    if self.mask_length == "span-poisson" and not (
      math.isfinite(self.poisson_lambda) and 0 < self.poisson_lambda <= 64
    ):
      raise UserError(
        f"{where}: bart.poisson_lambda must be in (0, 64], got {self.poisson_lambda!r}."
      )


def _bart(name: str, mode: str = "", rate: float = 1.0, **noise) -> Denoiser:
  return Denoiser(name, "bart", mode=mode, rate=rate, bart=BartNoise(**noise))


# The released BART-large pretraining arguments (fairseq issue #1899): --mask 0.3
# --mask-length span-poisson --poisson-lambda 3.5 --replace-length 1 --mask-random 0.1
# --permute-sentences 1 --rotate 0.0 --insert 0.0. The paper (Sec. 5.1) says lambda = 3.
BART_LARGE: tuple[Denoiser, ...] = (
  _bart(
    "bart_large",
    mask_ratio=0.3,
    mask_random=0.1,
    poisson_lambda=3.5,
    replace_length=1,
    permute_sentences=1.0,
  ),
)
# The same with the paper's lambda = 3 and no random replacements (the paper mentions none).
BART_PAPER: tuple[Denoiser, ...] = (
  _bart("bart_paper", mask_ratio=0.3, poisson_lambda=3.0, replace_length=1, permute_sentences=1.0),
)

# [BART] Table 1's single-noise objectives (and its best pair). The paper gives no masking
# ratio for them; we use its 30% throughout and no random replacements, so that each row
# differs from the others in one noise only.
BART_TABLE1: dict[str, tuple[Denoiser, ...]] = {
  "token_masking": (_bart("bart_token_masking", mask_ratio=0.3, mask_length="subword"),),
  "token_deletion": (
    _bart("bart_token_deletion", mask_ratio=0.3, mask_length="subword", replace_length=0),
  ),
  "text_infilling": (_bart("bart_text_infilling", mask_ratio=0.3, poisson_lambda=3.0),),
  "document_rotation": (_bart("bart_document_rotation", rotate_ratio=1.0),),
  "sentence_shuffling": (_bart("bart_sentence_shuffling", permute_sentences=1.0),),
  "text_infilling_sentence_shuffling": (
    _bart("bart_infilling_shuffling", mask_ratio=0.3, poisson_lambda=3.0, permute_sentences=1.0),
  ),
}


def exact_ceil(x: float) -> int:
  """`ceil(x)` that ignores float noise: `ceil(10 * 0.3)` is 3 here, 4 in plain float64.

  Args:
    x: a non-negative product such as `ratio * count`.

  Returns:
    The smallest integer >= x - 1e-9.
  """
  return int(math.ceil(x - 1e-9))


def poisson_table(lam: float) -> tuple[np.ndarray, float]:
  """The span-length law of "span-poisson": Poisson(`lam`) cut where terms drop under 1e-7.

  Args:
    lam: the Poisson mean.

  Returns:
    (cdf float64 [J] of the length given it is >= 1, over lengths 1..J; P(length 0)).
  """
  ps = []
  term = math.exp(-lam)
  k = 0
  while True:
    ps.append(term)
    if term < _POISSON_TAIL and k > lam:
      break
    k += 1
    term *= lam / k
  ps = np.asarray(ps, np.float64) / sum(ps)
  nonzero = ps[1:] / ps[1:].sum()
  cdf = np.cumsum(nonzero)
  cdf[-1] = 1.0
  return cdf, float(ps[0])


def zero_span_reserve(noise: BartNoise, length: int) -> int:
  """Input slots the length plan keeps for zero-length spans (each inserts a mask).

  Their count is unbounded in principle (a run of zero draws), so the plan reserves the
  mean plus four standard deviations of the count for the largest possible number of spans
  (one per word of the budget); `bart_noise` drops zero-length masks beyond the room a
  row has left (never text), which the tests show does not happen at the released settings.

  Args:
    noise: the settings.
    length: chunk length in tokens.

  Returns:
    The number of reserved slots (0 without Poisson spans).
  """
  if noise.mask_length != "span-poisson" or noise.mask_ratio <= 0:
    return 0
  _, q = poisson_table(noise.poisson_lambda)
  n = exact_ceil(length * noise.mask_ratio)
  mean = n * q / (1 - q)
  sd = math.sqrt(n * q) / (1 - q)
  return int(math.ceil(mean + _ZERO_SPAN_SDS * sd))


def core_limit(insert_ratio: float, budget: int) -> int:
  """The longest masked text `x` whose insertions still fit: `x + ceil(x * r) <= budget`.

  Args:
    insert_ratio: `BartNoise.insert_ratio`.
    budget: input tokens available to the noised text.

  Returns:
    The largest such `x` (0 if none).
  """
  x = max(int(math.floor((budget + 1e-9) / (1 + insert_ratio))), 0)
  while x > 0 and x + exact_ceil(x * insert_ratio) > budget:
    x -= 1
  return x


def max_inputs(noise: BartNoise, length: int) -> int:
  """The longest noised text (before the mode prefix and EOS) for a chunk of `length`.

  Masking never lengthens the text, except zero-length spans (reserved by
  `zero_span_reserve`); insertion adds `ceil(insert_ratio * x)` to the `x` tokens left.

  Args:
    noise: the settings.
    length: chunk length in tokens.

  Returns:
    The bound in tokens.
  """
  x = length + zero_span_reserve(noise, length)
  return x + exact_ceil(x * noise.insert_ratio)


def default_mask_id(vocabulary: Any) -> int:
  """The default mask token: the vocabulary's lowest extra id (`vocab_size - extra_ids`).

  Args:
    vocabulary: a `seqio.Vocabulary`.

  Returns:
    The id.

  Raises:
    ValueError: the vocabulary has no extra ids.
  """
  extra = int(getattr(vocabulary, "extra_ids", 0) or 0)
  if extra < 1:
    raise UserError(
      "BART's mask token is an extra id of the vocabulary by default, but it has none; "
      "give BartNoise(mask_id=...) or a vocabulary with extra_ids."
    )
  return int(vocabulary.vocab_size) - extra


def mask_ids(denoisers: Sequence[Denoiser], vocabulary: Any) -> list[int]:
  """The mask token of each BART denoiser (in order; others are skipped).

  Args:
    denoisers: the mixture.
    vocabulary: its vocabulary.

  Returns:
    The ids.
  """
  out = []
  for d in denoisers:
    if d.kind == "bart":
      out.append(default_mask_id(vocabulary) if d.bart.mask_id is None else int(d.bart.mask_id))
  return out


def special_ids(vocabulary: Any) -> list[int]:
  """pad, EOS, UNK (and BOS where there is one) of a vocabulary."""
  ids = [0, vocabulary.eos_id, vocabulary.unk_id]
  try:
    bos = vocabulary.bos_id
  except NotImplementedError:  # seqio's base class has none
    bos = None
  if bos is not None:
    ids.append(bos)
  return [int(i) for i in ids if i is not None and int(i) >= 0]


def random_token_ids(vocabulary: Any, reserved: Sequence[int] = ()) -> np.ndarray:
  """The ids a random replacement is drawn from: ordinary ids, no special or extra id.

  Args:
    vocabulary: a `seqio.Vocabulary`.
    reserved: more ids to leave out (mask tokens, mode tokens).

  Returns:
    int32 [R], ascending.

  Raises:
    ValueError: no ordinary id is left.
  """
  base = int(vocabulary.vocab_size) - int(getattr(vocabulary, "extra_ids", 0) or 0)
  first = max(special_ids(vocabulary)) + 1
  ids = np.arange(first, base, dtype=np.int32)
  ids = ids[~np.isin(ids, np.asarray(list(reserved), np.int64))]
  if ids.size == 0:
    raise UserError("BART's random replacements need ordinary ids; the vocabulary has none.")
  return ids


def piece_tables(vocabulary: Any) -> tuple[np.ndarray, np.ndarray]:
  """Per id: does it start a word, and can it end a sentence (see the module doc).

  A SentencePiece vocabulary is read piece by piece: a word starts at a piece beginning with
  `▁` (and at special and extra ids); a sentence can end at a piece ending in `.`, `!` or `?`
  (then closing quotes or brackets). Other vocabularies decode each id alone and count
  every id as a word start.

  Args:
    vocabulary: a `seqio.Vocabulary`.

  Returns:
    (word_start bool [V], sentence_end bool [V]).
  """
  size = int(vocabulary.vocab_size)
  word_start = np.ones([size], bool)
  sentence_end = np.zeros([size], bool)
  sp = None
  try:
    sp = vocabulary.tokenizer  # seqio.SentencePieceVocabulary
    pieces = int(sp.get_piece_size())
  except (AttributeError, TypeError):
    sp = None
  if sp is not None:
    for i in range(min(pieces, size)):
      if sp.is_control(i) or sp.is_unknown(i):
        continue
      piece = sp.id_to_piece(i)
      word_start[i] = piece.startswith("▁")
      core = piece.lstrip("▁").rstrip(_CLOSERS)
      sentence_end[i] = core.endswith(_SENTENCE_END)
    return word_start, sentence_end
  base = size - int(getattr(vocabulary, "extra_ids", 0) or 0)
  skip = set(special_ids(vocabulary))
  for i in range(base):
    if i in skip:
      continue
    try:
      text = vocabulary.decode([i])
    except Exception:  # an id the vocabulary cannot decode alone
      continue
    sentence_end[i] = text.rstrip().rstrip(_CLOSERS).endswith(_SENTENCE_END)
  return word_start, sentence_end


def check_vocabulary(
  denoisers: Sequence[Denoiser], vocabulary: Any, prefixes: Sequence[Sequence[int]]
) -> list[int]:
  """Checks the BART denoisers' mask tokens against the vocabulary and the mode tokens.

  Args:
    denoisers: the mixture.
    vocabulary: its vocabulary.
    prefixes: mode-prefix ids per denoiser.

  Returns:
    The mask ids (to keep out of the sentinels).

  Raises:
    ValueError: a mask id outside the vocabulary, a special id, or a mode token.
  """
  out = []
  mode_ids = {t for p in prefixes for t in p}
  size = int(vocabulary.vocab_size)
  for d in denoisers:
    if d.kind != "bart":
      continue
    try:
      (m,) = mask_ids([d], vocabulary)
    except ValueError as e:
      raise UserError(f"Denoiser {d.name!r}: {e}") from e
    if not 0 <= m < size or m in special_ids(vocabulary):
      raise UserError(
        f"Denoiser {d.name!r}: mask_id {m} must be an ordinary or extra id of the vocabulary "
        f"[0, {size}), not pad/EOS/UNK."
      )
    if m in mode_ids:
      raise UserError(
        f"Denoiser {d.name!r}: mask_id {m} is also a mode token; give BartNoise(mask_id=...) "
        "another id."
      )
    out.append(m)
  return out
