"""Tiny T5X checkpoints written by the tests themselves (no download, no t5x install)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from tiny_network import tiny_config

from t5x_ext.model import models, network
from t5x_ext.t5x_ckpt import names, t5x_format

# The tiny network with UL2's gated SiLU MLP; 16 is its relative-position max distance,
# which only a config.gin can tell the reader.
UL2_TINY = dict(activations=("silu", "linear"))

# What T5X writes to MODEL_DIR/config.gin, in the two namings' styles (operative configs).
FLAXFORMER_GIN = """\
from __gin__ import dynamic_registration
from flaxformer.components import dense
# Architecture overrides
NUM_ENCODER_LAYERS = 1
NUM_DECODER_LAYERS = 2
NUM_HEADS = 4
HEAD_DIM = 8
EMBED_DIM = 32
MLP_DIM = 48
NUM_EMBEDDINGS = 64  # vocab, rounded
DROPOUT_RATE = 0.0
dense.MlpBlock.activations = ('swish', 'linear')
relative_position_biases.RelativePositionBiases:
  num_buckets = 8
  max_distance = 16
  num_heads = %NUM_HEADS
t5_architecture.Encoder.num_layers = %NUM_ENCODER_LAYERS
"""

T5X_GIN = """\
network.T5Config.vocab_size = 64
network.T5Config.emb_dim = 32
network.T5Config.num_heads = 4
network.T5Config.head_dim = 8
network.T5Config.mlp_dim = 48
network.T5Config.num_encoder_layers = 1
network.T5Config.num_decoder_layers = 2
network.T5Config.mlp_activations = (
    'silu',
    'linear',
)
network.T5Config.dropout_rate = 0.1
network.T5Config.logits_via_embedding = False
RelativePositionBiases.max_distance = 16
"""


def random_params(config, seed=0) -> dict:
  """Random numpy params (float32) with the tree of `network.EncoderDecoder(config)`.

  Drawn with numpy from the abstract tree: no initialiser is compiled (tests stay fast).
  """
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda x: rng.normal(0.0, 0.5, x.shape).astype(np.float32), abstract_params(config)
  )


def write_fixture(model_dir, params, *, step=100, naming="t5x", dtype=None, gin=None, **kw):
  """Writes `params` as a T5X checkpoint under `model_dir` (with a config.gin if given).

  Returns:
    The step directory.
  """
  if dtype == "bfloat16":
    params = jax.tree.map(lambda x: np.asarray(x, ml_dtypes.bfloat16), params)
  stored = names.to_t5x_names(params, naming=naming, **kw)
  path = t5x_format.write_checkpoint(model_dir, step, stored)
  if gin is not None:
    (path.parent / "config.gin").write_text(gin)
  return path


def batch(vocab=64, seed=3):
  """Encoder/decoder tokens for logits comparisons."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab, size=(2, 7)).astype(np.int32)
  dec = rng.integers(2, vocab, size=(2, 5)).astype(np.int32)
  return enc, dec


def abstract_params(config) -> dict:
  """Unboxed `jax.ShapeDtypeStruct` params (float32) of `models.EncoderDecoderModel(config)`."""
  tokens = jnp.ones((1, 4), jnp.int32)
  return nn.unbox(
    jax.eval_shape(
      lambda: network.EncoderDecoder(config).init(jax.random.key(0), tokens, tokens, tokens)
    )["params"]
  )


def logits(config, params):
  """`EncoderDecoderModel(config).logits` on `batch()` as numpy."""
  enc, dec = batch(config.vocab_size)
  return np.asarray(models.EncoderDecoderModel(config).logits(params, enc, dec))


__all__ = [
  "FLAXFORMER_GIN",
  "T5X_GIN",
  "UL2_TINY",
  "abstract_params",
  "batch",
  "logits",
  "random_params",
  "tiny_config",
  "write_fixture",
]
