"""One writer per MODEL_DIR: an advisory lock that a dead process cannot leave behind.

Two trainers on one MODEL_DIR interleave `train.jsonl`, write two TensorBoard files and
overwrite each other's checkpoints. `RunLock` makes the second one fail at start, naming the
holder. The lock is `MODEL_DIR/.lock`: an `fcntl.flock` on it is what excludes (the kernel
drops it when its process dies, `kill -9` included), and the file's text says who holds it
(host, pid, start time) for the message. A file left by a dead process is taken over with a
message saying so.

Object stores (`gs://`, `s3://`) have no flock: there `MODEL_DIR/.lock` is a lease, an object
naming its holder (host, pid, start time) and when the holder last renewed it. A thread
renews it every `lease_s / 4` seconds; a clean exit deletes it. A second run fails while the
lease is fresh; a lease not renewed for `lease_s` seconds (its holder was killed, or its VM
lost) is taken over with a message, and so is one whose holder was on this host and no longer
runs (a `kill -9` followed by a restart on the same VM waits for nothing). Two runs that
start within a fraction of a second of each other both write a lease: each reads it back
after `SETTLE_S`, and the one whose lease was overwritten fails (best effort; an object
store's preconditions, which epath does not expose, would make it exact). Multi-host runs
lock on process 0 only (the other hosts write nothing to MODEL_DIR but their checkpoint
shards).

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
import threading
import time
import uuid

from t5x_ext.training import run_paths

LOCK_NAME = ".lock"
LEASE_S = 120.0  # an object-store lease not renewed for this long is free
SETTLE_S = 1.0  # how long a new lease holder waits before reading its lease back


class RunLockError(RuntimeError):
  """Another live process holds the MODEL_DIR lock."""


def _holder_text(info: dict) -> str:
  parts = [f"pid {info.get('pid', '?')}"]
  if info.get("host"):
    parts.append(f"on {info['host']}")
  if info.get("started"):
    parts.append(f"since {info['started']}")
  return " ".join(parts)


def _now_text() -> str:
  return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _dead_here(info: dict) -> bool:
  """True when the holder ran on this host and its process is gone."""
  if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
    return False
  try:
    os.kill(info["pid"], 0)
  except ProcessLookupError:
    return True
  except OSError:  # PermissionError: someone else's live process
    return False
  return False


class RunLock:
  """An exclusive, crash-safe lock on a run directory (a lease on object stores).

  Attributes:
    path: the lock file (`MODEL_DIR/.lock`).
    took_over: after `acquire`, the holder info of a dead process whose lock file was
      found (None when the file was new or clean).
  """

  def __init__(self, model_dir: str | os.PathLike, *, lease_s: float = LEASE_S):
    """Prepares the lock; nothing is created before `acquire`.

    Args:
      model_dir: the run directory (created on acquire if missing), local or `scheme://`.
      lease_s: on an object store, how long a lease lasts without renewal.
    """
    self.model_dir = os.fspath(model_dir)
    self.remote = run_paths.is_object_store(self.model_dir)
    self.path = os.fspath(run_paths.path(self.model_dir) / LOCK_NAME)
    self.lease_s = float(lease_s)
    self.took_over: dict | None = None
    self._fd: int | None = None
    self._token: str | None = None
    self._stop: threading.Event | None = None
    self._renewer: threading.Thread | None = None

  def acquire(self) -> RunLock:
    """Takes the lock or fails at once.

    Returns:
      self.

    Raises:
      RunLockError: another live process holds it (the message names it and the file).
    """
    if self.remote:
      return self._acquire_lease()
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
      self._note_takeover(previous, "a process that is no longer running")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now_text()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    self._fd = fd
    return self

  def _note_takeover(self, previous: dict, why: str) -> None:
    self.took_over = previous
    logging.warning(
      "Taking over the lock of MODEL_DIR %s left by %s (%s).",
      self.model_dir,
      why,
      _holder_text(previous),
    )

  # ---- object stores: a lease

  def _lease(self):
    return run_paths.path(self.model_dir) / LOCK_NAME

  def _read_lease(self) -> dict:
    try:
      return json.loads(self._lease().read_text())
    except (FileNotFoundError, ValueError):
      return {}

  def _write_lease(self, info: dict) -> None:
    now = time.time()
    info = {**info, "renewed": _now_text(), "renewed_unix": now, "lease_s": self.lease_s}
    self._lease().write_text(json.dumps(info))

  def _acquire_lease(self) -> RunLock:
    run_paths.path(self.model_dir).mkdir(parents=True, exist_ok=True)
    previous = self._read_lease()
    if previous:
      age = time.time() - float(previous.get("renewed_unix", 0.0))
      lease = float(previous.get("lease_s", self.lease_s))
      if _dead_here(previous):
        self._note_takeover(previous, "a process of this host that is no longer running")
      elif age < lease:
        raise RunLockError(
          f"MODEL_DIR = {self.model_dir!r} is in use by another run ({_holder_text(previous)}; "
          f"lease {self.path} renewed {age:.0f} s ago, free after {lease:.0f} s without "
          "renewal). Stop that run or choose another MODEL_DIR; if that run is gone, wait "
          "for its lease to lapse or delete the lease file."
        )
      else:
        self._note_takeover(previous, f"a run that stopped renewing it {age:.0f} s ago")
    token = uuid.uuid4().hex
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now_text()}
    info["token"] = token
    self._write_lease(info)
    time.sleep(SETTLE_S)  # a run that started at the same moment has written its lease by now
    now_held = self._read_lease()
    if now_held.get("token") != token:
      raise RunLockError(
        f"MODEL_DIR = {self.model_dir!r} was locked at the same moment by another run "
        f"({_holder_text(now_held)}; lease {self.path}). Stop that run or choose another "
        "MODEL_DIR."
      )
    self._token = token
    self._stop = threading.Event()
    self._renewer = threading.Thread(
      target=self._renew, args=(info, self._stop), name="t5x_ext-run-lease", daemon=True
    )
    self._renewer.start()
    return self

  def _renew(self, info: dict, stop: threading.Event) -> None:
    while not stop.wait(self.lease_s / 4):
      try:
        held = self._read_lease()
        if held.get("token") != info["token"]:
          logging.error(
            "The lease %s of this run was taken by another run (%s): stop one of them.",
            self.path,
            _holder_text(held),
          )
          return
        self._write_lease(info)
      except Exception as e:  # noqa: BLE001 - a network blip must not kill the run
        logging.warning("Could not renew the lease %s: %s", self.path, e)

  def release(self) -> None:
    """Releases the lock and clears the holder text (idempotent)."""
    if self._token is not None:
      self._stop.set()
      self._renewer.join(timeout=30)
      try:
        if self._read_lease().get("token") == self._token:
          self._lease().unlink()
      except Exception as e:  # noqa: BLE001 - a failed delete only delays the next run
        logging.warning("Could not delete the lease %s: %s", self.path, e)
      self._token = self._stop = self._renewer = None
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
