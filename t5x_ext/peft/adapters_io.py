"""What an adapter run records of its base: `MODEL_DIR/adapters.json`.

An adapter checkpoint (`MODEL_DIR/checkpoints/<step>/`, written by `Checkpointer`) holds the
adapters and their optimizer state only. Beside it, `adapters.json` says what they adapt:

  {"method": "lora", "lora": {...LoraConfig...},
   "base": {"path": "/abs/base", "fingerprint": "sha256:...", "dtype": "bfloat16"}}

The fingerprint is a checksum of the base params as the run held them (values, names, shapes
and dtypes), so a resume or a merge with other base weights fails with a message instead of
silently adapting the wrong model. It is exact on any mesh (integer sums of the bits).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

ADAPTERS_FILE = "adapters.json"


class BaseMismatchError(ValueError):
  """The base params differ from those the adapters were trained on."""


_BITS = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


@jax.jit
def _checksums(leaves):
  out = []
  for x in leaves:
    size = x.dtype.itemsize
    # Wide leaves (8 bytes) are rare in params; their values are summed after a cast.
    bits = jax.lax.bitcast_convert_type(x, _BITS[size]) if size in _BITS else x.astype(jnp.uint32)
    bits = bits.astype(jnp.uint32).reshape(-1)
    index = jnp.arange(1, bits.size + 1, dtype=jnp.uint32)
    # Wrapping uint32 sums: exact, so the same on every mesh and in any reduction order.
    out.append(
      jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * index, dtype=jnp.uint32)])
    )
  return out


def fingerprint(tree: Any) -> str:
  """A checksum of a params tree: its paths, shapes, dtypes and every value's bits.

  Args:
    tree: arrays (sharded or not).

  Returns:
    `"sha256:<hex>"`.
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  sums = jax.device_get(_checksums([x for _, x in flat])) if flat else []
  h = hashlib.sha256()
  for (path, x), s in zip(flat, sums):
    h.update(f"{jax.tree_util.keystr(path)}|{tuple(x.shape)}|{x.dtype}|".encode())
    h.update(np.asarray(s, np.uint32).tobytes())
  return "sha256:" + h.hexdigest()


def absolute(path: str | os.PathLike) -> str:
  """`path` made absolute (object-store URLs are left as they are)."""
  path = os.fspath(path)
  return path if "://" in path else os.path.abspath(path)


def write_record(model_dir: str | os.PathLike, record: Mapping[str, Any]) -> None:
  """Writes `MODEL_DIR/adapters.json` (process 0 only).

  Args:
    model_dir: the run directory.
    record: `{"method", "lora", "base": {"path", "fingerprint", "dtype"}}`.
  """
  if jax.process_index() != 0:
    return
  path = epath.Path(model_dir) / ADAPTERS_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(dict(record), indent=2, sort_keys=True) + "\n")


def find_record(path: str | os.PathLike) -> tuple[epath.Path, dict[str, Any]] | None:
  """The nearest `adapters.json` at or up to three directories above `path`.

  Args:
    path: a MODEL_DIR, its checkpoints directory, or a step directory.

  Returns:
    `(run directory, record)`, or None.
  """
  start = epath.Path(absolute(path))
  for directory in [start, *list(start.parents)[:3]]:
    candidate = directory / ADAPTERS_FILE
    if candidate.exists():
      return directory, json.loads(candidate.read_text())
  return None


def base_record(path: str | os.PathLike, base: Any, dtype: str) -> dict[str, Any]:
  """The `base` entry of the record for base params `base` read from `path`."""
  return {"path": absolute(path), "fingerprint": fingerprint(base), "dtype": dtype}


def check_base(record: Mapping[str, Any], base: Any, *, where: str) -> None:
  """Raises `BaseMismatchError` when `base` is not the base `record` names.

  Args:
    record: the run's `adapters.json` content.
    base: the base params as loaded now (in the record's dtype).
    where: what is being checked, for the message (e.g. the MODEL_DIR).
  """
  wanted = record["base"]["fingerprint"]
  got = fingerprint(base)
  if got != wanted:
    raise BaseMismatchError(
      f"The base params differ from those the adapters in {where} were trained on "
      f"(recorded base {record['base']['path']}, {wanted}; now {got}). Use the same base "
      "checkpoint (and LoraConfig.base_dtype) as the adapter run."
    )
