"""Which kernel a full attention call runs on, and the calls to the fused kernels.

`TransformerConfig.attention_implementation` names the kernel of every full (uncached)
attention call, in training and scoring; decoding's cached calls (`layers.PREFILL`,
`layers.STEP`) keep their own path whatever it says:

  'auto'        cuDNN's fused attention on NVIDIA GPUs and the Pallas flash-attention kernel
                on TPUs, where the call qualifies (`choose` says when); XLA otherwise.
  'xla'         `jax.nn.dot_product_attention` on XLA: the logits are materialised
                ([B, H, Q, K] float32, or one query block at a time with
                `attention_chunk_size`).
  'cudnn'       `jax.nn.dot_product_attention(implementation='cudnn')`; fails where the call
                does not qualify.
  'pallas_tpu'  `jax.experimental.pallas.ops.tpu.flash_attention`; fails where the call does
                not qualify. Off a TPU it runs only in Pallas's TPU interpret mode
                (`jax.experimental.pallas.tpu.force_tpu_interpret_mode()`, the tests' way).

How T5's masking reaches each kernel (`AttentionMask` carries every form):

  bias     the relative-position bias stays [1, H, Q, K] for cuDNN, whose bias gradient needs
           a batch axis of 1 (jax issues #30593, #27184); the TPU kernel takes only a
           [B, H, Q, K] `ab`, so it is broadcast there (inside the per-device shard).
  padding  segment id 0 for the TPU kernel; sequence lengths (real tokens first, as SeqIO's
           unpacked feature converters lay them out) for cuDNN.
  packing  segment ids for the TPU kernel. cuDNN's packed layout is not reachable through
           `jax.nn.dot_product_attention`, so packed calls take XLA under 'auto'.
  causal   the kernels' causal flag.
  prefix   prefix-LM masks are not a kernel mask: the TPU kernel gets them folded into its
           (already batch-sized) `ab`; cuDNN does not take them ('auto': XLA).

The padded positions' own outputs differ between kernels (a padding query attends other
padding there, real tokens here); no real position reads them, so real outputs, losses and
gradients are the same. Shape key: B batch, Q query length, K key length, H heads, E head_dim.
"""

from __future__ import annotations

import logging
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from t5x_ext.errors import UserError
from t5x_ext.model import axes

Array = jax.Array

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas_tpu")

# The TPU kernel's key blocks are 128 wide (its segment-id tiles need whole 128-lane blocks)
# and its default query blocks 128 tall: both lengths must be multiples of 128.
TPU_BLOCK = 128
# cuDNN's flash attention: head_dim a multiple of 8, at most 128 (256 from Hopper on).
CUDNN_MAX_HEAD_DIM = 128

_log = logging.getLogger(__name__)
_LOGGED: set[tuple[str, str, str]] = set()


@flax.struct.dataclass
class AttentionMask:
  """The masking of one full attention call, in the forms the kernels take.

  Attributes:
    dense: bool [B or 1, 1, Q, K], True where attention is allowed (`t5x_ext.model.masks`):
      what the XLA path reads.
    q_segments: int32 [B, Q]: 0 on padding, else a packing segment id plus one (1 when the
      batch is not packed).
    kv_segments: int32 [B, K], the same for the keys.
    prefix: bool [B, Q] prefix-LM marker (self-attention only), or None.
    causal: whether a query sees only the keys at or before its position.
    packed: whether the rows hold several segments (segment ids were given).
  """

  dense: Array
  q_segments: Array
  kv_segments: Array
  prefix: Array | None = None
  causal: bool = flax.struct.field(pytree_node=False, default=False)
  packed: bool = flax.struct.field(pytree_node=False, default=False)


def segments(real_BL: Array, segment_ids_BL: Array | None) -> Array:
  """Kernel segment ids: 0 on padding, the packing segment id plus one on real tokens.

  Args:
    real_BL: bool, True on real (non-padding) tokens.
    segment_ids_BL: packing segment ids, or None for an unpacked batch.

  Returns:
    int32 [B, L].
  """
  ids = 1 if segment_ids_BL is None else segment_ids_BL.astype(jnp.int32) + 1
  return jnp.where(real_BL, ids, 0).astype(jnp.int32)


def backend_platform() -> str:
  """'cuda', 'rocm', 'tpu', 'cpu' (or another backend name) of the default backend."""
  backend = jax.default_backend()
  if backend in ("cuda", "rocm"):
    return backend
  if backend == "gpu":
    try:
      version = jax.extend.backend.get_backend().platform_version.lower()
    except Exception:  # noqa: BLE001 - a backend without a version string
      version = ""
    return "rocm" if "rocm" in version else "cuda"
  return backend


def interpret_mode() -> bool:
  """Whether Pallas TPU kernels traced now run in TPU interpret mode (on any backend)."""
  try:
    from jax._src import config as jax_config

    return jax_config.pallas_tpu_interpret_mode_context_manager.value is not None
  except (ImportError, AttributeError):
    return False


def choose(
  requested: str | None,
  *,
  platform: str,
  q_len: int,
  kv_len: int,
  head_dim: int,
  dtype: Any,
  mask: AttentionMask | None,
  dense_only: bool = False,
  has_bias: bool = False,
  chunk_size: int = 0,
  interpret: bool = False,
) -> tuple[str, str]:
  """The kernel a full attention call takes, and why.

  Args:
    requested: the config's `attention_implementation` (None is the old default: 'xla').
    platform: `backend_platform()`.
    q_len: Q.
    kv_len: K.
    head_dim: E.
    dtype: compute dtype.
    mask: the call's structured mask, or None.
    dense_only: the call has only a dense mask (no `AttentionMask`), which only XLA reads.
    has_bias: whether an additive bias (T5's relative positions) is given.
    chunk_size: the config's `attention_chunk_size`.
    interpret: Pallas TPU interpret mode is on (`interpret_mode()`).

  Returns:
    (implementation, reason): 'xla', 'cudnn' or 'pallas_tpu', and one line saying why.

  Raises:
    ValueError: when an explicit 'cudnn' or 'pallas_tpu' cannot run this call here; the
      message names the setting, the backend and what does not qualify.
  """
  requested = "xla" if requested is None else requested
  if requested not in IMPLEMENTATIONS:
    raise UserError(f"attention_implementation={requested!r}: expected one of {IMPLEMENTATIONS}")
  if requested == "xla":
    return "xla", "attention_implementation='xla'" + _chunk_note(chunk_size, "xla", q_len)
  dt = jnp.dtype(dtype)
  why_not = {
    "cudnn": _cudnn_blockers(platform, q_len, kv_len, head_dim, dt, mask, dense_only, has_bias),
    "pallas_tpu": _tpu_blockers(platform, q_len, kv_len, dt, dense_only, interpret),
  }
  if requested != "auto":
    blockers = why_not[requested]
    if blockers:
      raise UserError(
        f"TransformerConfig.attention_implementation={requested!r} cannot run this attention "
        f"call on backend {platform!r}: {'; '.join(blockers)}. Use 'auto' (picks a kernel "
        "where the call qualifies, XLA otherwise) or 'xla'."
      )
    return requested, f"attention_implementation={requested!r}" + _chunk_note(
      chunk_size, requested, q_len
    )
  kernel = {"cuda": "cudnn", "tpu": "pallas_tpu"}.get(platform)
  if kernel is None:
    return "xla", f"auto: no fused kernel on backend {platform!r}" + _chunk_note(
      chunk_size, "xla", q_len
    )
  blockers = why_not[kernel]
  if blockers:
    return "xla", f"auto: {kernel} does not qualify ({'; '.join(blockers)})" + _chunk_note(
      chunk_size, "xla", q_len
    )
  return kernel, f"auto: {kernel} on backend {platform!r}" + _chunk_note(chunk_size, kernel, q_len)


def _chunk_note(chunk_size: int, impl: str, q_len: int) -> str:
  if not 0 < chunk_size < q_len:
    return ""
  if impl == "xla":
    return f"; queries in blocks of {chunk_size}"
  return f"; attention_chunk_size={chunk_size} unused (the kernel works in blocks already)"


def _cudnn_blockers(platform, q_len, kv_len, head_dim, dt, mask, dense_only, has_bias):
  out = []
  if platform != "cuda":
    out.append("cuDNN attention needs a CUDA GPU")
  if dt not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    out.append(f"cuDNN needs bfloat16/float16 compute, not {dt.name}")
  if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
    out.append(f"head_dim={head_dim} is not a multiple of 8 up to {CUDNN_MAX_HEAD_DIM}")
  if has_bias and (q_len % 2 or kv_len % 2):
    out.append(f"a bias needs even lengths (Q={q_len}, K={kv_len})")
  if dense_only:
    out.append("the call has only a dense mask")
  elif mask is not None and mask.packed:
    out.append("packed rows (segment ids) are not reachable through jax.nn's cuDNN call")
  elif mask is not None and mask.prefix is not None:
    out.append("a prefix-LM mask is not a cuDNN mask type")
  return out


def _tpu_blockers(platform, q_len, kv_len, dt, dense_only, interpret):
  out = []
  if platform != "tpu" and not interpret:
    out.append("the Pallas TPU kernel needs a TPU (or Pallas TPU interpret mode)")
  if q_len % TPU_BLOCK or kv_len % TPU_BLOCK:
    out.append(f"lengths Q={q_len}, K={kv_len} are not multiples of {TPU_BLOCK}")
  if dt not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)):
    out.append(f"the TPU kernel takes bfloat16/float32, not {dt.name}")
  if dense_only:
    out.append("the call has only a dense mask")
  return out


def log_choice(kind: str, implementation: str, reason: str) -> None:
  """Logs the kernel of an attention kind once per process (at the first trace).

  At INFO; at WARNING where 'auto' found a fused kernel on this backend but the call does not
  qualify for it (an accelerator run that materialises the logits should say so, and the
  commands log at WARNING).

  Args:
    kind: the attention's module name ('attention', 'self_attention', ...).
    implementation: the choice.
    reason: why.
  """
  key = (kind, implementation, reason)
  if key not in _LOGGED:
    _LOGGED.add(key)
    level = logging.WARNING if "does not qualify" in reason else logging.INFO
    _log.log(level, "attention %s: %s (%s)", kind, implementation, reason)


def describe(
  config: Any,
  encoder_length: int,
  decoder_length: int,
  *,
  packed: bool = False,
  prefix_lm: bool = False,
  platform: str | None = None,
) -> dict[str, dict[str, str]]:
  """The kernel each attention of a network's training pass takes, for a run to print.

  Args:
    config: a `TransformerConfig`.
    encoder_length: encoder input length (ignored for decoder-only networks).
    decoder_length: decoder length.
    packed: whether batches are packed.
    prefix_lm: whether a decoder-only network gets a prefix-LM mask.
    platform: `backend_platform()` when None.

  Returns:
    {kind: {'implementation': ..., 'reason': ...}} for 'encoder', 'decoder_self' and
    'cross' (the last two only where the network has them).

  Raises:
    ValueError: as `choose`, for an explicit kernel that cannot run here.
  """
  platform = backend_platform() if platform is None else platform
  e, d = encoder_length, decoder_length

  def one(q, k, causal, prefix, bias):
    dummy = AttentionMask(
      jnp.zeros((1,), bool),
      jnp.zeros((1,), jnp.int32),
      jnp.zeros((1,), jnp.int32),
      jnp.zeros((1,), bool) if prefix else None,
      causal,
      packed,
    )
    impl, reason = choose(
      config.attention_implementation,
      platform=platform,
      q_len=q,
      kv_len=k,
      head_dim=config.head_dim,
      dtype=config.dtype,
      mask=dummy,
      has_bias=bias,
      chunk_size=config.attention_chunk_size,
      interpret=interpret_mode(),
    )
    return {"implementation": impl, "reason": reason}

  out = {}
  if not config.decoder_only:
    out["encoder"] = one(e, e, False, False, True)
  out["decoder_self"] = one(d, d, True, prefix_lm and config.decoder_only, True)
  if not config.decoder_only:
    out["cross"] = one(d, e, False, False, False)
  return out


def cudnn_attention(
  q_BQHE: Array, k_BKHE: Array, v_BKHE: Array, bias: Array | None, mask: AttentionMask | None
) -> Array:
  """cuDNN fused attention, unscaled (T5), the bias kept [1, H, Q, K].

  Padding reaches cuDNN as sequence lengths (the real tokens of a row come first); a row
  without any real token gets length 1, so it stays finite (its loss weight is 0, and
  0 * NaN would still poison the sum).

  Args:
    q_BQHE: queries.
    k_BKHE: keys.
    v_BKHE: values.
    bias: [1, H, Q, K] additive bias in the compute dtype, or None.
    mask: the call's mask (not packed, no prefix), or None.

  Returns:
    [B, Q, H, E] attention output.
  """
  q_lengths = kv_lengths = None
  causal = False
  if mask is not None:
    causal = mask.causal
    b = q_BQHE.shape[0]
    q_real = jnp.broadcast_to(mask.q_segments > 0, (b, q_BQHE.shape[1]))
    kv_real = jnp.broadcast_to(mask.kv_segments > 0, (b, k_BKHE.shape[1]))
    q_lengths = jnp.maximum(jnp.sum(q_real, axis=1), 1).astype(jnp.int32)
    kv_lengths = jnp.maximum(jnp.sum(kv_real, axis=1), 1).astype(jnp.int32)
  if bias is not None:
    bias = bias.astype(q_BQHE.dtype)  # an fp32 bias gives NaN gradients (jax issue #32242)
  return jax.nn.dot_product_attention(
    q_BQHE,
    k_BKHE,
    v_BKHE,
    bias,
    None,
    scale=1.0,
    is_causal=causal,
    query_seq_lengths=q_lengths,
    key_value_seq_lengths=kv_lengths,
    implementation="cudnn",
  )


def _prefix_lm_bias(prefix_BQ: Array, dtype: Any) -> Array:
  """[B, 1, Q, Q]: 0 where a prefix-LM query may attend, a large negative number elsewhere.

  A quarter of the dtype's largest value: the TPU kernel adds its own mask value (-0.7 of
  float32's largest) on top, and the sum must stay finite, or a fully masked row of padding
  would give NaN.
  """
  q = prefix_BQ.shape[1]
  idx = jnp.arange(q)
  allowed = (idx[None, :] <= idx[:, None])[None, None] | (
    prefix_BQ[:, None, :, None] & prefix_BQ[:, None, None, :]
  )
  neg = jnp.asarray(-0.25 * float(jnp.finfo(dtype).max), dtype)
  return jnp.where(allowed, jnp.asarray(0, dtype), neg)


def pallas_tpu_attention(
  q_BQHE: Array,
  k_BKHE: Array,
  v_BKHE: Array,
  bias: Array | None,
  mask: AttentionMask | None,
  block_sizes: Any = None,
) -> Array:
  """The Pallas TPU flash-attention kernel, unscaled, with T5's bias as its `ab`.

  Under a mesh (`jax.set_mesh` and flax logical rules, as the trainer traces its steps) the
  kernel runs per device in a `shard_map` over the batch and head axes, since XLA cannot
  split a Pallas call; the [1, H, Q, K] bias is broadcast to the local batch inside, so its
  gradient is summed over the local rows there and over the batch shards by `shard_map`.

  Args:
    q_BQHE: queries.
    k_BKHE: keys.
    v_BKHE: values.
    bias: [1, H, Q, K] additive bias, or None.
    mask: the call's mask, or None.
    block_sizes: the kernel's `BlockSizes` (None: its defaults, 128).

  Returns:
    [B, Q, H, E] attention output.
  """
  from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

  b, q_len = q_BQHE.shape[:2]
  causal = False if mask is None else mask.causal
  prefix = q_seg = kv_seg = None
  if mask is not None:
    q_seg = jnp.broadcast_to(mask.q_segments, (b, q_len))
    kv_seg = jnp.broadcast_to(mask.kv_segments, (b, k_BKHE.shape[1]))
    if mask.prefix is not None:
      prefix = jnp.broadcast_to(mask.prefix, (b, q_len))

  def kernel(q_BQHE, k_BKHE, v_BKHE, bias, prefix, q_seg, kv_seg):
    b, q, h, _ = q_BQHE.shape
    ab, is_causal = None, causal
    if bias is not None:
      ab = jnp.broadcast_to(bias, (b, h, q, bias.shape[-1]))
    if prefix is not None:
      # Causal or both in the prefix: not a kernel mask, so a bias on the (batch-sized) ab.
      extra = _prefix_lm_bias(prefix.astype(jnp.bool_), q_BQHE.dtype)
      ab = jnp.broadcast_to(extra, (b, h, q, q)) if ab is None else ab + extra
      is_causal = False
    seg = None if q_seg is None else tpu_flash.SegmentIds(q_seg, kv_seg)
    out_BHQE = tpu_flash.flash_attention(
      jnp.swapaxes(q_BQHE, 1, 2),
      jnp.swapaxes(k_BKHE, 1, 2),
      jnp.swapaxes(v_BKHE, 1, 2),
      ab,
      seg,
      causal=is_causal,
      sm_scale=1.0,
      block_sizes=block_sizes,
    )
    return jnp.swapaxes(out_BHQE, 1, 2)

  args = (q_BQHE, k_BKHE, v_BKHE, bias, prefix, q_seg, kv_seg)
  spec = _batch_heads_specs(q_BQHE.shape[0], q_BQHE.shape[2])
  if spec is None:
    return kernel(*args)
  batch, heads = spec
  in_specs = (
    P(batch, None, heads, None),
    P(batch, None, heads, None),
    P(batch, None, heads, None),
    None if bias is None else P(None, heads, None, None),
    None if prefix is None else P(batch, None),
    None if q_seg is None else P(batch, None),
    None if kv_seg is None else P(batch, None),
  )
  return jax.shard_map(
    kernel, in_specs=in_specs, out_specs=P(batch, None, heads, None), check_vma=False
  )(*args)


def _batch_heads_specs(batch: int, heads: int):
  """Mesh axes of the batch and heads under the current mesh and rules, or None (no mesh).

  An axis whose mesh size does not divide the array's stays whole (replicated).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1 or not nn.get_logical_axis_rules():
    return None
  names = nn.logical_to_mesh_axes((axes.BATCH, axes.ACT_HEADS))

  def fit(name, size):
    if name is None:
      return None
    group = (name,) if isinstance(name, str) else tuple(name)
    n = int(np.prod([mesh.shape[a] for a in group]))
    return name if n > 1 and size % n == 0 else None

  return fit(names[0], batch), fit(names[1], heads)
