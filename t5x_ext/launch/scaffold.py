"""The scaffold `t5x_ext.train`, `t5x_ext.eval` and `t5x_ext.infer` share.

Two steps every entry point takes, written once:

  main        `run(entry_points, argv)`: flags and gin files (`t5x_ext.launch.flags`), the
              function the gin files configure, its required macros, MIXTURE_OR_TASK_MODULE,
              then the call
  start-up    `prepare(model, task, lengths, batch_size=..., mesh_shape=...)`: the checks,
              cheapest first (batch size, mesh, task, lengths against the objectives, split),
              and this process's shard of every global batch (`RunSetup`)

Decoding on the mesh and the multi-process helpers (`predict`, `lockstep`, `gather_shards`)
live in `t5x_ext.training.hosts`, since the evaluation uses them too.

Library code: `run` imports gin only when called (the entry points' `main`); the data side
(TensorFlow) is imported inside `prepare`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from jax.sharding import Mesh

from t5x_ext.training import partitioning

# ------------------------------------------------------------------------------- main


@dataclasses.dataclass(frozen=True)
class EntryPoint:
  """A gin-configurable function that an entry point's `main` runs.

  Attributes:
    fn: the function (e.g. `t5x_ext.train.train`).
    required_macros: the `%gin.REQUIRED` macros of its run file, checked before it runs.
    run_file: the run file that declares them, for messages (e.g. "gin/runs/pretrain.gin").
    include: what to include when the gin files configure nothing (e.g. "'runs/infer.gin'").
  """

  fn: Callable[..., Any]
  required_macros: tuple[str, ...]
  run_file: str
  include: str


def configured_function(fn: Callable[..., Any]) -> Callable[..., Any] | None:
  """`fn` as gin configures it, or None when the parsed files bind nothing of it.

  Registration outlives `gin.clear_config` (a notebook or test that once parsed a run file),
  so what counts is a binding of `fn`'s `model` parameter, which every run file sets.

  Args:
    fn: the plain function.

  Returns:
    The gin-configured callable, or None.
  """
  import gin

  # Dynamic registration files a function under its import alias (`from t5x_ext import eval
  # as eval_script` -> `t5x_ext.eval_script.evaluate`), so match the function, not a name.
  for (_, selector), params in gin.config._CONFIG.items():
    if "model" not in params:
      continue
    try:
      configurable = gin.config._REGISTRY.get_match(selector)
    except (KeyError, ValueError):
      continue
    if configurable is not None and configurable.wrapped is fn:
      return gin.get_configurable(fn)
  return None


def _pick(entry_points: Sequence[EntryPoint]) -> tuple[EntryPoint, Callable[..., Any]]:
  import gin
  from t5x_ext.launch import flags as cli

  for ep in entry_points:
    fn = configured_function(ep.fn)
    if fn is not None:
      return ep, fn
  if len(entry_points) == 1:
    (only,) = entry_points
    # Without its run file the run's macros are usually unset: name the first one.
    cli.check_required_macros(only.required_macros, run_file_hint=only.run_file)
    try:  # bound without `model` (e.g. MODEL set elsewhere): gin reports what is missing
      return only, gin.get_configurable(only.fn)
    except (KeyError, ValueError):
      pass
  names = " nor ".join(f"{ep.fn.__module__}.{ep.fn.__name__}" for ep in entry_points)
  which = "neither" if len(entry_points) > 1 else "not"
  includes = " or ".join(ep.include for ep in entry_points)
  raise ValueError(f"The gin files configure {which} {names}; include {includes}.")


def run(
  entry_points: Sequence[EntryPoint],
  argv: Sequence[str] | None = None,
  *,
  around: Callable[[Callable[[], Any]], Any] | None = None,
) -> Any:
  """An entry point's `main`: flags, gin, the configured function, its checks, the call.

  Args:
    entry_points: the functions this `main` can run, in order of preference; the first one
      the gin files configure runs (its required macros are checked first).
    argv: command-line arguments (default `sys.argv[1:]`).
    around: wraps the call, e.g. to hold MODEL_DIR's run lock: `around(call)` must call
      `call()` and return its result.

  Returns:
    What the configured function returns.

  Raises:
    ValueError: naming an unset required macro, or when the gin files configure none of
      `entry_points` (naming the run files to include).
  """
  from t5x_ext.launch import flags as cli

  cli.setup(argv)
  ep, fn = _pick(entry_points)
  cli.check_settings(ep.required_macros, ep.run_file)
  return around(fn) if around is not None else fn()


# ---------------------------------------------------------------------------- start-up


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
    raise ValueError(f"{name} = {value!r}: must be a positive int.")
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
    raise ValueError(
      f"num_microbatches = {num_microbatches}: microbatches of {batch_size // num_microbatches} "
      f"rows do not divide over the data-parallel size {dp}."
    )
  provider = run_data.get_provider(mixture_or_task_name)
  vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
  run_data.check_task(
    provider, task_feature_lengths, model_vocab_size=vocab_size, plan=plan_objectives
  )
  if split is not None and split not in provider.splits:
    raise ValueError(
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
