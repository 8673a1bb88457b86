"""Transformer blocks of the T5.1.1 / UL2 family (Flax linen).

Shape key used in names: B batch, L length (Q query length, K key length), D d_model,
H heads, E head_dim, F d_ff, V vocab, N relative-position buckets.

Numerics follow T5 (Raffel et al., 2020) as Transformers' `T5ForConditionalGeneration`
implements it, so imported weights give the same logits: RMSNorm without mean
subtraction or bias, no 1/sqrt(head_dim) on attention logits (T5 folds it into the query
initialisation), a relative position bias shared by all layers of a stack, and the
tanh-approximated GELU for gated-GELU. Full attention calls run on XLA, cuDNN or the
TPU Pallas kernel (`TransformerConfig.attention_implementation`, see
`t5x_ext.model.attention`); decoding's cached calls have their own path here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_ext.model import attention, axes

Array = jax.Array

# Activation names accepted in `TransformerConfig.activations`.
ACTIVATIONS = {
  "relu": jax.nn.relu,
  # Transformers maps T5's "gated-gelu" to the tanh approximation ("gelu_new").
  "gelu": functools.partial(jax.nn.gelu, approximate=True),
  "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
  "linear": lambda x: x,
}

# Modes of a decoder call: one full pass without a cache (training, scoring), a pass over
# the prompt that also fills the cache, and one token per call reading the cache.
FULL, PREFILL, STEP = "full", "prefill", "step"


def _param(module: nn.Module, name: str, init, shape, names, dtype):
  """Creates a parameter that carries its logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, names), shape, dtype)


def truncated_normal_init(stddev: float):
  """Truncated normal (at two sigma) rescaled so that the samples have `stddev`."""
  # 0.8796... is the standard deviation of a unit normal truncated to [-2, 2].
  return jax.nn.initializers.truncated_normal(stddev / 0.87962566103423978)


class RMSNorm(nn.Module):
  """Root-mean-square layer norm (no mean subtraction, no bias), computed in float32.

  Attributes:
    epsilon: added to the mean square.
    dtype: output dtype.
    param_dtype: dtype of the `scale` parameter (initialised to ones).
  """

  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Normalises over the last axis.

    Args:
      x: [..., D] activations.

    Returns:
      [..., D] normalised activations in `dtype`.
    """
    scale = _param(
      self, "scale", nn.initializers.ones, (x.shape[-1],), (axes.EMBED,), self.param_dtype
    )
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (x * scale.astype(jnp.float32)).astype(self.dtype)


def relative_position_bucket(
  relative_position: Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
  """Maps key-minus-query offsets to T5's relative-position buckets.

  Half of the buckets (per direction) hold exact offsets; the rest grow logarithmically up
  to `max_distance`, beyond which all offsets share the last bucket. A bidirectional
  bias gives positive offsets (keys after the query) their own half of the buckets; a
  causal one only distinguishes how far back a key lies.

  Args:
    relative_position: int array of key position minus query position.
    bidirectional: whether keys after the query get their own buckets.
    num_buckets: total number of buckets.
    max_distance: offsets at or beyond this share the last bucket.

  Returns:
    int32 array of bucket ids in [0, num_buckets), same shape as `relative_position`.
  """
  relative_position = relative_position.astype(jnp.int32)
  bucket = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (relative_position > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = jnp.maximum(-relative_position, 0)
  num_exact = num_buckets // 2
  # Float32 throughout, as the reference implementation, so bucket edges agree exactly.
  log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / np.float32(num_exact))
  scale = np.float32(np.log(max_distance / num_exact))
  large = num_exact + (log_ratio / scale * np.float32(num_buckets - num_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(distance < num_exact, distance, large)


class RelativePositionBias(nn.Module):
  """T5's learned per-head bias on attention logits, indexed by relative-position bucket.

  Attributes:
    num_heads: number of attention heads.
    num_buckets: number of relative-position buckets.
    max_distance: offset from which all offsets share the last bucket.
    bidirectional: True in the encoder, False (causal) in the decoder.
    dtype: output dtype.
    param_dtype: parameter dtype.
  """

  num_heads: int
  num_buckets: int
  max_distance: int
  bidirectional: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    """Computes the bias for every query/key pair.

    Args:
      query_positions: int [Q] absolute positions of the queries.
      key_positions: int [K] absolute positions of the keys.

    Returns:
      [1, H, Q, K] bias, broadcastable over the batch.
    """
    table_HN = _param(
      self,
      "rel_embedding",
      nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
      (self.num_heads, self.num_buckets),
      (axes.HEADS, axes.RELPOS),
      self.param_dtype,
    )
    buckets_QK = relative_position_bucket(
      key_positions[None, :] - query_positions[:, None],
      bidirectional=self.bidirectional,
      num_buckets=self.num_buckets,
      max_distance=self.max_distance,
    )
    # A gather along the bucket axis (heads pass through, so a sharded heads axis stays
    # sharded). It gives the same values as a one-hot contraction, whose [Q, K, N] one-hot
    # XLA materialises for the backward pass: N = 32 times the size of a [Q, K] logit map,
    # 2 GiB at 4,096 tokens, and several times slower on CPU.
    bias_HQK = jnp.take(table_HN.astype(self.dtype), buckets_QK, axis=1, mode="clip")
    return bias_HQK[None]


class Projection(nn.Module):
  """A bias-free linear map with a multi-dimensional kernel (einsum over named axes).

  Attributes:
    kernel_shape: shape of the kernel.
    kernel_axes: logical axis names of the kernel.
    equation: einsum equation `input,kernel->output`.
    stddev: standard deviation of the (truncated normal) initialisation.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  kernel_shape: Sequence[int]
  kernel_axes: Sequence[str]
  equation: str
  stddev: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies the projection.

    Args:
      x: input activations.

    Returns:
      `einsum(equation, x, kernel)` in `dtype`.
    """
    kernel = _param(
      self,
      "kernel",
      truncated_normal_init(self.stddev),
      tuple(self.kernel_shape),
      tuple(self.kernel_axes),
      self.param_dtype,
    )
    n = _contracted_axes(self.equation)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    # XLA:CPU lowers the backward of a multi-axis einsum with transposing copies that cost
    # about as much as the matmuls (and, in decoding, copies the `out` kernels every step);
    # one 2-D matmul over the flattened axes is the same contraction without them.
    if x.shape[x.ndim - n :] != kernel.shape[:n]:
      raise ValueError(
        f"Projection {self.equation!r}: input shape {x.shape} does not end in the kernel's "
        f"contracted axes {kernel.shape[:n]}"
      )
    k = int(np.prod(kernel.shape[:n]))
    y = jnp.dot(x.reshape(-1, k), kernel.reshape(k, -1))
    return y.reshape(x.shape[: x.ndim - n] + kernel.shape[n:])


def _contracted_axes(equation: str) -> int:
  """Number of contracted axes of a `Projection` equation.

  Args:
    equation: einsum equation of the form `<lead><contracted>,<contracted><tail>-><lead><tail>`
      (every `Projection` contracts the input's last axes with the kernel's first ones).

  Returns:
    The number of contracted axes (at least 1).

  Raises:
    ValueError: if `equation` does not have that form.
  """
  lhs, _, out = equation.partition("->")
  x_axes, _, k_axes = lhs.partition(",")
  n = sum(1 for a in x_axes if a in k_axes)
  lead, contracted, tail = x_axes[: len(x_axes) - n], x_axes[len(x_axes) - n :], k_axes[n:]
  if n == 0 or not k_axes.startswith(contracted) or out != lead + tail or set(lead) & set(tail):
    raise ValueError(
      f"Projection equation={equation!r} must have the form "
      "'<lead><contracted>,<contracted><tail>-><lead><tail>'"
    )
  return n


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention with an optional key/value cache.

  In `PREFILL` mode the projected keys and values are written into the 'cache' collection
  as [B, H, E, K] keys and [B, H, K, E] values, the layout the step's batched dots read
  (self-attention: at slots [0, Q) of a `cache_length` buffer; cross-attention: the
  encoder's keys and values, computed once). In `STEP` mode a self-attention writes the
  new token's key/value at `index` and attends over the whole buffer; a cross-attention
  reuses the cached encoder keys/values, so a decoding step never re-projects the encoder.
  A cross-attention cache may hold fewer rows than the step's queries (beam search: one
  row per example for its K beams, which share the encoder output; see `_attend_cached`).

  Attributes:
    num_heads: H.
    head_dim: E.
    emb_dim: D.
    cross: whether keys/values come from another sequence (encoder-decoder attention).
    mode: FULL, PREFILL or STEP.
    cache_length: length of the self-attention cache (PREFILL only).
    dtype: compute dtype.
    param_dtype: parameter dtype.
    implementation: the kernel of FULL calls: 'auto', 'xla', 'cudnn' or 'pallas_tpu' (see
      `t5x_ext.model.attention`; None is 'xla'). PREFILL and STEP calls ignore it.
    chunk_size: FULL mode only: 0 attends all queries at once; N > 0 attends blocks of N
      queries in turn (`chunked_attention`), so the float32 logits of only one block live at
      a time, forward and backward, instead of the whole [B, H, Q, K].
  """

  num_heads: int
  head_dim: int
  emb_dim: int
  cross: bool = False
  mode: str = FULL
  cache_length: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  implementation: str | None = "auto"
  chunk_size: int = 0

  def _proj(self, name: str, stddev: float) -> Projection:
    return Projection(
      (self.emb_dim, self.num_heads, self.head_dim),
      (axes.EMBED, axes.HEADS, axes.KV),
      "bld,dhe->blhe",
      stddev,
      self.dtype,
      self.param_dtype,
      name=name,
    )

  @nn.compact
  def __call__(
    self,
    x_BQD: Array,
    kv_BKD: Array | None,
    bias: Array | None,
    mask: Array | None,
    index: Array | None = None,
  ) -> Array:
    """Attends from `x_BQD` to `kv_BKD` (itself for self-attention).

    Args:
      x_BQD: query-side activations.
      kv_BKD: key/value-side activations (None for self-attention, and for a
        cross-attention step, which reads the cache).
      bias: additive bias broadcastable to [B, H, Q, K] (relative positions), or None.
      mask: bool, broadcastable to [B, H, Q, K]; False blocks attention. Or an
        `attention.AttentionMask` (the networks' FULL calls), which the fused kernels read.
      index: int32 scalar, the cache slot of the token in STEP mode.

    Returns:
      [B, Q, D] attention output.
    """
    structured = mask if isinstance(mask, attention.AttentionMask) else None
    if structured is not None:
      mask = structured.dense
    d, e = self.emb_dim, self.head_dim
    # T5 leaves out the 1/sqrt(head_dim) on the logits and puts it into the query init.
    q_BQHE = self._proj("query", (d * e) ** -0.5)(x_BQD)
    q_BQHE = nn.with_logical_constraint(q_BQHE, axes.BLHK)
    key_proj, value_proj = self._proj("key", d**-0.5), self._proj("value", d**-0.5)
    if self.cross:
      if self.mode == STEP:
        # Cached as [B, H, E, K] keys and [B, H, K, E] values (see PREFILL).
        k_BHEK = self.get_variable("cache", "cached_key")
        v_BHKE = self.get_variable("cache", "cached_value")
        if k_BHEK is None:
          raise ValueError("cross-attention STEP needs a cache filled by a PREFILL call")
        out_BQHE = _attend_cached(q_BQHE, k_BHEK, v_BHKE, bias, mask, self.dtype)
        return self._out_proj(out_BQHE)
      k_BKHE, v_BKHE = key_proj(kv_BKD), value_proj(kv_BKD)
      if self.mode == PREFILL:
        # Stored in the layout the step's batched dots read, laid out once here: in the
        # [B, K, H, E] layout XLA:CPU re-transposes the whole encoder K/V in every layer at
        # every decoding step (about a fifth of greedy decoding time at T5.1.1 small).
        self.put_variable("cache", "cached_key", jnp.transpose(k_BKHE, (0, 2, 3, 1)))
        self.put_variable("cache", "cached_value", jnp.transpose(v_BKHE, (0, 2, 1, 3)))
    else:
      k_BKHE, v_BKHE = key_proj(x_BQD), value_proj(x_BQD)
      if self.mode == PREFILL:
        q = x_BQD.shape[1]
        if self.cache_length < q:
          raise ValueError(f"cache_length={self.cache_length} is shorter than the prompt ({q})")
        # As the cross-attention cache, [B, H, E, C] keys and [B, H, C, E] values: a cache in
        # [B, C, H, E] is re-transposed whole, in every layer, at every decoding step.
        free = self.cache_length - q
        k_BHEC = jnp.pad(jnp.transpose(k_BKHE, (0, 2, 3, 1)), ((0, 0), (0, 0), (0, 0), (0, free)))
        v_BHCE = jnp.pad(jnp.transpose(v_BKHE, (0, 2, 1, 3)), ((0, 0), (0, 0), (0, free), (0, 0)))
        self.put_variable("cache", "cached_key", k_BHEC)
        self.put_variable("cache", "cached_value", v_BHCE)
      elif self.mode == STEP:
        k_BHEC = self.get_variable("cache", "cached_key")
        v_BHCE = self.get_variable("cache", "cached_value")
        if k_BHEC is None:
          raise ValueError("self-attention STEP needs a cache filled by a PREFILL call")
        if self.has_variable("cache", BEAM_SOURCE):
          return self._out_proj(self._beam_step(q_BQHE, k_BKHE, v_BKHE, bias, mask, index))
        # One new slot (Q = 1): [B, 1, H, E] -> [B, H, E, 1] and [B, H, 1, E] are reshapes.
        k_BHEQ = jnp.transpose(k_BKHE, (0, 2, 3, 1)).astype(k_BHEC.dtype)
        v_BHQE = jnp.transpose(v_BKHE, (0, 2, 1, 3)).astype(v_BHCE.dtype)
        k_BHEC = jax.lax.dynamic_update_slice(k_BHEC, k_BHEQ, (0, 0, 0, index))
        v_BHCE = jax.lax.dynamic_update_slice(v_BHCE, v_BHQE, (0, 0, index, 0))
        self.put_variable("cache", "cached_key", k_BHEC)
        self.put_variable("cache", "cached_value", v_BHCE)
        out_BQHE = _attend_cached(q_BQHE, k_BHEC, v_BHCE, bias, mask, self.dtype)
        return self._out_proj(out_BQHE)
    if bias is not None:
      bias = bias.astype(self.dtype)
    if mask is not None:
      mask = mask.astype(jnp.bool_)
    k_BKHE, v_BKHE = k_BKHE.astype(self.dtype), v_BKHE.astype(self.dtype)
    impl = "xla"
    if self.mode == FULL:
      impl, reason = attention.choose(
        self.implementation,
        platform=attention.backend_platform(),
        q_len=q_BQHE.shape[1],
        kv_len=k_BKHE.shape[1],
        head_dim=e,
        dtype=self.dtype,
        mask=structured,
        dense_only=structured is None and mask is not None,
        has_bias=bias is not None,
        chunk_size=self.chunk_size,
        interpret=attention.interpret_mode(),
      )
      attention.log_choice(self.name or "attention", impl, reason)
    if impl == "cudnn":
      return self._out_proj(attention.cudnn_attention(q_BQHE, k_BKHE, v_BKHE, bias, structured))
    if impl == "pallas_tpu":
      out_BQHE = attention.pallas_tpu_attention(q_BQHE, k_BKHE, v_BKHE, bias, structured)
      return self._out_proj(out_BQHE)
    attend = functools.partial(jax.nn.dot_product_attention, scale=1.0, implementation="xla")
    if self.mode == FULL and 0 < self.chunk_size < q_BQHE.shape[1]:
      out_BQHE = chunked_attention(attend, q_BQHE, k_BKHE, v_BKHE, bias, mask, self.chunk_size)
    else:
      out_BQHE = attend(q_BQHE, k_BKHE, v_BKHE, bias, mask)
    return self._out_proj(out_BQHE)

  def _beam_step(self, q_NQHE, k_NQHE, v_NQHE, bias, mask, index) -> Array:
    """A self-attention step over a beam cache (see `to_beam_cache`); [N, 1, H, E] out."""
    k_BHEX = self.get_variable("cache", "cached_key")  # X = S * C: beam column s, slot c
    v_BHXE = self.get_variable("cache", "cached_value")
    src_NC = self.get_variable("cache", BEAM_SOURCE)
    n, c = src_NC.shape
    b, h, e, x = k_BHEX.shape
    s = x // c
    if q_NQHE.shape[1] != 1 or n != b * s:
      raise ValueError(f"a beam step takes one query per beam: {q_NQHE.shape}, {s} beams")
    # Row n = b * S + s writes its new slot into beam column s; other beams' columns keep
    # what they hold, which `BEAM_SOURCE` tells each beam whether to read. One in-place
    # update per column: the 4-D layout is the one the dots read without a copy.
    k_BSHE = k_NQHE.reshape(b, s, h, e).astype(k_BHEX.dtype)
    v_BSHE = v_NQHE.reshape(b, s, h, e).astype(v_BHXE.dtype)
    for col in range(s):
      slot = col * c + index
      k_BHEX = jax.lax.dynamic_update_slice(k_BHEX, k_BSHE[:, col, :, :, None], (0, 0, 0, slot))
      v_BHXE = jax.lax.dynamic_update_slice(v_BHXE, v_BSHE[:, col, :, None, :], (0, 0, slot, 0))
    own_N1 = jnp.tile(jnp.arange(s, dtype=src_NC.dtype), b)[:, None]
    src_NC = jax.lax.dynamic_update_slice(src_NC, own_N1, (0, index))
    self.put_variable("cache", "cached_key", k_BHEX)
    self.put_variable("cache", "cached_value", v_BHXE)
    self.put_variable("cache", BEAM_SOURCE, src_NC)
    return _attend_beam_cache(q_NQHE, k_BHEX, v_BHXE, src_NC, bias, mask, self.dtype)

  def _out_proj(self, out_BQHE: Array) -> Array:
    return Projection(
      (self.num_heads, self.head_dim, self.emb_dim),
      (axes.HEADS, axes.KV, axes.EMBED),
      "blhe,hed->bld",
      (self.num_heads * self.head_dim) ** -0.5,
      self.dtype,
      self.param_dtype,
      name="out",
    )(out_BQHE)


def chunked_attention(
  attend, q_BQHE: Array, k_BKHE: Array, v_BKHE: Array, bias, mask, chunk_size: int
) -> Array:
  """`attend(q, k, v, bias, mask)` over blocks of `chunk_size` queries, one block at a time.

  Each query's softmax runs over all keys, as in one call, so the result is the same up to
  float rounding. The blocks run in a `lax.scan` whose body is rematerialised: the backward
  pass recomputes a block's logits instead of keeping them, so at most one block's
  [B, H, chunk, K] float32 logits and probabilities are live in either pass. The queries
  left over when `chunk_size` does not divide Q are attended in one more call.

  Args:
    attend: `(q, k, v, bias, mask) -> out`, e.g. a partial of `jax.nn.dot_product_attention`.
    q_BQHE: queries.
    k_BKHE: keys.
    v_BKHE: values.
    bias: additive bias broadcastable to [B, H, Q, K] (its Q axis may be 1), or None.
    mask: bool, broadcastable to [B, H, Q, K] (its Q axis may be 1), or None.
    chunk_size: queries per block (positive).

  Returns:
    [B, Q, H, E] attention output, as `attend(q_BQHE, k_BKHE, v_BKHE, bias, mask)`.
  """
  b, q, h, e = q_BQHE.shape
  n = q // chunk_size

  def rows(x, start, size):
    # Bias and mask rows of these queries; a broadcast (size-1) query axis stays as is.
    if x is None or x.ndim < 2 or x.shape[-2] == 1:
      return x
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=x.ndim - 2)

  @jax.checkpoint
  def block(start):
    q_block = jax.lax.dynamic_slice_in_dim(q_BQHE, start, chunk_size, axis=1)
    return attend(
      q_block, k_BKHE, v_BKHE, rows(bias, start, chunk_size), rows(mask, start, chunk_size)
    )

  # The loop runs over block offsets only, so the bias and mask are closed over, never
  # re-laid out into per-block slabs that the backward pass would keep.
  _, out_NBCHE = jax.lax.scan(lambda c, s: (c, block(s)), None, jnp.arange(n) * chunk_size)
  out_BQHE = jnp.moveaxis(out_NBCHE, 0, 1).reshape(b, n * chunk_size, h, e)
  if n * chunk_size < q:
    start, size = n * chunk_size, q - n * chunk_size
    tail = attend(
      q_BQHE[:, start:], k_BKHE, v_BKHE, rows(bias, start, size), rows(mask, start, size)
    )
    out_BQHE = jnp.concatenate([out_BQHE, tail], axis=1)
  return out_BQHE


def _attend_cached(
  q_NQHE: Array, k_BHEK: Array, v_BHKE: Array, bias: Array | None, mask: Array | None, dtype: Any
) -> Array:
  """Unscaled dot-product attention over a cache laid out as [B, H, E, K] / [B, H, K, E].

  The same maths as `jax.nn.dot_product_attention(..., scale=1.0)` (float32 logits and
  softmax, masked logits set to a large negative number), on the cached layout.

  The queries may have G times as many rows as the cache (N = B * G, the G rows of a cache
  row adjacent, as beam search lays out the beams of an example): they are then attended
  as G * Q queries of that one row, so the K beams of an example read one shared copy of
  its encoder keys and values, with one matmul instead of G matrix-vector products.

  Args:
    q_NQHE: queries, N = B * G rows.
    k_BHEK: cached keys.
    v_BHKE: cached values.
    bias: additive bias broadcastable to [N, H, Q, K], or None; with G > 1, it must not
      vary with the row (its first axis is 1).
    mask: bool, broadcastable to [N, H, Q, K]; False blocks attention. Or None. With G > 1,
      it must be broadcastable to [B, H, 1, K] (the same for the G rows of a cache row).
    dtype: compute dtype.

  Returns:
    [N, Q, H, E] attention output in `dtype`.
  """
  n, q, h, e = q_NQHE.shape
  b = k_BHEK.shape[0]
  if n % b:
    raise ValueError(f"{n} query rows are not a multiple of the cache's {b} rows")
  g = n // b
  if g > 1:
    # [B * G, Q, H, E] -> [B, G * Q, H, E]: the G rows become more queries of one row.
    q_NQHE = q_NQHE.reshape(b, g * q, h, e)

    def per_cache_row(x, name):
      if x is None:
        return None
      if x.ndim != 4 or x.shape[0] not in (1, b):
        raise ValueError(f"{name} of shape {x.shape} does not broadcast to [{b}, H, Q, K]")
      # Query j * q + i of a cache row is query i of its j-th query row.
      return jnp.tile(x, (1, 1, g, 1)) if x.shape[2] > 1 else x

    bias, mask = per_cache_row(bias, "bias"), per_cache_row(mask, "mask")
  k_BHEK, v_BHKE = k_BHEK.astype(dtype), v_BHKE.astype(dtype)
  logits_BHQK = jnp.einsum(
    "bqhe,bhek->bhqk", q_NQHE.astype(dtype), k_BHEK, preferred_element_type=jnp.float32
  )
  if bias is not None:
    logits_BHQK = logits_BHQK + bias.astype(dtype).astype(jnp.float32)
  if mask is not None:
    big_neg = jnp.float32(-0.7 * np.finfo(np.float32).max)
    logits_BHQK = jnp.where(mask, logits_BHQK, big_neg)
  probs_BHQK = jax.nn.softmax(logits_BHQK, axis=-1).astype(dtype)
  out_BQHE = jnp.einsum("bhqk,bhke->bqhe", probs_BHQK, v_BHKE)
  return out_BQHE.reshape(n, q, h, e)


# The cache variable of a self-attention in beam layout: int [N, C], for each beam row and
# cache slot, the beam column (of the same example) that holds the slot's key and value.
BEAM_SOURCE = "beam_source"


def to_beam_cache(cache: dict, beams: int, batch_axis: int = 0) -> dict:
  """A self-attention cache (`MultiHeadAttention` PREFILL over B rows) laid out for beams.

  Beam search keeps K live hypotheses per example and, at every step, each continues one
  of the K (its parent). Reordering the cache rows to follow the parents (a gather of the
  whole cache, then a copy back into the loop's buffer) moves the cache twice per step. In
  this layout the cache never moves: keys [B, H, E, K * C] and values [B, H, K * C, E] hold
  one column of C slots per beam, the step writes each beam's new key/value into its own
  column at the step's slot, and `BEAM_SOURCE` ([B * K, C] ints) records, for each beam
  and slot, which column holds that slot of the beam's history. Following the parents is
  then a gather of `BEAM_SOURCE` only; the step attends each beam to all K columns with
  the same two batched dots as `_attend_cached` and keeps, per slot, the column its
  history names.

  Args:
    cache: the module's cache variables ({"cached_key": [B, H, E, C], "cached_value":
      [B, H, C, E]}, with a leading layers axis when `batch_axis` is 1).
    beams: K.
    batch_axis: 0, or 1 for scanned layers.

  Returns:
    The cache in beam layout, the prefilled slots copied to every column.
  """
  k, v = cache["cached_key"], cache["cached_value"]
  ax = batch_axis
  c = k.shape[ax + 3]
  k = jnp.tile(k, (1,) * (ax + 3) + (beams,))
  v = jnp.tile(v, (1,) * (ax + 2) + (beams, 1))
  src = jnp.tile(jnp.arange(beams, dtype=jnp.int32), k.shape[ax])[:, None]
  src = jnp.broadcast_to(src, k.shape[:ax] + (src.shape[0], c))
  return {**cache, "cached_key": k, "cached_value": v, BEAM_SOURCE: src}


def _attend_beam_cache(
  q_NQHE: Array,
  k_BHEX: Array,
  v_BHXE: Array,
  src_NC: Array,
  bias: Array | None,
  mask: Array | None,
  dtype: Any,
) -> Array:
  """`_attend_cached` for one query per beam over a beam-layout cache (`to_beam_cache`).

  Each beam's logits against all K columns come from one batched dot that reads the cache
  once; a select keeps, per slot, the column `src_NC` names (the others are exact zeros),
  so the logits and softmax equal those over a reordered cache.

  Args:
    q_NQHE: [B * K, 1, H, E] queries.
    k_BHEX: cached keys, X = K * C.
    v_BHXE: cached values.
    src_NC: int [B * K, C] column per beam and slot.
    bias: additive bias broadcastable to [N, H, 1, C], or None.
    mask: bool, broadcastable to [N, H, 1, C]; False blocks attention. Or None.
    dtype: compute dtype.

  Returns:
    [B * K, 1, H, E] attention output in `dtype`.
  """
  n, c = src_NC.shape
  b, h, e, x = k_BHEX.shape
  s = x // c
  q_BQHE = q_NQHE.reshape(b, s, h, e).astype(dtype)  # Q: the K beams as queries

  def per_beam(a):
    # [N or 1, H or 1, 1, C] -> [B or 1, H or 1, K or 1, C] (beam n = b * K + q).
    if a is None or a.shape[0] == 1:
      return a
    a = jnp.broadcast_to(a, (n,) + a.shape[1:])
    return a.reshape(b, s, a.shape[1], c).transpose(0, 2, 1, 3)

  take_B1QSC = src_NC.reshape(b, 1, s, 1, c) == jnp.arange(s, dtype=src_NC.dtype)[:, None]
  logits_BHQX = jnp.einsum(
    "bqhe,bhex->bhqx", q_BQHE, k_BHEX.astype(dtype), preferred_element_type=jnp.float32
  )
  logits_BHQSC = logits_BHQX.reshape(b, h, s, s, c)
  logits_BHQC = jnp.sum(jnp.where(take_B1QSC, logits_BHQSC, 0.0), axis=3)
  if bias is not None:
    logits_BHQC = logits_BHQC + per_beam(bias).astype(dtype).astype(jnp.float32)
  if mask is not None:
    big_neg = jnp.float32(-0.7 * np.finfo(np.float32).max)
    logits_BHQC = jnp.where(per_beam(mask), logits_BHQC, big_neg)
  probs_BHQC = jax.nn.softmax(logits_BHQC, axis=-1).astype(dtype)
  probs_BHQSC = jnp.where(take_B1QSC, probs_BHQC[:, :, :, None, :], 0.0).astype(dtype)
  out_BQHE = jnp.einsum("bhqx,bhxe->bqhe", probs_BHQSC.reshape(b, h, s, x), v_BHXE.astype(dtype))
  return out_BQHE.reshape(n, 1, h, e)


class MlpBlock(nn.Module):
  """T5 feed-forward block: `wo(act_0(wi_0 x) * act_1(wi_1 x) * ...)`, dropout before `wo`.

  One activation gives a plain MLP with kernel `wi`; several give a gated MLP with
  kernels `wi_0`, `wi_1`, ... (T5.1.1: ('gelu', 'linear'); UL2: ('silu', 'linear')).

  Attributes:
    mlp_dim: F.
    activations: activation names (keys of ACTIVATIONS).
    dropout_rate: dropout after the activation product.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  mlp_dim: int
  activations: Sequence[str]
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BLD: Array, deterministic: bool) -> Array:
    """Applies the block.

    Args:
      x_BLD: input activations.
      deterministic: disables dropout.

    Returns:
      [B, L, D] output.
    """
    d = x_BLD.shape[-1]

    def dense(name, shape, names, eq, stddev):
      return Projection(shape, names, eq, stddev, self.dtype, self.param_dtype, name=name)

    h_BLF = None
    for i, act in enumerate(self.activations):
      name = "wi" if len(self.activations) == 1 else f"wi_{i}"
      y = dense(name, (d, self.mlp_dim), (axes.EMBED, axes.MLP), "bld,df->blf", d**-0.5)(x_BLD)
      y = ACTIVATIONS[act](y)
      h_BLF = y if h_BLF is None else h_BLF * y
    h_BLF = nn.with_logical_constraint(h_BLF, axes.BLF)
    h_BLF = nn.Dropout(self.dropout_rate)(h_BLF, deterministic=deterministic)
    return dense(
      "wo", (self.mlp_dim, d), (axes.MLP, axes.EMBED), "blf,fd->bld", self.mlp_dim**-0.5
    )(h_BLF)


class EncoderLayer(nn.Module):
  """Pre-norm encoder layer: bidirectional self-attention, then the MLP, with residuals.

  Attributes:
    config: the network's `TransformerConfig`.
    deterministic: disables dropout.
  """

  config: Any
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BLD: Array, bias: Array, mask: Array) -> tuple[Array, None]:
    """Applies the layer (scan-compatible: returns a `(carry, None)` pair).

    Args:
      x_BLD: input activations.
      bias: [1, H, L, L] relative position bias shared by all layers.
      mask: bool [B, 1, L, L] attention mask.

    Returns:
      ([B, L, D] output, None).
    """
    cfg = self.config
    norm = functools.partial(RMSNorm, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
    drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    x_BLD = nn.with_logical_constraint(x_BLD, axes.BLD)
    h = norm(name="pre_attention_layer_norm")(x_BLD)
    h = _attention(cfg, "attention")(h, None, bias, mask)
    x_BLD = x_BLD + drop(h, deterministic=self.deterministic)
    h = norm(name="pre_mlp_layer_norm")(x_BLD)
    h = _mlp(cfg)(h, self.deterministic)
    x_BLD = x_BLD + drop(h, deterministic=self.deterministic)
    return nn.with_logical_constraint(x_BLD, axes.BLD), None


class DecoderLayer(nn.Module):
  """Pre-norm decoder layer: causal (or prefix-LM) self-attention, cross-attention to the
  encoder (encoder-decoder networks only), then the MLP.

  Attributes:
    config: the network's `TransformerConfig`.
    deterministic: disables dropout.
    mode: FULL, PREFILL or STEP (see `MultiHeadAttention`).
    cache_length: self-attention cache length (PREFILL only).
  """

  config: Any
  deterministic: bool = True
  mode: str = FULL
  cache_length: int = 0

  @nn.compact
  def __call__(
    self,
    x_BLD: Array,
    encoded_BKD: Array | None,
    self_bias: Array,
    self_mask: Array,
    cross_mask: Array | None,
    index: Array | None,
  ) -> tuple[Array, None]:
    """Applies the layer (scan-compatible: returns a `(carry, None)` pair).

    Args:
      x_BLD: input activations.
      encoded_BKD: encoder output (None for decoder-only networks and in STEP mode).
      self_bias: [1, H, L, K] relative position bias shared by all layers.
      self_mask: bool, broadcastable to [B, 1, L, K].
      cross_mask: bool, broadcastable to [B, 1, L, K_enc]; None for decoder-only.
      index: int32 scalar cache slot in STEP mode.

    Returns:
      ([B, L, D] output, None).
    """
    cfg = self.config
    norm = functools.partial(RMSNorm, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
    drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    x_BLD = nn.with_logical_constraint(x_BLD, axes.BLD)
    h = norm(name="pre_self_attention_layer_norm")(x_BLD)
    attn = _attention(cfg, "self_attention", mode=self.mode, cache_length=self.cache_length)
    h = attn(h, None, self_bias, self_mask, index)
    x_BLD = x_BLD + drop(h, deterministic=self.deterministic)
    if not cfg.decoder_only:
      h = norm(name="pre_cross_attention_layer_norm")(x_BLD)
      attn = _attention(cfg, "encoder_decoder_attention", mode=self.mode, cross=True)
      h = attn(h, encoded_BKD, None, cross_mask)
      x_BLD = x_BLD + drop(h, deterministic=self.deterministic)
    h = norm(name="pre_mlp_layer_norm")(x_BLD)
    h = _mlp(cfg)(h, self.deterministic)
    x_BLD = x_BLD + drop(h, deterministic=self.deterministic)
    return nn.with_logical_constraint(x_BLD, axes.BLD), None


def _attention(cfg, name: str, *, mode: str = FULL, cross: bool = False, cache_length: int = 0):
  return MultiHeadAttention(
    num_heads=cfg.num_heads,
    head_dim=cfg.head_dim,
    emb_dim=cfg.emb_dim,
    cross=cross,
    mode=mode,
    cache_length=cache_length,
    dtype=cfg.compute_dtype,
    param_dtype=cfg.params_dtype,
    implementation=cfg.attention_implementation,
    chunk_size=cfg.attention_chunk_size,
    name=name,
  )


def _mlp(cfg) -> MlpBlock:
  return MlpBlock(
    mlp_dim=cfg.mlp_dim,
    activations=tuple(cfg.activations),
    dropout_rate=cfg.dropout_rate,
    dtype=cfg.compute_dtype,
    param_dtype=cfg.params_dtype,
    name="mlp",
  )
