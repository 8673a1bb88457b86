"""LoRA (Hu et al. 2021, arXiv:2106.09685) as a reparametrisation of the params tree.

Every targeted kernel W (a `Projection` kernel of `t5x_ext.model.layers`) gets two factors,
and the model is applied with

  W' = W + (alpha / r) * A @ B        A: [*I, r] random normal, B: [r, *O] zeros

where I are the kernel's input (contracted) axes and O its output axes:

  query/key/value  [embed, heads, kv]   I = [embed]       O = [heads, kv]
  out              [heads, kv, embed]   I = [heads, kv]   O = [embed]
  mlp wi / wi_<k>  [embed, mlp]         I = [embed]       O = [mlp]
  mlp wo           [mlp, embed]         I = [mlp]         O = [embed]

Scanned stacks (`scan_layers=True`) keep their leading `layers` axis on both factors. A and B
carry the kernel's logical axis names on I and O (the rank axis is unsharded), so on any mesh
they are sharded as their base kernel is. B starts at zero: before training W' = W exactly.

  adapters = init_adapters(rng, boxed_base_params, config)    # nn.LogicallyPartitioned
  params = apply(base_params, nn.unbox(adapters), config)     # inside the loss: grad w.r.t. adapters
  merged = merge(base_params, adapters, config)               # the same, for export

`apply` only touches the targeted kernels; the other leaves are passed through (e.g. in
bf16 when the frozen base is stored so). Targeted kernels come out in float32, since a bf16
W would round a small update away.

Gradients: the model sees W', so autodiff forms dL/dW' of each targeted kernel (one matmul, as
full fine-tuning does) and projects it onto A and B; untargeted parameters get no gradient
(XLA prunes their weight-gradient matmuls). Dropout (`LoraConfig.dropout`) zeroes input
features of the adapter path, A's rows, with one mask per kernel, layer and step shared by
all tokens: the paper drops per token, which needs the adapter in the activation path
(`x A B`) rather than in the weights.

Library code: no gin (`t5x_ext.peft.train` is the configured entry point).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_ext.errors import UserError
from t5x_ext.model import axes

ATTENTION_TARGETS = ("query", "key", "value", "out")
MLP_TARGETS = ("wi", "wi_*", "wo")
LORA_A, LORA_B = "lora_a", "lora_b"
KERNEL = "kernel"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """LoRA's settings.

  Attributes:
    rank: r, the inner dimension of A @ B.
    alpha: the scale is alpha / r (the paper's; alpha = r gives 1).
    dropout: probability of dropping an input feature of the adapter path during training
      (one mask per kernel, layer and step; see the module doc). 0 disables it.
    targets: which kernels get adapters: patterns (fnmatch) matched against a kernel's
      module name (`query`, `wi_0`, ...) or its module path (`encoder/layers_0/attention/out`,
      `decoder/*/self_attention/query`). Default: the attention projections, encoder and
      decoder. `ATTENTION_TARGETS + MLP_TARGETS` adds the MLP kernels.
    dtype: the adapters' (and their optimizer state's) dtype.
    base_dtype: the dtype the frozen base parameters are held in ('float32' or 'bfloat16').
  """

  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  targets: tuple[str, ...] = ATTENTION_TARGETS
  dtype: str = "float32"
  base_dtype: str = "float32"

  def __post_init__(self):
    if isinstance(self.targets, str):
      object.__setattr__(self, "targets", (self.targets,))
    object.__setattr__(self, "targets", tuple(self.targets))
    if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
      raise UserError(f"LoraConfig.rank = {self.rank!r}: must be an int >= 1.")
    if not self.alpha > 0:
      raise UserError(f"LoraConfig.alpha = {self.alpha!r}: must be > 0.")
    if not 0.0 <= self.dropout < 1.0:
      raise UserError(f"LoraConfig.dropout = {self.dropout!r}: must be in [0, 1).")
    if not self.targets:
      raise UserError("LoraConfig.targets is empty: name at least one kernel (e.g. 'query').")
    for name in ("dtype", "base_dtype"):
      if getattr(self, name) not in DTYPES:
        raise UserError(f"LoraConfig.{name} = {getattr(self, name)!r}: one of {sorted(DTYPES)}.")

  @property
  def scale(self) -> float:
    """alpha / rank."""
    return self.alpha / self.rank

  def to_json(self) -> dict[str, Any]:
    """The settings as JSON types (for the run's adapter file)."""
    return {**dataclasses.asdict(self), "targets": list(self.targets)}

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> LoraConfig:
    """The inverse of `to_json`."""
    return cls(**{**data, "targets": tuple(data["targets"])})


@dataclasses.dataclass(frozen=True)
class KernelSplit:
  """How one targeted kernel splits into the factors.

  Attributes:
    path: the module path (keys from the params root to the dict holding `kernel`).
    shape: the kernel's shape.
    names: its logical axis names (None when the tree carried none).
    lead: 1 with a leading stacked `layers` axis, else 0.
    num_in: how many axes after `lead` are contracted with the input.
  """

  path: tuple[str, ...]
  shape: tuple[int, ...]
  names: tuple[str | None, ...] | None
  lead: int
  num_in: int

  @property
  def a_shape(self) -> tuple[int, ...]:
    """Shape of A without the rank: [layers?, *I]."""
    return self.shape[: self.lead + self.num_in]

  @property
  def b_shape(self) -> tuple[int, ...]:
    """Shape of B without the rank: [layers?, *O]."""
    return self.shape[: self.lead] + self.shape[self.lead + self.num_in :]


def _split(path, shape, names) -> KernelSplit:
  shape = tuple(shape)
  if names is not None:
    lead = 1 if names and names[0] == axes.LAYERS else 0
  else:  # no logical names: the networks' module names tell the layout
    lead = 1 if axes.LAYERS in path and len(shape) > 2 else 0
  rest = shape[lead:]
  if len(rest) < 2:
    raise ValueError(f"LoRA target {'/'.join(path)} has shape {shape}: not a kernel.")
  # Kernels map embed -> something or something -> embed; the output projections
  # ([heads, kv, embed], [mlp, embed]) contract all but their last axis.
  if names is not None:
    rest_names = names[lead:]
    ends_in_embed = rest_names[-1] == axes.EMBED and rest_names[0] != axes.EMBED
  else:
    ends_in_embed = path[-1] in ("out", "wo")
  num_in = len(rest) - 1 if ends_in_embed else 1
  return KernelSplit(tuple(path), shape, None if names is None else tuple(names), lead, num_in)


def _matches(path: tuple[str, ...], patterns: Sequence[str]) -> bool:
  joined = "/".join(path)
  return any(fnmatch.fnmatchcase(path[-1], p) or fnmatch.fnmatchcase(joined, p) for p in patterns)


def _is_box(x) -> bool:
  return isinstance(x, nn.Partitioned)


def target_kernels(base_params: Any, config: LoraConfig) -> dict[tuple[str, ...], KernelSplit]:
  """The kernels `config.targets` selects, by module path.

  Args:
    base_params: the model's params (boxed `nn.LogicallyPartitioned` leaves, plain arrays or
      ShapeDtypeStructs; boxed ones give the logical names).
    config: the settings.

  Returns:
    `{module path: KernelSplit}`, in tree order.

  Raises:
    ValueError: when no kernel matches (naming the patterns and some kernel paths).
  """
  found: dict[tuple[str, ...], KernelSplit] = {}
  kernels: list[str] = []

  def walk(tree, path):
    for key, value in tree.items():
      if isinstance(value, Mapping):
        walk(value, path + (key,))
      elif key == KERNEL:
        kernels.append("/".join(path))
        if _matches(path, config.targets):
          names = tuple(value.names) if _is_box(value) else None
          leaf = value.value if _is_box(value) else value
          found[path] = _split(path, leaf.shape, names)

  walk(base_params, ())
  if not found:
    raise UserError(
      f"LoraConfig.targets = {config.targets!r} matches no kernel; kernels are e.g. {kernels[:6]}."
    )
  return found


def _key_for(rng, path: tuple[str, ...]):
  return jax.random.fold_in(rng, zlib.crc32("/".join(path).encode()) & 0x7FFFFFFF)


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def init_adapters(rng: jax.Array, base_params: Any, config: LoraConfig) -> dict[str, Any]:
  """Creates A (normal, stddev 1/sqrt(fan_in)) and B (zeros) for every targeted kernel.

  Traceable (works under `jax.eval_shape` and `jax.jit`); only the base's shapes and logical
  names are read.

  Args:
    rng: a PRNG key.
    base_params: the model's params, boxed (then the adapters are boxed with the kernel's
      logical names) or not.
    config: the settings.

  Returns:
    `{...module path...: {"lora_a": [layers?, *I, r], "lora_b": [layers?, r, *O]}}`.
  """
  dtype = DTYPES[config.dtype]
  adapters: dict[str, Any] = {}
  for path, split in target_kernels(base_params, config).items():
    fan_in = math.prod(split.a_shape[split.lead :])
    a_shape = split.a_shape + (config.rank,)
    b_shape = split.b_shape[: split.lead] + (config.rank,) + split.b_shape[split.lead :]
    a = jax.random.normal(_key_for(rng, path), a_shape, dtype) * fan_in**-0.5
    b = jnp.zeros(b_shape, dtype)
    if split.names is not None:
      names = split.names
      lead_names = names[: split.lead]
      a_names = names[: split.lead + split.num_in] + (None,)
      b_names = lead_names + (None,) + names[split.lead + split.num_in :]
      a = nn.LogicallyPartitioned(a, a_names)
      b = nn.LogicallyPartitioned(b, b_names)
    _set(adapters, path, {LORA_A: a, LORA_B: b})
  return adapters


def adapter_paths(adapters: Mapping[str, Any]) -> list[tuple[str, ...]]:
  """Module paths of the adapters in `adapters` (those holding `lora_a` and `lora_b`)."""
  found = []

  def walk(tree, path):
    if LORA_A in tree and LORA_B in tree:
      found.append(path)
      return
    for key, value in tree.items():
      if isinstance(value, Mapping):
        walk(value, path + (key,))

  walk(adapters, ())
  return found


def delta(a: jax.Array, b: jax.Array, kernel_shape: Sequence[int], scale: float) -> jax.Array:
  """`scale * A @ B` in the kernel's shape (float32 or the factors' dtype, if wider).

  Args:
    a: [layers?, *I, r].
    b: [layers?, r, *O].
    kernel_shape: [layers?, *I, *O].
    scale: alpha / r.

  Returns:
    The update of the kernel.
  """
  r = a.shape[-1]
  lead = a.ndim + b.ndim - 2 - len(kernel_shape)  # 1 for stacked layers, else 0
  lead_shape = tuple(a.shape[:lead])
  a2 = a.reshape(lead_shape + (-1, r))
  b2 = b.reshape(lead_shape + (r, -1))
  dtype = jnp.promote_types(a.dtype, jnp.float32)
  ab = jnp.matmul(a2.astype(dtype), b2.astype(dtype), precision=jax.lax.Precision.HIGHEST)
  return (scale * ab).reshape(tuple(kernel_shape))


def apply(
  base_params: Any, adapters: Any, config: LoraConfig, *, rng: jax.Array | None = None
) -> Any:
  """The params the model runs with: every adapted kernel W replaced by W + scale * A @ B.

  Args:
    base_params: the frozen params (unboxed; any float dtype).
    adapters: from `init_adapters` (unboxed).
    config: the settings (scale, dropout).
    rng: dropout rng (training only); None or `config.dropout == 0` disables dropout.

  Returns:
    A params tree like `base_params`; adapted kernels in float32 (or wider), the rest as given.
  """
  adapters = nn.unbox(adapters)
  out = jax.tree.map(lambda x: x, base_params)  # a copy of the dict structure, same leaves
  for path in adapter_paths(adapters):
    pair = _get(adapters, path)
    a, b = pair[LORA_A], pair[LORA_B]
    if rng is not None and config.dropout > 0:
      keep = 1.0 - config.dropout
      mask = jax.random.bernoulli(_key_for(rng, path), keep, a.shape[:-1])
      a = jnp.where(mask[..., None], a / keep, 0.0).astype(a.dtype)
    module = _get(out, path)
    kernel = module[KERNEL]
    update = delta(a, b, kernel.shape, config.scale)
    module[KERNEL] = kernel.astype(update.dtype) + update
  return out


def merge(base_params: Any, adapters: Any, config: LoraConfig, dtype: Any = jnp.float32) -> Any:
  """The adapters folded into the base: a full params tree, every leaf in `dtype`.

  Args:
    base_params: the frozen params (unboxed).
    adapters: the trained adapters.
    config: the settings.
    dtype: the merged params' dtype (float32, the training dtype of full checkpoints).

  Returns:
    A params tree like `base_params`.
  """
  merged = apply(base_params, adapters, config)
  return jax.tree.map(lambda x: x.astype(dtype), merged)


def cast_floats(tree: Any, dtype: Any) -> Any:
  """Every floating leaf of `tree` (arrays or ShapeDtypeStructs) in `dtype`."""

  def one(x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, dtype, sharding=getattr(x, "sharding", None))
    return x.astype(dtype)

  return jax.tree.map(one, tree)


def num_params(tree: Any) -> int:
  """Number of scalars in a (possibly boxed) tree."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(tree)))
