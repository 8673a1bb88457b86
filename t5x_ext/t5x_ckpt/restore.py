"""Parameters from a T5X checkpoint, straight into their shardings, slice by slice.

`restore_params(path, abstract_params)` builds each parameter with
`jax.make_array_from_callback`: the callback gets the index of one device's shard and reads
just that slice from the zarr array (TensorStore reads only the chunks it touches). Each host
thus reads only what its own devices hold, and no host ever holds the whole model; a
parameter replicated over several devices is read once per host. This is what
`t5x_ext.training.checkpointing.restore_params` (fine-tuning's `INITIAL_CHECKPOINT_PATH`, eval's
`CHECKPOINT_PATH`) does when given a T5X checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from t5x_ext.t5x_ckpt import names, tree
from t5x_ext.t5x_ckpt.t5x_format import T5XCheckpoint


def _index_key(index: tuple) -> tuple:
  return tuple((s.start, s.stop) if isinstance(s, slice) else s for s in index)


def restore_params(path: str | os.PathLike, abstract_params: Mapping[str, Any]) -> dict[str, Any]:
  """Reads a T5X checkpoint's params into the target's shapes, dtypes and shardings.

  Args:
    path: the `checkpoint` file, a `checkpoint_<step>/` directory, or a T5X MODEL_DIR (the
      newest step).
    abstract_params: the model's unboxed params as `jax.ShapeDtypeStruct`s (or arrays);
      leaves with a `.sharding` are built in it, others on the first local device.

  Returns:
    The params tree (nested dicts of `jax.Array`), values cast to the target dtypes.

  Raises:
    t5x_ext.t5x_ckpt.names.ParamMismatchError: when names or shapes do not fit (all of them
      are listed, with both shapes).
  """
  ckpt = T5XCheckpoint(path)
  flat = tree.flatten(abstract_params)
  readers = names.plan(
    ckpt.params, {n: tuple(x.shape) for n, x in flat.items()}, where=str(ckpt.directory)
  )
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  out = {}
  for name, x in flat.items():
    reader, dtype = readers[name], np.dtype(x.dtype)
    sharding = getattr(x, "sharding", None) or default
    cache: dict[tuple, np.ndarray] = {}

    def read(index, reader=reader, dtype=dtype, cache=cache):
      key = _index_key(index)
      if key not in cache:  # replicas of a shard on this host read it once
        cache[key] = np.asarray(reader.read(index), dtype=dtype)
      return cache[key]

    out[name] = jax.make_array_from_callback(tuple(x.shape), sharding, read)
    cache.clear()
  return tree.nest(out)


def read_params(
  path: str | os.PathLike, target_shapes: Mapping[str, tuple[int, ...]], dtype=None
) -> dict[str, Any]:
  """Reads whole parameters into numpy (small models, tests, tools), checked like the restore.

  Args:
    path: as for `restore_params`.
    target_shapes: `{'/'-joined t5x_ext name: shape}` (scanned or not).
    dtype: cast to this dtype (default: as stored).

  Returns:
    Nested dicts of numpy arrays with the t5x_ext names.
  """
  ckpt = T5XCheckpoint(path)
  readers = names.plan(ckpt.params, target_shapes, where=str(ckpt.directory))
  flat = {n: r.read() for n, r in readers.items()}
  if dtype is not None:
    flat = {n: np.asarray(v, dtype) for n, v in flat.items()}
  return tree.nest(flat)
