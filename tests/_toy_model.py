"""A tiny model with the `models.py` interface, for trainer tests that must not depend on
the real networks: embeds decoder inputs, one logically partitioned dense layer, logits."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class _Net(nn.Module):
  vocab: int = 32
  dim: int = 16

  @nn.compact
  def __call__(self, tokens):
    emb = self.param(
      "embedding",
      nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
      (self.vocab, self.dim),
    )
    w = self.param(
      "out",
      nn.with_logical_partitioning(nn.initializers.normal(0.3), ("embed", "vocab")),
      (self.dim, self.vocab),
    )
    return jnp.take(emb, tokens, axis=0) @ w


class ToyModel:
  """Predicts each target token from the decoder input token at the same position."""

  feature_converter_name = "EncDecFeatureConverter"

  def __init__(self, vocab: int = 32, dim: int = 16, nan_after: float | None = None):
    self.net = _Net(vocab, dim)
    self.vocab = vocab
    self.nan_after = nan_after

  def init_variables(self, rng, batch):
    return self.net.init(rng, jnp.asarray(batch["decoder_input_tokens"]))

  def loss_fn(self, params, batch, dropout_rng):
    del dropout_rng
    logits = self.net.apply({"params": params}, batch["decoder_input_tokens"]).astype(jnp.float32)
    targets = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    ce = logz - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    z = 1e-4 * logz**2
    token_loss = (ce + z) * weights
    num = weights.sum()
    loss = token_loss.sum() / jnp.maximum(num, 1.0)
    if self.nan_after is not None:
      # A loss that turns NaN once the output weights grow: simulates divergence.
      loss = jnp.where(jnp.abs(params["out"]).max() > self.nan_after, jnp.nan, loss)
    aux = {
      "loss_sum": token_loss.sum(),
      "z_loss_sum": (z * weights).sum(),
      "correct": ((logits.argmax(-1) == targets) * weights).sum(),
      "num_tokens": num,
      "token_loss": token_loss,
    }
    return loss, aux

  def flops_per_token(self, lengths):
    return 6.0 * 2 * self.vocab * 16


def toy_batch(batch_size: int = 8, length: int = 6, num_denoisers: int = 3, seed: int = 0):
  """A numpy batch with decoder features and `decoder_denoiser_ids` (some padding)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 32, size=(batch_size, length)).astype(np.int32)
  weights = np.ones((batch_size, length), np.int32)
  weights[:, -1] = 0
  ids = (np.arange(batch_size)[:, None] % num_denoisers + 1) * weights
  return {
    "decoder_input_tokens": tokens,
    "decoder_target_tokens": (tokens * 7 + 3) % 32,
    "decoder_loss_weights": weights,
    "decoder_denoiser_ids": ids.astype(np.int32),
  }
