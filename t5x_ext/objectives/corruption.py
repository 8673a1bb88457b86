"""Vectorized noise masks and example assembly for a batch of chunks (TensorFlow only).

Shapes: B chunks per batch, L the longest chunk in the batch, K denoisers, C the longest
planned chunk of any denoiser.

Span corruption follows T5's format: each noise span is replaced in `inputs` by one
sentinel, and `targets` lists every span after its sentinel; sentinel k is
`vocab_size - 1 - k` (`<extra_id_k>`), numbered in reading order. The mask is drawn as
in T5's random segmentation: the noise tokens and the non-noise tokens are each split
into `n` non-empty runs (cut points drawn uniformly, see `_sorted_cuts`) and interleaved,
non-noise first. The layout is then rotated by a random offset so that a chunk does not
always end in noise (T5 without `random_roll` always does). The offset is drawn among
the non-noise positions and the span starts, never inside a span, so no span wraps and
the example has exactly `n` spans, the count the length planning allowed for.
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
    prefix_values: int32 [K, P], mode prefix ids, zero-padded to the longest (P may be 0).
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
      prefix_values=np.asarray(
        [list(p) + [0] * (max(map(len, prefixes)) - len(p)) for p in prefixes], np.int32
      ).reshape([k, -1]),
      prefix_lengths=np.asarray([len(p) for p in prefixes], np.int32),
      vocab_size=int(vocab_size),
      max_spans=max(p.max_spans for p in plans),
    )


def _sorted_cuts(m_B: tf.Tensor, n_B: tf.Tensor, max_spans: int, seed: tf.Tensor) -> tf.Tensor:
  """int32 [B, max_spans - 1]: `n - 1` increasing cut points in [1, m), then `m` padding.

  Cutting `m` items before each cut point gives `n` non-empty runs. The points are
  `x_(i) + i` for the order statistics `x_(i)` of `n - 1` i.i.d. uniform draws in
  [0, m - n], which makes them distinct: a uniform random segmentation up to ties among
  the draws (T5 shuffles all `m - 1` gaps instead, a sort over the whole chunk). The
  order statistics come sorted from exponential spacings (Renyi), so nothing is sorted.
  """
  cols = max_spans - 1
  batch = tf.shape(m_B)[0]
  j = tf.range(cols)[tf.newaxis, :]
  n = n_B[:, tf.newaxis]
  m = m_B[:, tf.newaxis]
  u = tf.random.stateless_uniform(tf.stack([batch, max_spans]), seed, minval=1e-7, maxval=1.0)
  arrivals = tf.cumsum(-tf.math.log(u), axis=1)  # [B, max_spans]
  total = tf.gather(arrivals, tf.maximum(n_B - 1, 0), batch_dims=1)[:, tf.newaxis]
  sorted_u = arrivals[:, :cols] / total  # first n - 1 entries: sorted uniforms in (0, 1)
  hi = tf.maximum(m - n, 0)
  x = tf.minimum(tf.cast(sorted_u * tf.cast(hi + 1, tf.float32), tf.int32), hi)
  return tf.where(j < n - 1, x + j + 1, m)


def _span_masks(
  lens_B: tf.Tensor,
  noise_B: tf.Tensor,
  spans_B: tf.Tensor,
  active_B: tf.Tensor,
  seed: tf.Tensor,
  width: tf.Tensor,
  max_spans: int,
  vocab_size: int,
  end_value: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Noise masks with exactly `noise_B` noise tokens in `spans_B` spans, and sentinels.

  All the randomness lives in [B, max_spans] tensors; the [B, L] outputs are two scatters
  and one running sum. Rows with `active_B` False get no spans.

  Returns:
    (mask bool [B, L], sentinel int32 [B, L + 2]: the sentinel id at each span's first
    position, `end_value` in the last column, 0 elsewhere).
  """
  seeds = tf.random.experimental.stateless_split(seed, 3)
  batch = tf.shape(lens_B)[0]
  # Inactive rows carry other kinds' numbers; keep them in range so every gather is valid.
  spans_B = tf.where(active_B, spans_B, 1)
  noise_B = tf.where(active_B, noise_B, 1)
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

  # Sentinels number the spans in reading order: after the rotation the unwrapped spans
  # (those at or after `shift`) come first.
  first = tf.reduce_sum(tf.cast((wrap > 0) & span_ok, tf.int32), axis=1, keepdims=True)
  rank = tf.math.floormod(tf.range(max_spans)[tf.newaxis, :] - first, tf.maximum(n, 1))
  sentinel = tf.where(span_ok, vocab_size - 1 - rank, 0)

  # Two scatters: +1 at each span start and -1 at its end (the running sum is 1 inside
  # spans), in float32 on a width padded to whole scan blocks; and each span's sentinel
  # id at its start, with `end_value` (if any) in the extra last column.
  ones = tf.cast(span_ok, tf.float32)
  blocks = (width + _SCAN_BLOCK) // _SCAN_BLOCK  # room for the end position `width`
  padded = blocks * _SCAN_BLOCK
  rows = tf.range(batch)[:, tf.newaxis]
  starts = tf.clip_by_value(starts, 0, width)
  ends = tf.clip_by_value(ends, 0, width)
  marks = tf.math.unsorted_segment_sum(
    tf.reshape(tf.concat([ones, -ones], 1), [-1]),
    tf.reshape(tf.concat([rows * padded + starts, rows * padded + ends], 1), [-1]),
    batch * padded,
  )
  inside = _running_sum(tf.reshape(marks, [batch, padded]))[:, :width]
  sent_ids = [tf.reshape(rows * (width + 2) + starts, [-1])]
  sent_data = [tf.reshape(sentinel, [-1])]
  if end_value is not None:
    sent_ids.append(tf.range(batch) * (width + 2) + width + 1)
    sent_data.append(tf.fill([batch], end_value))
  sent = tf.math.unsorted_segment_sum(
    tf.concat(sent_data, 0), tf.concat(sent_ids, 0), batch * (width + 2)
  )
  return inside > 0.5, tf.reshape(sent, [batch, width + 2])


# Block width of `_running_sum`.
_SCAN_BLOCK = 128


def _running_sum(x_BW: tf.Tensor) -> tf.Tensor:
  """Inclusive cumulative sum along axis 1 of a float32 [B, W] tensor of small integers,
  W a multiple of `_SCAN_BLOCK`.

  The same as `tf.cumsum(x, axis=1)`, computed as a matmul of 128-wide blocks with a
  triangular matrix plus a cumsum of the block totals: TF's CPU cumsum runs about 3x
  slower than this on the [B, ~1000] masks here. Exact while partial sums stay under
  2**24 in magnitude (float32 integers); the masks here sum to at most W.
  """
  batch, width = tf.shape(x_BW)[0], tf.shape(x_BW)[1]
  blocks = width // _SCAN_BLOCK
  upper = tf.linalg.band_part(tf.ones([_SCAN_BLOCK, _SCAN_BLOCK]), 0, -1)
  within = tf.reshape(tf.reshape(x_BW, [-1, _SCAN_BLOCK]) @ upper, [batch, blocks, _SCAN_BLOCK])
  before = tf.cumsum(within[:, :, -1], axis=1, exclusive=True)
  return tf.reshape(within + before[:, :, tf.newaxis], [batch, width])


def _select(vals_BL: tf.Tensor, keep_BL: tf.Tensor) -> tf.RaggedTensor:
  """Ragged [B, None]: the kept values of each row, in order (one flat compaction, much
  cheaper than `tf.ragged.boolean_mask`; `dynamic_partition` is a single pass where
  `tf.boolean_mask` is a `where` and a gather)."""
  parts = tf.dynamic_partition(
    tf.reshape(vals_BL, [-1]), tf.reshape(tf.cast(keep_BL, tf.int32), [-1]), 2
  )
  values = parts[1]
  lengths = tf.reduce_sum(tf.cast(keep_BL, tf.int64), axis=1)
  return tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)


def build_examples(
  chunks: tf.RaggedTensor,
  denoiser_ids: tf.Tensor,
  spec: MixtureSpec,
  seed: tf.Tensor,
  *,
  inputs_eos: int | None = None,
  targets_eos: int | None = None,
) -> dict[str, tf.Tensor | tf.RaggedTensor]:
  """Turns a batch of raw chunks into denoising examples.

  Args:
    chunks: int32 ragged [B, None]; row b is at most the planned chunk length of
      `denoiser_ids[b]` and at least 2 tokens.
    denoiser_ids: int32 [B].
    spec: the constant tables.
    seed: stateless seed (shape [2]).
    inputs_eos: if set, this id ends every `inputs` row (what
      `seqio.preprocessors.append_eos_after_trim` would add).
    targets_eos: the same for `targets`.

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
  is_span_B = kind_B == KIND_IDS["span"]
  pos_BL = tf.range(width)[tf.newaxis, :]
  valid_BL = pos_BL < lens_B[:, tf.newaxis]
  batch = tf.size(k_B)
  # The targets' EOS rides in the last column of the sentinel array (see below).
  if spec.max_spans > 0:
    span_mask_BL, sent_BL2 = _span_masks(
      lens_B,
      a_B,
      spans_B,
      is_span_B,
      seeds[1],
      width,
      spec.max_spans,
      spec.vocab_size,
      end_value=targets_eos,
    )
  else:
    span_mask_BL = tf.zeros_like(valid_BL)
    sent_BL2 = tf.concat(
      [tf.zeros(tf.stack([batch, width + 1]), tf.int32), tf.fill([batch, 1], targets_eos or 0)],
      1,
    )
  # Prefix rows: a..b = range of target lengths, the last t tokens; causal rows: all.
  span_of_t = tf.cast(b_B - a_B + 1, tf.float32)
  t_B = a_B + tf.minimum(tf.cast(tf.floor(u_B2[:, 1] * span_of_t), tf.int32), b_B - a_B)
  first_target_B = tf.where(kind_B == KIND_IDS["prefix_lm"], lens_B - t_B, 0)
  mask_BL = tf.where(
    is_span_B[:, tf.newaxis],
    span_mask_BL,
    valid_BL & (pos_BL >= first_target_B[:, tf.newaxis]),
  )

  # At most one id per position in each output: inputs hold the sentinel at a span's
  # first position (whose token goes to the targets) and plain tokens elsewhere; targets
  # hold noise tokens, and a span's sentinel sits on the position just before it (a plain
  # one) or on an extra leading column when the span starts the chunk. EOS goes in one
  # more column, always kept (compaction keeps each row's order).
  sent_BL = sent_BL2[:, :width]
  has_sent_BL = sent_BL > 0
  in_vals = [tf.where(has_sent_BL, sent_BL, tokens_BL)]
  in_keep = [has_sent_BL | (valid_BL & ~mask_BL)]
  if spec.prefix_values.shape[1]:
    in_vals.insert(0, tf.gather(spec.prefix_values, k_B))
    in_keep.insert(
      0,
      tf.range(spec.prefix_values.shape[1])[tf.newaxis]
      < tf.gather(spec.prefix_lengths, k_B)[:, tf.newaxis],
    )
  if inputs_eos is not None:
    in_vals.append(tf.fill([batch, 1], inputs_eos))
    in_keep.append(tf.ones([batch, 1], tf.bool))
  inputs = _select(tf.concat(in_vals, 1), tf.concat(in_keep, 1))
  noise_BL2 = tf.pad(mask_BL, [[0, 0], [1, 1]])
  tg_vals = tf.where(noise_BL2, tf.pad(tokens_BL, [[0, 0], [1, 1]]), sent_BL2)
  tg_keep = noise_BL2 | (sent_BL2 > 0)
  if targets_eos is not None and targets_eos <= 0:  # not kept by `sent > 0`
    tg_keep |= tf.range(width + 2) == width + 1
  targets = _select(tg_vals, tg_keep)
  return {"inputs": inputs, "targets": targets, "denoiser_id": k_B}
