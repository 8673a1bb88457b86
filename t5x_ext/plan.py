"""Memory plan of an experiment before it runs: `python -m t5x_ext.plan --gin_file=FILE`.

  python -m t5x_ext.plan --gin_file=gin/experiments/ul2_c4_base.gin --device=v4
  python -m t5x_ext.plan --gin_file=gin/experiments/ul2_20b_pod.gin --num_devices=256
      --device_memory=95GB --json

Reads the experiment's `train` settings from gin (model, TASK_FEATURE_LENGTHS, BATCH_SIZE,
MESH_SHAPE, optimizer, NUM_MICROBATCHES, logical axis rules), builds the `Trainer` that
`t5x_ext.train.train` would build, and compiles its train step for abstract state and batch
on the experiment's mesh (`t5x_ext.training.memory_plan`): nothing the size of the model is allocated,
no data is read, no checkpoint is touched. The mesh lives on simulated CPU devices, as many as
`--num_devices` (default: the product of MESH_SHAPE's fixed axes, a -1 axis counted as 1);
the command sets JAX's CPU device count before JAX starts, or re-runs itself in a subprocess
with `XLA_FLAGS=--xla_force_host_platform_device_count=N` when JAX already runs with fewer.

Flags (besides the entry points' `--gin_file`, `--gin.KEY=VALUE`, `--gin_bindings`,
`--gin_search_path`):

  --num_devices=N       devices of the mesh (a MESH_SHAPE axis of -1 takes the rest)
  --device=NAME         an accelerator whose memory to plan for (v3, v4, v5e, v5p, v6e,
                        A100-40GB, A100-80GB, H100, H200)
  --device_memory=SIZE  or the memory itself: 16GiB, 80GB, 512MiB
  --memory_fraction=F   plan for this share of it (e.g. 0.75: JAX's GPU preallocation)
  --max_compiles=K      compiles for the largest-batch search (default 6; 0: no search)
  --num_denoisers=K     per-denoiser metric sums in the step (UL2 mixtures: 7; default 0)
  --json                print JSON instead of the table

Exit status 0 when the step fits (or no memory was given), 1 when it does not (with a message
naming the plan's total, the memory and the settings to change), 2 on a bad flag or setting.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from t5x_ext.errors import UserError
from t5x_ext.training import memory_plan

_CHILD_ENV = "T5X_EXT_PLAN_CHILD"


def parse_flags(argv: Sequence[str]) -> tuple[argparse.Namespace, argparse.Namespace]:
  """Splits the plan's own flags from the entry points' gin flags.

  Args:
    argv: arguments without the program name.

  Returns:
    `(plan_flags, gin_flags)`; gin_flags as `t5x_ext.launch.flags.parse_flags` returns them.
  """
  from t5x_ext.launch import flags as cli

  parser = argparse.ArgumentParser(prog="python -m t5x_ext.plan", allow_abbrev=False)
  parser.add_argument("--num_devices", type=int, default=None)
  parser.add_argument("--device", default=None)
  parser.add_argument("--device_memory", default=None)
  parser.add_argument("--memory_fraction", type=float, default=1.0)
  parser.add_argument("--max_compiles", type=int, default=6)
  parser.add_argument("--num_denoisers", type=int, default=0)
  parser.add_argument("--json", action="store_true")
  own, rest = parser.parse_known_args(list(argv))
  return own, cli.parse_flags(rest)


def train_settings() -> dict[str, Any]:
  """The arguments gin gives `t5x_ext.train.train`, with the function's defaults filled in.

  Returns:
    Dict of argument name -> value (models and schedules built; `%gin.REQUIRED` macros the
    plan does not need, such as MODEL_DIR, stay unevaluated).

  Raises:
    ValueError: when the gin files do not configure `train`.
  """
  import gin
  from t5x_ext import train as train_lib

  try:
    bound = gin.get_bindings(train_lib.train)
  except (KeyError, ValueError):
    bound = {}
  if "model" not in bound:
    raise UserError(
      "The gin files do not configure t5x_ext.train.train with a model; give an experiment "
      "file, or a model file and 'runs/pretrain.gin'."
    )
  params = inspect.signature(train_lib.train).parameters
  defaults = {k: p.default for k, p in params.items() if p.default is not p.empty}
  return {**defaults, **bound}


def default_num_devices(mesh_shape: Mapping[str, int] | None) -> int:
  """The smallest device count a MESH_SHAPE allows: its fixed axes, a -1 axis as 1.

  Args:
    mesh_shape: the MESH_SHAPE setting (None: all devices on `data`).

  Returns:
    A device count.
  """
  return math.prod(int(v) for v in (mesh_shape or {}).values() if v != -1)


def _use_cpu_devices(n: int) -> bool:
  """Asks JAX for `n` CPU devices; False when JAX already started (then re-run)."""
  import jax

  try:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:
    pass
  return jax.device_count() >= n and jax.default_backend() == "cpu"


def _rerun_in_subprocess(argv: Sequence[str], n: int) -> int:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])
  env["JAX_PLATFORMS"] = "cpu"
  env[_CHILD_ENV] = "1"
  return subprocess.run([sys.executable, "-m", "t5x_ext.plan", *argv], env=env).returncode


def _optimizer(optimizer, learning_rate):
  # As `train` builds it: a transformation, a factory taking learning_rate=, or the default.
  import optax

  from t5x_ext.training import optimizers

  if optimizer is None:
    return optimizers.make_optimizer(learning_rate=learning_rate)
  if isinstance(optimizer, optax.GradientTransformation):
    return optimizer
  return optimizer(learning_rate=learning_rate)


def _memory(own: argparse.Namespace) -> tuple[int | None, str]:
  if own.device and own.device_memory:
    raise UserError("Give --device or --device_memory, not both.")
  if not 0 < own.memory_fraction <= 1:
    raise UserError(f"--memory_fraction={own.memory_fraction}: must be in (0, 1].")
  if own.device:
    acc = memory_plan.accelerator(own.device)
    size, label = acc.memory_bytes, f"{acc.name}, {acc.note}"
  elif own.device_memory:
    size = memory_plan.parse_memory(own.device_memory)
    label = own.device_memory
  else:
    return None, ""
  if own.memory_fraction < 1:
    label += f", x {own.memory_fraction}"
  return int(size * own.memory_fraction), label


def build_trainer(
  settings: Mapping[str, Any], devices: Sequence[Any], *, num_denoisers: int = 0
) -> tuple[Any, Callable[[int], dict[str, Any]]]:
  """The `Trainer` that `train` builds from these settings, and the batch shapes it trains on.

  Args:
    settings: what `train_settings` returns.
    devices: the mesh's devices (`jax.devices()[:n]`).
    num_denoisers: per-denoiser metric sums in the step (the task's denoiser count).

  Returns:
    `(trainer, make_batch)`; `make_batch(batch_size)` gives the abstract global batch.

  Raises:
    ValueError: on a bad MESH_SHAPE, BATCH_SIZE or NUM_MICROBATCHES (naming it).
  """
  from t5x_ext.training import partitioning
  from t5x_ext.training.trainer import Trainer

  mesh = partitioning.make_mesh(settings["mesh_shape"], devices=devices)
  model, lengths = settings["model"], dict(settings["task_feature_lengths"])
  partitioning.validate_batch_size(settings["batch_size"], mesh, settings["num_microbatches"])
  trainer = Trainer(
    model,
    _optimizer(settings["optimizer"], settings["learning_rate"]),
    mesh,
    settings["logical_axis_rules"],
    learning_rate_fn=settings["learning_rate"],
    num_microbatches=settings["num_microbatches"],
    denoiser_names=[f"denoiser_{i}" for i in range(num_denoisers)],
  )

  def make_batch(batch_size: int) -> dict[str, Any]:
    return memory_plan.abstract_batch(model, lengths, batch_size, pack=settings["pack"])

  return trainer, make_batch


def make_plan(argv: Sequence[str]) -> dict[str, Any]:
  """Builds the report (JAX must already have the devices; `main` sees to that).

  Args:
    argv: the command line without the program name.

  Returns:
    A JSON-ready dict: settings, plan, memory, fits, search, fits_on.

  Raises:
    ValueError: on a bad flag or setting (naming it).
  """
  import jax

  from t5x_ext.launch import flags as cli
  from t5x_ext.training import partitioning

  own, gin_args = parse_flags(argv)
  memory_bytes, memory_label = _memory(own)
  cli.parse_gin(gin_args.gin_files, gin_args.gin_bindings, gin_args.gin_search_paths)
  s = train_settings()
  n = own.num_devices or default_num_devices(s["mesh_shape"])
  trainer, make_batch = build_trainer(s, jax.devices()[:n], num_denoisers=own.num_denoisers)
  model, lengths, batch_size = s["model"], dict(s["task_feature_lengths"]), s["batch_size"]
  plan = memory_plan.plan_train_step(trainer, make_batch(batch_size))
  report: dict[str, Any] = {
    "gin_files": list(gin_args.gin_files),
    "gin_bindings": list(gin_args.gin_bindings),
    "model": type(model).__name__,
    "task_feature_lengths": lengths,
    "num_devices": n,
    "device_kind": jax.devices()[0].device_kind,
    "num_denoisers": own.num_denoisers,
    "plan": plan.to_dict(),
    "memory_bytes": memory_bytes,
    "memory_label": memory_label,
    "fits": None if memory_bytes is None else plan.fits(memory_bytes),
    "fits_on": [a.name for a in memory_plan.ACCELERATORS.values() if plan.fits(a.memory_bytes)],
    "search": None,
  }
  if memory_bytes is not None and own.max_compiles > 0:
    step = partitioning.data_parallel_size(trainer.mesh) * trainer.num_microbatches
    found = memory_plan.largest_batch(
      trainer,
      make_batch,
      memory_bytes,
      start=batch_size,
      step=step,
      max_compiles=own.max_compiles,
      known={batch_size: plan},
    )
    report["search"] = {
      "largest_batch_size": found.largest,
      "exact": found.exact,
      "step": found.step,
      "compiled": {b: p.total_bytes for b, p in sorted(found.plans.items())},
      "compile_seconds": round(sum(p.compile_seconds for p in found.plans.values()), 1),
    }
  if memory_bytes is not None and not plan.fits(memory_bytes):
    report["error"] = memory_plan.too_large_message(plan, memory_bytes, memory_label)
  return report


def format_report(r: Mapping[str, Any]) -> str:
  """The report as a table for the terminal.

  Args:
    r: what `make_plan` returns.

  Returns:
    Text.
  """
  p, fb = r["plan"], memory_plan.format_bytes
  mesh = " ".join(f"{k}={v}" for k, v in p["mesh_shape"].items())
  dp = p["mesh_shape"].get("data", 1) * p["mesh_shape"].get("fsdp", 1)
  rows = [
    ("parameters", p["params_bytes"]),
    ("optimizer state", p["opt_state_bytes"]),
    ("batch", p["batch_bytes"]),
    ("activations, temporaries", p["temp_bytes"]),
    ("outputs not aliased", p["output_bytes"] - p["alias_bytes"]),
    ("generated code", p["generated_code_bytes"]),
  ]
  lines = [
    f"Memory plan of {' '.join(r['gin_files'])} {' '.join(r['gin_bindings'])}".rstrip(),
    f"  model     {r['model']}, lengths {r['task_feature_lengths']}",
    f"  mesh      {mesh} ({r['num_devices']} {r['device_kind']} devices)",
    f"  batch     {p['batch_size']} rows, {p['batch_size'] // dp} per data-parallel shard, "
    f"{p['num_microbatches']} microbatch(es)",
    f"  compiled  in {p['compile_seconds']:.1f} s ({p['compile_cpu_seconds']:.1f} s CPU) on "
    f"{p['platform']}",
    "  per device:",
    *(f"    {name:<26}{fb(v):>12}" for name, v in rows),
    f"    {'total':<26}{fb(p['total_bytes']):>12}",
    f"  fits on   {', '.join(r['fits_on']) or 'none of ' + ', '.join(memory_plan.ACCELERATORS)}",
  ]
  if r["memory_bytes"] is not None:
    verdict = "fits" if r["fits"] else "DOES NOT FIT"
    lines.append(
      f"  memory    {fb(r['memory_bytes'])} ({r['memory_label']}): {verdict}, "
      f"{p['total_bytes'] / r['memory_bytes']:.0%} used"
    )
  search = r.get("search")
  if search:
    largest = search["largest_batch_size"]
    how = "exact" if search["exact"] else "a lower bound: compile budget spent"
    tried = ", ".join(f"{b}: {fb(t)}" for b, t in search["compiled"].items())
    lines.append(
      f"  largest batch that fits: {largest if largest else 'none'} ({how}; multiples of "
      f"{search['step']}; compiled {tried}; {search['compile_seconds']} s)"
    )
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command (see the module docstring).

  Args:
    argv: arguments without the program name (default `sys.argv[1:]`).

  Returns:
    The exit status: 0 fits (or no memory given), 1 does not fit, 2 bad flag or setting.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    from t5x_ext.launch import flags as cli

    own, gin_args = parse_flags(argv)
    if not gin_args.gin_files:
      raise UserError("At least one --gin_file is needed.")
    cli.parse_gin(gin_args.gin_files, gin_args.gin_bindings, gin_args.gin_search_paths)
    n = own.num_devices or default_num_devices(train_settings()["mesh_shape"])
    import gin

    gin.clear_config()
    if not _use_cpu_devices(n):
      if os.environ.get(_CHILD_ENV):
        raise UserError(f"Could not get {n} simulated CPU devices.")
      return _rerun_in_subprocess(argv, n)
    report = make_plan(argv)
  except ValueError as e:
    print(f"Error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(report, indent=1) if own.json else format_report(report))
  if report.get("error"):
    print(f"Error: {report['error']}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  from t5x_ext.launch import flags as _cli

  _cli.main_guard(main)  # its status; a user error exits 2, a bug 1 (docs/operations.md)
