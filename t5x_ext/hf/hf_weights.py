"""Transformers T5 tensor names -> per-layer numpy weights in this project's orientation.

Transformers stores `nn.Linear` weights as [out, in]; Flax kernels are [in, out], with the
head axes split out for attention ([d_model, heads, head_dim] for q/k/v and
[heads, head_dim, d_model] for the output). The relative position bias lives in the first
block's self-attention (`relative_attention_bias`, [buckets, heads]) and is shared by every
layer of its stack, as in Mesh TensorFlow T5.
"""

from __future__ import annotations

import numpy as np

from t5x_ext.hf.hf_config import HFT5Spec

# Tensors a T5ForConditionalGeneration file may hold that carry no information for us:
# per-stack aliases of `shared`, and the cross-attention bias some old exports include but
# T5 never uses.
_IGNORED = (
  "encoder.embed_tokens.weight",
  "decoder.embed_tokens.weight",
  "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
)


class _Reader:
  """Takes tensors by name, checking shapes, and remembers which were used."""

  def __init__(self, tensors: dict[str, np.ndarray]):
    self.tensors = tensors
    self.used: set[str] = set()

  def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in self.tensors:
      raise KeyError(f"checkpoint has no tensor {name!r} that config.json implies")
    value = self.tensors[name]
    if tuple(value.shape) != tuple(shape):
      raise ValueError(
        f"tensor {name!r} has shape {tuple(value.shape)}, config.json implies {tuple(shape)}"
      )
    self.used.add(name)
    return value

  def linear(self, name: str, d_in: int, d_out: int) -> np.ndarray:
    """An nn.Linear weight [out, in] as a kernel [in, out]."""
    return self.take(f"{name}.weight", (d_out, d_in)).T


def _attention(r: _Reader, prefix: str, s: HFT5Spec) -> dict[str, np.ndarray]:
  inner = s.num_heads * s.head_dim
  split = (s.d_model, s.num_heads, s.head_dim)
  return {
    "query": r.linear(f"{prefix}.q", s.d_model, inner).reshape(split),
    "key": r.linear(f"{prefix}.k", s.d_model, inner).reshape(split),
    "value": r.linear(f"{prefix}.v", s.d_model, inner).reshape(split),
    "out": r.linear(f"{prefix}.o", inner, s.d_model).reshape(s.num_heads, s.head_dim, s.d_model),
  }


def _mlp(r: _Reader, prefix: str, s: HFT5Spec) -> dict[str, np.ndarray]:
  out = {"wo": r.linear(f"{prefix}.wo", s.d_ff, s.d_model)}
  if s.gated:
    out["wi_0"] = r.linear(f"{prefix}.wi_0", s.d_model, s.d_ff)
    out["wi_1"] = r.linear(f"{prefix}.wi_1", s.d_model, s.d_ff)
  else:
    out["wi"] = r.linear(f"{prefix}.wi", s.d_model, s.d_ff)
  return out


def _norm(r: _Reader, name: str, s: HFT5Spec) -> np.ndarray:
  return r.take(f"{name}.weight", (s.d_model,))


def canonical_weights(tensors: dict[str, np.ndarray], spec: HFT5Spec) -> dict:
  """Regroups a Transformers T5 state dict by stack and layer.

  Args:
    tensors: name -> array, as `read_state_dict` returns.
    spec: the parsed config.

  Returns:
    A dict with `embedding` [vocab, d_model]; `logits_kernel` [d_model, vocab] or None
    when the output layer is tied to the embedding; and `encoder`/`decoder`, each with
    `relpos` [buckets, heads], `final_norm` [d_model] and `layers`: a list of per-layer
    dicts (`self_attention`, `pre_self_attention_norm`, `mlp`, `pre_mlp_norm`, and in the
    decoder `cross_attention`, `pre_cross_attention_norm`).

  Raises:
    KeyError / ValueError: for a missing tensor or a shape that config.json contradicts.
    ValueError: for tensors the layout does not account for (e.g. more layers than the
      config lists), so that a mismatched config never loads silently.
  """
  r = _Reader(tensors)
  out = {"embedding": r.take("shared.weight", (spec.vocab_size, spec.d_model))}
  out["logits_kernel"] = None
  if "lm_head.weight" in tensors:
    head = r.take("lm_head.weight", (spec.vocab_size, spec.d_model))
    if not np.array_equal(head, out["embedding"]):
      out["logits_kernel"] = head.T
  for stack, n_layers in (
    ("encoder", spec.num_encoder_layers),
    ("decoder", spec.num_decoder_layers),
  ):
    layers = []
    for i in range(n_layers):
      p = f"{stack}.block.{i}.layer"
      layer = {
        "pre_self_attention_norm": _norm(r, f"{p}.0.layer_norm", spec),
        "self_attention": _attention(r, f"{p}.0.SelfAttention", spec),
      }
      mlp_index = 1
      if stack == "decoder":
        layer["pre_cross_attention_norm"] = _norm(r, f"{p}.1.layer_norm", spec)
        layer["cross_attention"] = _attention(r, f"{p}.1.EncDecAttention", spec)
        mlp_index = 2
      layer["pre_mlp_norm"] = _norm(r, f"{p}.{mlp_index}.layer_norm", spec)
      layer["mlp"] = _mlp(r, f"{p}.{mlp_index}.DenseReluDense", spec)
      layers.append(layer)
    out[stack] = {
      "relpos": r.take(
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        (spec.relative_attention_num_buckets, spec.num_heads),
      ),
      "final_norm": _norm(r, f"{stack}.final_layer_norm", spec),
      "layers": layers,
    }
  unused = sorted(set(tensors) - r.used - set(_IGNORED))
  if unused:
    shown = ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else "")
    raise ValueError(
      f"checkpoint has {len(unused)} tensors that config.json does not account for: {shown}"
    )
  return out


def fold_logit_scale(weights: dict, spec: HFT5Spec) -> np.ndarray:
  """The output kernel [d_model, vocab] with T5 1.0's `d_model ** -0.5` folded in.

  `(h * s) @ W == h @ (s * W)`, so a network with a plain untied output layer reproduces
  every Transformers variant: tied or not, scaled or not.

  Args:
    weights: from `canonical_weights`.
    spec: the parsed config.

  Returns:
    float32 kernel.
  """
  kernel = weights["logits_kernel"]
  if kernel is None:
    kernel = weights["embedding"].T
  kernel = np.asarray(kernel, np.float32)
  if spec.scale_logits:
    kernel = kernel * np.float32(spec.d_model**-0.5)
  return kernel
