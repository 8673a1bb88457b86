"""Tiny Transformers T5 specs and token batches shared by the `t5x_ext.hf` tests."""

import dataclasses

import numpy as np

from t5x_ext.hf import HFT5Spec

VOCAB = 96
# Tiny, with 8 buckets / max distance 20 so that the 40-token inputs reach the
# logarithmic and the clamped buckets of the relative position bias.
T5_1_1 = HFT5Spec(
  vocab_size=VOCAB,
  d_model=32,
  d_ff=48,
  num_heads=4,
  head_dim=8,
  num_encoder_layers=2,
  num_decoder_layers=3,
  activation="gelu",
  gated=True,
  scale_logits=False,
  relative_attention_num_buckets=8,
  relative_attention_max_distance=20,
  dropout_rate=0.0,
)
UL2 = dataclasses.replace(T5_1_1, activation="silu")
T5_1_0 = dataclasses.replace(T5_1_1, activation="relu", gated=False, scale_logits=True)


def tokens(seed, batch=3, inputs=40, targets=24):
  """Random encoder tokens (one row padded) and decoder inputs starting with 0."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, VOCAB, (batch, inputs))
  enc[1, 29:] = 0  # padding in one row
  dec = rng.integers(2, VOCAB, (batch, targets))
  dec[:, 0] = 0  # decoder start token
  return enc, dec
