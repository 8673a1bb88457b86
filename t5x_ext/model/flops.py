"""Model FLOPs: the matmul count of a forward pass and of a training step.

MFU's numerator. It lives on the model floor so `BaseModel.flops_per_token` and the
training side (`t5x_ext.training.flops`, which re-exports it beside the peak table) share
one count.

**The count** (as T5X/MaxText and PaLM's appendix B count it): the matrix multiplications of
a forward pass, 2 FLOPs per multiply-add, and 6x for a training step (2 forward + 4
backward: the backward pass multiplies by the weights' and the activations' transposes).
Per layer and token: the q, k, v, o projections, the MLP (one input matrix per activation,
so a gated MLP has two), and the attention itself, logits `q . k` and the weighted sum of
the values, over every key (the whole score matrix: XLA computes it whole and masks it, so a
causal mask is not halved). The decoder of an encoder-decoder adds cross-attention: q and o
on decoder positions, k and v once per encoder position, logits and values over the encoder
positions. Then the output layer (`emb_dim x vocab_size`) on every decoder position. Not
counted: embedding lookups (a gather), the relative-position bias, norms, softmax,
activations, the loss, the optimizer. Padding positions count: they are what the chips
compute (the same convention as `tokens_per_s`).

Shape key: I encoder (inputs) length, T targets length, L decoder length, D emb_dim,
HE num_heads x head_dim, F mlp_dim, A activations, V vocab_size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def decoder_length(config: Any, lengths: Mapping[str, int]) -> int:
  """Decoder positions per row: targets, or inputs + targets for a decoder-only network.

  Args:
    config: a `TransformerConfig`.
    lengths: {"inputs": I, "targets": T} ("inputs" may be absent for a causal LM).

  Returns:
    L, the length of `decoder_target_tokens`.
  """
  targets = int(lengths["targets"])
  return int(lengths.get("inputs", 0)) + targets if config.decoder_only else targets


def forward_flops_per_example(config: Any, lengths: Mapping[str, int]) -> float:
  """Matmul FLOPs of one forward pass over one row at these lengths.

  Args:
    config: a `TransformerConfig`.
    lengths: {"inputs": I, "targets": T} task feature lengths.

  Returns:
    FLOPs (2 per multiply-add); see the module docstring for what is counted.
  """
  d, f, v = config.emb_dim, config.mlp_dim, config.vocab_size
  he = config.num_heads * config.head_dim
  mlp = len(config.activations) * d * f + f * d  # multiply-adds per token
  qkvo = 4 * d * he

  def layer(keys: int) -> int:  # one self-attention layer, per token
    return qkvo + mlp + 2 * keys * he  # logits and values: keys x HE each

  length = decoder_length(config, lengths)
  if config.decoder_only:
    macs = length * (config.num_decoder_layers * layer(length) + d * v)
    return 2.0 * macs
  inputs = int(lengths.get("inputs", 0))
  enc = inputs * config.num_encoder_layers * layer(inputs)
  cross = config.num_decoder_layers * (
    length * (2 * d * he + 2 * inputs * he)  # q, o; logits and values over I keys
    + inputs * 2 * d * he  # k, v: once per encoder position
  )
  dec = length * (config.num_decoder_layers * layer(length) + d * v)
  return 2.0 * (enc + cross + dec)


def training_flops_per_example(config: Any, lengths: Mapping[str, int]) -> float:
  """Training FLOPs of one row: 3x the forward pass (backward = 2x forward).

  Args:
    config: a `TransformerConfig`.
    lengths: task feature lengths.

  Returns:
    FLOPs.
  """
  return 3.0 * forward_flops_per_example(config, lengths)


def flops_per_token(config: Any, lengths: Mapping[str, int]) -> float:
  """Training FLOPs per decoder position (the encoder's share included).

  The meaning of `model.flops_per_token`: multiply by batch x decoder length (targets for
  an encoder-decoder, inputs + targets for a decoder-only network) for a step.

  Args:
    config: a `TransformerConfig`.
    lengths: task feature lengths.

  Returns:
    FLOPs per decoder position.
  """
  return training_flops_per_example(config, lengths) / decoder_length(config, lengths)


def training_flops_per_step(config: Any, lengths: Mapping[str, int], batch_size: int) -> float:
  """Training FLOPs of one step of `batch_size` rows (global, all devices).

  Args:
    config: a `TransformerConfig`.
    lengths: task feature lengths (the batch's row lengths).
    batch_size: global rows per step.

  Returns:
    FLOPs.
  """
  return training_flops_per_example(config, lengths) * int(batch_size)
