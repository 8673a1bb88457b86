"""BART's noises on a batch of chunks, vectorized in TensorFlow (see `bart.py` for the what).

Shapes: B chunks, L the longest chunk, D the most spans (or inserted tokens) of a row, S the
most sentences. Every random choice of a row is drawn for the whole batch at once:

* sentence permutation: one argsort of [B, S] uniform keys picks the shuffled subset (the
  `ceil(p * sentences)` smallest keys) and, by the order of those keys, their new order;
* span lengths: D draws per row of the zero-truncated Poisson law (a searchsorted on its
  CDF), the zero-length spans fairseq's draws would have between them as a sum of geometric
  counts (a run of zero draws before each non-zero one), so no loop redraws;
* span starts and insertion slots: the D smallest of uniform keys (`top_k`), a uniform
  subset in random order, as fairseq's `randperm(...)[:n]`;
* span coverage in word space: a +1/-1 difference array and a running sum, so overlapping
  spans merge as fairseq's token-by-token extension merges them.

With `record=True` each example also carries its noise record (int32, the noised text
without mode prefix and EOS):
  noise_order [n]: original position of the j-th token after sentence permutation;
  noise_fate [n]: per permuted token, 0 kept, 1 replaced by the mask, 2 replaced by a random
    token, 3 deleted (inside a span that kept one mask, or a deleted span);
  noise_source [m]: per input token, the permuted position it shows (-1: inserted);
  noise_rotation []: the rotation offset (0 when not rotated).
so `targets[noise_order[noise_source[i]]] == inputs[P + i]` for every kept token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from t5x_ext.objectives import bart
from t5x_ext.objectives.denoisers import Denoiser

RECORD_KEYS = ("noise_order", "noise_fate", "noise_source", "noise_rotation")
FATE_KEPT, FATE_MASK, FATE_RANDOM, FATE_DELETED = 0, 1, 2, 3
# Scale of the interior count inside `_mask`'s combined difference array (> any span count).
_INNER = 1 << 14


@dataclasses.dataclass(frozen=True)
class BartSpec:
  """Constant tables of the BART denoisers of a mixture (index b: the b-th BART denoiser).

  Attributes:
    local_of: int32 [K]: mixture index -> BART index (-1 for other kinds).
    mask_ratio, mask_random, insert_ratio, permute: float64 [Kb].
    rotate: float32 [Kb].
    poisson: bool [Kb]: "span-poisson" spans (else single words or tokens).
    token_level: bool [Kb].
    replace_length: int32 [Kb].
    mask_id: int32 [Kb].
    cdf: float32 [Kb, J]: zero-truncated Poisson CDF over lengths 1..J (padded with 1).
    log_q: float32 [Kb]: log P(length 0) (-inf-like where no Poisson).
    core_limit: int32 [Kb]: longest masked text whose insertions fit the inputs.
    prefix_values: int32 [Kb, P]; prefix_lengths: int32 [Kb].
    word_start, sentence_end: bool [V] per-id tables.
    random_ids: int32 [R] ordinary ids for random replacements.
    any_permute, any_mask, any_insert, any_rotate: whether any denoiser uses each noise.
    any_replace_all: whether any denoiser masks every token of a span (replace_length -1).
    any_random: whether any denoiser has random replacements (mask_random > 0).
  """

  local_of: np.ndarray
  mask_ratio: np.ndarray
  mask_random: np.ndarray
  insert_ratio: np.ndarray
  permute: np.ndarray
  rotate: np.ndarray
  poisson: np.ndarray
  token_level: np.ndarray
  replace_length: np.ndarray
  mask_id: np.ndarray
  cdf: np.ndarray
  log_q: np.ndarray
  core_limit: np.ndarray
  prefix_values: np.ndarray
  prefix_lengths: np.ndarray
  word_start: np.ndarray
  sentence_end: np.ndarray
  random_ids: np.ndarray
  any_permute: bool
  any_mask: bool
  any_insert: bool
  any_rotate: bool
  any_replace_all: bool
  any_random: bool

  @classmethod
  def build(
    cls,
    denoisers: Sequence[Denoiser],
    prefixes: Sequence[Sequence[int]],
    vocabulary: Any,
    sequence_length: Mapping[str, int | None],
  ) -> BartSpec | None:
    """The tables of a mixture's BART denoisers, or None when it has none.

    Args:
      denoisers: the mixture (checked and planned).
      prefixes: mode-prefix ids per denoiser.
      vocabulary: the task's vocabulary.
      sequence_length: feature lengths (the inputs budget bounds the insertions).

    Returns:
      The spec, or None.
    """
    idx = [k for k, d in enumerate(denoisers) if d.kind == "bart"]
    if not idx:
      return None
    noises = [denoisers[k].bart for k in idx]
    local_of = np.full([len(denoisers)], -1, np.int32)
    local_of[idx] = np.arange(len(idx), dtype=np.int32)
    masks = bart.mask_ids(denoisers, vocabulary)
    tables = [bart.poisson_table(n.poisson_lambda) for n in noises]
    width = max(len(c) for c, _ in tables)
    cdf = np.ones([len(idx), width], np.float32)
    for i, (c, _) in enumerate(tables):
      cdf[i, : len(c)] = c
    log_q = np.asarray([np.log(max(q, 1e-30)) for _, q in tables], np.float32)
    pre = [list(prefixes[k]) for k in idx]
    p_max = max(map(len, pre))
    budget = int(sequence_length["inputs"]) - 1
    reserved = masks + [t for p in prefixes for t in p]
    word_start, sentence_end = bart.piece_tables(vocabulary)
    f64 = lambda name: np.asarray([getattr(n, name) for n in noises], np.float64)  # noqa: E731
    return cls(
      local_of=local_of,
      mask_ratio=f64("mask_ratio"),
      mask_random=f64("mask_random"),
      insert_ratio=f64("insert_ratio"),
      permute=f64("permute_sentences"),
      rotate=f64("rotate_ratio").astype(np.float32),
      poisson=np.asarray([n.mask_length == "span-poisson" for n in noises]),
      token_level=np.asarray([n.token_level for n in noises]),
      replace_length=np.asarray([n.replace_length for n in noises], np.int32),
      mask_id=np.asarray(masks, np.int32),
      cdf=cdf,
      log_q=log_q,
      core_limit=np.asarray(
        [bart.core_limit(n.insert_ratio, budget - len(p)) for n, p in zip(noises, pre)], np.int32
      ),
      prefix_values=np.asarray([p + [0] * (p_max - len(p)) for p in pre], np.int32).reshape(
        [len(idx), p_max]
      ),
      prefix_lengths=np.asarray([len(p) for p in pre], np.int32),
      word_start=word_start,
      sentence_end=sentence_end,
      random_ids=bart.random_token_ids(vocabulary, reserved),
      any_permute=any(n.permute_sentences > 0 for n in noises),
      any_mask=any(n.mask_ratio > 0 for n in noises),
      any_insert=any(
        n.insert_ratio > 0 or (n.mask_ratio > 0 and n.mask_length == "span-poisson") for n in noises
      ),
      any_rotate=any(n.rotate_ratio > 0 for n in noises),
      any_replace_all=any(n.replace_length == -1 and n.mask_ratio > 0 for n in noises),
      any_random=any(n.mask_random > 0 for n in noises),
    )


def _ceil(count: tf.Tensor, ratio: tf.Tensor) -> tf.Tensor:
  """int32 `ceil(count * ratio)` in float64, ignoring float noise (`bart.exact_ceil`)."""
  x = tf.math.ceil(tf.cast(count, tf.float64) * ratio - 1e-9)
  return tf.maximum(tf.cast(x, tf.int32), 0)


def _bmax(x: tf.Tensor) -> tf.Tensor:
  """Max of an int32 vector, 0 when it is empty."""
  return tf.reduce_max(tf.concat([tf.reshape(x, [-1]), [0]], 0))


def _scatter_rows(idx_BN: tf.Tensor, vals_BN: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """[B, width] sums of `vals` scattered to column `idx` of their row (idx in [0, width))."""
  batch = tf.shape(idx_BN)[0]
  rows = tf.range(batch)[:, tf.newaxis]
  flat = tf.reshape(rows * width + idx_BN, [-1])
  out = tf.math.unsorted_segment_sum(tf.reshape(vals_BN, [-1]), flat, batch * width)
  return tf.reshape(out, tf.stack([batch, width]))


def _compact(vals: Sequence[tf.Tensor], keep_BL: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor]:
  """Moves each row's kept values to its front: ([dense [B, max kept]] per input, kept [B])."""
  n_B = tf.reduce_sum(tf.cast(keep_BL, tf.int32), axis=1)
  dest = tf.cumsum(tf.cast(keep_BL, tf.int32), axis=1, exclusive=True)
  width = _bmax(n_B) + 1  # one spare column takes the dropped values
  dest = tf.where(keep_BL, dest, width - 1)
  return [_scatter_rows(dest, tf.where(keep_BL, v, 0), width)[:, :-1] for v in vals], n_B


def _permute_sentences(sentence_end, word_start, valid, lens_B, p_B, seed):
  """Original position of each position after permuting `ceil(p * sentences)` sentences."""
  batch, width = tf.shape(word_start)[0], tf.shape(word_start)[1]
  pos = tf.range(width)[tf.newaxis]
  next_starts = tf.concat([word_start[:, 1:], tf.ones([batch, 1], tf.bool)], 1)
  ends = (sentence_end & next_starts) | (pos == lens_B[:, None] - 1)
  ends &= valid
  sid = tf.cumsum(tf.cast(ends, tf.int32), axis=1, exclusive=True)
  n_B = tf.reduce_sum(tf.cast(ends, tf.int32), axis=1)
  smax = tf.maximum(_bmax(n_B), 1)
  sid = tf.minimum(sid, smax - 1)
  slens = _scatter_rows(sid, tf.cast(valid, tf.int32), smax)
  sstart = tf.cumsum(slens, axis=1, exclusive=True)
  j = tf.range(smax)[tf.newaxis]
  k_B = tf.minimum(_ceil(n_B, p_B), n_B)
  key = tf.random.stateless_uniform(tf.stack([batch, smax]), seed)
  key = tf.where(j < n_B[:, None], key, 2.0)
  by_key = tf.argsort(key, axis=1, stable=True)  # the first k: the shuffled ones, new order
  rank = _scatter_rows(by_key, tf.broadcast_to(j, tf.shape(by_key)), smax)
  chosen = rank < k_B[:, None]
  nth = tf.cumsum(tf.cast(chosen, tf.int32), axis=1, exclusive=True)
  ordering = tf.where(chosen, tf.gather(by_key, nth, batch_dims=1), j)  # slot -> sentence
  slot_start = tf.cumsum(tf.gather(slens, ordering, batch_dims=1), axis=1, exclusive=True)
  slot_of = _scatter_rows(ordering, tf.broadcast_to(j, tf.shape(ordering)), smax)
  shift = tf.gather(slot_start, slot_of, batch_dims=1) - sstart  # per sentence
  new_pos = pos + tf.gather(shift, sid, batch_dims=1)
  new_pos = tf.where(valid, new_pos, pos)
  return _scatter_rows(new_pos, tf.broadcast_to(pos, tf.shape(new_pos)), width)


def _span_lengths(n_words_B, poisson_B, cdf_BJ, log_q_B, seed):
  """Span lengths in words covering each row's budget exactly, as fairseq draws them.

  Args:
    n_words_B: int32 [B] words to mask.
    poisson_B: bool [B]: Poisson lengths (else every span is one word).
    cdf_BJ: float32 [B, J] zero-truncated Poisson CDF.
    log_q_B: float32 [B] log P(length 0).
    seed: stateless seed.

  Returns:
    (lengths int32 [B, D] (0 past the row's spans), spans [B], zero-length spans [B]).
  """
  batch = tf.shape(n_words_B)[0]
  d = tf.maximum(_bmax(n_words_B), 1)  # searchsorted cannot take zero-width values
  u = tf.random.stateless_uniform(tf.stack([batch, d, 2]), seed, minval=1e-12, maxval=1.0)
  drawn = tf.searchsorted(cdf_BJ, u[..., 0], side="right") + 1
  drawn = tf.minimum(drawn, tf.shape(cdf_BJ)[1])
  lengths = tf.where(poisson_B[:, None], drawn, 1)
  before = tf.cumsum(lengths, axis=1, exclusive=True)
  needed = before < n_words_B[:, None]
  lengths = tf.where(needed, tf.minimum(lengths, n_words_B[:, None] - before), 0)
  zeros = tf.floor(tf.math.log(u[..., 1]) / log_q_B[:, None])
  zeros = tf.cast(tf.minimum(zeros, 1e6), tf.int32)
  zeros = tf.where(needed & poisson_B[:, None], zeros, 0)
  return lengths, tf.reduce_sum(tf.cast(needed, tf.int32), 1), tf.reduce_sum(zeros, 1)


def _smallest_keys(valid_BW, k, seed):
  """Positions of the `k` smallest uniform keys among valid ones per row: [B, k], random
  order (a uniform subset of each row's valid positions, as `randperm(n)[:k]`)."""
  key = tf.random.stateless_uniform(tf.shape(valid_BW), seed)
  key = tf.where(valid_BW, key, 2.0)
  return tf.math.top_k(-key, k=k, sorted=True).indices


def _mask(tokens, word_start, valid, b, spec, seed):
  """Whole-word (or token) masking of the permuted chunks.

  Returns:
    (fate int32 [B, L], values int32 [B, L] the token each position shows, zero-length spans
    [B]).
  """
  seeds = tf.random.experimental.stateless_split(seed, 4)
  batch, width = tf.shape(tokens)[0], tf.shape(tokens)[1]
  ws = tf.where(tf.gather(spec.token_level, b)[:, None], valid, word_start & valid)
  n_words = tf.reduce_sum(tf.cast(ws, tf.int32), axis=1)
  budget = tf.minimum(_ceil(n_words, tf.gather(spec.mask_ratio, b)), n_words)
  lengths, n_spans, n_zero = _span_lengths(
    budget, tf.gather(spec.poisson, b), tf.gather(spec.cdf, b), tf.gather(spec.log_q, b), seeds[0]
  )
  # Only the first max(n_spans) draws are spans (many fewer than the budget in words).
  d = _bmax(n_spans)
  lengths = lengths[:, :d]
  j = tf.range(d)[tf.newaxis]
  ok = j < n_spans[:, None]
  starts = _smallest_keys(ws, d, seeds[1])
  widx = tf.cumsum(tf.cast(ws, tf.int32), axis=1) - 1
  w0 = tf.gather(widx, starts, batch_dims=1)
  w1 = tf.minimum(w0 + lengths, n_words[:, None])
  one = tf.cast(ok, tf.int32)
  random_span = tf.random.stateless_uniform(tf.stack([batch, d]), seeds[2]) < tf.cast(
    tf.gather(spec.mask_random, b)[:, None], tf.float32
  )
  # One word-space difference array for two counts: spans covering a word ([w0, w1), low
  # bits) and spans whose interior (w0, w1) holds it (times _INNER); a second scatter marks
  # each start word (1) and its random flag (2). A word is a span head (one mask for the
  # merged run) if a span starts there and no other span's interior covers it. Per word,
  # `code` packs covered (1), head (2) and the run's random flag (4) for one gather to tokens.
  wwidth = width + 1
  diff = _scatter_rows(
    tf.concat([w0, w1, tf.minimum(w0 + 1, w1), w1], 1),
    tf.concat([one, -one, _INNER * one, -_INNER * one], 1),
    wwidth,
  )
  counts = tf.cumsum(diff, axis=1)
  starts_w = _scatter_rows(w0, one + 2 * tf.cast(ok & random_span, tf.int32), wwidth)
  head = (starts_w > 0) & (counts < _INNER)
  code = tf.cast(counts % _INNER > 0, tf.int32) + 2 * tf.cast(head, tf.int32)
  if spec.any_replace_all:
    # A merged run takes its first span's random flag (fairseq's extension of the earliest
    # span overwrites the later ones' tokens).
    group = tf.cumsum(tf.cast(head, tf.int32), axis=1)
    group_flag = _scatter_rows(group, tf.cast(head & (starts_w > 1), tf.int32), wwidth + 1)
    code += 4 * tf.gather(group_flag, group, batch_dims=1)
  else:
    code += 4 * tf.cast(head & (starts_w > 1), tf.int32)
  code_t = tf.gather(code, tf.maximum(widx, 0), batch_dims=1)
  covered = (code_t % 2 > 0) & valid
  head_t = ws & (code_t % 4 > 1)
  flag_t = code_t > 3
  replace = tf.gather(spec.replace_length, b)[:, None]
  shows = covered & (((replace == 1) & head_t) | (replace == -1))
  fate = tf.where(
    covered,
    tf.where(shows, tf.where(flag_t, FATE_RANDOM, FATE_MASK), FATE_DELETED),
    FATE_KEPT,
  )
  values = _with_noise_tokens(tokens, fate, b, spec, seeds[3])
  return fate, values, n_zero


def _with_noise_tokens(tokens, fate, b, spec, seed):
  """`tokens` with the mask at FATE_MASK and random ordinary ids at FATE_RANDOM."""
  mask = tf.gather(spec.mask_id, b)[:, None]
  out = tf.where(fate == FATE_MASK, mask, tokens)
  if not spec.any_random:
    return out
  n = spec.random_ids.shape[0]
  pick = tf.random.stateless_uniform(tf.shape(tokens), seed, minval=0, maxval=n, dtype=tf.int32)
  return tf.where(fate == FATE_RANDOM, tf.gather(spec.random_ids, pick), out)


def _insert(values, src, m_B, n_zero, b, spec, seed):
  """Inserts the zero-length spans' masks and `ceil(insert_ratio * m)` more tokens."""
  seeds = tf.random.experimental.stateless_split(seed, 3)
  room = tf.maximum(tf.gather(spec.core_limit, b) - m_B, 0)
  n_zero = tf.minimum(n_zero, room)
  n_more = _ceil(m_B + n_zero, tf.gather(spec.insert_ratio, b))
  r = tf.gather(spec.mask_random, b)
  n_ins = n_zero + n_more
  n_rand = _ceil(n_zero, r) + _ceil(n_more, r)
  t_B = m_B + n_ins
  width = _bmax(t_B)
  pos = tf.range(width)[tf.newaxis]
  k = _bmax(n_ins)
  slots = _smallest_keys(pos < t_B[:, None], k, seeds[0])
  j = tf.range(k)[tf.newaxis]
  kind = tf.where(j < n_rand[:, None], 2, 1) * tf.cast(j < n_ins[:, None], tf.int32)
  kind = _scatter_rows(slots, kind, width)  # 0 text, 1 mask, 2 random
  values = tf.pad(values, [[0, 0], [0, 1]])  # a column to gather from when a row is empty
  fill = tf.minimum(
    tf.cumsum(tf.cast(kind == 0, tf.int32), axis=1, exclusive=True), tf.shape(values)[1] - 1
  )
  text = tf.gather(values, fill, batch_dims=1)
  fate = tf.where(kind == 1, FATE_MASK, tf.where(kind == 2, FATE_RANDOM, FATE_KEPT))
  out = _with_noise_tokens(text, fate, b, spec, seeds[1])
  if src is not None:
    src = tf.pad(src, [[0, 0], [0, 1]])
    src = tf.where(kind == 0, tf.gather(src, fill, batch_dims=1), -1)
  return out, src, t_B


def _rotate(values, src, t_B, b, spec, seed):
  """With probability `rotate_ratio`, rotates each row to start at a uniform token."""
  u = tf.random.stateless_uniform(tf.stack([tf.shape(t_B)[0], 2]), seed)
  offset = tf.minimum(tf.cast(u[:, 1] * tf.cast(t_B, tf.float32), tf.int32), t_B - 1)
  offset = tf.where(u[:, 0] < tf.gather(spec.rotate, b), tf.maximum(offset, 0), 0)
  pos = tf.range(tf.shape(values)[1])[tf.newaxis]
  idx = tf.math.floormod(pos + offset[:, None], tf.maximum(t_B, 1)[:, None])
  idx = tf.where(pos < t_B[:, None], idx, pos)
  if src is not None:
    src = tf.gather(src, idx, batch_dims=1)
  return tf.gather(values, idx, batch_dims=1), src, offset


def _select(vals_BW: tf.Tensor, keep_BW: tf.Tensor) -> tf.RaggedTensor:
  """Ragged [B, None] (int64 splits): each row's kept values, in order (one flat pass)."""
  parts = tf.dynamic_partition(
    tf.reshape(vals_BW, [-1]), tf.reshape(tf.cast(keep_BW, tf.int32), [-1]), 2
  )
  lengths = tf.reduce_sum(tf.cast(keep_BW, tf.int64), axis=1)
  return tf.RaggedTensor.from_row_lengths(parts[1], lengths, validate=False)


def _ragged(x: tf.Tensor, lengths: tf.Tensor) -> tf.RaggedTensor:
  """The first `lengths[b]` values of each row, as an int64-split ragged tensor."""
  return tf.RaggedTensor.from_tensor(x, lengths=tf.cast(lengths, tf.int64))


def noise_chunks(
  chunks: tf.RaggedTensor,
  b_B: tf.Tensor,
  spec: BartSpec,
  seed: tf.Tensor,
  *,
  inputs_eos: int | None = None,
  targets_eos: int | None = None,
  record: bool = False,
) -> dict[str, tf.Tensor | tf.RaggedTensor]:
  """BART examples from a batch of chunks: inputs = prefix + noised chunk, targets = chunk.

  Args:
    chunks: int32 ragged [B, None], each within its denoiser's planned chunk length.
    b_B: int32 [B] BART index of each chunk's denoiser (`spec.local_of`).
    spec: the constant tables.
    seed: stateless seed (shape [2]).
    inputs_eos: if set, ends every `inputs` row.
    targets_eos: the same for `targets`.
    record: also return the noise record (`RECORD_KEYS`, see the module doc).

  Returns:
    {"inputs": ragged int32 [B, None], "targets": ragged int32 [B, None]} (+ the record).
  """
  seeds = tf.random.experimental.stateless_split(seed, 4)
  tokens = tf.cast(chunks.to_tensor(0), tf.int32)
  original = tokens
  batch, width = tf.shape(tokens)[0], tf.shape(tokens)[1]
  lens_B = tf.cast(chunks.row_lengths(), tf.int32)
  pos = tf.range(width)[tf.newaxis]
  valid = pos < lens_B[:, None]
  # One lookup for both per-id tables: bit 0 word start, bit 1 sentence end.
  code = tf.gather(spec.word_start.astype(np.int32) + 2 * spec.sentence_end, tokens)
  word_start = (code % 2 > 0) | (pos == 0)
  order = tf.broadcast_to(pos, tf.shape(tokens))
  if spec.any_permute:
    order = _permute_sentences(
      code > 1, word_start, valid, lens_B, tf.gather(spec.permute, b_B), seeds[0]
    )
    # Tokens and word starts move together: one gather of both packed in an int32.
    moved = tf.gather(tokens * 2 + tf.cast(word_start, tf.int32), order, batch_dims=1)
    tokens, word_start = moved // 2, moved % 2 > 0
  n_zero = tf.zeros([batch], tf.int32)
  if spec.any_mask:
    fate, values, n_zero = _mask(tokens, word_start, valid, b_B, spec, seeds[1])
  else:
    fate, values = tf.zeros_like(tokens), tokens
  keep = valid & (fate != FATE_DELETED)
  src = tf.broadcast_to(pos, tf.shape(tokens)) if record else None
  if spec.any_mask:
    (values, *rest), m_B = _compact([values] + ([src] if record else []), keep)
    src = rest[0] if record else None
  else:
    m_B = lens_B
  if spec.any_insert:
    values, src, m_B = _insert(values, src, m_B, n_zero, b_B, spec, seeds[2])
  offset = tf.zeros([batch], tf.int32)
  if spec.any_rotate:
    values, src, offset = _rotate(values, src, m_B, b_B, spec, seeds[3])
  # Inputs: prefix, noised text, EOS; targets: the chunk, EOS; each one flat compaction.
  in_vals = [values]
  in_keep = [tf.range(tf.shape(values)[1])[tf.newaxis] < m_B[:, None]]
  if spec.prefix_values.shape[1]:
    in_vals.insert(0, tf.gather(spec.prefix_values, b_B))
    in_keep.insert(
      0,
      tf.range(spec.prefix_values.shape[1])[tf.newaxis]
      < tf.gather(spec.prefix_lengths, b_B)[:, None],
    )
  tg_vals, tg_keep = [original], [valid]
  for vals, keep_, eos in ((in_vals, in_keep, inputs_eos), (tg_vals, tg_keep, targets_eos)):
    if eos is not None:
      vals.append(tf.fill(tf.stack([batch, 1]), eos))
      keep_.append(tf.ones(tf.stack([batch, 1]), tf.bool))
  out = {
    "inputs": _select(tf.concat(in_vals, 1), tf.concat(in_keep, 1)),
    "targets": _select(tf.concat(tg_vals, 1), tf.concat(tg_keep, 1)),
  }
  if record:
    out["noise_order"] = _ragged(order, lens_B)
    out["noise_fate"] = _ragged(fate, lens_B)
    out["noise_source"] = _ragged(src, m_B)
    out["noise_rotation"] = offset
  return out


def _empty_record(n: tf.Tensor) -> dict[str, Any]:
  empty = tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32), tf.zeros([n], tf.int64))
  out = {k: empty for k in RECORD_KEYS[:3]}
  out["noise_rotation"] = tf.zeros([n], tf.int32)
  return out


def build_examples(
  chunks: tf.RaggedTensor,
  denoiser_ids: tf.Tensor,
  spec: BartSpec,
  other_builder: Any,
  seed: tf.Tensor,
  *,
  inputs_eos: int | None = None,
  targets_eos: int | None = None,
  record: bool = False,
) -> dict[str, tf.Tensor | tf.RaggedTensor]:
  """Examples of a mixture with BART denoisers: BART rows here, the others by
  `other_builder(chunks, ids, seed)` (None when every denoiser is BART), in chunk order.

  Args:
    chunks: int32 ragged [B, None].
    denoiser_ids: int32 [B] mixture indices.
    spec: the BART tables.
    other_builder: `corruption.build_examples` bound to the mixture's spec, or None.
    seed: stateless seed.
    inputs_eos: EOS id appended to inputs (or None).
    targets_eos: EOS id appended to targets (or None).
    record: add the noise record (empty for other kinds' rows).

  Returns:
    {"inputs", "targets", "denoiser_id"} (+ the record).
  """
  seeds = tf.random.experimental.stateless_split(seed, 2)
  ids = tf.cast(denoiser_ids, tf.int32)
  local = tf.gather(spec.local_of, ids)
  kw = {"inputs_eos": inputs_eos, "targets_eos": targets_eos}
  if other_builder is None:
    out = noise_chunks(chunks, local, spec, seeds[0], record=record, **kw)
    out["denoiser_id"] = ids
    return out
  rows_b = tf.cast(tf.where(local >= 0)[:, 0], tf.int32)
  rows_o = tf.cast(tf.where(local < 0)[:, 0], tf.int32)
  out_b = noise_chunks(
    tf.gather(chunks, rows_b), tf.gather(local, rows_b), spec, seeds[0], record=record, **kw
  )
  out_o = other_builder(tf.gather(chunks, rows_o), tf.gather(ids, rows_o), seeds[1])
  if record:
    out_o.update(_empty_record(tf.size(rows_o)))
  out_b["denoiser_id"] = tf.gather(ids, rows_b)
  back = tf.argsort(tf.concat([rows_o, rows_b], 0))
  return {k: tf.gather(tf.concat([out_o[k], out_b[k]], 0), back) for k in out_b}
