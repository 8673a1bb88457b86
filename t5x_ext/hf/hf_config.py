"""Parses and checks a Transformers T5 `config.json`.

Transformers describes one T5 family with a few fields whose meaning shifted between
versions; `HFT5Spec` is what they mean for the network, whichever version wrote them:

- `feed_forward_proj`: `relu` (T5 1.0), `gated-gelu` (T5.1.1; Transformers maps it to the
  tanh approximation of GELU, as Mesh TensorFlow did), `gated-silu` (UL2), and the other
  `[gated-]ACT` forms listed in `_ACTIVATIONS`.
- Logit scaling: T5 1.0 ties the output layer to the input embedding and multiplies the
  decoder output by `d_model ** -0.5`; T5.1.1 and UL2 have an untied output layer and no
  scaling. Transformers 4.x wrote this as `tie_word_embeddings`; Transformers 5.x always ties
  the weights in memory and records the scaling as `scale_decoder_outputs`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from t5x_ext.errors import UserError

CONFIG_FILE = "config.json"

# Transformers activation name (after `gated-`) -> (activation name used in this project,
# whether it is the tanh approximation of GELU). Transformers' "gelu" is the exact (erf)
# GELU, while "gated-gelu" is special-cased to "gelu_new" (tanh); see `parse_hf_config`.
_ACTIVATIONS = {
  "relu": "relu",
  "gelu_new": "gelu",
  "gelu_pytorch_tanh": "gelu",
  "silu": "silu",
  "swish": "silu",
  "gelu": "gelu_exact",
  "gelu_python": "gelu_exact",
}

# This project's activation -> Transformers' `feed_forward_proj` (plain, gated). Gated exact
# GELU cannot be written `gated-gelu` (Transformers reads that as the tanh GELU).
_FEED_FORWARD_PROJ = {
  "relu": ("relu", "gated-relu"),
  "gelu": ("gelu_new", "gated-gelu"),
  "gelu_exact": ("gelu", "gated-gelu_python"),
  "silu": ("silu", "gated-silu"),
}


@dataclasses.dataclass(frozen=True)
class HFT5Spec:
  """What a Transformers T5 config means for the network.

  Attributes:
    vocab_size: rows of the embedding table.
    d_model: width of the residual stream.
    d_ff: hidden width of the feed-forward block.
    num_heads: attention heads.
    head_dim: width of each head (`d_kv`).
    num_encoder_layers: encoder blocks.
    num_decoder_layers: decoder blocks.
    activation: `relu`, `gelu` (tanh approximation), `gelu_exact` or `silu`.
    gated: whether the feed-forward block is gated (`wi_0`, `wi_1`) or not (`wi`).
    scale_logits: whether the decoder output is multiplied by `d_model ** -0.5` before the
      output layer (T5 1.0).
    relative_attention_num_buckets: relative position buckets.
    relative_attention_max_distance: distance beyond which positions share a bucket.
    layer_norm_epsilon: RMSNorm epsilon.
    dropout_rate: dropout rate recorded in the config.
    pad_token_id: padding id (also the decoder start id in T5).
    eos_token_id: end-of-sequence id.
    decoder_start_token_id: first decoder input token.
    dtype: dtype recorded in the config, if any (e.g. `float32`, `bfloat16`).
  """

  vocab_size: int
  d_model: int
  d_ff: int
  num_heads: int
  head_dim: int
  num_encoder_layers: int
  num_decoder_layers: int
  activation: str
  gated: bool
  scale_logits: bool
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dropout_rate: float = 0.1
  pad_token_id: int = 0
  eos_token_id: int = 1
  decoder_start_token_id: int = 0
  dtype: str | None = None


def _activation(feed_forward_proj: object) -> tuple[str, bool]:
  """Maps `feed_forward_proj` to (activation, gated), failing clearly on anything else."""
  if not isinstance(feed_forward_proj, str):
    raise UserError(f"feed_forward_proj={feed_forward_proj!r} is not a string")
  parts = feed_forward_proj.split("-", 1)
  gated = len(parts) == 2
  if gated and parts[0] != "gated":
    raise UserError(
      f"feed_forward_proj={feed_forward_proj!r} is not of the form 'ACT' or 'gated-ACT'"
    )
  name = parts[-1]
  if feed_forward_proj == "gated-gelu":
    name = "gelu_new"  # Transformers' special case: T5.1.1 checkpoints use the tanh GELU.
  if name not in _ACTIVATIONS:
    known = sorted({"relu", "gated-gelu", "gated-silu"} | {f"gated-{a}" for a in _ACTIVATIONS})
    raise UserError(
      f"feed_forward_proj={feed_forward_proj!r} is not supported; known forms: {known}"
    )
  return _ACTIVATIONS[name], gated


def _scale_logits(cfg: dict) -> bool:
  """Whether the decoder output is scaled by d_model**-0.5 (see the module docstring)."""
  if "scale_decoder_outputs" in cfg:
    return bool(cfg["scale_decoder_outputs"])
  return cfg.get("tie_word_embeddings", True) is not False


def _positive_int(cfg: dict, key: str, default: int | None = None) -> int:
  value = cfg.get(key, default)
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise UserError(f"config.json {key}={value!r} must be a positive integer")
  return value


def parse_hf_config(cfg: dict) -> HFT5Spec:
  """Turns the dict of a Transformers T5 `config.json` into an `HFT5Spec`.

  Args:
    cfg: the parsed JSON.

  Returns:
    The spec.

  Raises:
    ValueError: for a model type other than T5 encoder-decoder, an unknown
      `feed_forward_proj`, or missing/non-positive sizes.
  """
  model_type = cfg.get("model_type", "t5")
  if model_type not in ("t5", "mt5", "umt5"):
    raise UserError(f"config.json model_type={model_type!r} is not a T5 model (expected 't5')")
  if model_type == "umt5":
    # umT5 gives every layer its own relative position bias; this import expects T5's
    # single bias table in the first layer.
    raise UserError("config.json model_type='umt5' (per-layer position bias) is not supported")
  if cfg.get("is_encoder_decoder", True) is not True:
    raise UserError(
      f"config.json is_encoder_decoder={cfg.get('is_encoder_decoder')!r}: only "
      "T5ForConditionalGeneration checkpoints are supported"
    )
  activation, gated = _activation(cfg.get("feed_forward_proj", "relu"))
  num_layers = _positive_int(cfg, "num_layers", 6)
  num_decoder_layers = cfg.get("num_decoder_layers")
  eos = cfg.get("eos_token_id", 1)
  if isinstance(eos, list):
    eos = eos[0]
  pad = cfg.get("pad_token_id", 0)
  pad = 0 if pad is None else pad
  start = cfg.get("decoder_start_token_id", pad)
  return HFT5Spec(
    vocab_size=_positive_int(cfg, "vocab_size", 32128),
    d_model=_positive_int(cfg, "d_model", 512),
    d_ff=_positive_int(cfg, "d_ff", 2048),
    num_heads=_positive_int(cfg, "num_heads", 8),
    head_dim=_positive_int(cfg, "d_kv", 64),
    num_encoder_layers=num_layers,
    num_decoder_layers=num_layers if num_decoder_layers is None else num_decoder_layers,
    activation=activation,
    gated=gated,
    scale_logits=_scale_logits(cfg),
    relative_attention_num_buckets=_positive_int(cfg, "relative_attention_num_buckets", 32),
    relative_attention_max_distance=_positive_int(cfg, "relative_attention_max_distance", 128),
    layer_norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-6)),
    dropout_rate=float(cfg.get("dropout_rate", 0.1)),
    pad_token_id=int(pad),
    eos_token_id=int(eos if eos is not None else 1),
    decoder_start_token_id=int(pad if start is None else start),
    dtype=cfg.get("dtype", cfg.get("torch_dtype")),
  )


def read_hf_config(directory: str | pathlib.Path) -> HFT5Spec:
  """Reads and parses `config.json` from a Transformers checkpoint directory.

  Args:
    directory: a directory written by `save_pretrained`.

  Returns:
    The spec.

  Raises:
    FileNotFoundError: when the directory has no `config.json`.
    ValueError: see `parse_hf_config`.
  """
  path = pathlib.Path(directory) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"hf_dir={str(directory)!r} has no {CONFIG_FILE}")
  return parse_hf_config(json.loads(path.read_text()))


def to_hf_config(spec: HFT5Spec) -> dict:
  """The Transformers T5 `config.json` fields that describe `spec` (inverse of `parse_hf_config`).

  Args:
    spec: the network.

  Returns:
    A dict for `transformers.T5Config(**d)` or `config.json`: `feed_forward_proj` (`relu`,
    `gated-gelu`, `gated-silu`, ...), `tie_word_embeddings` (True: the tied, scaled output
    layer of T5 1.0; False: T5.1.1/UL2's own `lm_head`), dimensions, relative attention
    settings and special ids.
  """
  if spec.activation not in _FEED_FORWARD_PROJ:
    raise UserError(f"activation={spec.activation!r} has no Transformers T5 feed_forward_proj")
  return {
    "vocab_size": spec.vocab_size,
    "d_model": spec.d_model,
    "d_kv": spec.head_dim,
    "d_ff": spec.d_ff,
    "num_layers": spec.num_encoder_layers,
    "num_decoder_layers": spec.num_decoder_layers,
    "num_heads": spec.num_heads,
    "relative_attention_num_buckets": spec.relative_attention_num_buckets,
    "relative_attention_max_distance": spec.relative_attention_max_distance,
    "dropout_rate": spec.dropout_rate,
    "layer_norm_epsilon": spec.layer_norm_epsilon,
    "feed_forward_proj": _FEED_FORWARD_PROJ[spec.activation][int(spec.gated)],
    "tie_word_embeddings": spec.scale_logits,
    "pad_token_id": spec.pad_token_id,
    "eos_token_id": spec.eos_token_id,
    "decoder_start_token_id": spec.decoder_start_token_id,
  }
