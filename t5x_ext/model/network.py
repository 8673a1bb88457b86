"""T5.1.1 / UL2 networks: the config dataclass, the stacks, and the two top-level modules.

Shape key: B batch, L length (I encoder length, T decoder length, C cache length),
D d_model, V vocab.

Parameter tree (unscanned; with `scan_layers` every `layers_<i>` becomes one `layers`
whose parameters have a leading `layers` axis, see `stack_layer_params`):

```
token_embedder/embedding                       [V, D]   shared by encoder and decoder
encoder/relpos_bias/rel_embedding              [H, N]
encoder/layers_<i>/pre_attention_layer_norm/scale                 [D]
encoder/layers_<i>/attention/{query,key,value}/kernel             [D, H, E]
encoder/layers_<i>/attention/out/kernel                           [H, E, D]
encoder/layers_<i>/pre_mlp_layer_norm/scale                       [D]
encoder/layers_<i>/mlp/{wi | wi_0, wi_1}/kernel, mlp/wo/kernel    [D, F], [F, D]
encoder/encoder_norm/scale
decoder/relpos_bias/rel_embedding
decoder/layers_<i>/pre_self_attention_layer_norm, self_attention/...
decoder/layers_<i>/pre_cross_attention_layer_norm, encoder_decoder_attention/...
decoder/layers_<i>/pre_mlp_layer_norm, mlp/...
decoder/decoder_norm/scale
logits_dense/kernel                            [D, V]   only without logits_via_embedding
```
Decoder-only networks have no `encoder` and no cross-attention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_ext.errors import UserError
from t5x_ext.model import attention, axes, layers, masks
from t5x_ext.model.layers import FULL, PREFILL, STEP

Array = jax.Array

REMAT_POLICIES = {
  "none": None,
  "full": "full",
  # Keep matmul outputs, recompute elementwise ops: a good default for large models.
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyper-parameters of a T5-family network, validated on construction.

  Attributes:
    vocab_size: V, size of the (shared) embedding table and the logits.
    emb_dim: D, d_model.
    num_heads: H, attention heads.
    head_dim: E, per-head dimension (T5 calls it d_kv); None means emb_dim // num_heads.
    mlp_dim: F, d_ff.
    num_encoder_layers: encoder depth; must be 0 for decoder-only networks.
    num_decoder_layers: decoder depth.
    activations: MLP activations; one name gives a plain MLP, several a gated one.
      ('relu',) is T5 1.0, ('gelu', 'linear') T5.1.1, ('silu', 'linear') UL2.
    logits_via_embedding: tie the output layer to the embedding (T5 1.0); the decoder
      output is then scaled by emb_dim**-0.5 before the logits, as T5 does.
    dropout_rate: dropout on embeddings, sublayer outputs, the MLP hidden and the final
      norm (attention probabilities are not dropped, which keeps the fused kernel).
    dtype: compute dtype name, 'bfloat16' (accelerators) or 'float32'.
    param_dtype: parameter dtype name.
    relative_attention_num_buckets: relative-position buckets (even).
    relative_attention_max_distance: offset from which all offsets share the last bucket.
    remat_policy: rematerialisation per layer: one of REMAT_POLICIES.
    scan_layers: run each stack as `nn.scan` over stacked layer parameters (fast compile
      for deep models; parameters get a leading `layers` axis).
    decoder_only: a decoder-only (causal or prefix-LM) network instead of encoder-decoder.
    layer_norm_epsilon: RMSNorm epsilon.
    attention_implementation: the kernel of training and scoring attention (decoding's
      cached calls keep their own path): 'auto' (default: cuDNN's fused attention on
      NVIDIA GPUs, the Pallas flash-attention kernel on TPUs, where the call qualifies;
      XLA otherwise), 'xla', 'cudnn' (bfloat16/float16 compute) or 'pallas_tpu'. An
      explicit kernel fails at trace time where it cannot run the call. See
      `t5x_ext.model.attention` (`choose`, `describe`); None is the old default, 'xla'.
    attention_chunk_size: 0 (default) attends all queries of a training/scoring pass at
      once; N > 0 attends blocks of N queries in turn, rematerialised (see
      `layers.chunked_attention`): the same outputs, and the [B, H, Q, K] attention logits
      are never kept whole, at the cost of recomputing them in the backward pass.
      Decoding's cached calls ignore it, and so do the fused kernels (blockwise already).
  """

  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  head_dim: int | None = 64
  mlp_dim: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  activations: tuple[str, ...] = ("gelu", "linear")
  logits_via_embedding: bool = False
  dropout_rate: float = 0.0
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  remat_policy: str = "none"
  scan_layers: bool = False
  decoder_only: bool = False
  layer_norm_epsilon: float = 1e-6
  attention_implementation: str | None = "auto"
  attention_chunk_size: int = 0

  def __post_init__(self):
    def fail(name, why):
      raise UserError(f"TransformerConfig.{name}={getattr(self, name)!r}: {why}")

    for name in ("vocab_size", "emb_dim", "num_heads", "mlp_dim", "num_decoder_layers"):
      value = getattr(self, name)
      if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        fail(name, "must be a positive integer")
    if self.head_dim is None:
      if self.emb_dim % self.num_heads:
        raise UserError(
          f"TransformerConfig: head_dim=None derives emb_dim // num_heads, but "
          f"emb_dim={self.emb_dim} is not divisible by num_heads={self.num_heads}; "
          "set head_dim explicitly"
        )
      object.__setattr__(self, "head_dim", self.emb_dim // self.num_heads)
    elif not isinstance(self.head_dim, int | np.integer) or self.head_dim < 1:
      fail("head_dim", "must be a positive integer or None")
    if self.decoder_only and self.num_encoder_layers != 0:
      fail("num_encoder_layers", "must be 0 for a decoder-only network (decoder_only=True)")
    if not self.decoder_only and (
      not isinstance(self.num_encoder_layers, int | np.integer) or self.num_encoder_layers < 1
    ):
      fail("num_encoder_layers", "must be a positive integer for an encoder-decoder network")
    activations = self.activations
    if isinstance(activations, str):
      activations = (activations,)
    object.__setattr__(self, "activations", tuple(activations))
    if not self.activations:
      fail("activations", "needs at least one activation")
    for act in self.activations:
      if act not in layers.ACTIVATIONS:
        fail("activations", f"unknown activation {act!r}; known: {sorted(layers.ACTIVATIONS)}")
    if not 0.0 <= self.dropout_rate < 1.0:
      fail("dropout_rate", "must be in [0, 1)")
    for name in ("dtype", "param_dtype"):
      value = getattr(self, name)
      try:
        dt = jnp.dtype(value)
      except TypeError:
        fail(name, "is not a dtype name (use 'bfloat16' or 'float32')")
      if not jnp.issubdtype(dt, jnp.floating):
        fail(name, "must be a floating dtype")
      object.__setattr__(self, name, dt.name)
    nb, md = self.relative_attention_num_buckets, self.relative_attention_max_distance
    if not isinstance(nb, int | np.integer) or nb < 4 or nb % 2:
      fail("relative_attention_num_buckets", "must be an even integer >= 4")
    # The log-spaced buckets start at num_buckets // 4 (bidirectional) and must grow.
    if md <= nb // 2:
      fail("relative_attention_max_distance", f"must exceed num_buckets // 2 = {nb // 2}")
    if self.remat_policy not in REMAT_POLICIES:
      fail("remat_policy", f"unknown; known: {sorted(REMAT_POLICIES)}")
    if self.attention_implementation is None:
      object.__setattr__(self, "attention_implementation", "xla")
    if self.attention_implementation not in attention.IMPLEMENTATIONS:
      fail("attention_implementation", f"expected one of {attention.IMPLEMENTATIONS}")
    if self.attention_implementation == "cudnn" and self.dtype == "float32":
      fail("attention_implementation", "cuDNN attention needs dtype 'bfloat16' or 'float16'")
    chunk = self.attention_chunk_size
    if not isinstance(chunk, int | np.integer) or isinstance(chunk, bool) or chunk < 0:
      fail("attention_chunk_size", "must be a non-negative integer (0: no chunking)")

  @property
  def compute_dtype(self) -> jnp.dtype:
    """The compute dtype as a numpy dtype."""
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> jnp.dtype:
    """The parameter dtype as a numpy dtype."""
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> TransformerConfig:
    """Returns a copy with `changes` applied (validated again)."""
    return dataclasses.replace(self, **changes)


class Embed(nn.Module):
  """Token embedding table, also usable as the (tied) output layer.

  Attributes:
    config: the network's config.
  """

  config: TransformerConfig

  def setup(self):
    cfg = self.config
    self.embedding = self.param(
      "embedding",
      nn.with_logical_partitioning(nn.initializers.normal(1.0), (axes.VOCAB, axes.EMBED)),
      (cfg.vocab_size, cfg.emb_dim),
      cfg.params_dtype,
    )

  def __call__(self, ids_BL: Array) -> Array:
    """Looks up token ids.

    Args:
      ids_BL: int token ids.

    Returns:
      [B, L, D] embeddings in the compute dtype.
    """
    x = jnp.take(self.embedding, ids_BL, axis=0).astype(self.config.compute_dtype)
    return nn.with_logical_constraint(x, axes.BLD)

  def attend(self, x_BLD: Array) -> Array:
    """Logits against every embedding row.

    Args:
      x_BLD: decoder output.

    Returns:
      [B, L, V] float32 logits.
    """
    dt = self.config.compute_dtype
    return jnp.einsum(
      "bld,vd->blv", x_BLD.astype(dt), self.embedding.astype(dt), preferred_element_type=jnp.float32
    )


def _run_layers(cfg, layer_cls, num_layers: int, layer_kwargs: Mapping[str, Any], x, args):
  """Runs `num_layers` layers, unrolled (`layers_<i>`) or as one `nn.scan` (`layers`)."""
  policy = REMAT_POLICIES[cfg.remat_policy]
  # Decoding calls mutate the cache; rematerialisation only helps the backward pass.
  if policy is not None and layer_kwargs.get("mode", FULL) == FULL:
    kw = {} if policy == "full" else {"policy": policy}
    layer_cls = nn.remat(layer_cls, prevent_cse=not cfg.scan_layers, **kw)
  if cfg.scan_layers:
    scanned = nn.scan(
      layer_cls,
      variable_axes={"params": 0, "cache": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast,) * len(args),
      length=num_layers,
      metadata_params={nn.PARTITION_NAME: axes.LAYERS},
    )
    x, _ = scanned(cfg, **layer_kwargs, name="layers")(x, *args)
    return x
  for i in range(num_layers):
    x, _ = layer_cls(cfg, **layer_kwargs, name=f"layers_{i}")(x, *args)
  return x


class Encoder(nn.Module):
  """The encoder stack: shared bidirectional relative bias, layers, final RMSNorm.

  Attributes:
    config: the network's config.
  """

  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BID: Array, mask: Array, *, deterministic: bool) -> Array:
    """Encodes embedded inputs.

    Args:
      x_BID: embedded encoder tokens.
      mask: bool [B, 1, I, I] attention mask, or an `attention.AttentionMask` holding it.
      deterministic: disables dropout.

    Returns:
      [B, I, D] encoder output.
    """
    cfg = self.config
    positions = jnp.arange(x_BID.shape[1])
    bias = _relpos(cfg, bidirectional=True)(positions, positions)
    x_BID = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x_BID, deterministic=deterministic)
    x_BID = _run_layers(
      cfg,
      layers.EncoderLayer,
      cfg.num_encoder_layers,
      {"deterministic": deterministic},
      x_BID,
      (bias, mask),
    )
    x_BID = _norm(cfg, "encoder_norm")(x_BID)
    x_BID = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x_BID, deterministic=deterministic)
    return nn.with_logical_constraint(x_BID, axes.BLD)


class Decoder(nn.Module):
  """The decoder stack: shared causal relative bias, layers, final RMSNorm.

  Attributes:
    config: the network's config.
  """

  config: TransformerConfig

  @nn.compact
  def __call__(
    self,
    x_BTD: Array,
    encoded_BID: Array | None,
    self_mask: Array,
    cross_mask: Array | None,
    query_positions: Array,
    key_positions: Array,
    *,
    deterministic: bool,
    mode: str = FULL,
    cache_length: int = 0,
    index: Array | None = None,
  ) -> Array:
    """Decodes embedded decoder inputs.

    Args:
      x_BTD: embedded decoder input tokens.
      encoded_BID: encoder output (None for decoder-only and in STEP mode).
      self_mask: bool, broadcastable to [B, 1, T, K], or an `attention.AttentionMask`.
      cross_mask: bool, broadcastable to [B, 1, T, I], or an `attention.AttentionMask`;
        None for decoder-only.
      query_positions: int [T] positions of the queries.
      key_positions: int [K] positions of the self-attention keys.
      deterministic: disables dropout.
      mode: FULL, PREFILL or STEP.
      cache_length: self-attention cache length (PREFILL).
      index: int32 scalar cache slot (STEP).

    Returns:
      [B, T, D] decoder output (before the logits layer).
    """
    cfg = self.config
    bias = _relpos(cfg, bidirectional=False)(query_positions, key_positions)
    x_BTD = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x_BTD, deterministic=deterministic)
    x_BTD = _run_layers(
      cfg,
      layers.DecoderLayer,
      cfg.num_decoder_layers,
      {"deterministic": deterministic, "mode": mode, "cache_length": cache_length},
      x_BTD,
      (encoded_BID, bias, self_mask, cross_mask, index),
    )
    x_BTD = _norm(cfg, "decoder_norm")(x_BTD)
    x_BTD = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x_BTD, deterministic=deterministic)
    return nn.with_logical_constraint(x_BTD, axes.BLD)


def _relpos(cfg: TransformerConfig, *, bidirectional: bool) -> layers.RelativePositionBias:
  return layers.RelativePositionBias(
    num_heads=cfg.num_heads,
    num_buckets=cfg.relative_attention_num_buckets,
    max_distance=cfg.relative_attention_max_distance,
    bidirectional=bidirectional,
    dtype=cfg.compute_dtype,
    param_dtype=cfg.params_dtype,
    name="relpos_bias",
  )


def _norm(cfg: TransformerConfig, name: str) -> layers.RMSNorm:
  return layers.RMSNorm(
    cfg.layer_norm_epsilon, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, name=name
  )


def _setup_output(module: nn.Module) -> None:
  """Creates the embedding and, when untied, the separate logits layer of `module`."""
  cfg = module.config
  module.token_embedder = Embed(cfg)
  if not cfg.logits_via_embedding:
    module.logits_dense = layers.Projection(
      (cfg.emb_dim, cfg.vocab_size),
      (axes.EMBED, axes.VOCAB),
      "bld,dv->blv",
      cfg.emb_dim**-0.5,
      cfg.compute_dtype,
      cfg.params_dtype,
    )


def _logits(module: nn.Module, y_BTD: Array) -> Array:
  """[B, T, V] float32 logits from the decoder output."""
  cfg = module.config
  if cfg.logits_via_embedding:
    # T5 rescales before the tied output layer (its embeddings have unit variance).
    logits = module.token_embedder.attend(y_BTD * jnp.asarray(cfg.emb_dim**-0.5, y_BTD.dtype))
  else:
    logits = module.logits_dense(y_BTD).astype(jnp.float32)
  return nn.with_logical_constraint(logits, axes.BLV)


def _prompt_index(length: int, num: int, offset, *, removing: bool) -> Array:
  """Gather indices that insert `num` prompt rows at `offset` (or take them out again)."""
  off = jnp.reshape(jnp.asarray(offset, jnp.int32), (-1, 1))
  if removing:  # original position j of the joined sequence [prompt rows inserted at off]
    j = jnp.arange(length)[None, :]
    return jnp.where(j < off, j, j + num)
  j = jnp.arange(num + length)[None, :]  # into concat([prompt, x])
  return jnp.where(j < off, num + j, jnp.where(j < off + num, j - off, j))


def _take_rows(x: Array, index: Array) -> Array:
  index = jnp.broadcast_to(index, (x.shape[0], index.shape[1]))
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def insert_prompt(x_BL: Array, prompt_BP: Array, offset: int | Array = 0) -> Array:
  """`x_BL` with the rows of `prompt_BP` inserted before its position `offset`.

  Args:
    x_BL: [B, L, ...] (embeddings, or token-like int arrays).
    prompt_BP: [B, P, ...] or [P, ...] (broadcast over the batch), cast to `x_BL`'s dtype.
    offset: where the prompt goes: an int (the same for every row) or int [B] (per row;
      decoding right-aligns decoder-only prompts). 0 puts it in front.

  Returns:
    [B, P + L, ...].
  """
  if prompt_BP.ndim == x_BL.ndim - 1:
    prompt_BP = prompt_BP[None]
  prompt_BP = jnp.broadcast_to(prompt_BP, (x_BL.shape[0],) + prompt_BP.shape[1:]).astype(x_BL.dtype)
  num = prompt_BP.shape[1]
  if isinstance(offset, int | np.integer):
    return jnp.concatenate([x_BL[:, :offset], prompt_BP, x_BL[:, offset:]], axis=1)
  joined = jnp.concatenate([prompt_BP, x_BL], axis=1)
  return _take_rows(joined, _prompt_index(x_BL.shape[1], num, offset, removing=False))


def prompt_tokens(tokens_BL: Array, num: int, offset: int | Array = 0) -> Array:
  """`tokens_BL` (or any [B, L] per-token feature) with `num` ones at the prompt's positions.

  The masks read token arrays (0 is padding): the soft prompt's positions are real tokens.

  Args:
    tokens_BL: int [B, L].
    num: P, the prompt's length.
    offset: as in `insert_prompt`.

  Returns:
    [B, P + L], in `tokens_BL`'s dtype.
  """
  return insert_prompt(tokens_BL, jnp.ones((num,), tokens_BL.dtype), offset)


def remove_prompt(y_BL: Array, num: int, offset: int | Array = 0) -> Array:
  """The inverse of `insert_prompt`: drops the `num` rows at the prompt's positions.

  Args:
    y_BL: [B, P + L, ...].
    num: P.
    offset: as in `insert_prompt`.

  Returns:
    [B, L, ...].
  """
  if isinstance(offset, int | np.integer):
    return jnp.concatenate([y_BL[:, :offset], y_BL[:, offset + num :]], axis=1)
  return _take_rows(y_BL, _prompt_index(y_BL.shape[1] - num, num, offset, removing=True))


def _check_prompt(prompt: Array | None, *segment_ids: Array | None) -> int:
  if prompt is None:
    return 0
  if any(s is not None for s in segment_ids):
    raise UserError(
      "A soft prompt needs unpacked batches (no *_segment_ids): prompt tuning does not "
      "support packing (`pack=False`)."
    )
  return prompt.shape[-2]


def _decoder_self_mask(
  mode: str,
  length: int,
  cache_length: int,
  index: Array | None,
  target_tokens: Array | None,
  segment_ids: Array | None,
  causal_attention: Array | None,
  cache_mask: Array | None,
) -> tuple[Array, Array, Array]:
  """Self-attention mask and query/key positions for a decoder call in `mode`."""
  if mode == STEP:
    if index is None or not cache_length:
      raise ValueError("a STEP call needs `index` and `cache_length`")
    key_positions = jnp.arange(cache_length)
    mask = (key_positions <= index)[None, None, None, :]
    if cache_mask is not None:
      mask = mask & cache_mask[:, None, None, :]
    return mask, jnp.reshape(index, (1,)), key_positions
  if mode == PREFILL and not cache_length:
    raise ValueError("a PREFILL call needs `cache_length`")
  mask = masks.decoder_mask(length, target_tokens, segment_ids, causal_attention)
  positions = jnp.arange(length)
  if cache_mask is not None:
    return mask & cache_mask[:, None, None, :length], positions, positions
  if mode == FULL:
    # Full passes also carry the mask as the fused kernels take it (causal, segment ids).
    real = jnp.ones((1, length), bool) if target_tokens is None else target_tokens > 0
    seg = jnp.broadcast_to(attention.segments(real, segment_ids), (mask.shape[0], length))
    prefix = None if causal_attention is None else causal_attention.astype(jnp.bool_)
    mask = attention.AttentionMask(mask, seg, seg, prefix, True, segment_ids is not None)
  return mask, positions, positions


class EncoderDecoder(nn.Module):
  """T5.1.1 / UL2 encoder-decoder network.

  Attributes:
    config: the network's config (decoder_only=False).
  """

  config: TransformerConfig

  def setup(self):
    if self.config.decoder_only:
      raise UserError("EncoderDecoder needs TransformerConfig.decoder_only=False")
    _setup_output(self)
    self.encoder = Encoder(self.config)
    self.decoder = Decoder(self.config)

  def encode(
    self,
    encoder_input_tokens: Array,
    encoder_segment_ids: Array | None = None,
    *,
    deterministic: bool = True,
    prompt: Array | None = None,
    prompt_offset: int = 0,
  ) -> Array:
    """Runs the encoder.

    Args:
      encoder_input_tokens: int [B, I] (0 is padding).
      encoder_segment_ids: packing segment ids [B, I], or None.
      deterministic: disables dropout.
      prompt: a soft prompt [P, D] (or [B, P, D]) inserted after the token embedding
        lookup (prompt tuning); its positions are real tokens. Needs unpacked inputs.
      prompt_offset: the prompt goes before input position `prompt_offset` (0: in front).

    Returns:
      [B, I, D] encoder output; [B, P + I, D] with a prompt (see `prompt_tokens` for the
      matching cross-attention tokens).
    """
    x = self.token_embedder(encoder_input_tokens)
    if _check_prompt(prompt, encoder_segment_ids):
      x = nn.with_logical_constraint(insert_prompt(x, prompt, prompt_offset), axes.BLD)
      encoder_input_tokens = prompt_tokens(encoder_input_tokens, prompt.shape[-2], prompt_offset)
    dense = masks.encoder_mask(encoder_input_tokens, encoder_segment_ids)
    seg = attention.segments(encoder_input_tokens > 0, encoder_segment_ids)
    mask = attention.AttentionMask(dense, seg, seg, None, False, encoder_segment_ids is not None)
    return self.encoder(x, mask, deterministic=deterministic)

  def decode(
    self,
    encoded: Array | None,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array | None = None,
    encoder_segment_ids: Array | None = None,
    decoder_segment_ids: Array | None = None,
    *,
    deterministic: bool = True,
    mode: str = FULL,
    cache_length: int = 0,
    index: Array | None = None,
  ) -> Array:
    """Runs the decoder and the output layer.

    Args:
      encoded: [B, I, D] encoder output (ignored in STEP mode, where the cross-attention
        keys/values come from the cache).
      encoder_input_tokens: int [B, I], for the cross-attention padding mask.
      decoder_input_tokens: int [B, T] (T = 1 in STEP mode).
      decoder_target_tokens: int [B, T]; zeros mark padding. None: no padding.
      encoder_segment_ids: packing segment ids, or None.
      decoder_segment_ids: packing segment ids, or None.
      deterministic: disables dropout.
      mode: FULL, PREFILL (also fills the 'cache' collection) or STEP (one token).
      cache_length: decoder cache length (PREFILL and STEP).
      index: int32 scalar, the slot of the STEP token.

    Returns:
      [B, T, V] float32 logits.
    """
    length = decoder_input_tokens.shape[1]
    self_mask, q_pos, k_pos = _decoder_self_mask(
      mode, length, cache_length, index, decoder_target_tokens, decoder_segment_ids, None, None
    )
    cross = masks.cross_mask(encoder_input_tokens, length, encoder_segment_ids, decoder_segment_ids)
    if mode == FULL:
      b = cross.shape[0]
      q_real = (
        jnp.ones((b, length), bool) if decoder_target_tokens is None else decoder_target_tokens > 0
      )
      cross = attention.AttentionMask(
        cross,
        jnp.broadcast_to(attention.segments(q_real, decoder_segment_ids), (b, length)),
        attention.segments(encoder_input_tokens > 0, encoder_segment_ids),
        None,
        False,
        encoder_segment_ids is not None,
      )
    y = self.decoder(
      self.token_embedder(decoder_input_tokens),
      None if mode == STEP else encoded,
      self_mask,
      cross,
      q_pos,
      k_pos,
      deterministic=deterministic,
      mode=mode,
      cache_length=cache_length,
      index=index,
    )
    return _logits(self, y)

  def __call__(
    self,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array | None = None,
    encoder_segment_ids: Array | None = None,
    decoder_segment_ids: Array | None = None,
    encoder_positions: Array | None = None,
    decoder_positions: Array | None = None,
    *,
    deterministic: bool = True,
    prompt: Array | None = None,
    prompt_offset: int = 0,
  ) -> Array:
    """Full forward pass (teacher forcing).

    Args:
      encoder_input_tokens: int [B, I].
      decoder_input_tokens: int [B, T].
      decoder_target_tokens: int [B, T] or None (see `decode`).
      encoder_segment_ids: packing segment ids, or None.
      decoder_segment_ids: packing segment ids, or None.
      encoder_positions: accepted for the feature converter's batches; unused because the
        relative bias depends only on offsets, which are the same within a segment.
      decoder_positions: as `encoder_positions`.
      deterministic: disables dropout.
      prompt: a soft prompt [P, D] in front of the encoder inputs (see `encode`).
      prompt_offset: its place among the encoder inputs (see `encode`).

    Returns:
      [B, T, V] float32 logits.
    """
    del encoder_positions, decoder_positions
    encoded = self.encode(
      encoder_input_tokens,
      encoder_segment_ids,
      deterministic=deterministic,
      prompt=prompt,
      prompt_offset=prompt_offset,
    )
    if _check_prompt(prompt, encoder_segment_ids):
      encoder_input_tokens = prompt_tokens(encoder_input_tokens, prompt.shape[-2], prompt_offset)
    return self.decode(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      decoder_target_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      deterministic=deterministic,
    )


class DecoderOnly(nn.Module):
  """Decoder-only network: a causal LM, or a prefix LM given `decoder_causal_attention`.

  Attributes:
    config: the network's config (decoder_only=True).
  """

  config: TransformerConfig

  def setup(self):
    if not self.config.decoder_only:
      raise UserError("DecoderOnly needs TransformerConfig.decoder_only=True")
    _setup_output(self)
    self.decoder = Decoder(self.config)

  def __call__(
    self,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array | None = None,
    decoder_segment_ids: Array | None = None,
    decoder_positions: Array | None = None,
    decoder_causal_attention: Array | None = None,
    *,
    deterministic: bool = True,
    mode: str = FULL,
    cache_length: int = 0,
    index: Array | None = None,
    cache_mask: Array | None = None,
    prompt: Array | None = None,
    prompt_offset: int | Array = 0,
  ) -> Array:
    """Forward pass, or one decoding call.

    Args:
      decoder_input_tokens: int [B, T] (T = 1 in STEP mode).
      decoder_target_tokens: int [B, T]; zeros mark padding. None: no padding.
      decoder_segment_ids: packing segment ids, or None.
      decoder_positions: unused (relative positions; see `EncoderDecoder.__call__`).
      decoder_causal_attention: int [B, T], 1 on the prefix that is attended to
        bidirectionally (prefix LM); None for a causal LM.
      deterministic: disables dropout.
      mode: FULL, PREFILL (fills the 'cache' collection) or STEP.
      cache_length: cache length (PREFILL and STEP).
      index: int32 scalar slot of the STEP token.
      cache_mask: bool [B, cache_length], False on cache slots that hold no token (the
        left padding of right-aligned prompts); None: all slots.
      prompt: a soft prompt [P, D] (or [B, P, D]) inserted after the token embedding
        lookup (prompt tuning; FULL and PREFILL calls, unpacked batches): its positions
        are real tokens, in the bidirectional prefix when `decoder_causal_attention` is
        given, and their logits are dropped. `cache_length` and `cache_mask` count them.
      prompt_offset: the prompt goes before position `prompt_offset` (int, or int [B]).

    Returns:
      [B, T, V] float32 logits.
    """
    del decoder_positions
    num_prompt = _check_prompt(prompt, decoder_segment_ids)
    x = self.token_embedder(decoder_input_tokens)
    if prompt is not None:
      if mode == STEP:
        raise ValueError("a STEP call takes no prompt (the cache holds it)")
      x = nn.with_logical_constraint(insert_prompt(x, prompt, prompt_offset), axes.BLD)
      if decoder_target_tokens is not None:
        decoder_target_tokens = prompt_tokens(decoder_target_tokens, num_prompt, prompt_offset)
      if decoder_causal_attention is not None:
        decoder_causal_attention = prompt_tokens(
          decoder_causal_attention, num_prompt, prompt_offset
        )
    length = x.shape[1]
    self_mask, q_pos, k_pos = _decoder_self_mask(
      mode,
      length,
      cache_length,
      index,
      decoder_target_tokens,
      decoder_segment_ids,
      decoder_causal_attention,
      cache_mask,
    )
    y = self.decoder(
      x,
      None,
      self_mask,
      None,
      q_pos,
      k_pos,
      deterministic=deterministic,
      mode=mode,
      cache_length=cache_length,
      index=index,
    )
    if num_prompt:
      y = remove_prompt(y, num_prompt, prompt_offset)
    return _logits(self, y)


def _map_stacks(params: Mapping[str, Any], fn) -> dict[str, Any]:
  out = dict(params)
  for stack in ("encoder", "decoder"):
    if stack in out:
      out[stack] = fn(dict(out[stack]))
  return out


def stack_layer_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """Converts unscanned parameters (`layers_<i>`) to the `scan_layers=True` layout.

  Args:
    params: the 'params' collection of an unscanned network (plain arrays).

  Returns:
    The same parameters with each stack's `layers_<i>` stacked on a new leading axis
    under `layers`.
  """

  def stack(tree):
    names = sorted((k for k in tree if k.startswith("layers_")), key=lambda k: int(k[7:]))
    if names:
      tree["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[tree.pop(k) for k in names])
    return tree

  return _map_stacks(params, stack)


def unstack_layer_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `stack_layer_params`.

  Args:
    params: the 'params' collection of a scanned network (plain arrays).

  Returns:
    The same parameters with `layers` split into `layers_<i>`.
  """

  def unstack(tree):
    if "layers" in tree:
      stacked = tree.pop("layers")
      n = jax.tree.leaves(stacked)[0].shape[0]
      for i in range(n):
        tree[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return tree

  return _map_stacks(params, unstack)
