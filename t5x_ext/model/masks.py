"""Attention masks: padding, packing (segment ids), causality and prefix-LM.

All masks are bool, True where attention is allowed, shaped [B, 1, Q, K] so they broadcast
over heads. Padding follows T5X: a position is real when its token id is non-zero (for the
decoder, the *target* token, since the first decoder input is the 0 start token).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def encoder_mask(tokens_BI: Array, segment_ids_BI: Array | None = None) -> Array:
  """Bidirectional mask over real tokens of the same packed segment.

  Args:
    tokens_BI: encoder input tokens (0 is padding).
    segment_ids_BI: packing segment ids, or None for unpacked batches.

  Returns:
    bool [B, 1, I, I].
  """
  mask = jnp.broadcast_to(
    (tokens_BI > 0)[:, None, None, :], (tokens_BI.shape[0], 1) + (tokens_BI.shape[1],) * 2
  )
  if segment_ids_BI is not None:
    mask = mask & _same_segment(segment_ids_BI, segment_ids_BI)
  return mask


def decoder_mask(
  length: int,
  target_tokens_BT: Array | None = None,
  segment_ids_BT: Array | None = None,
  causal_attention_BT: Array | None = None,
) -> Array:
  """Causal (or prefix-LM) mask of a decoder over a full sequence.

  Args:
    length: T.
    target_tokens_BT: decoder target tokens; positions whose target is 0 are padding
      and are never attended to. None: every position is real.
    segment_ids_BT: packing segment ids, or None.
    causal_attention_BT: prefix-LM marker (SeqIO's `decoder_causal_attention`): positions
      with 1 see each other bidirectionally (within a segment); None for a causal LM.

  Returns:
    bool [B or 1, 1, T, T].
  """
  idx = jnp.arange(length)
  mask = (idx[None, :] <= idx[:, None])[None, None]
  if causal_attention_BT is not None:
    prefix = causal_attention_BT.astype(jnp.bool_)
    mask = mask | (prefix[:, None, :, None] & prefix[:, None, None, :])
  if target_tokens_BT is not None:
    mask = mask & (target_tokens_BT > 0)[:, None, None, :]
  if segment_ids_BT is not None:
    mask = mask & _same_segment(segment_ids_BT, segment_ids_BT)
  return mask


def cross_mask(
  encoder_tokens_BI: Array,
  decoder_length: int,
  encoder_segment_ids_BI: Array | None = None,
  decoder_segment_ids_BT: Array | None = None,
) -> Array:
  """Decoder-to-encoder mask over real encoder tokens of the same packed segment.

  Args:
    encoder_tokens_BI: encoder input tokens (0 is padding).
    decoder_length: T.
    encoder_segment_ids_BI: encoder packing segment ids, or None.
    decoder_segment_ids_BT: decoder packing segment ids, or None.

  Returns:
    bool [B, 1, T, I].
  """
  b, i = encoder_tokens_BI.shape
  mask = jnp.broadcast_to((encoder_tokens_BI > 0)[:, None, None, :], (b, 1, decoder_length, i))
  if encoder_segment_ids_BI is not None and decoder_segment_ids_BT is not None:
    mask = mask & _same_segment(decoder_segment_ids_BT, encoder_segment_ids_BI)
  elif (encoder_segment_ids_BI is None) != (decoder_segment_ids_BT is None):
    raise ValueError("packed batches need both encoder_segment_ids and decoder_segment_ids")
  return mask


def _same_segment(query_segments_BQ: Array, key_segments_BK: Array) -> Array:
  return (query_segments_BQ[:, :, None] == key_segments_BK[:, None, :])[:, None]
