"""The checks every run makes before it builds anything, cheapest first, and its shard.

`prepare(model, task, lengths, batch_size=..., mesh_shape=...)` checks the batch size, the
mesh, the task, the lengths against the task's objectives and the split, and returns a
`RunSetup`: the task, its denoisers, the mesh and this process's shard of every global batch.
Training (`t5x_ext.training.fit`), evaluation and inference all start with it, so a bad
setting fails the same way, naming the setting, in every command. The data side (TensorFlow)
is imported inside `prepare`, only when a SeqIO task is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jax.sharding import Mesh

from t5x_ext.errors import UserError
from t5x_ext.training import partitioning


def positive_int(name: str, value: Any) -> int:
  """`value` as an int, or a ValueError naming the setting.

  Args:
    name: the setting, e.g. "BATCH_SIZE".
    value: its value.

  Returns:
    `int(value)`.

  Raises:
    ValueError: unless `value` is an int >= 1 (a bool is not).
  """
  if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
    raise UserError(f"{name} = {value!r}: must be a positive int.")
  return int(value)


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """What `prepare` checked and built.

  Attributes:
    provider: the SeqIO task or mixture.
    lengths: TASK_FEATURE_LENGTHS as ints.
    denoisers: the task's denoisers (`run_data.denoisers_of`), in `decoder_denoiser_ids` order.
    mesh: the device mesh.
    batch_size: global rows per batch.
    shard_id: this process's shard of every global batch (`partitioning.process_batch_shard`).
    num_shards: the number of shards.
  """

  provider: Any
  lengths: dict[str, int]
  denoisers: tuple[Any, ...]
  mesh: Mesh
  batch_size: int
  shard_id: int
  num_shards: int

  @property
  def local_rows(self) -> int:
    """Rows this process loads per global batch."""
    return self.batch_size // self.num_shards

  @property
  def denoiser_names(self) -> list[str]:
    """The denoisers' names (for per-denoiser metrics)."""
    return [d.name for d in self.denoisers]

  @property
  def denoiser_groups(self) -> dict[str, list[int]]:
    """The denoisers' indices by mode prefix (for `loss/<mode>` metrics)."""
    return denoiser_groups(self.denoisers)


def prepare(
  model: Any,
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  *,
  batch_size: Any,
  mesh_shape: Mapping[str, int] | None,
  num_microbatches: int = 1,
  split: str | None = None,
  plan_objectives: bool = True,
) -> RunSetup:
  """The start-up checks of every entry point, cheapest first; nothing is compiled.

  Args:
    model: the model (its vocabulary size is checked against the task's).
    mixture_or_task_name: MIXTURE_OR_TASK_NAME.
    task_feature_lengths: TASK_FEATURE_LENGTHS.
    batch_size: BATCH_SIZE (global rows).
    mesh_shape: MESH_SHAPE.
    num_microbatches: microbatches must divide over the data-parallel devices too.
    split: a split the task must have (None: not checked).
    plan_objectives: plan the task's denoisers for the lengths (off where the task's examples
      are not read, e.g. inference on typed prompts).

  Returns:
    A `RunSetup`.

  Raises:
    ValueError: naming the setting and its value (BATCH_SIZE, MESH_SHAPE, NUM_MICROBATCHES,
      MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, VOCAB_SIZE, the split).
  """
  from t5x_ext.data import providers as run_data  # data side, imported only here

  batch_size = positive_int("BATCH_SIZE", batch_size)
  mesh = partitioning.make_mesh(mesh_shape)
  partitioning.validate_batch_size(batch_size, mesh)
  dp = partitioning.data_parallel_size(mesh)
  if num_microbatches > 1 and (batch_size // num_microbatches) % dp:
    raise UserError(
      f"NUM_MICROBATCHES = {num_microbatches}: microbatches of {batch_size // num_microbatches} "
      f"rows do not divide over the data-parallel size {dp}."
    )
  provider = run_data.get_provider(mixture_or_task_name)
  vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
  run_data.check_task(
    provider, task_feature_lengths, model_vocab_size=vocab_size, plan=plan_objectives
  )
  if split is not None and split not in provider.splits:
    raise UserError(
      f"split = {split!r} is not a split of {mixture_or_task_name!r} ({list(provider.splits)})."
    )
  shard_id, num_shards = partitioning.process_batch_shard(mesh)
  return RunSetup(
    provider=provider,
    lengths={k: int(v) for k, v in task_feature_lengths.items()},
    denoisers=tuple(run_data.denoisers_of(provider) or ()),
    mesh=mesh,
    batch_size=batch_size,
    shard_id=shard_id,
    num_shards=num_shards,
  )


def denoiser_groups(denoisers: Sequence[Any]) -> dict[str, list[int]]:
  """Groups denoiser indices by mode prefix, e.g. {"[NLU]": [0, 1], "[S2S]": [6]}.

  Args:
    denoisers: the denoisers.

  Returns:
    Mode -> indices, for modes shared by more than zero denoisers (empty mode skipped).
  """
  groups: dict[str, list[int]] = {}
  for k, d in enumerate(denoisers):
    if d.mode:
      groups.setdefault(d.mode, []).append(k)
  return groups
