"""Reads the tensors of a Transformers checkpoint directory into numpy arrays.

A directory written by `save_pretrained` holds either one `model.safetensors` or shards
listed in `model.safetensors.index.json` (`weight_map`: tensor name -> shard file). Tensors
are read with the `safetensors` numpy API, so neither torch nor Transformers is needed.
numpy has no bfloat16, which the safetensors numpy API rejects; such tensors are read from
the file's raw bytes and viewed as `ml_dtypes.bfloat16` (shipped with JAX).
"""

from __future__ import annotations

import json
import pathlib
import struct
from collections.abc import Iterable

import ml_dtypes
import numpy as np

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype tags that numpy cannot hold natively, read from the raw bytes instead.
_RAW_DTYPES = {"BF16": ml_dtypes.bfloat16}


def safetensors_files(directory: str | pathlib.Path) -> list[pathlib.Path]:
  """Lists the safetensors files of a checkpoint directory, in a stable order.

  Args:
    directory: a directory written by Transformers' `save_pretrained`.

  Returns:
    The single `model.safetensors`, or the shards named by `model.safetensors.index.json`.

  Raises:
    FileNotFoundError: when the directory holds neither (e.g. only `pytorch_model.bin`).
  """
  directory = pathlib.Path(directory)
  index = directory / INDEX_FILE
  if index.exists():
    weight_map = json.loads(index.read_text())["weight_map"]
    return [directory / name for name in sorted(set(weight_map.values()))]
  single = directory / SINGLE_FILE
  if single.exists():
    return [single]
  present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
  raise FileNotFoundError(
    f"hf_dir={str(directory)!r} has neither {SINGLE_FILE} nor {INDEX_FILE} (found {present}); "
    "save the model with save_pretrained(..., safe_serialization=True)"
  )


def _read_header(path: pathlib.Path) -> tuple[dict, int]:
  """Returns the JSON header of a safetensors file and the byte offset of its data."""
  with open(path, "rb") as f:
    (length,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(length))
  return header, 8 + length


def _read_raw(path: pathlib.Path, name: str, header: dict, data_start: int) -> np.ndarray:
  """Reads one tensor whose dtype numpy lacks, straight from the file's bytes."""
  info = header[name]
  begin, end = info["data_offsets"]
  dtype = _RAW_DTYPES[info["dtype"]]
  with open(path, "rb") as f:
    f.seek(data_start + begin)
    buf = f.read(end - begin)
  return np.frombuffer(buf, dtype=dtype).reshape(info["shape"]).copy()


def read_state_dict(directory: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads every tensor of a Transformers checkpoint directory.

  Args:
    directory: a directory written by `save_pretrained` (single file or sharded).

  Returns:
    Tensor name (e.g. `encoder.block.0.layer.0.SelfAttention.q.weight`) -> numpy array,
    in the dtype stored (float32, float16 or `ml_dtypes.bfloat16`).
  """
  from safetensors import safe_open

  tensors: dict[str, np.ndarray] = {}
  for path in safetensors_files(directory):
    header, data_start = _read_header(path)
    with safe_open(str(path), framework="numpy") as f:
      for name in f.keys():
        if header[name]["dtype"] in _RAW_DTYPES:
          tensors[name] = _read_raw(path, name, header, data_start)
        else:
          tensors[name] = f.get_tensor(name)
  return tensors


# numpy dtype -> safetensors dtype tag, for writing.
_WRITE_TAGS = {
  np.dtype(np.float32): "F32",
  np.dtype(np.float16): "F16",
  np.dtype(ml_dtypes.bfloat16): "BF16",
  np.dtype(np.int32): "I32",
  np.dtype(np.int64): "I64",
}


def write_safetensors(
  path: str | pathlib.Path,
  layout: list[tuple[str, tuple[int, ...], np.dtype]],
  values: Iterable[np.ndarray],
  *,
  metadata: dict[str, str] | None = None,
) -> int:
  """Writes one safetensors file tensor by tensor, holding one tensor in memory at a time.

  The header (names, dtypes, shapes, byte offsets) is written first from `layout`; then each
  array of `values` is checked against its entry and appended. The file is written under a
  temporary name and renamed when complete, so a reader never sees half a file.

  Args:
    path: the file to write.
    layout: (name, shape, dtype) of each tensor, in the order `values` yields them.
    values: the arrays (numpy, C order is enforced here), e.g. a generator.
    metadata: string metadata for the header (`{'format': 'pt'}` for Transformers).

  Returns:
    Bytes of tensor data written.

  Raises:
    ValueError: when an array's shape or dtype differs from its layout entry, or a dtype
      has no safetensors tag.
  """
  path = pathlib.Path(path)
  header: dict = {"__metadata__": dict(metadata or {})} if metadata else {}
  offset = 0
  for name, shape, dtype in layout:
    dtype = np.dtype(dtype)
    if dtype not in _WRITE_TAGS:
      raise ValueError(f"tensor {name!r}: dtype {dtype} has no safetensors tag")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    header[name] = {
      "dtype": _WRITE_TAGS[dtype],
      "shape": list(shape),
      "data_offsets": [offset, offset + nbytes],
    }
    offset += nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors writes it
  tmp = path.with_name(path.name + ".tmp")
  count = 0
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for (name, shape, dtype), value in zip(layout, values, strict=True):
      value = np.asarray(value)
      if value.shape != tuple(shape) or value.dtype != np.dtype(dtype):
        raise ValueError(
          f"tensor {name!r}: got {value.dtype}{list(value.shape)}, the header says "
          f"{np.dtype(dtype)}{list(shape)}"
        )
      # C order, written without a copy when the array is contiguous already; safetensors
      # is little-endian, as are the hosts this runs on (x86, ARM).
      f.write(np.ascontiguousarray(value).reshape(-1).view(np.uint8).data)
      count += value.nbytes
  tmp.replace(path)
  return count
