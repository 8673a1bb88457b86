"""The tiny T5-style network that the network, model and decoding tests share."""

from __future__ import annotations

from t5x_ext.model import network

TINY = dict(
  vocab_size=64,
  emb_dim=32,
  num_heads=4,
  head_dim=8,
  mlp_dim=48,
  num_encoder_layers=1,
  num_decoder_layers=2,
  dtype="float32",
  relative_attention_num_buckets=8,
  relative_attention_max_distance=16,
)


def tiny_config(**overrides) -> network.TransformerConfig:
  """`TINY` with `overrides` applied."""
  return network.TransformerConfig(**{**TINY, **overrides})
