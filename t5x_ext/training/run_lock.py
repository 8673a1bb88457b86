"""One writer per MODEL_DIR: an advisory lock that a dead process cannot leave behind.

Two trainers on one MODEL_DIR interleave `train.jsonl`, write two TensorBoard files and
overwrite each other's checkpoints. `RunLock` makes the second one fail at start, naming the
holder. The lock is `MODEL_DIR/.lock`: an `fcntl.flock` on it is what excludes (the kernel
drops it when its process dies, `kill -9` included), and the file's text says who holds it
(host, pid, start time) for the message. A file left by a dead process is taken over with a
message saying so.

Only local paths are locked: object stores (`gs://`, `s3://`) have no flock, and there the
lock is skipped with a warning. Multi-host runs lock on process 0 only (the other hosts
write nothing to MODEL_DIR but their checkpoint shards).

  with RunLock(model_dir):
    ...  # train
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket

LOCK_NAME = ".lock"


class RunLockError(RuntimeError):
  """Another live process holds the MODEL_DIR lock."""


def _is_remote(path: str) -> bool:
  return "://" in str(path)


def _holder_text(info: dict) -> str:
  parts = [f"pid {info.get('pid', '?')}"]
  if info.get("host"):
    parts.append(f"on {info['host']}")
  if info.get("started"):
    parts.append(f"since {info['started']}")
  return " ".join(parts)


class RunLock:
  """An exclusive, crash-safe lock on a run directory.

  Attributes:
    path: the lock file.
    took_over: after `acquire`, the holder info of a dead process whose lock file was
      found (None when the file was new or clean).
  """

  def __init__(self, model_dir: str | os.PathLike):
    """Prepares the lock; nothing is created before `acquire`.

    Args:
      model_dir: the run directory (created on acquire if missing).
    """
    self.model_dir = os.fspath(model_dir)
    self.path = os.path.join(self.model_dir, LOCK_NAME)
    self.took_over: dict | None = None
    self._fd: int | None = None

  def acquire(self) -> RunLock:
    """Takes the lock or fails at once.

    Returns:
      self.

    Raises:
      RunLockError: another live process holds it (the message names it and the file).
    """
    if _is_remote(self.model_dir):
      logging.warning("MODEL_DIR %s is not a local path: it is not locked.", self.model_dir)
      return self
    os.makedirs(self.model_dir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      info = _read_info(fd)
      os.close(fd)
      raise RunLockError(
        f"MODEL_DIR = {self.model_dir!r} is in use by another run ({_holder_text(info)}; lock "
        f"file {self.path}). Stop that run or choose another MODEL_DIR."
      ) from None
    previous = _read_info(fd)
    if previous and previous.get("pid") != os.getpid():
      # We hold the flock, so whoever wrote this file no longer runs (flock dies with it).
      self.took_over = previous
      logging.warning(
        "Taking over the lock of MODEL_DIR %s left by a process that is no longer running (%s).",
        self.model_dir,
        _holder_text(previous),
      )
    info = {
      "pid": os.getpid(),
      "host": socket.gethostname(),
      "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    """Releases the lock and clears the holder text (idempotent)."""
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)
    except OSError:
      pass  # a read-only or full disk must not turn a clean exit into an error
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> RunLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _read_info(fd: int) -> dict:
  try:
    raw = os.pread(fd, 4096, 0)
    return json.loads(raw) if raw.strip() else {}
  except (OSError, ValueError):
    return {}
