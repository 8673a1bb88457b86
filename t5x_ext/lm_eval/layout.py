"""The harness's requests as this project's batches: what the encoder and the decoder read.

A request is a context and a continuation, token ids (`Pair`). The context is what the
commands feed a model (`t5x_ext.data.prompts`): the mode prefix, the context, EOS; the
continuation is scored as the targets. The layouts are the feature converters':

  encoder-decoder   encoder_input_tokens   = prefix + context (+ EOS)
                    decoder_target_tokens  = continuation (+ EOS if asked)
                    decoder_input_tokens   = 0 + targets[:-1]; loss weights 1 on the targets
  decoder-only      decoder_target_tokens  = prefix + context (+ EOS) + continuation
                    decoder_input_tokens   = 0 + targets[:-1]
                    decoder_causal_attention over BOS + prefix + context (+ EOS) (a prefix LM's
                    bidirectional part), loss weights 1 on the continuation only

A context too long is cut from the left (the end, next to the continuation, stays; the mode
prefix stays in front), as `tasks.evaluation.keep_inputs_end` does for rank classification.
Rows are padded to `rows` (all-zero rows score 0 and are dropped) and lengths to a bucket
(`bucket`), so that a few shapes compile.

Pure numpy; no JAX, no TensorFlow. Shape key: B rows, I encoder length, T decoder length.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

ENCODER_DECODER = "EncDecFeatureConverter"
# A causal LM (`DecoderOnlyModel(feature_converter_name='DecoderFeatureConverter')`) has no
# bidirectional inputs part: its rows carry no `decoder_causal_attention`.
CAUSAL_LM = "DecoderFeatureConverter"
MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class Pair:
  """One request in tokens.

  Attributes:
    context: token ids of the context (no mode prefix, no EOS).
    continuation: token ids to score (no EOS).
  """

  context: tuple[int, ...]
  continuation: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Layout:
  """How requests become rows.

  Attributes:
    feature_converter_name: the model's converter (`ENCODER_DECODER`, the prefix LM's or
      `CAUSAL_LM`).
    prefix: the mode prefix's token ids (empty for none).
    eos_id: the vocabulary's EOS.
    context_eos: end the context with EOS (the commands' prompts and the tasks' inputs do).
    continuation_eos: score EOS after the continuation too (T5's rank classification does).
    max_length: encoder length (encoder-decoder) or whole row length (decoder-only).
    max_target_length: decoder length of an encoder-decoder row.
  """

  feature_converter_name: str
  prefix: tuple[int, ...]
  eos_id: int
  context_eos: bool
  continuation_eos: bool
  max_length: int
  max_target_length: int

  @property
  def encoder_decoder(self) -> bool:
    """Whether rows are encoder-decoder rows."""
    return self.feature_converter_name == ENCODER_DECODER

  def head(self, context: Sequence[int], room: int) -> list[int]:
    """Prefix + the last tokens of `context` that fit in `room` (+ EOS).

    Args:
      context: the context's ids.
      room: the most tokens the head may take.

    Returns:
      The head's ids.

    Raises:
      ValueError: when the prefix and EOS alone do not fit.
    """
    eos = [self.eos_id] if self.context_eos else []
    keep = room - len(self.prefix) - len(eos)
    if keep < 0:
      raise ValueError(
        f"max_length={self.max_length} leaves no room for the mode prefix "
        f"({len(self.prefix)} tokens) and EOS"
      )
    tail = list(context)[-keep:] if keep else []
    return list(self.prefix) + tail + eos

  def target(self, continuation: Sequence[int], room: int, *, warn: bool = True) -> list[int]:
    """The continuation (+ EOS), its last `room` tokens if longer (as the harness cuts)."""
    ids = list(continuation) + ([self.eos_id] if self.continuation_eos else [])
    if len(ids) > room:
      if warn:
        logging.warning(
          "a continuation of %d tokens is cut to its last %d (max_target_length / max_length)",
          len(ids),
          room,
        )
      ids = ids[-room:]
    return ids

  def lengths(self, pair: Pair) -> tuple[int, int]:
    """(encoder or row length, decoder length) the pair needs before bucketing."""
    if self.encoder_decoder:
      tgt = self.target(pair.continuation, self.max_target_length, warn=False)
      return len(self.head(pair.context, self.max_length)), len(tgt)
    room = self.max_length - len(self.prefix) - self.context_eos
    tgt = self.target(pair.continuation, room, warn=False)
    head = self.head(pair.context, self.max_length - len(tgt))
    return len(head) + len(tgt), 0

  def shape(self, pairs: Sequence[Pair]) -> tuple[int, int]:
    """The bucketed (encoder or row length, decoder length) of a batch holding `pairs`.

    Several processes build their rows of one global batch with the shape of all its pairs.
    """
    li = lt = 1
    for p in pairs:
      a, b = self.lengths(p)
      li, lt = max(li, a), max(lt, b)
    if self.encoder_decoder:
      return bucket(li, self.max_length), bucket(lt, self.max_target_length)
    return bucket(li, self.max_length), 0

  def score_rows(
    self, pairs: Sequence[Pair], rows: int, shape: tuple[int, int] | None = None
  ) -> dict[str, np.ndarray]:
    """A batch of `rows` rows scoring `pairs` (then all-zero rows).

    Args:
      pairs: at most `rows` requests.
      rows: batch rows.
      shape: the lengths (`shape` of the whole global batch); default `shape(pairs)`.

    Returns:
      A numpy batch with the model's features and `decoder_loss_weights`.
    """
    if len(pairs) > rows:
      raise ValueError(f"{len(pairs)} requests for a batch of {rows} rows")
    shape = self.shape(pairs) if shape is None else shape
    if self.encoder_decoder:
      return self._encdec_rows(pairs, rows, *shape)
    return self._decoder_rows(pairs, rows, shape[0])

  def _encdec_rows(self, pairs, rows, li, lt):
    heads = [self.head(p.context, self.max_length) for p in pairs]
    tgts = [self.target(p.continuation, self.max_target_length) for p in pairs]
    enc = np.zeros((rows, li), np.int32)
    tgt = np.zeros((rows, lt), np.int32)
    dec_in = np.zeros((rows, lt), np.int32)
    weights = np.zeros((rows, lt), np.int32)
    for r, (h, t) in enumerate(zip(heads, tgts)):
      enc[r, : len(h)] = h
      tgt[r, : len(t)] = t
      dec_in[r, 1 : len(t)] = t[:-1]
      weights[r, : len(t)] = 1
    return {
      "encoder_input_tokens": enc,
      "decoder_input_tokens": dec_in,
      "decoder_target_tokens": tgt,
      "decoder_loss_weights": weights,
    }

  def _decoder_rows(self, pairs, rows, length):
    seqs, starts = [], []
    for p in pairs:
      tgt = self.target(p.continuation, self.max_length - len(self.prefix) - self.context_eos)
      head = self.head(p.context, self.max_length - len(tgt))
      seqs.append(head + tgt)
      starts.append(len(head))
    tgt = np.zeros((rows, length), np.int32)
    dec_in = np.zeros((rows, length), np.int32)
    causal = np.zeros((rows, length), np.int32)
    weights = np.zeros((rows, length), np.int32)
    for r, (s, start) in enumerate(zip(seqs, starts)):
      tgt[r, : len(s)] = s
      dec_in[r, 1 : len(s)] = s[:-1]
      causal[r, : 1 + start] = 1  # BOS + the head: the prefix LM's bidirectional part
      weights[r, start : len(s)] = 1
    batch = {
      "decoder_input_tokens": dec_in,
      "decoder_target_tokens": tgt,
      "decoder_loss_weights": weights,
    }
    if self.feature_converter_name != CAUSAL_LM:
      batch["decoder_causal_attention"] = causal
    return batch

  def prompt(self, context: Sequence[int], max_gen_toks: int) -> list[int]:
    """The ids a generation request's model reads: prefix + context (cut) + EOS.

    Args:
      context: the context's ids.
      max_gen_toks: tokens to generate (a decoder-only row holds them too).

    Returns:
      The prompt's ids.
    """
    if self.encoder_decoder:
      return self.head(context, self.max_length)
    room = self.max_length - max_gen_toks
    if room < 1:
      raise ValueError(
        f"max_gen_toks={max_gen_toks} leaves no room in max_length={self.max_length}"
      )
    return self.head(context, room)


def bucket(n: int, cap: int) -> int:
  """The padded length for `n` tokens: the next power of two (at least 16), at most `cap`.

  Args:
    n: tokens needed.
    cap: the longest allowed.

  Returns:
    The length.
  """
  size = MIN_BUCKET
  while size < n:
    size *= 2
  return min(size, cap)


def rolling_pairs(ids: Sequence[int], window: int, context: int) -> list[Pair]:
  """Disjoint windows over a document, each predicted from the tokens before it.

  Every token is predicted once; window k (tokens `[k*window, (k+1)*window)`) sees up to
  `context` tokens before it (the layout cuts what does not fit), the first one none (its
  context is the mode prefix and EOS alone).

  Args:
    ids: the document's token ids.
    window: tokens predicted per pair.
    context: the most context tokens a pair carries.

  Returns:
    The pairs, in document order.
  """
  if window < 1:
    raise ValueError(f"window={window} must be >= 1")
  return [
    Pair(tuple(ids[max(0, s - context) : s]), tuple(ids[s : s + window]))
    for s in range(0, len(ids), window)
  ]
