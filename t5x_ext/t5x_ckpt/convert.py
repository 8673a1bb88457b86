"""Converts a native T5X checkpoint into this project's checkpoint layout, tensor by tensor.

  python -m t5x_ext.t5x_ckpt.convert --t5x_checkpoint=DIR --output_dir=OUT
      [--dtype=bfloat16] [--scan_layers] [--dropout_rate=R] [--activations=silu,linear]

writes what `python -m t5x_ext.hf.convert` writes:

  OUT/params/       Orbax PyTree checkpoint `{'params': params}` (float32), which
                    `t5x_ext.training.checkpointing.restore_params` reads
  OUT/model.gin     the network as a gin model file (defines `MODEL` and `VOCAB_SIZE`)
  OUT/t5x_config.gin  the source's config.gin, when one lay beside the checkpoint

DIR is a `checkpoint_<step>/` directory, its `checkpoint` file, or a T5X MODEL_DIR (newest
step). Dimensions come from the shapes; the MLP activation, relative-position max distance
and dropout from the `config.gin` T5X wrote beside the checkpoints (the step directory or its
parent); `--activations` is needed when there is none and the model is not T5.1.1
(gated-gelu), e.g. `silu,linear` for UL2. Parameters are read, cast and written one at a
time, so the peak memory is about one parameter (in float32), not the model.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
from collections.abc import Callable

import numpy as np

from t5x_ext.t5x_ckpt import gin_values, names, tree
from t5x_ext.t5x_ckpt.t5x_format import T5XCheckpoint

PARAMS_DIR = "params"
MODEL_GIN = "model.gin"
SOURCE_GIN = "t5x_config.gin"


class LazyArray:
  """A parameter that is read only when the writer reaches it.

  Args:
    shape: its shape.
    dtype: its dtype once loaded.
    load: returns the numpy array.
  """

  def __init__(self, shape: tuple[int, ...], dtype, load: Callable[[], np.ndarray]):
    self.shape, self.dtype, self._load = tuple(shape), np.dtype(dtype), load

  @property
  def ndim(self) -> int:
    """Number of dimensions."""
    return len(self.shape)

  @property
  def size(self) -> int:
    """Number of elements."""
    return int(np.prod(self.shape, dtype=np.int64))

  @property
  def nbytes(self) -> int:
    """Size once loaded."""
    return self.size * self.dtype.itemsize

  def load(self) -> np.ndarray:
    """Reads the array.

    Returns:
      The numpy array, in `dtype`.
    """
    return np.asarray(self._load(), dtype=self.dtype)


def _streaming_handler():
  import orbax.checkpoint as ocp
  from orbax.checkpoint import future

  class StreamingNumpyHandler(ocp.type_handlers.NumpyHandler):
    """Writes `LazyArray` leaves as numpy arrays, one after the other (Orbax's own handler
    writes all leaves of a save concurrently, which needs them all in memory)."""

    async def serialize(self, values, infos, args=None):
      args = args or [ocp.SaveArgs()] * len(values)
      return [
        future.CommitFutureAwaitingContractedSignals(
          self._write_in_turn(values, infos, args), name="t5x_ckpt_streaming"
        )
      ]

    async def _write_in_turn(self, values, infos, args):
      for value, info, arg in zip(values, infos, args, strict=True):
        array = value.load()
        await ocp.type_handlers.NumpyHandler._background_serialize(self, [array], [info], [arg])
        del array

  return StreamingNumpyHandler(deepcopy_host_arrays=False)


def save_streaming(directory: pathlib.Path, tree) -> None:
  """Saves a tree of `LazyArray`s as an Orbax PyTree checkpoint, loading one leaf at a time.

  The result is what `ocp.StandardCheckpointer().save(directory, arrays)` writes for the
  loaded arrays; `restore_params` and `StandardCheckpointer.restore` read it.

  Args:
    directory: the checkpoint directory to create.
    tree: nested dicts of `LazyArray`.
  """
  import jax
  import orbax.checkpoint as ocp
  from orbax.checkpoint._src.serialization import type_handler_registry

  registry = type_handler_registry.create_type_handler_registry(
    (LazyArray, _streaming_handler()), (jax.Array, ocp.type_handlers.ArrayHandler())
  )
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry))
  try:
    checkpointer.save(directory, args=ocp.args.PyTreeSave(tree))
  finally:
    checkpointer.close()


def model_shapes(config) -> dict[str, tuple[int, ...]]:
  """`{'/'-joined name: shape}` of `network.EncoderDecoder(config)`'s params (abstract).

  Args:
    config: a `TransformerConfig`.

  Returns:
    The flat shapes, computed with `jax.eval_shape` (nothing allocated).
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from t5x_ext.model import network

  tokens = jnp.ones((1, 4), jnp.int32)
  abstract = jax.eval_shape(
    lambda: network.EncoderDecoder(config).init(jax.random.key(0), tokens, tokens, tokens)
  )["params"]
  return {k: tuple(v.shape) for k, v in names.flatten(nn.unbox(abstract)).items()}


def convert(
  t5x_checkpoint: str | pathlib.Path,
  output_dir: str | pathlib.Path,
  *,
  dtype: str = "bfloat16",
  scan_layers: bool = False,
  dropout_rate: float | None = None,
  activations: tuple[str, ...] | None = None,
) -> pathlib.Path:
  """Converts a T5X checkpoint into `output_dir` (see the module docstring).

  Args:
    t5x_checkpoint: a step directory, its `checkpoint` file, or a T5X MODEL_DIR.
    output_dir: where to write; must not already hold converted params.
    dtype: compute dtype recorded in model.gin (params are stored in float32).
    scan_layers: stacked-layer parameter layout (and `scan_layers` in model.gin).
    dropout_rate: dropout recorded in model.gin; None takes config.gin's (else 0).
    activations: MLP activations; None takes config.gin's (else T5.1.1's for a gated MLP).

  Returns:
    The params directory.

  Raises:
    FileExistsError: when `output_dir/params` exists.
    t5x_ext.t5x_ckpt.names.ParamMismatchError: when the checkpoint does not fit the network.
  """
  from t5x_ext.hf.convert import model_gin

  output_dir = pathlib.Path(output_dir).resolve()
  params_dir = output_dir / PARAMS_DIR
  if params_dir.exists():
    raise FileExistsError(f"output_dir={str(output_dir)!r} already holds {PARAMS_DIR}/")
  ckpt = T5XCheckpoint(t5x_checkpoint)
  gin_path = ckpt.config_gin()
  gin = gin_values.GinValues.read(gin_path) if gin_path else None
  views = names.source_views(ckpt.params)
  overrides = {"dtype": dtype, "scan_layers": scan_layers, "param_dtype": "float32"}
  if dropout_rate is not None:
    overrides["dropout_rate"] = dropout_rate
  if activations is not None:
    overrides["activations"] = tuple(activations)
  config, notes = gin_values.infer_config({n: v.shape for n, v in views.items()}, gin, **overrides)
  readers = names.plan(ckpt.params, model_shapes(config), where=str(ckpt.directory))
  lazy = {n: LazyArray(r.shape, np.float32, r.read) for n, r in readers.items()}
  output_dir.mkdir(parents=True, exist_ok=True)
  save_streaming(params_dir, {"params": tree.nest(lazy)})
  source = str(ckpt.directory)
  header = [
    f"# Converted from the T5X checkpoint {source} (format version {ckpt.version}).",
    f"# MLP activations {tuple(config.activations)} from: {notes['activations']}; "
    f"relative-position max distance from: {notes['relative_attention_max_distance']}.",
    "# Written by `python -m t5x_ext.t5x_ckpt.convert`; params in ../params (restore_params).",
  ]
  (output_dir / MODEL_GIN).write_text(model_gin(config, None, source, header=header))
  if gin_path:
    shutil.copyfile(gin_path, output_dir / SOURCE_GIN)
  return params_dir


def main(argv: list[str] | None = None) -> int:
  """Command-line entry point; returns the exit status.

  Args:
    argv: arguments without the program name (default: sys.argv[1:]).

  Returns:
    0 on success.
  """
  parser = argparse.ArgumentParser(
    prog="python -m t5x_ext.t5x_ckpt.convert", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument(
    "--t5x_checkpoint", required=True, help="checkpoint_<step>/ dir, its file, or a MODEL_DIR"
  )
  parser.add_argument("--output_dir", required=True, help="where to write params/ and model.gin")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--scan_layers", action="store_true")
  parser.add_argument("--dropout_rate", type=float, default=None)
  parser.add_argument(
    "--activations", default=None, help="comma-separated MLP activations, e.g. silu,linear"
  )
  args = parser.parse_args(argv)
  params_dir = convert(
    args.t5x_checkpoint,
    args.output_dir,
    dtype=args.dtype,
    scan_layers=args.scan_layers,
    dropout_rate=args.dropout_rate,
    activations=tuple(args.activations.split(",")) if args.activations else None,
  )
  out = pathlib.Path(args.output_dir)
  print(json.dumps({"params": str(params_dir), "model_gin": str(out / MODEL_GIN)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
