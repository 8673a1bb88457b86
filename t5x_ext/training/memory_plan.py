"""Memory plan of the train step: XLA's per-device buffer sizes, before anything is allocated.

  trainer = Trainer(model, tx, mesh, rules, num_microbatches=...)
  batch = memory_plan.abstract_batch(model, {"inputs": 512, "targets": 512}, batch_size=128)
  plan = memory_plan.plan_train_step(trainer, batch)      # lowers + compiles, allocates nothing
  plan.total_bytes, plan.params_bytes, plan.temp_bytes     # per device
  memory_plan.check_fits(trainer, first_batch, batch_size=B)   # ValueError if it cannot fit
  best = memory_plan.largest_batch(trainer, make_batch, memory_bytes, start=128, step=8)

The plan compiles the step `Trainer.train_step` runs (`Trainer.compile_train_step`, with the
state and batch as `jax.ShapeDtypeStruct`s carrying their `NamedSharding`s) and reads the
executable's `memory_analysis()`. Under SPMD partitioning the executable is the program of one
device, so its sizes are per device:

  arguments   the state shards (params, optimizer state, step) and the batch shard
  outputs     the new state and the metrics; the state is donated, so its outputs alias
              (reuse) the argument buffers and count once
  temporaries activations kept for the backward pass, gradients, optimizer updates,
              collective buffers: everything live only inside the step
  total       arguments + outputs - aliased + temporaries + generated code

On a TPU or GPU this is the accelerator compiler's own figure (`check_fits` at the start of a
run). On the simulated CPU devices of `python -m t5x_ext.plan` it is XLA:CPU's plan of the same
partitioned program; docs/memory_plan.md says how that relates to the accelerators'.

Sizes are bytes. Never imports gin or TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t5x_ext.errors import UserError
from t5x_ext.training import partitioning

GiB = 2**30
_UNITS = {
  "": 1,
  "b": 1,
  "kb": 10**3,
  "mb": 10**6,
  "gb": 10**9,
  "tb": 10**12,
  "kib": 2**10,
  "mib": 2**20,
  "gib": 2**30,
  "tib": 2**40,
}


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """Memory of one JAX device of a kind of accelerator.

  Attributes:
    name: the canonical name (`--device=NAME`).
    memory_bytes: high-bandwidth memory of one JAX device, as the vendor states it.
    device: what one JAX device is on it ("chip", "core", "GPU").
    note: how the figure reads on the data sheet.
  """

  name: str
  memory_bytes: int
  device: str
  note: str


# HBM of one JAX device, from the vendors' pages (accessed 2026). Figures are taken as
# written: "GiB" as 2**30 bytes, "GB" as 10**9 bytes; the GB figures of HBM stacks are
# rounded, so the device has at least this much (e.g. an A100 80GB reports 80 GiB).
#   TPU v3:  cloud.google.com/tpu/docs/v3   32 GiB HBM per chip, two TensorCores, each its
#            own JAX device: 16 GiB per device.
#   TPU v4:  cloud.google.com/tpu/docs/v4   "HBM2 capacity and bandwidth: 32 GiB" per chip;
#            the two TensorCores act as one JAX device (megacore).
#   TPU v5e: cloud.google.com/tpu/docs/v5e  "HBM2 capacity and bandwidth: 16 GB" per chip.
#   TPU v5p: cloud.google.com/tpu/docs/v5p  "HBM2e capacity and bandwidth: 95GB" per chip.
#   TPU v6e: cloud.google.com/tpu/docs/v6e  32 GB HBM per chip.
#   A100:    nvidia.com/en-us/data-center/a100 (datasheet): 40GB HBM2 / 80GB HBM2e.
#   H100:    nvidia.com/en-us/data-center/h100 (datasheet): 80GB (SXM and PCIe).
#   H200:    nvidia.com/en-us/data-center/h200 (datasheet): 141GB HBM3e.
ACCELERATORS: dict[str, Accelerator] = {
  a.name: a
  for a in (
    Accelerator("v3", 16 * GiB, "core", "32 GiB per chip, 2 cores"),
    Accelerator("v4", 32 * GiB, "chip", "32 GiB per chip"),
    Accelerator("v5e", 16 * 10**9, "chip", "16 GB per chip"),
    Accelerator("v5p", 95 * 10**9, "chip", "95 GB per chip"),
    Accelerator("v6e", 32 * 10**9, "chip", "32 GB per chip"),
    Accelerator("A100-40GB", 40 * 10**9, "GPU", "40 GB"),
    Accelerator("A100-80GB", 80 * 10**9, "GPU", "80 GB"),
    Accelerator("H100", 80 * 10**9, "GPU", "80 GB"),
    Accelerator("H200", 141 * 10**9, "GPU", "141 GB"),
  )
}
# Other spellings (lower case, without spaces, dashes, "tpu"/"nvidia"), incl. device_kind.
_ALIASES = {
  "v5lite": "v5e",
  "v5litepod": "v5e",
  "v6lite": "v6e",
  "a10040gb": "A100-40GB",
  "a100sxm440gb": "A100-40GB",
  "a10080gb": "A100-80GB",
  "a100sxm480gb": "A100-80GB",
  "h10080gb": "H100",
  "h10080gbhbm3": "H100",
  "h100sxm580gb": "H100",
  "h200141gb": "H200",
}


def _key(name: str) -> str:
  key = re.sub(r"[^a-z0-9]", "", name.lower())
  for prefix in ("nvidia", "tpu"):
    key = key.removeprefix(prefix)
  return key


def accelerator(name: str) -> Accelerator:
  """Looks up an accelerator by name (`v4`, `TPU v5p`, `A100-80GB`, `h100`, a device_kind).

  Args:
    name: a name from `ACCELERATORS`, in any case, with or without `TPU`/`NVIDIA`, spaces
      or dashes; also JAX `device_kind` strings such as "TPU v5 lite".

  Returns:
    The `Accelerator`.

  Raises:
    ValueError: for an unknown or ambiguous name, listing the known ones.
  """
  key = _key(name)
  by_key = {_key(a): a for a in ACCELERATORS}
  found = by_key.get(key) or _ALIASES.get(key)
  if found is None and key == "a100":
    raise ValueError(f"--device={name!r} is ambiguous: use A100-40GB or A100-80GB.")
  if found is None:
    raise ValueError(f"--device={name!r} is not known; known: {', '.join(ACCELERATORS)}.")
  return ACCELERATORS[found]


def parse_memory(text: str | int | float) -> int:
  """Parses a memory size: `16GiB`, `16 GB`, `512MiB`, `1.5e10` (bytes).

  Args:
    text: a number of bytes, or a number with a unit B, KB, MB, GB, TB (powers of 1000) or
      KiB, MiB, GiB, TiB (powers of 1024), case-insensitive.

  Returns:
    The size in bytes.

  Raises:
    ValueError: naming the text when it is not a positive size.
  """
  if isinstance(text, int | float) and not isinstance(text, bool):
    value, unit = float(text), ""
  else:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
      raise ValueError(f"--device_memory={text!r}: expected a size such as 16GiB, 80GB or 512MiB.")
    value, unit = float(m.group(1)), m.group(2).lower()
  size = int(value * _UNITS[unit])
  if size <= 0:
    raise ValueError(f"--device_memory={text!r}: must be positive.")
  return size


def format_bytes(n: float) -> str:
  """Formats bytes with a binary unit, e.g. `3.21 GiB`.

  Args:
    n: bytes.

  Returns:
    A short string.
  """
  for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(n) >= size:
      return f"{n / size:.2f} {unit}"
  return f"{int(n)} B"


@dataclasses.dataclass(frozen=True)
class Plan:
  """Per-device memory of one compiled train step.

  Attributes:
    batch_size: global rows per step.
    mesh_shape: mesh axis sizes, e.g. {"data": 1, "fsdp": 8, "model": 1}.
    num_microbatches: gradient accumulation steps.
    platform: the backend that compiled the step ("cpu", "tpu", "gpu").
    params_bytes: parameter shards on one device (from the state's shardings).
    opt_state_bytes: optimizer-state shards on one device (step counter included).
    batch_bytes: the batch shard on one device.
    argument_bytes: XLA: all inputs of the step on one device.
    output_bytes: XLA: all outputs.
    alias_bytes: XLA: outputs that reuse donated input buffers.
    temp_bytes: XLA: temporaries (activations, gradients, updates, collectives).
    generated_code_bytes: XLA: the executable's code.
    compile_seconds: wall seconds of lowering + compiling.
    compile_cpu_seconds: CPU seconds of this process meanwhile (all threads): the cost on a
      busy machine, where wall time mostly measures waiting.
  """

  batch_size: int
  mesh_shape: dict[str, int]
  num_microbatches: int
  platform: str
  params_bytes: int
  opt_state_bytes: int
  batch_bytes: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  generated_code_bytes: int
  compile_seconds: float
  compile_cpu_seconds: float = 0.0

  @property
  def num_devices(self) -> int:
    """Devices of the mesh."""
    return math.prod(self.mesh_shape.values())

  @property
  def state_bytes(self) -> int:
    """Parameters + optimizer state on one device."""
    return self.params_bytes + self.opt_state_bytes

  @property
  def total_bytes(self) -> int:
    """Peak bytes on one device: arguments + outputs - aliased + temporaries + code."""
    return (
      self.argument_bytes
      + self.output_bytes
      - self.alias_bytes
      + self.temp_bytes
      + self.generated_code_bytes
    )

  def fits(self, memory_bytes: int) -> bool:
    """Whether the step fits in `memory_bytes` per device.

    Args:
      memory_bytes: usable memory of one device.

    Returns:
      `total_bytes <= memory_bytes`.
    """
    return self.total_bytes <= memory_bytes

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready fields, with `num_devices`, `state_bytes` and `total_bytes` added.

    Returns:
      A dict of plain Python values.
    """
    d = dataclasses.asdict(self)
    d.update(
      num_devices=self.num_devices,
      state_bytes=self.state_bytes,
      total_bytes=self.total_bytes,
      compile_seconds=round(self.compile_seconds, 2),
      compile_cpu_seconds=round(self.compile_cpu_seconds, 2),
    )
    return d


def feature_lengths(model: Any, lengths: Mapping[str, int]) -> dict[str, int]:
  """Row length of every feature the model's feature converter makes (packed or not).

  Args:
    model: a model with `feature_converter_name`.
    lengths: TASK_FEATURE_LENGTHS, e.g. {"inputs": 512, "targets": 512}.

  Returns:
    Feature name -> length, as `t5x_ext.data` batches have them (segment ids and positions
    included; `abstract_batch` drops them for unpacked batches).

  Raises:
    ValueError: for an unknown feature converter.
  """
  name = model.feature_converter_name
  li, lt = int(lengths.get("inputs", 0)), int(lengths["targets"])
  dec = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_denoiser_ids",
  )
  if name == "EncDecFeatureConverter":
    enc = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
    return {**dict.fromkeys(enc, li), **dict.fromkeys(dec, lt)}
  if name == "PrefixLMFeatureConverter":
    return dict.fromkeys((*dec, "decoder_causal_attention"), li + lt)
  if name == "DecoderFeatureConverter":
    return dict.fromkeys(dec, lt)
  raise ValueError(f"feature_converter_name = {name!r}: no batch layout known for the plan.")


def abstract_batch(
  model: Any, lengths: Mapping[str, int], batch_size: int, *, pack: bool = True
) -> dict[str, jax.ShapeDtypeStruct]:
  """The global training batch as shapes (int32 features, as `t5x_ext.data` yields them).

  Args:
    model: the model (its `feature_converter_name` decides the features).
    lengths: TASK_FEATURE_LENGTHS.
    batch_size: global rows.
    pack: packed batches carry `*_segment_ids` and `*_positions`.

  Returns:
    Feature name -> `jax.ShapeDtypeStruct` [batch_size, length].
  """
  return {
    k: jax.ShapeDtypeStruct((batch_size, n), jnp.int32)
    for k, n in feature_lengths(model, lengths).items()
    if pack or not k.endswith(("_segment_ids", "_positions"))
  }


def per_device_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded abstract (or concrete) arrays.

  Args:
    tree: leaves with `.shape`, `.dtype` and `.sharding`.

  Returns:
    The sum over leaves of the shard size (the largest shard where shards differ).
  """
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def _global_shapes(batch: Mapping[str, Any], batch_size: int | None) -> dict[str, Any]:
  out = {}
  for k, v in batch.items():
    shape = tuple(v.shape)
    if batch_size is not None:
      shape = (batch_size, *shape[1:])
    out[k] = jax.ShapeDtypeStruct(shape, v.dtype)
  return out


def plan_train_step(trainer: Any, batch: Mapping[str, Any]) -> Plan:
  """Compiles the trainer's train step for these batch shapes and returns its memory plan.

  Nothing the size of the model is allocated: the state and batch are abstract. The
  executable stays in `trainer.compiled_train_step`, and `trainer.train_step` runs it.

  Args:
    trainer: a `t5x_ext.training.trainer.Trainer`.
    batch: the GLOBAL batch (numpy arrays or `jax.ShapeDtypeStruct`s; only shapes are read).

  Returns:
    The `Plan`.

  Raises:
    RuntimeError: when the backend gives no memory analysis.
  """
  shapes = _global_shapes(batch, None)
  cpu_start = time.process_time()
  seconds = trainer.compile_train_step(shapes)
  cpu_seconds = time.process_time() - cpu_start
  stats = trainer.compiled_train_step.memory_analysis()
  if stats is None:
    raise RuntimeError(f"The {jax.default_backend()} backend gives no memory analysis.")
  abstract = trainer.abstract_state(shapes)
  sharding = partitioning.batch_sharding(trainer.mesh)
  batch_bytes = per_device_bytes(
    [jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for v in shapes.values()]
  )
  return Plan(
    batch_size=int(next(iter(shapes.values())).shape[0]),
    mesh_shape={k: int(v) for k, v in trainer.mesh.shape.items()},
    num_microbatches=int(trainer.num_microbatches),
    platform=trainer.mesh.devices.flat[0].platform,
    params_bytes=per_device_bytes(abstract.params),
    opt_state_bytes=per_device_bytes((abstract.opt_state, abstract.step)),
    batch_bytes=batch_bytes,
    argument_bytes=int(stats.argument_size_in_bytes),
    output_bytes=int(stats.output_size_in_bytes),
    alias_bytes=int(stats.alias_size_in_bytes),
    temp_bytes=int(stats.temp_size_in_bytes),
    generated_code_bytes=int(stats.generated_code_size_in_bytes),
    compile_seconds=float(seconds),
    compile_cpu_seconds=cpu_seconds,
  )


@dataclasses.dataclass
class SearchResult:
  """What `largest_batch` found.

  Attributes:
    largest: the largest batch size seen to fit, or None when none did.
    exact: True when `largest + step` (or `step`, when nothing fits) was compiled and does
      not fit, i.e. `largest` is the answer among multiples of `step`; False when the compile
      budget ran out first (then `largest` is a lower bound).
    step: the batch-size granularity (data-parallel size x microbatches).
    plans: every compiled plan, by batch size.
  """

  largest: int | None
  exact: bool
  step: int
  plans: dict[int, Plan]


def _next_candidate(plans: Mapping[int, Plan], memory_bytes: int, step: int) -> int:
  # Memory grows about linearly in the batch: a secant through two compiled sizes, kept
  # inside the bracket of known fit / no-fit sizes with a margin (so the bracket shrinks by
  # a constant factor at every compile), or within 8x of the nearest known size.
  fit = sorted(b for b, p in plans.items() if p.fits(memory_bytes))
  fail = sorted(b for b, p in plans.items() if not p.fits(memory_bytes))
  lo = fit[-1] if fit else None
  hi = next((b for b in fail if lo is None or b > lo), None)
  if lo is not None and hi is not None:
    pair, low, high = (lo, hi), lo + (hi - lo) / 8, hi - (hi - lo) / 8
  elif lo is not None:
    pair, low, high = tuple(fit[-2:]), 2 * lo, 8 * lo
  else:
    pair, low, high = tuple(fail[:2]), hi / 8, hi / 2
  guess = (low + high) / 2
  if len(pair) == 2:
    (b0, b1), (t0, t1) = pair, (plans[pair[0]].total_bytes, plans[pair[1]].total_bytes)
    if t1 > t0:
      guess = b0 + (memory_bytes - t0) * (b1 - b0) / (t1 - t0)
  guess = min(max(guess, low), high)
  candidate = max(step, int(guess // step) * step)
  if lo is not None:
    candidate = max(candidate, lo + step)
  if hi is not None:
    candidate = min(candidate, hi - step)
  return candidate


def largest_batch(
  trainer: Any,
  make_batch: Callable[[int], Mapping[str, Any]],
  memory_bytes: int,
  *,
  start: int,
  step: int,
  max_compiles: int = 6,
  known: Mapping[int, Plan] | None = None,
) -> SearchResult:
  """Searches the largest multiple of `step` whose train step fits `memory_bytes` per device.

  Each candidate is compiled (`plan_train_step`). The next one is a secant through two
  compiled sizes (memory is close to linear in the batch), kept inside the bracket of known
  fit / no-fit sizes with a margin of 1/8 of it, or between 2x and 8x of the largest size
  that fits (1/8 and 1/2 of the smallest that does not) before there is a bracket. It stops
  when `largest + step` is known not to fit, or after `max_compiles` compiles.

  Args:
    trainer: the `Trainer`.
    make_batch: batch size -> global batch shapes.
    memory_bytes: usable memory of one device.
    start: the first size to try (e.g. the configured BATCH_SIZE).
    step: sizes are multiples of this (data-parallel size x NUM_MICROBATCHES).
    max_compiles: most new compiles.
    known: plans already compiled, by batch size.

  Returns:
    A `SearchResult`.
  """
  plans: dict[int, Plan] = dict(known or {})
  start = max(step, (start // step) * step)
  compiles = 0

  def bracket():
    fit = [b for b, p in plans.items() if p.fits(memory_bytes)]
    fail = [b for b, p in plans.items() if not p.fits(memory_bytes)]
    lo = max(fit, default=None)
    hi = min((b for b in fail if lo is None or b > lo), default=None)
    return lo, hi

  candidate = None if start in plans else start
  while True:
    lo, hi = bracket()
    if (hi is not None and lo is not None and hi - lo <= step) or hi == step:
      return SearchResult(lo, True, step, plans)
    if candidate is None:
      candidate = _next_candidate(plans, memory_bytes, step)
    if candidate in plans or compiles >= max_compiles:
      return SearchResult(lo, False, step, plans)
    plans[candidate] = plan_train_step(trainer, make_batch(candidate))
    compiles += 1
    candidate = None


def device_memory_limit(device: Any = None) -> int | None:
  """Memory the runtime lets one device use (`memory_stats()["bytes_limit"]`), if known.

  Args:
    device: a `jax.Device` (default: the first local device).

  Returns:
    Bytes, or None where the backend does not say (CPU).
  """
  device = device if device is not None else jax.local_devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 - backends without memory stats raise various errors
    return None
  limit = (stats or {}).get("bytes_limit")
  return int(limit) if limit else None


class PlanTooLargeError(UserError):
  """The train step needs more memory per device than the device has."""


def too_large_message(plan: Plan, memory_bytes: int, memory_label: str = "") -> str:
  """The error text: the plan's total and parts, the memory, and the settings to change.

  Args:
    plan: the plan.
    memory_bytes: the usable device memory.
    memory_label: where that figure comes from (e.g. "v4", "bytes_limit of TPU v4").

  Returns:
    A message naming the numbers and BATCH_SIZE, NUM_MICROBATCHES and MESH_SHAPE.
  """
  where = f" ({memory_label})" if memory_label else ""
  mesh = {k: v for k, v in plan.mesh_shape.items() if v != 1} or {"data": 1}
  msg = (
    f"Memory plan: the train step needs {format_bytes(plan.total_bytes)} per device "
    f"({plan.total_bytes} bytes: parameters {format_bytes(plan.params_bytes)}, optimizer "
    f"state {format_bytes(plan.opt_state_bytes)}, activations and temporaries "
    f"{format_bytes(plan.temp_bytes)}), more than the {format_bytes(memory_bytes)} "
    f"({memory_bytes} bytes) of device memory{where}. "
  )
  if plan.state_bytes + plan.batch_bytes >= memory_bytes:
    return msg + (
      f"Parameters and optimizer state alone do not fit: shard them over more devices "
      f"(MESH_SHAPE = {mesh}: raise 'fsdp' or 'model'), or use a smaller model."
    )
  return msg + (
    f"Lower BATCH_SIZE (now {plan.batch_size}), raise NUM_MICROBATCHES (now "
    f"{plan.num_microbatches}), or shard over more devices (MESH_SHAPE = {mesh}); "
    "`python -m t5x_ext.plan --gin_file=... --device_memory=...` finds the largest batch "
    "that fits."
  )


def check_fits(
  trainer: Any,
  batch: Mapping[str, Any],
  device_memory_bytes: int | None = None,
  *,
  batch_size: int | None = None,
  memory_label: str = "",
  say: Callable[[str], Any] | None = print,
) -> Plan:
  """Plans the train step on the run's own devices and fails before any step if it can't fit.

  Call it at the start of a run, after the trainer is built: the compiled step is kept,
  so the first `trainer.train_step` does not compile again.

  Args:
    trainer: the `Trainer` of the run.
    batch: a batch with the training shapes (numpy or abstract; e.g. the first batch).
    device_memory_bytes: usable memory per device; default the runtime's
      `bytes_limit` (TPU, GPU), none on CPU (then the plan is only printed).
    batch_size: the GLOBAL batch size when `batch` holds this process's rows only.
    memory_label: names the memory figure in messages.
    say: prints the one-line plan (None: silent).

  Returns:
    The `Plan`.

  Raises:
    PlanTooLargeError: (a ValueError) naming the plan's total, the device memory and the
      settings to change.
  """
  plan = plan_train_step(trainer, _global_shapes(batch, batch_size))
  limit = device_memory_bytes
  if limit is None:
    limit = device_memory_limit(trainer.mesh.devices.flat[0])
    memory_label = memory_label or "the runtime's bytes_limit"
  if say is not None:
    share = f" of {format_bytes(limit)} ({plan.total_bytes / limit:.0%})" if limit else ""
    say(
      f"Memory plan: {format_bytes(plan.total_bytes)} per device{share}: parameters "
      f"{format_bytes(plan.params_bytes)}, optimizer state {format_bytes(plan.opt_state_bytes)}, "
      f"activations and temporaries {format_bytes(plan.temp_bytes)} "
      f"(batch {plan.batch_size}, mesh {plan.mesh_shape})."
    )
  if limit is not None and not plan.fits(limit):
    raise PlanTooLargeError(too_large_message(plan, limit, memory_label))
  return plan
