"""The network's dimensions from a T5X checkpoint: its shapes, plus the `config.gin` beside it.

T5X writes the operative gin config of a run to `MODEL_DIR/config.gin`. Shapes fix most of
the network (vocabulary, width, heads, head size, MLP size, depths, gating, tied output);
the gin file adds what shapes cannot tell: the MLP activation (UL2: `('swish', 'linear')`,
T5.1.1: `('gelu', 'linear')`), the relative-position `max_distance`, and dropout. The file is
read with a small parser of `NAME = value` bindings (macros, `scope.Class.param = value`, and
indented blocks under `Class:`), never executed, so neither t5x nor flaxformer is needed.
Both the t5x minimal network (`network.T5Config.emb_dim = 768`) and flaxformer's macros
(`EMBED_DIM = 4096`, `dense.MlpBlock.activations = ...`) are understood. A gin value that
contradicts a shape is an error naming both.
"""

from __future__ import annotations

import ast
import pathlib
import re
from collections.abc import Mapping
from typing import Any

from t5x_ext.errors import UserError
from t5x_ext.model import network

_BLOCK = re.compile(r"^([A-Za-z_][\w./]*)\s*:\s*$")
_BINDING = re.compile(r"^([A-Za-z_][\w./]*)\s*=\s*(.*)$", re.S)
_NOT_FOUND = object()


def _strip_comment(line: str) -> str:
  quote = None
  for i, c in enumerate(line):
    if quote:
      if c == quote:
        quote = None
    elif c in "'\"":
      quote = c
    elif c == "#":
      return line[:i]
  return line


def _depth(text: str) -> int:
  depth, quote = 0, None
  for c in text:
    if quote:
      if c == quote:
        quote = None
    elif c in "'\"":
      quote = c
    elif c in "([{":
      depth += 1
    elif c in ")]}":
      depth -= 1
  return depth


class GinValues:
  """Bindings of a gin file, looked up by name without executing gin.

  Args:
    text: the file's text.
  """

  def __init__(self, text: str):
    self.bindings: dict[str, str] = {}
    block = None
    pending = ""
    for raw in text.splitlines():
      line = _strip_comment(raw).rstrip()
      if not line.strip() and not pending:
        continue
      pending = f"{pending}\n{line}" if pending else line
      if _depth(pending) > 0:
        continue
      statement, pending = pending, ""
      indented = statement[:1].isspace()
      stripped = statement.strip()
      if stripped.startswith(("include ", "import ", "from ")):
        continue
      m = _BLOCK.match(stripped)
      if m and not indented:
        block = m.group(1)
        continue
      m = _BINDING.match(stripped)
      if not m:
        continue
      key, value = m.group(1), m.group(2).strip()
      if indented and block:
        key = f"{block}.{key}"
      elif not indented:
        block = None
      self.bindings[key] = value

  @classmethod
  def read(cls, path: str | pathlib.Path) -> GinValues:
    """Parses the file at `path`.

    Args:
      path: a gin file.

    Returns:
      The bindings.
    """
    return cls(pathlib.Path(path).read_text())

  def _raw(self, name: str) -> str | None:
    if name in self.bindings:
      return self.bindings[name]
    # `scope/Class.param` or `module.Class.param` bound under another prefix.
    for key, value in self.bindings.items():
      bare = key.split("/")[-1]
      if bare == name or bare.endswith("." + name):
        return value
    return None

  def get(self, *names: str, default: Any = None) -> Any:
    """The value of the first of `names` that is bound (macros resolved), else `default`.

    Args:
      *names: binding names, e.g. 'T5Config.emb_dim', 'EMBED_DIM'; a name matches keys that
        end with it after a '.' or a scope.
      default: returned when none is bound (or the value is a reference `@...`).

    Returns:
      The Python value (`ast.literal_eval`), or the raw text when it is not a literal.
    """
    for name in names:
      value = self._resolve(name, set())
      if value is not _NOT_FOUND:
        return value
    return default

  def _resolve(self, name: str, seen: set[str]) -> Any:
    raw = self._raw(name)
    if raw is None or name in seen:
      return _NOT_FOUND
    if raw.startswith("%"):
      return self._resolve(raw[1:].strip(), seen | {name})
    if raw.startswith("@"):
      return _NOT_FOUND
    try:
      return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      return raw


_ACTIVATION_NAMES = {"swish": "silu"}


def _layer_count(shapes: Mapping[str, tuple], stack: str, norm: str) -> int:
  pattern = re.compile(rf"^{stack}/layers_(\d+)/{norm}/scale$")
  return sum(1 for n in shapes if pattern.match(n))


def infer_config(
  shapes: Mapping[str, tuple[int, ...]], gin: GinValues | None = None, **overrides
) -> tuple[network.TransformerConfig, dict[str, str]]:
  """The `TransformerConfig` of a T5X checkpoint.

  Args:
    shapes: `{t5x_ext unscanned name: shape}` (from `names.source_views`).
    gin: the checkpoint's `config.gin` bindings, if one was found.
    **overrides: `TransformerConfig` fields that win over both (e.g. `dtype`,
      `scan_layers`, `dropout_rate`, `activations`).

  Returns:
    `(config, notes)`: notes say where the activation, max_distance and dropout came from.

  Raises:
    ValueError: when a parameter the network needs is absent, or the gin file contradicts a
      shape (naming the binding, its value and the shape).
  """
  need = {
    "token_embedder/embedding": "the token embedding",
    "encoder/relpos_bias/rel_embedding": "the encoder's relative-position table",
    "encoder/layers_0/attention/query/kernel": "layer 0's attention",
    "encoder/layers_0/mlp/wo/kernel": "layer 0's MLP",
  }
  for name, what in need.items():
    if name not in shapes:
      raise UserError(
        f"{what} ({name}) is not in the checkpoint: is it a T5/UL2 encoder-decoder? "
        "(decoder-only T5X checkpoints are not supported)"
      )
  vocab, emb = shapes["token_embedder/embedding"]
  heads, buckets = shapes["encoder/relpos_bias/rel_embedding"]
  head_dim = shapes["encoder/layers_0/attention/query/kernel"][-1]
  mlp = shapes["encoder/layers_0/mlp/wo/kernel"][0]
  gated = "encoder/layers_0/mlp/wi_0/kernel" in shapes
  fields: dict[str, Any] = dict(
    vocab_size=vocab,
    emb_dim=emb,
    num_heads=heads,
    head_dim=head_dim,
    mlp_dim=mlp,
    num_encoder_layers=_layer_count(shapes, "encoder", "pre_attention_layer_norm"),
    num_decoder_layers=_layer_count(shapes, "decoder", "pre_self_attention_layer_norm"),
    logits_via_embedding="logits_dense/kernel" not in shapes,
    relative_attention_num_buckets=buckets,
  )
  notes = {}
  gin = gin or GinValues("")
  checks = {
    "vocab_size": ("T5Config.vocab_size", "NUM_EMBEDDINGS"),
    "emb_dim": ("T5Config.emb_dim", "EMBED_DIM"),
    "num_heads": ("T5Config.num_heads", "NUM_HEADS"),
    "head_dim": ("T5Config.head_dim", "HEAD_DIM"),
    "mlp_dim": ("T5Config.mlp_dim", "MLP_DIM"),
    "num_encoder_layers": ("T5Config.num_encoder_layers", "NUM_ENCODER_LAYERS"),
    "num_decoder_layers": ("T5Config.num_decoder_layers", "NUM_DECODER_LAYERS"),
    "logits_via_embedding": ("T5Config.logits_via_embedding",),
    "relative_attention_num_buckets": ("RelativePositionBiases.num_buckets",),
  }
  for field, keys in checks.items():
    value = gin.get(*keys)
    if value is not None and value != fields[field]:
      raise UserError(
        f"config.gin binds {keys[0] if gin.get(keys[0]) is not None else keys[-1]} = {value!r}, "
        f"but the checkpoint's shapes give {field} = {fields[field]!r}"
      )
  acts = gin.get("T5Config.mlp_activations", "MlpBlock.activations")
  if acts is not None:
    acts = tuple(_ACTIVATION_NAMES.get(a, a) for a in ((acts,) if isinstance(acts, str) else acts))
    notes["activations"] = "config.gin"
  else:
    acts = ("gelu", "linear") if gated else ("relu",)
    notes["activations"] = "default for the MLP's shape (no config.gin binding)"
  if gated != (len(acts) > 1):
    raise UserError(
      f"config.gin's MLP activations {acts!r} do not fit the checkpoint's "
      f"{'gated (wi_0, wi_1)' if gated else 'plain (wi)'} MLP"
    )
  fields["activations"] = acts
  max_distance = gin.get("RelativePositionBiases.max_distance")
  fields["relative_attention_max_distance"] = 128 if max_distance is None else int(max_distance)
  notes["relative_attention_max_distance"] = "default" if max_distance is None else "config.gin"
  dropout = gin.get("T5Config.dropout_rate", "DROPOUT_RATE")
  fields["dropout_rate"] = 0.0 if dropout is None else float(dropout)
  notes["dropout_rate"] = "default" if dropout is None else "config.gin"
  fields.update(overrides)
  for k in overrides:
    notes[k] = "override"
  return network.TransformerConfig(**fields), notes
