"""Model FLOPs and the devices' peak FLOP/s: the two halves of MFU.

MFU (model FLOPs utilisation) = the model FLOPs a step needs / step time / the peak FLOP/s
of every device that ran it. Both halves live here, once, for the trainer, the progress bar,
TensorBoard and `bench/`.

**The count** lives on the model floor, `t5x_ext.model.flops` (so that
`BaseModel.flops_per_token` uses the same one), and is re-exported here: `decoder_length`,
`forward_flops_per_example`, `training_flops_per_example`, `flops_per_token`,
`training_flops_per_step`.

**The peaks**: dense (no sparsity) bf16 FLOP/s per device *as JAX counts devices*: a TPU v2
or v3 chip is two devices (one per TensorCore), so half the chip's figure; TPU v4 and later
(megacore) and every GPU are one device per chip. The trainer multiplies by
`jax.device_count()`. Unknown kinds (CPUs included) have no peak and so no MFU; give one
with `PEAK_FLOPS_PER_DEVICE` (`train.peak_flops_per_device`).
"""

from __future__ import annotations

import re

from t5x_ext.errors import UserError
from t5x_ext.model.flops import (
  decoder_length,
  flops_per_token,
  forward_flops_per_example,
  training_flops_per_example,
  training_flops_per_step,
)

__all__ = [
  "PEAK_FLOPS_PER_DEVICE",
  "decoder_length",
  "flops_per_token",
  "forward_flops_per_example",
  "peak_flops_per_device",
  "total_peak_flops",
  "training_flops_per_example",
  "training_flops_per_step",
  "unknown_peak_note",
]

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
      raise UserError(f"PEAK_FLOPS_PER_DEVICE = {peak_per_device!r}: must be > 0 (FLOP/s).")
    return float(peak_per_device) * num_devices, None
  peak = peak_flops_per_device(device_kind)
  if peak is None:
    return None, unknown_peak_note(device_kind)
  return peak * num_devices, None
