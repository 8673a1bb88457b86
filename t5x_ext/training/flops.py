"""Model FLOPs and the devices' peak FLOP/s: the two halves of MFU.

MFU (model FLOPs utilisation) = the model FLOPs a step needs / step time / the peak FLOP/s
of every device that ran it. Both halves live here, once, for the trainer, the progress bar,
TensorBoard and `bench/`.

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

**The peaks**: dense (no sparsity) bf16 FLOP/s per device *as JAX counts devices*: a TPU v2
or v3 chip is two devices (one per TensorCore), so half the chip's figure; TPU v4 and later
(megacore) and every GPU are one device per chip. The trainer multiplies by
`jax.device_count()`. Unknown kinds (CPUs included) have no peak and so no MFU; give one
with `PEAK_FLOPS_PER_DEVICE` (`train.peak_flops_per_device`).

Shape key: I encoder (inputs) length, T targets length, L decoder length, D emb_dim,
HE num_heads x head_dim, F mlp_dim, A activations, V vocab_size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# ------------------------------------------------------------------------------ peaks

# (pattern on the lower-cased `device_kind`, fully matched; dense bf16 FLOP/s per JAX
# device). The vendors' figures, without sparsity:
#   Google Cloud TPU system architecture pages (peak bf16 per chip): v2 45 T, v3 123 T (two
#     TensorCores, each a JAX device: 22.5 T and 61.5 T per device), v4 275 T, v5e 197 T,
#     v5p 459 T, v6e (Trillium) 918 T.
#   NVIDIA data sheets (BF16 Tensor Core, the dense figure is half the "with sparsity" one):
#     A100 (SXM4 and PCIe, 40 and 80 GB) 312 T; H100 SXM5 989 T (1,979 sparse); H100 PCIe
#     756 T (1,513 sparse); H200 SXM 989 T (1,979 sparse, the H100 SXM's compute); GH200 the
#     same 989 T; B200 2.25 P (4.5 P sparse; HGX/DGX B200); L4 121 T (242 sparse).
# JAX reports TPUs as "TPU v4", "TPU v5 lite" (v5e), "TPU v5" or "TPU v5p" (v5p), "TPU v6
# lite" (v6e); GPUs by their CUDA name: "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"
# (SXM), "NVIDIA H100 PCIe", "NVIDIA H200", "NVIDIA B200", "NVIDIA L4". Variants whose
# figure differs and is not listed here (H100/H200 NVL, TPU v4 lite, L40S, ...) match
# nothing on purpose: no MFU is better than a wrong one.
PEAK_FLOPS_PER_DEVICE = (
  (r"tpu v2", 45e12 / 2),
  (r"tpu v3", 123e12 / 2),
  (r"tpu v4", 275e12),
  (r"tpu v5 ?lite|tpu v5e", 197e12),
  (r"tpu v5p?", 459e12),
  (r"tpu v6 ?lite|tpu v6e", 918e12),
  (r"nvidia a100\b.*", 312e12),
  (r"nvidia h100 pcie.*", 756e12),
  (r"nvidia h100( sxm\S*)?( \d+gb)?( hbm3e?)?", 989e12),
  (r"nvidia h200( sxm\S*)?( \d+gb)?( hbm3e)?", 989e12),
  (r"nvidia gh200( \d+gb)?", 989e12),
  (r"nvidia b200( sxm\S*)?( \d+gb)?", 2.25e15),
  (r"nvidia l4", 121e12),
)

_PATTERNS = tuple((re.compile(p), f) for p, f in PEAK_FLOPS_PER_DEVICE)


def peak_flops_per_device(device_kind: str) -> float | None:
  """The dense bf16 peak FLOP/s of one JAX device of this kind, or None where unknown.

  Args:
    device_kind: `jax.Device.device_kind`, e.g. "TPU v4", "TPU v3" (a core: half a chip),
      "NVIDIA H100 80GB HBM3"; "cpu" and unknown kinds give None.

  Returns:
    FLOP/s of one device, or None.
  """
  kind = " ".join(str(device_kind).lower().split())
  for pattern, flops in _PATTERNS:
    if pattern.fullmatch(kind):
      return flops
  return None


def unknown_peak_note(device_kind: str) -> str | None:
  """The one-line note a run prints at its start when it cannot report MFU.

  Args:
    device_kind: `jax.Device.device_kind`.

  Returns:
    "no MFU: unknown device kind X; set PEAK_FLOPS_PER_DEVICE", or None for a known kind.
  """
  if peak_flops_per_device(device_kind) is not None:
    return None
  return f"no MFU: unknown device kind {device_kind!r}; set PEAK_FLOPS_PER_DEVICE"


def total_peak_flops(
  device_kind: str, num_devices: int, peak_per_device: float | None = None
) -> tuple[float | None, str | None]:
  """The peak FLOP/s of all devices of a run, and the note to print when there is none.

  Args:
    device_kind: `jax.Device.device_kind` of the run's devices.
    num_devices: `jax.device_count()` (JAX's devices: TPU v2/v3 cores, later TPU chips, GPUs).
    peak_per_device: PEAK_FLOPS_PER_DEVICE when given; it overrides the table.

  Returns:
    `(peak FLOP/s of all devices or None, note or None)`.
  """
  if peak_per_device is not None:
    if not peak_per_device > 0:
      raise ValueError(f"PEAK_FLOPS_PER_DEVICE = {peak_per_device!r}: must be > 0 (FLOP/s).")
    return float(peak_per_device) * num_devices, None
  peak = peak_flops_per_device(device_kind)
  if peak is None:
    return None, unknown_peak_note(device_kind)
  return peak * num_devices, None


# ------------------------------------------------------------------------------ count


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
