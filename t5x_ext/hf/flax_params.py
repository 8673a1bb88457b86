"""Per-layer Transformers T5 weights -> the parameter tree of `t5x_ext.model.network`.

`spec_to_config` chooses the `TransformerConfig` that reproduces a Transformers T5, and
`to_flax_params` fills that network's parameter tree (layout in `t5x_ext.model.network`'s
docstring). The output layer follows `HFT5Spec`:

| Transformers checkpoint                 | here                                         |
|-----------------------------------------|----------------------------------------------|
| T5 1.0: tied, decoder output scaled     | `logits_via_embedding=True` (scales the same) |
| T5.1.1 / UL2: own `lm_head.weight`      | `logits_dense/kernel` = lm_head.T             |
| Transformers 5 save of T5.1.1/UL2 (tied | `logits_dense/kernel` = embedding.T (a copy  |
| in memory, no scaling)                  | that fine-tuning then trains separately)     |
| untied but scaled (unusual)             | `logits_dense/kernel` with the scale folded  |
"""

from __future__ import annotations

import numpy as np

from t5x_ext.hf import names
from t5x_ext.hf.hf_config import HFT5Spec
from t5x_ext.hf.hf_weights import fold_logit_scale
from t5x_ext.model import network

# The second activation of a gated MLP (T5.1.1: ('gelu', 'linear')).
_GATED_SECOND = "linear"


def activations_for(spec: HFT5Spec) -> tuple[str, ...]:
  """`TransformerConfig.activations` for a spec: ('relu',), ('gelu', 'linear'), ..."""
  return (spec.activation, _GATED_SECOND) if spec.gated else (spec.activation,)


def ties_logits(spec: HFT5Spec, weights: dict | None) -> bool:
  """Whether the network can use its tied, scaled output layer (T5 1.0) for `spec`.

  Args:
    spec: the parsed config.
    weights: from `hf_weights.canonical_weights`, or None to decide from the config alone
      (a config that scales the decoder output is taken to be tied).

  Returns:
    True for `logits_via_embedding=True`.
  """
  if not spec.scale_logits:
    return False
  return weights is None or weights["logits_kernel"] is None


def spec_to_config(spec: HFT5Spec, *, tied: bool, **overrides) -> network.TransformerConfig:
  """The `TransformerConfig` that computes what the Transformers model computes.

  Args:
    spec: the parsed config.
    tied: see `ties_logits`.
    **overrides: other `TransformerConfig` fields (e.g. `dtype`, `scan_layers`,
      `dropout_rate`, `remat_policy`).

  Returns:
    The config (validated by `TransformerConfig` itself).
  """
  fields = dict(
    vocab_size=spec.vocab_size,
    emb_dim=spec.d_model,
    num_heads=spec.num_heads,
    head_dim=spec.head_dim,
    mlp_dim=spec.d_ff,
    num_encoder_layers=spec.num_encoder_layers,
    num_decoder_layers=spec.num_decoder_layers,
    activations=activations_for(spec),
    logits_via_embedding=tied,
    dropout_rate=spec.dropout_rate,
    dtype="float32",
    relative_attention_num_buckets=spec.relative_attention_num_buckets,
    relative_attention_max_distance=spec.relative_attention_max_distance,
    layer_norm_epsilon=spec.layer_norm_epsilon,
  )
  fields.update(overrides)
  return network.TransformerConfig(**fields)


def config_to_spec(config: network.TransformerConfig) -> HFT5Spec:
  """The Transformers T5 with the dimensions of an encoder-decoder `TransformerConfig`.

  Used to build the PyTorch reference of the benchmarks and tests.

  Args:
    config: an encoder-decoder config whose activations Transformers can express.

  Returns:
    The spec.

  Raises:
    ValueError: for decoder-only configs and activations Transformers' T5 lacks.
  """
  if config.decoder_only:
    raise ValueError("TransformerConfig.decoder_only=True has no Transformers T5 counterpart")
  acts = tuple(config.activations)
  if len(acts) == 1:
    activation, gated = acts[0], False
  elif len(acts) == 2 and acts[1] == _GATED_SECOND:
    activation, gated = acts[0], True
  else:
    raise ValueError(
      f"TransformerConfig.activations={acts!r} has no Transformers T5 counterpart "
      "(one activation, or (ACT, 'linear'))"
    )
  if activation not in ("relu", "gelu", "gelu_exact", "silu"):
    raise ValueError(
      f"TransformerConfig.activations={acts!r}: {activation!r} not in Transformers T5"
    )
  return HFT5Spec(
    vocab_size=config.vocab_size,
    d_model=config.emb_dim,
    d_ff=config.mlp_dim,
    num_heads=config.num_heads,
    head_dim=config.head_dim,
    num_encoder_layers=config.num_encoder_layers,
    num_decoder_layers=config.num_decoder_layers,
    activation=activation,
    gated=gated,
    scale_logits=config.logits_via_embedding,
    relative_attention_num_buckets=config.relative_attention_num_buckets,
    relative_attention_max_distance=config.relative_attention_max_distance,
    layer_norm_epsilon=config.layer_norm_epsilon,
    dropout_rate=config.dropout_rate,
  )


def to_flax_params(
  weights: dict, spec: HFT5Spec, config: network.TransformerConfig
) -> dict[str, dict]:
  """Fills the parameter tree of `network.EncoderDecoder(config)` with imported weights.

  Args:
    weights: from `hf_weights.canonical_weights`.
    spec: the parsed config.
    config: from `spec_to_config` (its `param_dtype` is the dtype of the result; its
      `scan_layers` picks the stacked layout).

  Returns:
    The 'params' collection as nested dicts of numpy arrays.
  """
  dt = config.params_dtype  # a numpy dtype, bfloat16 included (ml_dtypes)
  flat = dict(weights["params"])
  if not config.logits_via_embedding:
    flat[names.LOGITS_PATH] = fold_logit_scale(weights, spec)
  params: dict = {}
  for path, value in flat.items():
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.asarray(value, dt)
  if config.scan_layers:
    params = network.stack_layer_params(params)
  return params
