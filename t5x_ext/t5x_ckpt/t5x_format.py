"""The native T5X checkpoint format: read and write, with TensorStore, one tensor at a time.

A T5X checkpoint (t5x `checkpoints.Checkpointer`, format version 3) is a directory

```
checkpoint_<step>/
  checkpoint                        msgpack (flax.serialization) of
                                    {'version': 3, 'optimizer': {'target': params,
                                                                 'state': optimizer state}}
  target.encoder.layers_0.attention.query.kernel/   one zarr array per large leaf
  ...
```

Each leaf of the msgpack tree is either a small array stored inline (flax's ndarray ext
type) or a TensorStore spec (a dict) whose `kvstore.path` is relative to the step
directory: the leaf's '/'-joined tree path with '/' replaced by '.', e.g.
`target.encoder.layers_0.attention.query.kernel`. bfloat16 arrays are stored as zarr
`bfloat16` since version 3 (version 2 cast them to uint16, which this reader refuses, as t5x
does). Checkpoints written to GCS name the kvstore driver 'gcs' with a placeholder bucket;
copied to a local disk they are read with the 'file' driver. Nothing is read until asked for:
`TensorRef.read(index)` reads one slice of one tensor.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorstore as ts
from flax import serialization

from t5x_ext.t5x_ckpt.tree import flatten, nest

VERSION = 3
CHECKPOINT_FILE = "checkpoint"
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")
# Chunks of at most 64 MiB, like t5x, so that sharded reads touch few bytes they do not need.
_CHUNK_BYTES = 64 * 1024 * 1024
_GZIP = {"id": "gzip"}


class T5XFormatError(ValueError):
  """A directory or file that is not a readable native T5X checkpoint."""


def _np_dtype(name: str) -> np.dtype:
  if name == "bfloat16":
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


def _is_spec(x: Any) -> bool:
  return isinstance(x, Mapping) and "driver" in x and "kvstore" in x


def find_checkpoint_file(path: str | os.PathLike) -> pathlib.Path:
  """The msgpack `checkpoint` file that `path` designates.

  Args:
    path: the `checkpoint` file itself, a step directory `checkpoint_<step>/`, or the
      directory holding step directories (the newest step is taken).

  Returns:
    The file's path.

  Raises:
    FileNotFoundError: when `path` is none of these.
  """
  path = pathlib.Path(path)
  if path.is_file():
    return path
  if (path / CHECKPOINT_FILE).is_file():
    return path / CHECKPOINT_FILE
  steps = step_dirs(path)
  if steps:
    return steps[max(steps)] / CHECKPOINT_FILE
  raise FileNotFoundError(
    f"No T5X checkpoint at {path}: expected a 'checkpoint' msgpack file, a checkpoint_<step> "
    "directory holding one, or a directory of checkpoint_<step> directories."
  )


def step_dirs(path: str | os.PathLike) -> dict[int, pathlib.Path]:
  """The complete T5X step directories (`checkpoint_<step>/checkpoint`) directly under `path`.

  Args:
    path: a directory (a T5X MODEL_DIR).

  Returns:
    `{step: directory}`; empty when there is none.
  """
  path = pathlib.Path(path)
  if not path.is_dir():
    return {}
  out = {}
  for child in path.iterdir():
    m = _STEP_DIR.match(child.name)
    if m and (child / CHECKPOINT_FILE).is_file():
      out[int(m.group(1))] = child
  return out


def is_t5x_checkpoint(path: str | os.PathLike) -> bool:
  """Whether `path` looks like a native T5X checkpoint (cheap: names only, no read).

  Orbax directories (with `_METADATA`) are not T5X checkpoints even when they hold a file
  named `checkpoint` (older Orbax wrote its msgpack aggregate under that name).

  Args:
    path: a file or directory.

  Returns:
    True for a `checkpoint` file, a step directory or a directory of step directories.
  """
  path = pathlib.Path(path)
  if path.is_file():
    return path.name == CHECKPOINT_FILE and not (path.parent / "_METADATA").exists()
  if (path / CHECKPOINT_FILE).is_file():
    return not (path / "_METADATA").exists()
  return bool(step_dirs(path))


class TensorRef:
  """One leaf of a T5X checkpoint: inline array or TensorStore array, read slice by slice.

  Attributes:
    name: the '/'-joined path inside the target tree (`encoder/layers_0/mlp/wo/kernel`).
    shape: the stored shape.
    dtype: the stored numpy dtype (bfloat16 via ml_dtypes).
  """

  def __init__(self, name: str, value: Any, directory: pathlib.Path):
    self.name = name
    self._store = None
    if _is_spec(value):
      self._spec = _absolute_spec(value, directory, name)
      self._inline = None
      meta = self._spec.get("metadata", {})
      if "shape" not in meta:
        raise T5XFormatError(f"{name}: TensorStore spec without metadata.shape: {value}")
      self.shape = tuple(int(d) for d in meta["shape"])
      self.dtype = _spec_dtype(self._spec, name)
    else:
      self._spec = None
      self._inline = np.asarray(value)
      self.shape = self._inline.shape
      self.dtype = self._inline.dtype

  @property
  def inline(self) -> bool:
    """Whether the value lives in the msgpack file rather than in its own zarr array."""
    return self._inline is not None

  @property
  def nbytes(self) -> int:
    """Size of the whole tensor in bytes."""
    return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

  def _open(self):
    if self._store is None:
      self._store = ts.open(self._spec, open=True, read=True).result()
      if tuple(self._store.shape) != self.shape:
        raise T5XFormatError(
          f"{self.name}: the zarr array has shape {tuple(self._store.shape)}, the msgpack spec "
          f"says {self.shape}"
        )
    return self._store

  def read(self, index: tuple = ()) -> np.ndarray:
    """Reads `tensor[index]` (a tuple of ints/slices; `()` reads everything).

    Args:
      index: numpy basic index.

    Returns:
      A numpy array in the stored dtype.
    """
    if self._inline is not None:
      return np.asarray(self._inline[index])
    return np.asarray(self._open()[index].read().result())

  def __repr__(self) -> str:
    where = "inline" if self.inline else "tensorstore"
    return f"TensorRef({self.name!r}, shape={self.shape}, dtype={self.dtype}, {where})"


def _spec_dtype(spec: Mapping[str, Any], name: str) -> np.dtype:
  dtype = spec.get("dtype")
  meta_dtype = spec.get("metadata", {}).get("dtype")
  if dtype == "uint16" or meta_dtype == "<u2":
    raise T5XFormatError(
      f"{name}: stored as uint16, i.e. bfloat16 written by T5X checkpoint format version 2; "
      "only version 3 (native bfloat16) is supported, as in t5x itself. Re-save it with a "
      "recent t5x."
    )
  if dtype is None and meta_dtype is not None:
    return _np_dtype("bfloat16") if meta_dtype == "bfloat16" else np.dtype(meta_dtype)
  if dtype is None:
    raise T5XFormatError(f"{name}: TensorStore spec without a dtype")
  return _np_dtype(dtype)


def _absolute_spec(spec: Mapping[str, Any], directory: pathlib.Path, name: str) -> dict:
  """A spec that opens the array on the local disk: relative path joined to the step dir,
  'gcs'/'gfile' drivers replaced by 'file' (a checkpoint copied from GCS with gsutil)."""
  kvstore = dict(spec["kvstore"])
  if "path" in kvstore:
    rel = kvstore["path"]
  elif "path" in spec:  # tensorstore < 0.1.14 put the path beside the kvstore
    rel = spec["path"]
  else:
    raise T5XFormatError(f"{name}: TensorStore spec without a path: {dict(spec)}")
  if kvstore.get("driver") not in ("file", "gfile", "gcs"):
    raise T5XFormatError(
      f"{name}: unsupported TensorStore kvstore driver {kvstore.get('driver')!r}"
    )
  out = {k: v for k, v in spec.items() if k not in ("kvstore", "path")}
  # Drop the write-time layout (chunks, compressor): the zarr array's own .zarray has them.
  out["metadata"] = {"shape": list(spec.get("metadata", {}).get("shape", ()))}
  if not out["metadata"]["shape"] and "shape" not in spec.get("metadata", {}):
    out.pop("metadata")
  rel = rel.rstrip("/")
  if rel.startswith("gs://") or os.path.isabs(rel):
    rel = os.path.basename(rel)  # an absolute path of the machine that wrote it
  out["kvstore"] = {"driver": "file", "path": str(directory / rel) + "/"}
  return out


class T5XCheckpoint:
  """An opened native T5X checkpoint; tensors are read on demand.

  Args:
    path: the `checkpoint` file, its step directory, or a directory of step directories.

  Attributes:
    path: the msgpack file.
    directory: the step directory.
    step: the step from the directory name (None when the name has none).
    version: the format version (0 for a plain flax checkpoint).
    params: `{name: TensorRef}` for every leaf of the target (the model's parameters),
      names '/'-joined (`decoder/logits_dense/kernel`).
  """

  def __init__(self, path: str | os.PathLike):
    self.path = find_checkpoint_file(path)
    self.directory = self.path.parent
    m = _STEP_DIR.match(self.directory.name)
    self.step = int(m.group(1)) if m else None
    raw = self.path.read_bytes()
    if raw.startswith(b"model_checkpoint_path"):
      raise T5XFormatError(
        f"{self.path} is a TensorFlow (Mesh TF) checkpoint index, not a native T5X checkpoint."
      )
    try:
      contents = serialization.msgpack_restore(raw)
    except Exception as e:  # noqa: BLE001 - any decode error means "not this format"
      raise T5XFormatError(f"{self.path} is not a msgpack T5X checkpoint: {e}") from e
    if not isinstance(contents, Mapping):
      raise T5XFormatError(f"{self.path}: top level is {type(contents).__name__}, not a map")
    self.version = int(contents.get("version", 0))
    if self.version == 1 or self.version > VERSION:
      raise T5XFormatError(
        f"{self.path}: T5X checkpoint format version {self.version} is not supported "
        f"(supported: 2 without bfloat16, {VERSION}, and 0 = a plain flax checkpoint)."
      )
    optimizer = contents if self.version == 0 else contents.get("optimizer")
    if not isinstance(optimizer, Mapping) or "target" not in optimizer:
      keys = list(optimizer) if isinstance(optimizer, Mapping) else type(optimizer).__name__
      raise T5XFormatError(f"{self.path}: no optimizer 'target' (the params) in it ({keys})")
    flat = flatten(optimizer["target"], is_leaf=_is_spec)
    self.params = {name: TensorRef(name, v, self.directory) for name, v in flat.items()}

  def config_gin(self) -> pathlib.Path | None:
    """The `config.gin` T5X wrote beside the checkpoints (MODEL_DIR), if any.

    Returns:
      Its path, looked up in the step directory and its parent, or None.
    """
    for d in (self.directory, self.directory.parent):
      if (d / "config.gin").is_file():
        return d / "config.gin"
    return None

  def __repr__(self) -> str:
    return (
      f"T5XCheckpoint({str(self.directory)!r}, version={self.version}, {len(self.params)} params)"
    )


def _chunk_shape(shape: tuple[int, ...], itemsize: int) -> list[int]:
  """A chunk shape dividing `shape` with at most `_CHUNK_BYTES`: repeatedly shrink the largest
  dimension to its next smaller divisor."""
  chunk = list(shape)
  limit = max(1, _CHUNK_BYTES // itemsize)
  while int(np.prod(chunk, dtype=np.int64)) > limit:
    axis = int(np.argmax(chunk))
    n, size = shape[axis], chunk[axis]
    chunk[axis] = max(d for d in range(1, size) if n % d == 0) if size > 1 else 1
  return [max(1, c) for c in chunk]


def _write_zarr(directory: pathlib.Path, name: str, array: np.ndarray, compressor) -> dict:
  rel = "target." + name.replace("/", ".")  # t5x names arrays by their state-dict path
  dtype = "bfloat16" if array.dtype.name == "bfloat16" else array.dtype.name
  spec = {
    "driver": "zarr",
    "dtype": dtype,
    "kvstore": {"driver": "file", "path": rel},
    "metadata": {
      "compressor": compressor,
      "shape": list(array.shape),
      "chunks": _chunk_shape(array.shape, array.dtype.itemsize),
    },
  }
  absolute = dict(spec, kvstore={"driver": "file", "path": str(directory / rel)})
  store = ts.open(absolute, create=True, open=True).result()
  store.write(array).result()
  return spec


ArrayOrFactory = np.ndarray | Callable[[], np.ndarray]


def write_checkpoint(
  model_dir: str | os.PathLike,
  step: int,
  target: Mapping[str, ArrayOrFactory],
  *,
  state: Mapping[str, Any] | None = None,
  inline: Callable[[str, np.ndarray], bool] | None = None,
  compressor: dict | None = _GZIP,
) -> pathlib.Path:
  """Writes `model_dir/checkpoint_<step>/` in T5X format version 3.

  Tensors are written one at a time (a value may be a zero-argument function returning the
  array, called when its turn comes), so a writer of synthetic or converted weights never
  holds the whole model. The directory is written under a temporary name and renamed when
  complete, as T5X does.

  Args:
    model_dir: the T5X MODEL_DIR (created if missing).
    step: the step number.
    target: `{'/'-joined name: array or factory}`: the parameters, in the naming of the
      network that will read them (see `t5x_ext.t5x_ckpt.names`).
    state: the optimizer state tree stored beside the target (default `{'step': step}`);
      its arrays are stored inline.
    inline: `(name, array) -> bool`, True to store that tensor inside the msgpack file
      instead of its own zarr array (T5X does so for unpartitioned leaves). Default: none.
    compressor: the zarr compressor; T5X writes gzip (the default), None stores raw chunks
      (faster to write and read; readers need no change).

  Returns:
    The step directory.

  Raises:
    FileExistsError: when the step directory exists already.
  """
  final = pathlib.Path(model_dir) / f"checkpoint_{step}"
  if final.exists():
    raise FileExistsError(f"{final} exists already")
  tmp = final.parent / f"{final.name}.tmp-{os.getpid()}"
  if tmp.exists():
    shutil.rmtree(tmp)
  tmp.mkdir(parents=True)
  leaves: dict = {}
  for name, value in target.items():
    array = value() if callable(value) else value
    array = np.asarray(array)
    if inline is not None and inline(name, array):
      leaf = array
    else:
      leaf = _write_zarr(tmp, name, array, compressor)
    leaves[name] = leaf
    del array
  optimizer = {
    "target": nest(leaves),
    "state": dict(state) if state is not None else {"step": np.int32(step)},
  }
  payload = serialization.msgpack_serialize({"version": VERSION, "optimizer": optimizer})
  (tmp / CHECKPOINT_FILE).write_bytes(payload)
  tmp.rename(final)
  return final
