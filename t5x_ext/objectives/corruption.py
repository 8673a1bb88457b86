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
  """

  kinds: np.ndarray
  table_a: np.ndarray
  table_b: np.ndarray
  table_frac: np.ndarray
  prefix_values: np.ndarray
  prefix_lengths: np.ndarray
  vocab_size: int

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
    )


def _span_masks(
  lens_B: tf.Tensor, noise_B: tf.Tensor, spans_B: tf.Tensor, seed: tf.Tensor, width: tf.Tensor
) -> tf.Tensor:
  """bool [B, L] noise masks with exactly `noise_B` noise tokens in `spans_B` spans.

  Rows whose counts are meaningless (other kinds) produce garbage that callers mask out;
  nothing here can fail on them.
  """
  seeds = tf.random.experimental.stateless_split(seed, 2)
  pos_BL = tf.range(width)[tf.newaxis, :]
  lens = lens_B[:, tf.newaxis]
  noise = noise_B[:, tf.newaxis]
  spans = spans_B[:, tf.newaxis]
  plain = lens - noise  # non-noise tokens
  # Layout before interleaving: plain items at [0, plain), noise items at [plain, lens).
  # A cut "before item j" ends a run; runs of one kind need (spans - 1) cuts among the
  # (count - 1) gaps inside that kind. Rank the candidate gaps by a random key, region
  # by region, and cut at the lowest ranks.
  region_BL = tf.where(
    (pos_BL >= 1) & (pos_BL < plain),
    0,
    tf.where((pos_BL > plain) & (pos_BL < lens), 1, 2),
  )
  u_BL = tf.random.stateless_uniform(tf.shape(region_BL), seeds[0])
  order_BL = tf.argsort(u_BL + 2.0 * tf.cast(region_BL, tf.float32), axis=1, stable=True)
  rank_BL = tf.argsort(order_BL, axis=1, stable=True)
  cut_BL = ((region_BL == 0) & (rank_BL < spans - 1)) | (
    (region_BL == 1) & (rank_BL >= plain - 1) & (rank_BL < plain - 1 + spans - 1)
  )
  run_BL = tf.cumsum(tf.cast(cut_BL, tf.int32), axis=1)
  # Interleave: plain run i sorts before noise run i, which sorts before plain run i + 1.
  big = 2 * width + 4
  key_BL = tf.where(
    pos_BL < plain, 2 * run_BL, tf.where(pos_BL < lens, 2 * (run_BL - (spans - 1)) + 1, big)
  )
  key_BL = tf.sort(key_BL, axis=1)
  valid_BL = pos_BL < lens
  mask_BL = tf.equal(key_BL % 2, 1) & valid_BL
  # Random rotation among cut points that do not fall inside a noise span (position r is
  # a valid start unless both r - 1 and r, cyclically, are noise).
  prev_idx = tf.where(pos_BL == 0, lens - 1, pos_BL - 1)
  prev_idx = tf.clip_by_value(prev_idx, 0, width - 1)
  prev_BL = tf.gather(mask_BL, prev_idx, batch_dims=1)
  ok_BL = valid_BL & ~(mask_BL & prev_BL)
  v_BL = tf.random.stateless_uniform(tf.shape(ok_BL), seeds[1])
  shift_B = tf.argmax(tf.where(ok_BL, v_BL, -1.0), axis=1, output_type=tf.int32)
  src_BL = tf.math.floormod(pos_BL + shift_B[:, tf.newaxis], tf.maximum(lens, 1))
  src_BL = tf.clip_by_value(src_BL, 0, width - 1)
  return tf.gather(mask_BL, src_BL, batch_dims=1) & valid_BL


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
  span_mask_BL = _span_masks(lens_B, a_B, spans_B, seeds[1], width)
  # Prefix rows: a..b = range of target lengths.
  span_of_t = tf.cast(b_B - a_B + 1, tf.float32)
  t_B = a_B + tf.minimum(tf.cast(tf.floor(u_B2[:, 1] * span_of_t), tf.int32), b_B - a_B)
  pos_BL = tf.range(width)[tf.newaxis, :]
  valid_BL = pos_BL < lens_B[:, tf.newaxis]
  prefix_mask_BL = valid_BL & (pos_BL >= (lens_B - t_B)[:, tf.newaxis])
  kind = kind_B[:, tf.newaxis]
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
