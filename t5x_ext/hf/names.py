"""The one name map between Transformers T5 tensors and this project's parameter tree.

Both directions use it: the import (`hf_weights.canonical_weights`) reads each Transformers
tensor and turns it into the Flax orientation with `MappedTensor.to_flax`; the export
(`export.hf_tensors`) reads each Flax parameter and turns it back with `MappedTensor.to_hf`.

Layouts:

- `LINEAR`: Transformers stores `nn.Linear` weights as [out, in]; Flax kernels are
  [in, out] with the head axes split out for attention ([d_model, heads, head_dim] for
  q/k/v and [heads, head_dim, d_model] for the output).
- `TRANSPOSE`: the relative position bias, [buckets, heads] in Transformers and
  [heads, buckets] here. It lives in the first block's self-attention and is shared by every
  layer of its stack, as in Mesh TensorFlow T5.
- `COPY`: the embedding and the RMSNorm scales.

The output layer (`lm_head.weight` <-> `logits_dense/kernel`) is listed apart
(`lm_head_tensor`): whether it exists depends on the tied/untied choice, which each
direction decides for itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from t5x_ext.hf.hf_config import HFT5Spec

LINEAR = "linear"
TRANSPOSE = "transpose"
COPY = "copy"

EMBEDDING = "shared.weight"
LM_HEAD = "lm_head.weight"
EMBEDDING_PATH = ("token_embedder", "embedding")
LOGITS_PATH = ("logits_dense", "kernel")


@dataclasses.dataclass(frozen=True)
class MappedTensor:
  """One tensor under its two names.

  Attributes:
    hf_name: the Transformers state-dict key, e.g. `encoder.block.0.layer.0.SelfAttention.q.weight`.
    path: the unscanned Flax parameter path, e.g. `('encoder', 'layers_0', 'attention',
      'query', 'kernel')`.
    hf_shape: the shape in the Transformers file.
    shape: the shape of the Flax parameter.
    layout: `LINEAR`, `TRANSPOSE` or `COPY` (see the module docstring).
  """

  hf_name: str
  path: tuple[str, ...]
  hf_shape: tuple[int, ...]
  shape: tuple[int, ...]
  layout: str

  def to_flax(self, x: np.ndarray) -> np.ndarray:
    """A Transformers tensor of `hf_shape` in the Flax orientation (a view where possible)."""
    if self.layout == LINEAR:
      return x.T.reshape(self.shape)
    if self.layout == TRANSPOSE:
      return x.T
    return x

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    """A Flax parameter of `shape` in the Transformers orientation (C-contiguous)."""
    if self.layout == LINEAR:
      x = x.reshape(self.hf_shape[::-1]).T
    elif self.layout == TRANSPOSE:
      x = x.T
    return np.ascontiguousarray(x)


def _linear(hf_name: str, path: tuple[str, ...], d_in: tuple[int, ...], d_out: tuple[int, ...]):
  hf_shape = (math.prod(d_out), math.prod(d_in))
  return MappedTensor(f"{hf_name}.weight", path, hf_shape, d_in + d_out, LINEAR)


def _norm(hf_name: str, path: tuple[str, ...], s: HFT5Spec) -> MappedTensor:
  return MappedTensor(f"{hf_name}.weight", path + ("scale",), (s.d_model,), (s.d_model,), COPY)


def _attention(hf: str, path: tuple[str, ...], s: HFT5Spec) -> list[MappedTensor]:
  heads = (s.num_heads, s.head_dim)
  out = [
    _linear(f"{hf}.{a}", path + (b, "kernel"), (s.d_model,), heads)
    for a, b in (("q", "query"), ("k", "key"), ("v", "value"))
  ]
  return out + [_linear(f"{hf}.o", path + ("out", "kernel"), heads, (s.d_model,))]


def _mlp(hf: str, path: tuple[str, ...], s: HFT5Spec) -> list[MappedTensor]:
  wi = ("wi_0", "wi_1") if s.gated else ("wi",)
  out = [_linear(f"{hf}.{n}", path + (n, "kernel"), (s.d_model,), (s.d_ff,)) for n in wi]
  return out + [_linear(f"{hf}.wo", path + ("wo", "kernel"), (s.d_ff,), (s.d_model,))]


def tensor_map(spec: HFT5Spec) -> list[MappedTensor]:
  """Every tensor of a T5 encoder-decoder except the output layer, in file order.

  Args:
    spec: the network.

  Returns:
    The embedding, then per stack the relative position bias, the layers and the final
    norm.
  """
  s = spec
  out = [
    MappedTensor(
      EMBEDDING, EMBEDDING_PATH, (s.vocab_size, s.d_model), (s.vocab_size, s.d_model), COPY
    )
  ]
  for stack, n_layers in (("encoder", s.num_encoder_layers), ("decoder", s.num_decoder_layers)):
    buckets = s.relative_attention_num_buckets
    out.append(
      MappedTensor(
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        (stack, "relpos_bias", "rel_embedding"),
        (buckets, s.num_heads),
        (s.num_heads, buckets),
        TRANSPOSE,
      )
    )
    for i in range(n_layers):
      hf, fx = f"{stack}.block.{i}.layer", (stack, f"layers_{i}")
      if stack == "encoder":
        out.append(_norm(f"{hf}.0.layer_norm", fx + ("pre_attention_layer_norm",), s))
        out += _attention(f"{hf}.0.SelfAttention", fx + ("attention",), s)
        mlp = 1
      else:
        out.append(_norm(f"{hf}.0.layer_norm", fx + ("pre_self_attention_layer_norm",), s))
        out += _attention(f"{hf}.0.SelfAttention", fx + ("self_attention",), s)
        out.append(_norm(f"{hf}.1.layer_norm", fx + ("pre_cross_attention_layer_norm",), s))
        out += _attention(f"{hf}.1.EncDecAttention", fx + ("encoder_decoder_attention",), s)
        mlp = 2
      out.append(_norm(f"{hf}.{mlp}.layer_norm", fx + ("pre_mlp_layer_norm",), s))
      out += _mlp(f"{hf}.{mlp}.DenseReluDense", fx + ("mlp",), s)
    out.append(_norm(f"{stack}.final_layer_norm", (stack, f"{stack}_norm"), s))
  return out


def lm_head_tensor(spec: HFT5Spec) -> MappedTensor:
  """The untied output layer: `lm_head.weight` [vocab, d_model] <-> `logits_dense/kernel`.

  Args:
    spec: the network.

  Returns:
    The mapping.
  """
  return _linear("lm_head", LOGITS_PATH, (spec.d_model,), (spec.vocab_size,))


def get_param(params: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  """Looks up an unscanned `path` in a parameter tree, scanned (`layers`) or not.

  With `scan_layers=True` the tree holds `<stack>/layers/...` with a leading layer axis;
  `('encoder', 'layers_3', ...)` then reads row 3 of it.

  Args:
    params: the 'params' collection (nested mappings of arrays).
    path: from `MappedTensor.path`.

  Returns:
    The array (a jax or numpy array, or a slice of one).

  Raises:
    KeyError: naming the path when the tree lacks it.
  """
  node: Any = params
  layer = None
  for i, key in enumerate(path):
    if (
      i == 1
      and key.startswith("layers_")
      and isinstance(node, Mapping)
      and key not in node
      and "layers" in node
    ):
      key, layer = "layers", int(key[len("layers_") :])
    if not isinstance(node, Mapping) or key not in node:
      raise KeyError(f"params have no {'/'.join(path)} (no {key!r} under {'/'.join(path[:i])!r})")
    node = node[key]
  return node if layer is None else node[layer]
