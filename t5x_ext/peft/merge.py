"""Folds trained LoRA adapters into their base: a full checkpoint, like converted weights.

  python -m t5x_ext.peft.merge --adapters=MODEL_DIR --output_dir=OUT
      [--base=PATH] [--gin_file=model.gin ...] [--gin_bindings=B ...]

`--adapters` is a LoRA run's MODEL_DIR (its newest checkpoint), its checkpoints directory or
one step directory; the run's `adapters.json` gives the LoRA settings and the base, which
`--base` may name instead (the base's fingerprint is checked either way). The model comes
from the gin files given, else from the run's `config.gin`. OUT receives

  OUT/params/     Orbax `StandardCheckpointer` tree `{'params': merged}` in float32
  OUT/model.gin   the model's gin configuration

the layout `python -m t5x_ext.hf.convert` writes, so `checkpointing.restore_params(OUT)`,
`--gin.INITIAL_CHECKPOINT_PATH`, `python -m t5x_ext.eval` and
`python -m t5x_ext.hf.export --checkpoint=OUT` read it. The merged model computes what the
adapter run's model computes: `W + alpha / r * A @ B` on the base as the run held it (in
`LoraConfig.base_dtype`), stored in float32.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from t5x_ext.peft import adapters_io, lora
from t5x_ext.peft.trainer import LoraTrainer
from t5x_ext.training import checkpointing, memory_plan, partitioning

PARAMS_DIR = "params"
MODEL_GIN = "model.gin"
_GIN_NAMES = ("config.gin", MODEL_GIN)


def _shape_batch(model: Any) -> dict[str, np.ndarray]:
  # Parameter shapes do not depend on lengths; one short row is enough to build them.
  shapes = memory_plan.abstract_batch(model, {"inputs": 4, "targets": 4}, 1, pack=False)
  return {k: np.zeros(v.shape, v.dtype) for k, v in shapes.items()}


def merge_checkpoint(
  model: Any,
  adapters: str | os.PathLike,
  output_dir: str | os.PathLike,
  *,
  base: str | os.PathLike | None = None,
  mesh_shape: dict[str, int] | None = None,
) -> epath.Path:
  """Writes OUT/params: the base with the adapters of `adapters` folded in (float32).

  Args:
    model: the model the adapters were trained on.
    adapters: a LoRA run's MODEL_DIR, checkpoints directory or step directory.
    output_dir: OUT (its `params/` must not exist yet).
    base: the base checkpoint (default: the one the run's adapters.json names).
    mesh_shape: the mesh to merge on (default: all devices on `data`).

  Returns:
    The params directory written.

  Raises:
    FileNotFoundError: without an adapters.json at or above `adapters`.
    adapters_io.BaseMismatchError: when the base is not the one the adapters were trained on.
  """
  found = adapters_io.find_record(adapters)
  if found is None:
    raise FileNotFoundError(
      f"No {adapters_io.ADAPTERS_FILE} at or above --adapters={os.fspath(adapters)!r}: not a "
      "LoRA run directory."
    )
  _, record = found
  config = lora.LoraConfig.from_json(record["lora"])
  out = epath.Path(output_dir)
  params_dir = out / PARAMS_DIR
  if params_dir.exists():
    raise FileExistsError(f"output_dir={os.fspath(output_dir)!r} already holds {PARAMS_DIR}/")
  mesh = partitioning.make_mesh(mesh_shape)
  trainer = LoraTrainer(model, _identity_tx(), mesh, lora=config)
  batch = _shape_batch(model)
  base_params = trainer.load_base(base or record["base"]["path"], batch)
  adapters_io.check_base(record, base_params, where=os.fspath(adapters))
  abstract_adapters = trainer.abstract_state(batch).params
  adapter_params = checkpointing.restore_params(
    os.path.abspath(os.fspath(adapters)), abstract_adapters
  )
  merged = trainer.merged_params(adapter_params)
  out.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(params_dir, {"params": merged})
  checkpointer.wait_until_finished()
  checkpointer.close()
  return params_dir


def _identity_tx():
  import optax

  return optax.identity()


def _find_gin(path: str) -> str:
  start = epath.Path(os.path.abspath(path))
  for directory in [start, *list(start.parents)[:3]]:
    for name in _GIN_NAMES:
      if (directory / name).exists():
        return os.fspath(directory / name)
  raise FileNotFoundError(
    f"no config.gin or model.gin at or above --adapters={path!r}; pass the model's gin file "
    "with --gin_file"
  )


def main(argv: Sequence[str] | None = None) -> int:
  """The command line (see the module docstring).

  Args:
    argv: arguments (default `sys.argv[1:]`).

  Returns:
    0 on success.
  """
  import gin

  parser = argparse.ArgumentParser(prog="python -m t5x_ext.peft.merge", description=__doc__)
  parser.add_argument("--adapters", required=True, help="the LoRA run's MODEL_DIR or a step")
  parser.add_argument("--output_dir", required=True, help="OUT: writes OUT/params, OUT/model.gin")
  parser.add_argument("--base", default=None, help="base checkpoint (default: adapters.json's)")
  parser.add_argument("--gin_file", action="append", default=[], help="the model's gin files")
  parser.add_argument("--gin_bindings", action="append", default=[], help="extra bindings")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  gin_files = args.gin_file or [_find_gin(args.adapters)]
  gin.clear_config()
  from t5x_ext.launch import flags

  model = flags.model_from_gin(gin_files, args.gin_bindings)
  params_dir = merge_checkpoint(model, args.adapters, args.output_dir, base=args.base)
  (epath.Path(args.output_dir) / MODEL_GIN).write_text(gin.config_str())
  if jax.process_index() == 0:
    print(f"Merged {args.adapters} into {params_dir}")
  return 0


if __name__ == "__main__":
  from t5x_ext.launch import flags as _cli

  _cli.main_guard(main)  # its status; a user error exits 2, a bug 1 (docs/operations.md)
