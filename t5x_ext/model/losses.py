"""Token-level cross entropy with z-loss and label smoothing, and loss normalisation.

Shape key: B batch, T target length, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Loss normalising factors (T5X names). The loss that is differentiated is
# `sum(token_loss * weights') / factor`.
NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"  # factor = sum of loss weights
NUM_TOTAL_TARGET_TOKENS = "NUM_TOTAL_TARGET_TOKENS"  # factor = B * T, padding included
AVERAGE_PER_SEQUENCE = "AVERAGE_PER_SEQUENCE"  # every (packed) sequence weighs the same
SPECIAL_FACTORS = (NUM_REAL_TARGET_TOKENS, NUM_TOTAL_TARGET_TOKENS, AVERAGE_PER_SEQUENCE)


def check_normalizing_factor(factor) -> None:
  """Fails early on an unusable `loss_normalizing_factor`.

  Args:
    factor: None, one of SPECIAL_FACTORS, or a positive number.

  Raises:
    ValueError: naming the bad value.
  """
  if factor is None or factor in SPECIAL_FACTORS:
    return
  if isinstance(factor, bool) or not isinstance(factor, int | float | np.number) or factor <= 0:
    raise ValueError(
      f"loss_normalizing_factor={factor!r}: expected None, a positive number or one of "
      f"{SPECIAL_FACTORS}"
    )


def cross_entropy_with_z_loss(
  logits_BTV: Array, targets_BT: Array, *, z_loss: float = 0.0, label_smoothing: float = 0.0
) -> tuple[Array, Array, Array]:
  """Per-token cross entropy (optionally label-smoothed) plus `z_loss * log(Z)^2`.

  With label smoothing `s`, the target distribution puts `1 - s` on the target and
  `s / (V - 1)` on every other token; the entropy of that distribution is subtracted so
  that a perfect prediction has loss 0 (as in T5X).

  Args:
    logits_BTV: float logits.
    targets_BT: int target ids.
    z_loss: coefficient of the log-partition penalty (UL2 and PaLM use 1e-4).
    label_smoothing: in [0, 1).

  Returns:
    (total [B, T] = cross entropy + z-loss, z-loss part [B, T], log-likelihood of the
    target [B, T] without smoothing or z-loss) as float32.
  """
  logits_BTV = logits_BTV.astype(jnp.float32)
  vocab = logits_BTV.shape[-1]
  log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  target_logp_BT = target_logit_BT - log_z_BT
  if label_smoothing > 0.0:
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    # sum_v log p_v, without materialising a one-hot [B, T, V] target.
    sum_logp_BT = jnp.sum(logits_BTV, axis=-1) - vocab * log_z_BT
    cross_BT = -(confidence * target_logp_BT + low * (sum_logp_BT - target_logp_BT))
    entropy = -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low + 1e-20))
    cross_BT = cross_BT - entropy
  else:
    cross_BT = -target_logp_BT
  z_BT = z_loss * jnp.square(log_z_BT)
  return cross_BT + z_BT, z_BT, target_logp_BT


def normalize(
  token_loss_BT: Array, weights_BT: Array, segment_ids_BT: Array | None, factor
) -> Array:
  """The scalar training loss from weighted per-token losses.

  Args:
    token_loss_BT: per-token loss, already multiplied by `weights_BT`.
    weights_BT: loss weights (0 on padding and on non-target tokens).
    segment_ids_BT: packing segment ids (AVERAGE_PER_SEQUENCE only), or None.
    factor: None or NUM_REAL_TARGET_TOKENS (mean over real target tokens; T5X's None
      means an unnormalised sum, which makes the learning rate depend on batch size, so
      this project's None is the per-token mean), NUM_TOTAL_TARGET_TOKENS, AVERAGE_PER_SEQUENCE
      (each sequence's mean, averaged over the sequences that have targets), or a constant.

  Returns:
    float32 scalar loss.
  """
  check_normalizing_factor(factor)
  weights_BT = weights_BT.astype(jnp.float32)
  if factor is None or factor == NUM_REAL_TARGET_TOKENS:
    return jnp.sum(token_loss_BT) / jnp.maximum(jnp.sum(weights_BT), 1.0)
  if factor == NUM_TOTAL_TARGET_TOKENS:
    return jnp.sum(token_loss_BT) / token_loss_BT.size
  if factor == AVERAGE_PER_SEQUENCE:
    if segment_ids_BT is None:
      segment_ids_BT = jnp.ones(weights_BT.shape, jnp.int32)
    # Per row, tokens of segment s share the weight 1 / (number of weighted tokens in s).
    same_BTT = segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
    count_BT = jnp.einsum("bts,bs->bt", same_BTT.astype(jnp.float32), weights_BT)
    per_token_BT = jnp.where(weights_BT > 0, 1.0 / jnp.maximum(count_BT, 1e-9), 0.0)
    # Each token of a counted sequence contributes 1/count, so this sums to the number
    # of sequences with at least one target.
    num_sequences = jnp.sum(per_token_BT * weights_BT)
    return jnp.sum(token_loss_BT * per_token_BT) / jnp.maximum(num_sequences, 1.0)
  return jnp.sum(token_loss_BT) / jnp.float32(factor)
