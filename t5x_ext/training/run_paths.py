"""Run outputs wherever MODEL_DIR says: a local folder or an object store (`gs://`, `s3://`).

Every file a run writes or reads under MODEL_DIR (metrics, eval and suite results, inference
output, ablation records, the lock, config.gin, the memory plan, checkpoints) goes through
`path(...)`, an `etils.epath.Path`: `pathlib.Path('gs://bucket/run')` would be the local
folder `gs:/bucket/run`.

How `gs://` is reached (`configure_clients`, run once when this module is imported):

  - etils.epath uses fsspec, i.e. gcsfs, when gcsfs is installed (`EPATH_USE_TF=false`):
    the training side then never imports TensorFlow for a bucket MODEL_DIR, and gcsfs, like
    Google's own clients, honours `STORAGE_EMULATOR_HOST`. Without gcsfs epath falls back to
    TensorFlow's GCS filesystem (real GCS only: it ignores the emulator variable).
  - With `STORAGE_EMULATOR_HOST` set (a GCS emulator, as in tests/gcs_emulator.py), the two
    clients that do not read it are pointed at it too: tensorstore, which writes Orbax's
    arrays (`TENSORSTORE_GCS_HTTP_URL`), and gcsfs's probe of the bucket layout over gRPC,
    which an emulator does not serve and which would wait for its timeout
    (`GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`, read when gcsfs is imported).

  Variables already set are left alone, so a user can override each choice.

  - gcsfs's cache of directory listings is off (`use_listings_cache=False` in fsspec's
    config for `gs`): by default it keeps a listing forever, so objects written after it by
    another process, or by tensorstore in this one (a checkpoint's arrays and its
    commit_success.txt), stay invisible to `exists`/`iterdir` (a finished checkpoint would
    read as missing).

Object stores have no append and no rename: `append_text` rewrites the object, and
`write_text_atomic` writes the object in one upload (an object store never shows a
half-written object) where a local file goes through a temporary name and `os.replace`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

from etils import epath


def is_object_store(p: str | os.PathLike) -> bool:
  """True for `scheme://...` paths (gs://, s3://, ...), False for local ones."""
  return "://" in os.fspath(p)


def configure_clients() -> None:
  """Sets the environment through which epath, gcsfs and tensorstore reach `gs://`.

  Cheap and idempotent (called for every `path`, so an emulator named after import is
  found); see the module docstring. Only variables not already set are set.
  """
  changed = False
  if "EPATH_USE_TF" not in os.environ and importlib.util.find_spec("gcsfs") is not None:
    os.environ["EPATH_USE_TF"] = "false"
    changed = True
  emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
  if emulator and emulator != "default":
    url = emulator if emulator.startswith(("http://", "https://")) else f"http://{emulator}"
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
  if os.environ.get("EPATH_USE_TF") == "false":
    import fsspec.config

    for proto in ("gs", "gcs"):
      conf = fsspec.config.conf.setdefault(proto, {})
      if "use_listings_cache" not in conf:
        conf["use_listings_cache"] = False
        changed = True
  if changed:  # epath caches its backend choice and its filesystems: forget those made before
    with contextlib.suppress(Exception):
      from etils.epath import backend, gpath

      gpath._is_tf_installed.cache_clear()
      backend.fsspec_backend._get_filesystem.cache_clear()


def path(p: str | os.PathLike, *parts: str) -> epath.Path:
  """`epath.Path(p, *parts)`, for local paths and object stores alike.

  Args:
    p: a local path or a `scheme://` URL (MODEL_DIR, or a file under it).
    *parts: more components to join.

  Returns:
    The path; local relative paths stay relative (to the working directory).
  """
  configure_clients()
  if isinstance(p, epath.Path):
    return p.joinpath(*parts) if parts else p
  return epath.Path(os.fspath(p), *parts)


def append_text(p: str | os.PathLike, text: str) -> None:
  """Appends `text` to a file; on an object store, rewrites the object with `text` added.

  Args:
    p: the file (created with its parents if missing).
    text: what to add.
  """
  f = path(p)
  f.parent.mkdir(parents=True, exist_ok=True)
  if is_object_store(f):
    old = f.read_text() if f.exists() else ""
    f.write_text(old + text)
  else:
    with f.open("a") as out:
      out.write(text)


def write_text_atomic(p: str | os.PathLike, text: str) -> None:
  """Writes a whole file so that a reader sees the old or the new content, never a part.

  Args:
    p: the file (parents are created).
    text: its new content.
  """
  f = path(p)
  f.parent.mkdir(parents=True, exist_ok=True)
  if is_object_store(f):
    f.write_text(text)  # one upload: the object appears complete or not at all
    return
  tmp = f.parent / f".{f.name}.tmp-{os.getpid()}"
  tmp.write_text(text)
  os.replace(tmp, f)


configure_clients()
