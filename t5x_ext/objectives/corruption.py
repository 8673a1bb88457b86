"""Vectorized noise masks and example assembly for a batch of chunks (TensorFlow only).

Shapes: B chunks per batch, L the longest chunk in the batch, K denoisers, C the longest
planned chunk of any denoiser.

Span corruption follows T5's format: each noise span is replaced in `inputs` by one
sentinel, and `targets` lists every span after its sentinel; sentinel k is
`vocab_size - 1 - k` (`<extra_id_k>`). The mask is drawn as in T5's random segmentation
(the noise tokens and the non-noise tokens are each split into `n` non-empty runs,
uniformly over compositions, and interleaved) and then rotated by a random offset so that
the chunk does not always end in noise. The offset is drawn among the cut points that do
not split a noise span, so the example has exactly `n` spans, the count planned for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from t5x_ext.objectives.denoisers import Denoiser
from t5x_ext.objectives.planning import DenoiserPlan

KIND_IDS = {"span": 0, "prefix_lm": 1, "causal_lm": 2}


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
  """Constant tables the graph reads, built once from the plans.

  Attributes:
    kinds: int32 [K], `KIND_IDS` of each denoiser.
    table_a: int32 [K, C + 1]; see `DenoiserPlan.table_a`.
    table_b: int32 [K, C + 1]; see `DenoiserPlan.table_b`.
    table_frac: float32 [K, C + 1]; see `DenoiserPlan.table_frac`.
    prefix_values: int32 [sum of prefix lengths], all mode prefixes concatenated.
    prefix_lengths: int32 [K].
    vocab_size: sentinels count down from `vocab_size - 1`.
    max_spans: most spans any example can have (0 without span denoisers).
  """

  kinds: np.ndarray
  table_a: np.ndarray
  table_b: np.ndarray
  table_frac: np.ndarray
  prefix_values: np.ndarray
  prefix_lengths: np.ndarray
  vocab_size: int
  max_spans: int

  @classmethod
  def build(
    cls,
    denoisers: Sequence[Denoiser],
    plans: Sequence[DenoiserPlan],
    prefixes: Sequence[Sequence[int]],
    vocab_size: int,
  ) -> MixtureSpec:
    """Stacks the per-denoiser plans into padded tables.

    Args:
      denoisers: the mixture.
      plans: one plan per denoiser.
      prefixes: mode-prefix ids per denoiser.
      vocab_size: vocabulary size including extra ids.

    Returns:
      The spec.
    """
    c = max(p.chunk_length for p in plans)
    k = len(plans)
    a = np.zeros([k, c + 1], np.int32)
    b = np.zeros([k, c + 1], np.int32)
    f = np.zeros([k, c + 1], np.float32)
    for i, p in enumerate(plans):
      a[i, : p.chunk_length + 1] = p.table_a
      b[i, : p.chunk_length + 1] = p.table_b
      f[i, : p.chunk_length + 1] = p.table_frac
    return cls(
      kinds=np.asarray([KIND_IDS[d.kind] for d in denoisers], np.int32),
      table_a=a,
      table_b=b,
      table_frac=f,
      prefix_values=np.asarray([t for p in prefixes for t in p], np.int32),
      prefix_lengths=np.asarray([len(p) for p in prefixes], np.int32),
      vocab_size=int(vocab_size),
      max_spans=max(p.max_spans for p in plans),
    )


def _sorted_cuts(m_B: tf.Tensor, n_B: tf.Tensor, max_spans: int, seed: tf.Tensor) -> tf.Tensor:
  """int32 [B, max_spans - 1]: `n - 1` increasing cut points in [1, m), then `m` padding.

  Cutting `m` items before each cut point gives `n` non-empty runs. The points are
  `x_(i) + i` for sorted i.i.d. uniform draws `x` in [0, m - n], which makes them
  distinct; a uniform random segmentation up to ties among the draws (T5 draws it by
  shuffling all `m - 1` gaps, which needs a sort over the whole chunk).
  """
  cols = max_spans - 1
  batch = tf.shape(m_B)[0]
  j = tf.range(cols)[tf.newaxis, :]
  n = n_B[:, tf.newaxis]
  m = m_B[:, tf.newaxis]
  u = tf.random.stateless_uniform(tf.stack([batch, cols]), seed)
  hi = tf.maximum(m - n, 0)
  x = tf.minimum(tf.cast(u * tf.cast(hi + 1, tf.float32), tf.int32), hi)
  x = tf.sort(tf.where(j < n - 1, x, tf.int32.max), axis=1)
  return tf.where(j < n - 1, x + j + 1, m)


def _span_masks(
  lens_B: tf.Tensor,
  noise_B: tf.Tensor,
  spans_B: tf.Tensor,
  active_B: tf.Tensor,
  seed: tf.Tensor,
  width: tf.Tensor,
  max_spans: int,
) -> tf.Tensor:
  """bool [B, L] noise masks with exactly `noise_B` noise tokens in `spans_B` spans.

  All the randomness lives in [B, max_spans] tensors; the [B, L] mask is one scatter and
  one cumsum. Rows with `active_B` False get an all-False mask.
  """
  seeds = tf.random.experimental.stateless_split(seed, 3)
  batch = tf.shape(lens_B)[0]
  n = spans_B[:, tf.newaxis]
  noise = noise_B[:, tf.newaxis]
  plain_B = lens_B - noise_B
  # Layout: plain run 0, noise run 0, plain run 1, ..., noise run n-1. With cp_j / ca_j
  # the plain / noise items before run j, noise run j is [cp_{j+1} + ca_j, cp_{j+1} +
  # ca_{j+1}).
  cut_p = _sorted_cuts(plain_B, spans_B, max_spans, seeds[0])
  cut_a = _sorted_cuts(noise_B, spans_B, max_spans, seeds[1])
  zero = tf.zeros([batch, 1], tf.int32)
  cp_next = tf.concat([cut_p, plain_B[:, tf.newaxis]], 1)
  ca = tf.concat([zero, cut_a], 1)
  ca_next = tf.concat([cut_a, noise], 1)
  starts = cp_next + ca
  ends = cp_next + ca_next
  span_ok = (tf.range(max_spans)[tf.newaxis, :] < n) & active_B[:, tf.newaxis]

  # Random rotation: start the chunk at a uniformly drawn plain token or noise-span start
  # (never inside a span, so no span wraps around and the span count stays n).
  u = tf.random.stateless_uniform([batch], seeds[2])
  choices = plain_B + spans_B
  z = tf.minimum(tf.cast(u * tf.cast(choices, tf.float32), tf.int32), choices - 1)
  z = tf.maximum(z, 0)
  at_span = tf.gather(starts, tf.clip_by_value(z, 0, max_spans - 1), batch_dims=1)
  q = z - spans_B  # index of the plain token, when z >= n
  run = tf.reduce_sum(
    tf.cast((cut_p <= q[:, tf.newaxis]) & (tf.range(max_spans - 1)[tf.newaxis] < n - 1), tf.int32),
    axis=1,
  )
  at_plain = q + tf.gather(ca, run, batch_dims=1)
  shift = tf.where(z < spans_B, at_span, at_plain)[:, tf.newaxis]
  wrap = tf.where(starts < shift, lens_B[:, tf.newaxis], 0)
  starts = starts - shift + wrap
  ends = ends - shift + wrap

  # +1 at each span start, -1 at its end, cumsum: 1 inside spans.
  row = tf.range(batch)[:, tf.newaxis] * (width + 1)
  ids = tf.concat(
    [row + tf.clip_by_value(starts, 0, width), row + tf.clip_by_value(ends, 0, width)], 1
  )
  ones = tf.cast(span_ok, tf.int32)
  delta = tf.math.unsorted_segment_sum(
    tf.reshape(tf.concat([ones, -ones], 1), [-1]), tf.reshape(ids, [-1]), batch * (width + 1)
  )
  inside = tf.cumsum(tf.reshape(delta, [batch, width + 1]), axis=1)[:, :width]
  return inside > 0


def _interleave(
  first_BL: tf.Tensor, keep_first_BL: tf.Tensor, second_BL: tf.Tensor, keep_second_BL: tf.Tensor
) -> tf.RaggedTensor:
  """Ragged [B, None]: per position, `first` (if kept) then `second` (if kept)."""
  vals = tf.stack([first_BL, second_BL], axis=2)
  keep = tf.stack([keep_first_BL, keep_second_BL], axis=2)
  batch = tf.shape(vals)[0]
  vals = tf.reshape(vals, [batch, -1])
  keep = tf.reshape(keep, [batch, -1])
  return tf.ragged.boolean_mask(vals, keep)


def build_examples(
  chunks: tf.RaggedTensor, denoiser_ids: tf.Tensor, spec: MixtureSpec, seed: tf.Tensor
) -> dict[str, tf.Tensor | tf.RaggedTensor]:
  """Turns a batch of raw chunks into denoising examples.

  Args:
    chunks: int32 ragged [B, None]; row b is at most the planned chunk length of
      `denoiser_ids[b]` and at least 2 tokens.
    denoiser_ids: int32 [B].
    spec: the constant tables.
    seed: stateless seed (shape [2]).

  Returns:
    {"inputs": ragged int32 [B, None], "targets": ragged int32 [B, None],
     "denoiser_id": int32 [B]}.
  """
  seeds = tf.random.experimental.stateless_split(seed, 2)
  tokens_BL = chunks.to_tensor(0)
  width = tf.shape(tokens_BL)[1]
  lens_B = tf.cast(chunks.row_lengths(), tf.int32)
  k_B = tf.cast(denoiser_ids, tf.int32)
  idx = tf.stack([k_B, lens_B], axis=1)
  a_B = tf.gather_nd(spec.table_a, idx)
  b_B = tf.gather_nd(spec.table_b, idx)
  frac_B = tf.gather_nd(spec.table_frac, idx)
  kind_B = tf.gather(spec.kinds, k_B)
  u_B2 = tf.random.stateless_uniform(tf.stack([tf.size(k_B), 2]), seeds[0])

  # Span rows: a = noise tokens, b (+1 with probability frac) = spans.
  spans_B = b_B + tf.cast(u_B2[:, 0] < frac_B, tf.int32)
  kind = kind_B[:, tf.newaxis]
  pos_BL = tf.range(width)[tf.newaxis, :]
  valid_BL = pos_BL < lens_B[:, tf.newaxis]
  if spec.max_spans > 0:
    span_mask_BL = _span_masks(
      lens_B, a_B, spans_B, kind_B == KIND_IDS["span"], seeds[1], width, spec.max_spans
    )
  else:
    span_mask_BL = tf.zeros_like(valid_BL)
  # Prefix rows: a..b = range of target lengths.
  span_of_t = tf.cast(b_B - a_B + 1, tf.float32)
  t_B = a_B + tf.minimum(tf.cast(tf.floor(u_B2[:, 1] * span_of_t), tf.int32), b_B - a_B)
  prefix_mask_BL = valid_BL & (pos_BL >= (lens_B - t_B)[:, tf.newaxis])
  mask_BL = tf.where(
    kind == KIND_IDS["span"],
    span_mask_BL,
    tf.where(kind == KIND_IDS["prefix_lm"], prefix_mask_BL, valid_BL),
  )

  is_span = kind == KIND_IDS["span"]
  prev_BL = tf.pad(mask_BL[:, :-1], [[0, 0], [1, 0]])
  start_BL = mask_BL & ~prev_BL & is_span
  sentinel_BL = spec.vocab_size - tf.cumsum(tf.cast(start_BL, tf.int32), axis=1)
  inputs = _interleave(sentinel_BL, start_BL, tokens_BL, valid_BL & ~mask_BL)
  targets = _interleave(sentinel_BL, start_BL, tokens_BL, mask_BL)

  prefix_rt = tf.RaggedTensor.from_row_lengths(
    spec.prefix_values, spec.prefix_lengths, validate=False
  )
  prefix_rt = tf.gather(prefix_rt, k_B).with_row_splits_dtype(inputs.row_splits.dtype)
  inputs = tf.concat([prefix_rt, inputs], axis=1)
  return {"inputs": inputs, "targets": targets, "denoiser_id": k_B}
