"""Transformers T5 state dict -> weights in this project's orientation, checked by name.

The names and orientations come from `names.tensor_map` (the one map both directions
use); this module adds the import's checks: every tensor the config implies is present with
its shape, and no tensor is left over.
"""

from __future__ import annotations

import numpy as np

from t5x_ext.hf import names
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


def canonical_weights(tensors: dict[str, np.ndarray], spec: HFT5Spec) -> dict:
  """Reads a Transformers T5 state dict into Flax-oriented weights, by name.

  Args:
    tensors: name -> array, as `read_state_dict` returns.
    spec: the parsed config.

  Returns:
    A dict with `params`: unscanned Flax path (`names.MappedTensor.path`) -> array for
    every tensor of `names.tensor_map`; and `logits_kernel`: the output layer
    [d_model, vocab], or None when the checkpoint has none or it equals the embedding.

  Raises:
    KeyError / ValueError: for a missing tensor or a shape that config.json contradicts.
    ValueError: for tensors the layout does not account for (e.g. more layers than the
      config lists), so that a mismatched config never loads silently.
  """
  r = _Reader(tensors)
  params = {t.path: t.to_flax(r.take(t.hf_name, t.hf_shape)) for t in names.tensor_map(spec)}
  logits_kernel = None
  if names.LM_HEAD in tensors:
    head = names.lm_head_tensor(spec)
    value = r.take(head.hf_name, head.hf_shape)
    if not np.array_equal(value, tensors[names.EMBEDDING]):
      logits_kernel = head.to_flax(value)
  unused = sorted(set(tensors) - r.used - set(_IGNORED))
  if unused:
    shown = ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else "")
    raise ValueError(
      f"checkpoint has {len(unused)} tensors that config.json does not account for: {shown}"
    )
  return {"params": params, "logits_kernel": logits_kernel}


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
    kernel = weights["params"][names.EMBEDDING_PATH].T
  kernel = np.asarray(kernel, np.float32)
  if spec.scale_logits:
    kernel = kernel * np.float32(spec.d_model**-0.5)
  return kernel
