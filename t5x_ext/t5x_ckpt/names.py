"""The name map between T5X checkpoints and `t5x_ext.model.network`'s parameter tree.

Two namings occur in T5X checkpoints of T5.1.1/UL2 encoder-decoders:

| | t5x `examples/t5` (minimal T5.1.1), UL2 20B / Flan-UL2 (flaxformer, unscanned) | flaxformer `scan_layers=True` (and t5x `scalable_t5`) | t5x_ext |
|---|---|---|---|
| layers | `encoder/layers_<i>/...` | `encoder/encoder/...`, layer axis 1 | `encoder/layers_<i>/...` or `encoder/layers/...`, layer axis 0 |
| q/k/v kernels | `[D, H*E]` (reshaped in the layer) | `[D, L, H*E]` | `[D, H, E]` |
| out kernel | `[H*E, D]` | `[H*E, L, D]` | `[H, E, D]` |
| norms | `pre_attention_layer_norm/scale`, ..., `encoder_norm/scale` | `[D, L]` | same names, `[D]` |
| relative position table | `encoder/relpos_bias/rel_embedding [H, N]`, one per stack | the same, or one per layer (`relpos_bias` inside the scan) | one per stack |
| output layer | `decoder/logits_dense/kernel [D, V]`, none when tied (T5 1.0) | same | `logits_dense/kernel` |
| embedding | `token_embedder/embedding [V, D]` shared | same | same |

Flaxformer can also give each layer its own relative-position table
(`relative_position_bias_factory` on the layer instead of `shared_relative_position_bias_factory`
on the stack); t5x_ext's network shares one table per stack, so such checkpoints are refused
with a message that says why. Everything else that differs is a rename, a reshape or a
selection along the layer axis, applied per slice by `View`, so a sharded restore reads only
the bytes each device holds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from t5x_ext.t5x_ckpt.t5x_format import TensorRef
from t5x_ext.t5x_ckpt.tree import flatten  # noqa: F401 - `names.flatten`, as callers spell it

STACKS = ("encoder", "decoder")
NAMINGS = ("t5x", "flaxformer_scanned")
_ATTENTIONS = ("attention", "self_attention", "encoder_decoder_attention")
_LAYER = re.compile(r"^layers_(\d+)$")
_MAX_LISTED = 12


class ParamMismatchError(ValueError):
  """The checkpoint's parameters do not fit the model (names and shapes in the message)."""


def _listed(names) -> str:
  names = sorted(names)
  more = f" ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
  return ", ".join(names[:_MAX_LISTED]) + more


def _bounds(index: tuple, shape: tuple[int, ...]) -> list[tuple[int, int]]:
  """(start, stop) per dimension for a basic index of slices (step 1), padded with ':'."""
  index = tuple(index) + (slice(None),) * (len(shape) - len(index))
  out = []
  for s, n in zip(index, shape, strict=True):
    if isinstance(s, int | np.integer):
      raise TypeError(f"integer index {s} not supported here; use slices")
    start, stop, step = s.indices(n)
    if step != 1:
      raise ValueError(f"slice {s} with step {step} not supported")
    out.append((start, stop))
  return out


class View:
  """One unscanned t5x_ext tensor as a view of a stored T5X tensor.

  Args:
    ref: the stored tensor.
    layer: index on the stored tensor's axis 1 (flaxformer's scanned layer axis), or None.
    split: an axis of the (layer-selected) stored tensor of size H*E to read as two axes
      (H, E) (the 2-D attention kernels), or None.
    heads: H, for `split`.
  """

  def __init__(
    self, ref: TensorRef, *, layer: int | None = None, split: int | None = None, heads=None
  ):
    self.ref, self.layer, self.split, self.heads = ref, layer, split, heads
    shape = list(ref.shape)
    if layer is not None:
      if len(shape) < 2 or not 0 <= layer < shape[1]:
        raise ParamMismatchError(f"{ref.name}: no layer {layer} on axis 1 of shape {ref.shape}")
      del shape[1]
    if split is not None:
      joined = shape[split]
      if not heads or joined % heads:
        raise ParamMismatchError(
          f"{ref.name}: axis {split} of size {joined} (heads x head_dim) does not split into "
          f"{heads} heads"
        )
      shape[split : split + 1] = [heads, joined // heads]
    self.shape = tuple(shape)

  @property
  def source(self) -> str:
    """The stored tensor's name, with the layer if one is selected (for messages)."""
    return self.ref.name + (f"[:, {self.layer}]" if self.layer is not None else "")

  def read(self, index: tuple = ()) -> np.ndarray:
    """Reads `view[index]` (slices only), touching only the stored rows it needs.

    Args:
      index: tuple of slices over `self.shape`.

    Returns:
      Numpy array in the stored dtype.
    """
    b = _bounds(index, self.shape)
    k = self.split
    if k is not None:
      head_dim = self.shape[k + 1]
      (h0, h1), (e0, e1) = b[k], b[k + 1]
      stored = b[:k] + [(h0 * head_dim, h1 * head_dim)] + b[k + 2 :]
    else:
      stored = b
    src: list[Any] = [slice(a, z) for a, z in stored]
    if self.layer is not None:
      src.insert(1, self.layer)
    out = self.ref.read(tuple(src))
    if k is not None:
      out = out.reshape(out.shape[:k] + (h1 - h0, head_dim) + out.shape[k + 1 :])
      if (e0, e1) != (0, head_dim):
        out = out[(slice(None),) * (k + 1) + (slice(e0, e1),)]
    return out


class Stacked:
  """Views of layers 0..L-1 stacked on a new leading axis (`scan_layers=True` targets).

  Args:
    views: one `View` per layer, all of one shape.
  """

  def __init__(self, views: list[View]):
    self.views = views
    self.shape = (len(views), *views[0].shape)

  @property
  def source(self) -> str:
    """The first layer's stored name and the count (for messages)."""
    return f"{self.views[0].source} (+{len(self.views) - 1} layers)"

  def read(self, index: tuple = ()) -> np.ndarray:
    """Reads `stacked[index]`, layer by layer.

    Args:
      index: tuple of slices over `self.shape`.

    Returns:
      Numpy array.
    """
    index = tuple(index) + (slice(None),) * (len(self.shape) - len(index))
    (l0, l1), rest = _bounds(index[:1], self.shape[:1])[0], index[1:]
    return np.stack([self.views[i].read(rest) for i in range(l0, l1)])


def _split_axis(sub: list[str], ndim: int) -> int | None:
  """Which axis of a (layer-selected) stored tensor joins heads and head_dim, if any."""
  if len(sub) == 3 and sub[0] in _ATTENTIONS and sub[2] == "kernel" and ndim == 2:
    return 0 if sub[1] == "out" else 1
  return None


def heads_from(refs: Mapping[str, TensorRef]) -> int | None:
  """Number of heads, from a relative-position table `[H, buckets]` (None without one).

  Args:
    refs: the checkpoint's `{name: TensorRef}`.

  Returns:
    H or None.
  """
  for name, ref in sorted(refs.items()):
    if name.endswith("relpos_bias/rel_embedding"):
      return ref.shape[0]
  return None


def source_views(refs: Mapping[str, TensorRef], num_heads: int | None = None) -> dict[str, View]:
  """Maps every stored T5X parameter to the unscanned t5x_ext name(s) it fills.

  Args:
    refs: `T5XCheckpoint.params`.
    num_heads: H, to split 2-D attention kernels; default from the relative-position table.

  Returns:
    `{t5x_ext unscanned name: View}`; names that are not T5 parameters keep their stored
    name (the match against the model then reports them as unexpected).

  Raises:
    ParamMismatchError: for per-layer relative-position tables, which t5x_ext's network
      cannot represent.
  """
  heads = num_heads or heads_from(refs)
  out: dict[str, View] = {}
  per_layer_relpos = []

  def add(name: str, view: View):
    if name in out:
      raise ParamMismatchError(f"{name} is stored twice: {out[name].source} and {view.source}")
    out[name] = view

  for name, ref in refs.items():
    parts = name.split("/")
    if name == "decoder/logits_dense/kernel":
      add("logits_dense/kernel", View(ref))
    elif len(parts) >= 3 and parts[0] in STACKS and _LAYER.match(parts[1]):
      sub = parts[2:]
      if sub[0] == "relpos_bias":
        per_layer_relpos.append(name)
        continue
      split = _split_axis(sub, len(ref.shape))
      add(name, View(ref, split=split, heads=heads))
    elif len(parts) >= 3 and parts[0] in STACKS and parts[1] == parts[0]:  # scanned
      sub = parts[2:]
      if sub[0] == "relpos_bias":
        per_layer_relpos.append(name)
        continue
      if len(ref.shape) < 2:
        add(name, View(ref))  # not a scanned tensor: reported as unexpected
        continue
      split = _split_axis(sub, len(ref.shape) - 1)
      for i in range(ref.shape[1]):
        add(f"{parts[0]}/layers_{i}/{'/'.join(sub)}", View(ref, layer=i, split=split, heads=heads))
    else:
      add(name, View(ref))
  if per_layer_relpos:
    raise ParamMismatchError(
      f"The checkpoint has one relative-position table per layer ({_listed(per_layer_relpos)}); "
      "t5x_ext's network shares one table per stack (encoder/relpos_bias, decoder/relpos_bias), "
      "as t5x's examples/t5 and the released UL2 checkpoints do, so it cannot represent them."
    )
  return out


def unscanned_shapes(target_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
  """Expands `scan_layers` names (`encoder/layers/...`, leading layer axis) to `layers_<i>`.

  Args:
    target_shapes: `{t5x_ext name: shape}` of the model (scanned or not).

  Returns:
    `{unscanned name: shape}`.
  """
  out = {}
  for name, shape in target_shapes.items():
    parts = name.split("/")
    if len(parts) > 2 and parts[0] in STACKS and parts[1] == "layers":
      for i in range(shape[0]):
        out["/".join([parts[0], f"layers_{i}", *parts[2:]])] = tuple(shape[1:])
    else:
      out[name] = tuple(shape)
  return out


def plan(
  refs: Mapping[str, TensorRef],
  target_shapes: Mapping[str, tuple[int, ...]],
  *,
  num_heads: int | None = None,
  where: str = "the T5X checkpoint",
) -> dict[str, View | Stacked]:
  """How to read each of the model's parameters from the checkpoint, checked in full first.

  Args:
    refs: `T5XCheckpoint.params`.
    target_shapes: `{t5x_ext name: shape}` of the model ('/'-joined, scanned or not).
    num_heads: H (default: from the relative-position table).
    where: the checkpoint, for messages.

  Returns:
    `{t5x_ext name: View or Stacked}` with the target's names.

  Raises:
    ParamMismatchError: naming missing and unexpected parameters, and every parameter whose
      stored shape differs from the model's (with both shapes).
  """
  views = source_views(refs, num_heads)
  wanted = unscanned_shapes(target_shapes)
  missing, extra = set(wanted) - set(views), set(views) - set(wanted)
  problems = []
  if missing:
    problems.append(f"missing in the checkpoint: {_listed(missing)}")
  if extra:
    problems.append(
      f"in the checkpoint but not in the model: {_listed(views[n].source for n in extra)}"
    )
  for name in sorted(set(wanted) & set(views)):
    view = views[name]
    if view.shape != wanted[name]:
      stored = "" if view.shape == view.ref.shape else f" (read as {view.shape})"
      problems.append(
        f"{name}: stored {view.source} has shape {view.ref.shape}{stored}, the model wants "
        f"{wanted[name]}"
      )
  if problems:
    raise ParamMismatchError(f"Parameters of {where} do not fit the model: " + "; ".join(problems))
  out: dict[str, View | Stacked] = {}
  for name, shape in target_shapes.items():
    parts = name.split("/")
    if len(parts) > 2 and parts[0] in STACKS and parts[1] == "layers":
      rest = "/".join(parts[2:])
      out[name] = Stacked([views[f"{parts[0]}/layers_{i}/{rest}"] for i in range(shape[0])])
    else:
      out[name] = views[name]
  return out


# ----------------------------------------------------------------------------- writing


def _to_stored(name: str, x: np.ndarray) -> np.ndarray:
  """A t5x_ext unscanned tensor in T5X's stored shape (2-D attention kernels)."""
  parts = name.split("/")
  if len(parts) >= 5 and parts[2] in _ATTENTIONS and parts[-1] == "kernel" and x.ndim == 3:
    if parts[3] == "out":
      return x.reshape(x.shape[0] * x.shape[1], x.shape[2])
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2])
  return x


def to_t5x_names(
  params: Mapping[str, Any], *, naming: str = "t5x", per_layer_relpos: bool = False
) -> dict[str, np.ndarray]:
  """t5x_ext params -> `{T5X name: array}` as a T5X run of that naming would have stored them.

  Args:
    params: the 'params' tree of `network.EncoderDecoder` (nested dicts of arrays, scanned or
      not).
    naming: 't5x' (t5x examples/t5, UL2 20B) or 'flaxformer_scanned' (layers stacked on axis
      1 under `encoder/encoder`, `decoder/decoder`).
    per_layer_relpos: give each layer a copy of its stack's relative-position table
      (flaxformer's per-layer option; t5x_ext refuses to read such checkpoints).

  Returns:
    The flat dict, numpy arrays in the params' dtype.
  """
  from t5x_ext.model import network

  if naming not in NAMINGS:
    raise ValueError(f"naming={naming!r}: expected one of {NAMINGS}")
  tree = {k: dict(v) if isinstance(v, Mapping) else v for k, v in params.items()}
  if any("layers" in tree.get(s, {}) for s in STACKS):
    tree = network.unstack_layer_params(tree)
  flat = {k: np.asarray(v) for k, v in flatten(tree).items()}
  out: dict[str, np.ndarray] = {}
  layers: dict[str, dict[str, list]] = {s: {} for s in STACKS}
  counts = {s: 0 for s in STACKS}
  for name, x in flat.items():
    parts = name.split("/")
    if name == "logits_dense/kernel":
      out["decoder/logits_dense/kernel"] = x
    elif len(parts) >= 3 and parts[0] in STACKS and _LAYER.match(parts[1]):
      i = int(parts[1][7:])
      counts[parts[0]] = max(counts[parts[0]], i + 1)
      if naming == "t5x":
        out[name] = _to_stored(name, x)
      else:
        layers[parts[0]].setdefault("/".join(parts[2:]), []).append((i, _to_stored(name, x)))
    else:
      out[name] = x
  for stack, subs in layers.items():
    for sub, items in subs.items():
      out[f"{stack}/{stack}/{sub}"] = np.stack([x for _, x in sorted(items)], axis=1)
  if per_layer_relpos:
    for stack in STACKS:
      table = out.pop(f"{stack}/relpos_bias/rel_embedding", None)
      if table is None:
        continue
      if naming == "t5x":
        for i in range(counts[stack]):
          out[f"{stack}/layers_{i}/relpos_bias/rel_embedding"] = table.copy()
      else:
        out[f"{stack}/{stack}/relpos_bias/rel_embedding"] = np.stack(
          [table] * counts[stack], axis=1
        )
  return out
