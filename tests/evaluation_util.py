"""A tiny network with the embedded vocabulary, and random params saved where
`checkpointing.restore_params` reads them: checkpoints for the evaluation suite's tests."""

from __future__ import annotations

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from t5x_ext.model import network

CONFIG = network.TransformerConfig(
  vocab_size=8192,
  emb_dim=32,
  num_heads=2,
  head_dim=16,
  mlp_dim=64,
  num_encoder_layers=1,
  num_decoder_layers=1,
  dtype="float32",
  relative_attention_num_buckets=8,
  relative_attention_max_distance=32,
)


def save_random_params(model, path) -> None:
  """Writes a random init of `model` to `path` (an `ocp.StandardCheckpointer` directory)."""
  z = np.zeros((1, 8), np.int32)
  keys = ["decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"]
  if model.feature_converter_name == "EncDecFeatureConverter":
    keys.append("encoder_input_tokens")
  else:
    keys.append("decoder_causal_attention")
  params = flax.linen.unbox(
    model.init_variables(jax.random.key(1), dict.fromkeys(keys, z))["params"]
  )
  with ocp.StandardCheckpointer() as writer:
    writer.save(path, params)
