"""SIGTERM at any moment of a command: exit within a budget, with a checkpoint only if needed.

A spot or preemptible VM gets SIGTERM whenever it comes: while XLA compiles, during the
memory plan, a restore, a periodic evaluation, a save or a step. `install` (called by
`t5x_ext.launch.flags.main_guard` when a command starts, before anything is compiled)
makes every one of those moments end the process with status 143 within `BUDGET_S`:

  nothing new to save   (start-up, compiling, the memory plan, restoring, after the last
                        checkpoint): the handler raises `Preempted` in the main thread, which
                        leaves through the normal close path (run lock, writers) without
                        writing a checkpoint; the last complete one is the restore point.
  steps since the last  the train loop saves at the next step boundary and stops (the
  checkpoint            `Checkpointer` sees the flag); during a periodic evaluation
                        `Preempted` stops the evaluation and the loop saves, then stops.
  a save in flight      it is finished (the stop save waits for it) within the budget.

A Python handler only runs when the main thread runs Python; during a long C++ call (XLA
compilation) it waits until the call returns. So the signal also wakes a watchdog thread
(through `signal.set_wakeup_fd`, written by the C-level handler whichever thread runs):
`NOTHING_TO_SAVE_GRACE_S` after the signal with nothing unsaved, it flushes the logs and calls
the exit function (`os._exit(143)`); with unsaved steps during an evaluation that is stuck in
C++, it writes the checkpoint itself (the params are not being changed then); at `BUDGET_S`
it exits whatever runs, leaving an in-flight save as an Orbax tmp directory that the next
restore skips.

With several processes under `jax.distributed`, JAX's preemption service owns SIGTERM and
agrees on a save step (see `Checkpointer.stop_check`); this module is for one process.

No heavy imports (no JAX): it is installed before them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)

EXIT_STATUS = 143  # 128 + SIGTERM
# Seconds from the signal: exit through the watchdog when there is nothing to save and the
# main thread has not left (e.g. it is inside XLA compilation) ...
NOTHING_TO_SAVE_GRACE_S = float(os.environ.get("T5X_EXT_SIGTERM_GRACE_S", "2.5"))
# ... and exit whatever runs (a save that did not finish is left incomplete).
BUDGET_S = float(os.environ.get("T5X_EXT_SIGTERM_BUDGET_S", "4.5"))


class Preempted(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error
  """Raised in the main thread at SIGTERM when there is nothing new to save (or to stop an
  evaluation). A BaseException, so `except Exception` in library code does not swallow it."""


class _State:
  def __init__(self):
    self.installed = False
    self.requested = threading.Event()
    self.handled = False  # the Python handler has run
    self.signal_time: float | None = None
    self.phase = "idle"  # idle | train | eval
    self.unsaved = False  # steps trained since the last committed checkpoint
    self.save_lock = threading.Lock()  # the loop's save and the watchdog's, never both
    self.emergency_save: Callable[[], None] | None = None  # set while evaluating
    self.stop_events: list[threading.Event] = []  # Checkpointers' flags
    self.exit_fn: Callable[[int], None] | None = None
    self.previous = None
    self.wake_r: socket.socket | None = None
    self.wake_w: socket.socket | None = None


_STATE = _State()


def installed() -> bool:
  """Whether `install` ran in this process.

  Returns:
    True after `install`.
  """
  return _STATE.installed


def requested() -> bool:
  """Whether SIGTERM has been received (after `install`).

  Returns:
    True once the signal came.
  """
  return _STATE.requested.is_set()


def install(exit_fn: Callable[[int], None]) -> bool:
  """Installs the SIGTERM handler and its watchdog thread for this command's process.

  Args:
    exit_fn: ends the process with a status, flushing logs first (the entry point's
      `_flush_and_exit`); the watchdog calls it from its thread.

  Returns:
    Whether it was installed (False outside the main thread or when already installed).
  """
  st = _STATE
  if st.installed or threading.current_thread() is not threading.main_thread():
    return False
  st.exit_fn = exit_fn
  st.wake_r, st.wake_w = socket.socketpair()
  st.wake_w.setblocking(False)
  st.previous = signal.signal(signal.SIGTERM, _handler)
  try:
    signal.set_wakeup_fd(st.wake_w.fileno(), warn_on_full_buffer=False)
  except (ValueError, OSError):  # pragma: no cover - main thread checked above
    logger.warning("No SIGTERM watchdog: set_wakeup_fd failed.")
  threading.Thread(target=_watchdog, name="t5x_ext-sigterm-watchdog", daemon=True).start()
  st.installed = True
  return True


def register_stop_event(event: threading.Event) -> None:
  """A `Checkpointer`'s stop flag, set at SIGTERM (and at once if it already came).

  Args:
    event: the flag.
  """
  _STATE.stop_events.append(event)
  if _STATE.requested.is_set():
    event.set()


def unregister_stop_event(event: threading.Event) -> None:
  """Undoes `register_stop_event`.

  Args:
    event: the flag.
  """
  with contextlib.suppress(ValueError):
    _STATE.stop_events.remove(event)


def set_unsaved(unsaved: bool) -> None:
  """Tells the handler whether steps were trained since the last committed checkpoint.

  Args:
    unsaved: True after a train step, False once a checkpoint of it is committed.
  """
  _STATE.unsaved = unsaved


@contextlib.contextmanager
def training() -> Iterator[None]:
  """The train loop runs: SIGTERM only flags (the loop saves at a step boundary and stops)."""
  previous, _STATE.phase = _STATE.phase, "train"
  try:
    yield
  finally:
    _STATE.phase = previous  # `unsaved` stays: a last async save may still be in flight


@contextlib.contextmanager
def evaluating(emergency_save: Callable[[], None] | None) -> Iterator[None]:
  """A periodic evaluation runs: SIGTERM raises `Preempted` to stop it.

  Args:
    emergency_save: writes the checkpoint of the evaluated step; the watchdog calls it from
      its thread if the main thread is stuck in C++ (XLA compiling the evaluation).
  """
  previous, _STATE.phase = _STATE.phase, "eval"
  _STATE.emergency_save = emergency_save
  try:
    if _STATE.requested.is_set():
      raise Preempted()
    yield
  finally:
    _STATE.phase = previous
    _STATE.emergency_save = None


@contextlib.contextmanager
def saving() -> Iterator[None]:
  """Holds the save lock (so the watchdog does not save at the same time)."""
  with _STATE.save_lock:
    yield


def _handler(signum, frame) -> None:
  del signum, frame
  st = _STATE
  if not st.handled:
    st.handled = True
    if st.signal_time is None:
      st.signal_time = time.monotonic()
    st.requested.set()
    for event in list(st.stop_events):
      event.set()
    # A second SIGTERM goes to the previous handler (default: terminate at once).
    signal.signal(signal.SIGTERM, st.previous if st.previous is not None else signal.SIG_DFL)
  if st.phase == "eval":
    logger.warning("SIGTERM received during an evaluation: stopping it, then checkpointing.")
    raise Preempted()
  if st.phase == "idle" and not st.unsaved:
    logger.warning("SIGTERM received: stopping now; nothing new to checkpoint.")
    raise Preempted()
  logger.warning("SIGTERM received: will checkpoint after the current step and stop.")


def _watchdog() -> None:
  st = _STATE
  while True:
    try:
      data = st.wake_r.recv(64)
    except OSError:
      return
    if not data:
      return
    if signal.SIGTERM in data:
      break
  start = st.signal_time or time.monotonic()  # the handler may not have run yet (C++)
  if st.signal_time is None:
    st.signal_time = start
  for event in list(st.stop_events):  # so that the loop stops even before the handler runs
    event.set()
  st.requested.set()
  grace, budget = start + NOTHING_TO_SAVE_GRACE_S, start + BUDGET_S
  while time.monotonic() < budget:
    now = time.monotonic()
    if now >= grace:
      if not st.unsaved and not st.save_lock.locked():
        _exit("nothing new to checkpoint; the main thread did not leave in time")
      if st.unsaved and st.phase == "eval" and st.emergency_save is not None:
        if st.save_lock.acquire(blocking=False):
          try:
            st.emergency_save()
            st.unsaved = False
            _exit("checkpoint written by the watchdog during the evaluation")
          except BaseException:  # noqa: BLE001 - exiting anyway
            logger.exception("Emergency checkpoint failed")
            _exit("the emergency checkpoint failed; the last complete one is the restore point")
    time.sleep(0.02)
  _exit(f"{BUDGET_S} s after SIGTERM; an unfinished save is left incomplete")


def _exit(why: str) -> None:
  took = time.monotonic() - (_STATE.signal_time or time.monotonic())
  try:
    print(
      f"SIGTERM: exiting with {EXIT_STATUS} {took:.1f} s after the signal ({why}).",
      file=sys.stderr,
      flush=True,
    )
  except (OSError, ValueError):
    pass
  exit_fn = _STATE.exit_fn or os._exit
  exit_fn(EXIT_STATUS)
  os._exit(EXIT_STATUS)  # pragma: no cover - exit_fn returned
