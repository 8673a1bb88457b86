"""Orbax checkpoints under `MODEL_DIR/checkpoints`: periodic async saves, resume, preemption.

A checkpoint (one directory per step) holds two items:

  state   the train state pytree (params, optimizer state, step ...), saved sharded
          (`ocp.args.StandardSave`); restored straight into the shardings of an abstract target.
  data    a JSON-able dict from the caller, e.g. the data iterator's position, so a resumed run
          continues on exactly the batches it would have seen (`ocp.args.JsonSave`). It is
          written by the primary process only, so it must be the same on every process (e.g.
          "batches consumed"); each process derives its own shard from it.

Typical loop (`t5x_ext.training.loop.train_loop` does this):

    ckpt = Checkpointer(model_dir, save_interval_steps=1000, max_to_keep=3)
    restored = ckpt.restore_latest(abstract_state)      # None on a fresh start
    ...
    for step in range(start, total):
      state = train_step(state, batch)
      if ckpt.should_save(step + 1):                     # interval, or SIGTERM received
        ckpt.save(step + 1, state, {"batches": step + 1})
      if ckpt.stop_requested:                            # SIGTERM: saved already; leave the loop
        break
    ckpt.close()                                         # waits for the async save

Crash safety comes from Orbax: a step is written to `<step>.orbax-checkpoint-tmp-*` (or
without `commit_success.txt` on object stores) and only renamed/committed when complete, so a
process killed mid-save leaves a directory Orbax does not list. `Checkpointer` warns about such
leftovers, and if the newest listed checkpoint still fails to restore (files lost afterwards),
it moves it aside to `checkpoints.corrupt/` with a warning and restores the previous one.

No state with NaN/Inf in it is ever written: `save` checks (`check_finite`) and raises
`NonFiniteStateError` instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from t5x_ext.errors import DivergedError
from t5x_ext.training import preemption, run_paths

logger = logging.getLogger(__name__)

STATE_ITEM = "state"
DATA_ITEM = "data"
TMP_MARKER = ".orbax-checkpoint-tmp"


class NonFiniteStateError(DivergedError):
  """Raised instead of writing a checkpoint of a state with NaN or Inf in it."""


class CheckpointSaveError(OSError):
  """A checkpoint could not be written (e.g. the disk is full); training must stop."""


class _OrbaxSaveFailureLogs(logging.Filter):
  """Drops Orbax's own tracebacks of a failed background save (logged from its threads).

  `Checkpointer.check_save_errors` reports the same failure once, as a `CheckpointSaveError`
  naming the step, the directory and the cause; Orbax's copies would bury it.
  """

  MARKERS = ("in background save thread", "Save Finalize thread", "[wait_until_finished]")

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    message = str(record.msg)
    return not any(marker in message for marker in self.MARKERS)


_ORBAX_FILTER = _OrbaxSaveFailureLogs()


def check_finite(tree: Any) -> bool:
  """Whether every floating-point leaf of `tree` is finite (no NaN/Inf).

  One fused reduction on device, then one scalar to the host.

  Args:
    tree: pytree of arrays (sharded or not); non-float leaves are ignored.

  Returns:
    True when all floating leaves are finite.
  """
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not leaves:
    return True
  return bool(_all_finite(leaves))


def warm_up_check_finite(abstract_tree: Any) -> threading.Thread:
  """Compiles `check_finite`'s reduction for `abstract_tree` in a background thread.

  A SIGTERM save is often the process's first save; compiling this reduction then takes
  seconds on a loaded host, out of a preemption's few seconds. Compiling it ahead of time
  fills jit's cache, so that save starts writing at once.

  Args:
    abstract_tree: the state's structure (`jax.ShapeDtypeStruct`s with `.sharding`, or
      arrays); only shapes, dtypes and shardings are used.

  Returns:
    The (daemon) thread.
  """
  leaves = [
    jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
    for x in jax.tree.leaves(abstract_tree)
    if jnp.issubdtype(x.dtype, jnp.inexact)
  ]

  def compile_it():
    try:
      if leaves:
        _all_finite.lower(leaves).compile()
    except Exception:  # noqa: BLE001 - only a warm-up: the save compiles it otherwise
      logger.debug("check_finite warm-up failed", exc_info=True)

  thread = threading.Thread(target=compile_it, name="t5x_ext-warm-check-finite", daemon=True)
  thread.start()
  return thread


@jax.jit
def _all_finite(leaves):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _jsonable(data: Mapping[str, Any] | None) -> dict[str, Any]:
  """The data position as plain JSON types; numpy scalars/arrays become numbers/lists.

  Checked here, in the caller's thread: an error inside Orbax's background write would only
  surface at the next save."""

  def default(x):
    if isinstance(x, np.generic):
      return x.item()
    if isinstance(x, np.ndarray | jax.Array):
      return np.asarray(x).tolist()
    raise TypeError(f"data_state holds {x!r} of type {type(x).__name__}, which is not JSON-able")

  if data is None:
    return {}
  if not isinstance(data, Mapping):
    raise TypeError(f"data_state must be a dict, got {type(data).__name__}")
  return json.loads(json.dumps(dict(data), default=default))


def _replicated_everywhere() -> NamedSharding:
  return NamedSharding(Mesh(np.asarray(jax.devices()), ("all",)), P())


def _local_only(sharding) -> bool:
  return sharding is None or isinstance(sharding, jax.sharding.SingleDeviceSharding)


def _globalize(tree: Any) -> Any:
  """With several processes, makes host-local leaves (e.g. a step counter made with
  `jnp.int32(0)`) global replicated arrays, which Orbax can write; they must hold the same
  value on every process. A no-op with one process."""
  if jax.process_count() == 1:
    return tree
  replicated = _replicated_everywhere()

  def one(x):
    if isinstance(x, jax.Array) and not _local_only(x.sharding):
      return x
    return jax.make_array_from_callback(np.shape(x), replicated, lambda _: np.asarray(x))

  return jax.tree.map(one, tree)


def _to_abstract(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings where known) for arrays or abstract leaves. With several
  processes, leaves without a global sharding are restored replicated on all devices."""
  replicated = _replicated_everywhere() if jax.process_count() > 1 else None

  def one(x):
    sharding = getattr(x, "sharding", None)
    if replicated is not None and _local_only(sharding):
      sharding = replicated
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

  return jax.tree.map(one, tree)


def _jax_preemption_service() -> bool:
  """Whether jax.distributed runs several processes with its preemption sync manager."""
  if jax.process_count() == 1:
    return False
  try:
    from jax._src import distributed
  except ImportError:  # pragma: no cover - private module moved
    return False
  return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


class Checkpointer:
  """Saves and restores train state + data position under `<model_dir>/checkpoints`.

  Args:
    model_dir: the run's directory (MODEL_DIR); checkpoints go to `<model_dir>/checkpoints`.
    save_interval_steps: save when `step % save_interval_steps == 0` .
    max_to_keep: keep the newest K checkpoints (None = all).
    keep_period: also keep every checkpoint whose step is a multiple of this (None = off).
    async_save: write in a background thread; the train step continues after the device to
      host copy.
    handle_sigterm: act on SIGTERM (save, then `stop_requested`). One process: the
      command's process-wide handler when `preemption.install` ran (it sets this flag and
      exits promptly when there is nothing to save), else a Python handler (main thread
      only). Several processes under `jax.distributed`: JAX's
      preemption service, which picks the same step on every process.
  """

  def __init__(
    self,
    model_dir: str | os.PathLike,
    *,
    save_interval_steps: int = 1000,
    max_to_keep: int | None = 3,
    keep_period: int | None = None,
    async_save: bool = True,
    handle_sigterm: bool = True,
  ):
    if not isinstance(save_interval_steps, int) or save_interval_steps < 1:
      raise ValueError(f"save_interval_steps = {save_interval_steps!r}: must be an int >= 1.")
    if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
      raise ValueError(f"max_to_keep = {max_to_keep!r}: must be an int >= 1 or None.")
    self.directory = run_paths.path(model_dir) / "checkpoints"
    self.save_interval_steps = save_interval_steps
    self._warn_incomplete()
    options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_interval_steps,
      max_to_keep=max_to_keep,
      keep_period=keep_period,
      enable_async_checkpointing=async_save,
      # Leftovers of a killed save are useless once we have warned about them.
      cleanup_tmp_directories=True,
      create=True,
    )
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=(STATE_ITEM, DATA_ITEM)
    )
    self._stop = threading.Event()
    self.stop_requested = False
    self._pending_step: int | None = None  # an async save not yet checked for errors
    logging.getLogger("absl").addFilter(_ORBAX_FILTER)  # Orbax logs through absl's logger
    self._previous_handler = None
    # Several processes under jax.distributed: JAX's preemption service already catches
    # SIGTERM and agrees on a step without a device sync; a Python handler would replace it.
    self._jax_preemption = _jax_preemption_service()
    self._registered = False
    if handle_sigterm and not self._jax_preemption:
      if preemption.installed():  # a command: its process-wide handler sets our flag
        preemption.register_stop_event(self._stop)
        self._registered = True
      else:
        self._install_sigterm_handler()

  # ----------------------------------------------------------------------------- queries

  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints, ascending.

    Returns:
      Sorted list of steps.
    """
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None.

    Returns:
      Step or None.
    """
    steps = self.all_steps()
    return steps[-1] if steps else None

  def _warn_incomplete(self) -> None:
    if not self.directory.exists():
      return
    for child in self.directory.iterdir():
      # Local disks: a tmp-named directory renamed on commit. Object stores: the step's own
      # name without its commit_success.txt.
      unfinished = TMP_MARKER in child.name or (
        child.name.isdigit() and not ocp.path.step.is_path_finalized(child)
      )
      if unfinished:
        logger.warning(
          "Skipping incomplete checkpoint %s (a save was interrupted, e.g. the process was "
          "killed); resuming from the last complete one.",
          child,
        )

  # ----------------------------------------------------------------------------- saving

  def should_save(self, step: int) -> bool:
    """Whether to save at `step`: on the interval, or because a stop (SIGTERM) was requested.

    With several processes this is a collective (see `stop_check`): call it at every step on
    every process.

    Args:
      step: the step the state has reached (number of updates applied).

    Returns:
      True when `save` should be called now.
    """
    self.check_save_errors()
    # The interval is ours, not Orbax's should_save (which also saves the first step seen).
    return self.stop_check(step) or step % self.save_interval_steps == 0

  def check_save_errors(self, *, wait: bool = False) -> None:
    """Raises if a background save has failed; cheap while it is still running.

    `should_save` calls it at every step, so a failed save (a full disk, a lost bucket)
    stops training at the next step instead of a whole interval later. The failed save's
    partial directory is removed; the last complete checkpoint is left as it was.

    Args:
      wait: wait for a running save to finish first.

    Raises:
      CheckpointSaveError: naming the step, the directory and the cause.
    """
    if self._pending_step is None:
      return
    if not wait and self._manager.is_saving_in_progress():
      return
    step, self._pending_step = self._pending_step, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - any write failure ends the run with one message
      self._raise_save_error(step, e)

  def _raise_save_error(self, step: int, error: BaseException) -> None:
    removed = self._remove_partial(step) if jax.process_index() == 0 else []
    last = self.latest_step()
    kept = (
      f"the last complete checkpoint is step {last}"
      if last is not None
      else "no complete checkpoint exists"
    )
    raise CheckpointSaveError(
      f"Checkpoint of step {step} could not be written to {self.directory} "
      f"({type(error).__name__}: {error}); {kept}"
      f"{' (partial ' + ', '.join(removed) + ' removed)' if removed else ''}. Training stopped."
    ) from error

  def _remove_partial(self, step: int, *, settle_seconds: float = 0.5) -> list[str]:
    """Removes the failed save of `step` (its tmp or unfinalized directory) for good.

    The error surfaces when Orbax's commit thread fails, but its other writers (the
    checkpointer's background thread, the metadata stores' executors, `asyncio.to_thread`
    workers) can still be writing into the directory: under load a file landed after the
    removal and the partial directory was back. So: wait for Orbax's writers, then remove
    until nothing partial has been seen for `settle_seconds`.

    Args:
      step: the failed step.
      settle_seconds: how long the directory must stay clean.

    Returns:
      The names removed.
    """
    writers = [getattr(self._manager, "_checkpointer", None)]
    writers += [
      getattr(self._manager, f"_{k}_metadata_store", None) for k in ("non_blocking", "blocking")
    ]
    for writer in writers:
      with contextlib.suppress(Exception):  # the save's own error is reported by the caller
        if writer is not None:
          writer.wait_until_finished()

    def partial(child) -> bool:
      return child.name.startswith(f"{step}{TMP_MARKER}") or (
        child.name == str(step) and not ocp.path.step.is_path_finalized(child)
      )

    removed: list[str] = []
    deadline = time.monotonic() + 30.0
    clean_since = None
    while time.monotonic() < deadline:
      found = [c for c in self.directory.iterdir() if partial(c)] if self.directory.exists() else []
      for child in found:
        with contextlib.suppress(OSError):  # epath: local folders and object stores alike
          child.rmtree()
        if child.name not in removed:
          removed.append(child.name)
      now = time.monotonic()
      if found:
        clean_since = None
      elif clean_since is None:
        clean_since = now
      elif now - clean_since >= settle_seconds:
        break
      time.sleep(0.05)
    return removed

  def save(self, step: int, state: Any, data_state: Mapping[str, Any] | None = None) -> bool:
    """Writes a checkpoint of `state` at `step` (asynchronously unless a stop was requested).

    After a stop request (SIGTERM) it waits until the checkpoint is committed and sets
    `stop_requested`: the caller should leave its loop, `close()` and exit.

    Args:
      step: the step the state has reached (number of updates applied).
      state: train state pytree (arrays, possibly sharded). Must not be donated to a step
        before this returns (Orbax copies it to the host first).
      data_state: JSON-able dict, e.g. the data iterator position (same on every process).

    Returns:
      Whether a save was started (False if this step is already saved).

    Raises:
      NonFiniteStateError: if the state holds NaN/Inf (nothing is written).
    """
    self.check_save_errors(wait=True)  # Orbax would wait for it anyway, and re-raise later
    if step in self._manager.all_steps():
      saved = False  # e.g. the last step, already saved on the interval
    else:
      if not check_finite(state):
        raise NonFiniteStateError(
          f"Refusing to checkpoint step {step}: the state holds NaN or Inf."
        )
      args = ocp.args.Composite(
        **{
          STATE_ITEM: ocp.args.StandardSave(_globalize(state)),
          DATA_ITEM: ocp.args.JsonSave(_jsonable(data_state)),
        }
      )
      try:
        saved = self._manager.save(step, args=args, force=True)
      except Exception as e:  # noqa: BLE001 - a synchronous write failure
        self._raise_save_error(step, e)
      if saved:
        self._pending_step = step
    if self._stop.is_set():
      self.check_save_errors(wait=True)
      self.stop_requested = True
      logger.warning("Stop requested (SIGTERM): checkpoint of step %d written; stopping.", step)
    return saved

  def maybe_save(self, step: int, state: Any, data_state: Mapping[str, Any] | None = None) -> bool:
    """`save` if `should_save(step)`.

    Args:
      step: the step the state has reached.
      state: train state pytree.
      data_state: JSON-able dict (data position).

    Returns:
      Whether a save was started.
    """
    if not self.should_save(step):
      return False
    return self.save(step, state, data_state)

  def wait(self) -> None:
    """Blocks until any async save has been committed.

    Raises:
      CheckpointSaveError: if it failed.
    """
    self.check_save_errors(wait=True)
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, releases Orbax resources and restores the SIGTERM handler.

    Raises:
      CheckpointSaveError: if the last save failed (resources are released first).
    """
    try:
      self.check_save_errors(wait=True)
    except CheckpointSaveError:
      try:
        self._manager.close()
      except Exception:  # noqa: BLE001 - the save error is the one to report
        logger.debug("Orbax close after a failed save", exc_info=True)
      raise
    else:
      self._manager.close()
    finally:
      if self._registered:
        preemption.unregister_stop_event(self._stop)
        self._registered = False
      main = threading.current_thread() is threading.main_thread()
      if self._previous_handler is not None and main:
        signal.signal(signal.SIGTERM, self._previous_handler)
        self._previous_handler = None

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # ----------------------------------------------------------------------------- preemption

  def _install_sigterm_handler(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      logger.warning("Not in the main thread: no SIGTERM handler, so no save on preemption.")
      return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
      # Saving inside a signal handler could interrupt a running step or an Orbax write;
      # instead flag it, and let the train loop save at the next step boundary. A second
      # SIGTERM goes to the previous handler (default: terminate at once).
      del frame
      logger.warning("SIGTERM received: will checkpoint after the current step and stop.")
      self._stop.set()
      signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    signal.signal(signal.SIGTERM, handler)
    self._previous_handler = previous

  def request_stop(self) -> None:
    """What SIGTERM does: the next `should_save` is True, and `save` then sets `stop_requested`.

    With JAX's preemption service (several processes) call it on every process at the same
    step, or send SIGTERM to one process instead.
    """
    self._stop.set()

  def stop_check(self, step: int) -> bool:
    """Whether to save and stop at `step`, agreed by all processes.

    Every process must call it at every step (`should_save` does). With JAX's preemption
    service (several processes) it asks that service, which answers True on all processes at
    the same step soon after any of them got SIGTERM. Otherwise, with several processes, the
    local flags are all-gathered (a small collective each step).

    Args:
      step: the current step.

    Returns:
      True if a stop was requested (SIGTERM or `request_stop`).
    """
    local = self._stop.is_set()
    if jax.process_count() == 1:
      return local
    from jax.experimental import multihost_utils

    if self._jax_preemption:
      agreed = local or multihost_utils.reached_preemption_sync_point(step)
    else:
      agreed = bool(np.any(multihost_utils.process_allgather(np.asarray(local))))
    if agreed:
      self._stop.set()  # so that every process's `save` waits and sets `stop_requested`
    return agreed

  # ----------------------------------------------------------------------------- restoring

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any], int] | None:
    """Restores the newest complete checkpoint that can be read, into the target's shardings.

    If the newest listed checkpoint fails to restore but an older one restores into the same
    target, the newer ones are corrupt (e.g. files lost after the commit): they are moved to
    `checkpoints.corrupt/` with a warning, so that later saves of those steps can happen.
    If none restores, nothing is moved and the newest one's error is raised: the target, not
    the files, is then the likely culprit (e.g. a changed model config).

    Args:
      abstract_state: the state's structure as `jax.ShapeDtypeStruct`s with `.sharding`
        (e.g. `partitioning.with_shardings(jax.eval_shape(...), shardings)`), or real arrays.

    Returns:
      `(state, data_state, step)`, or None when there is no checkpoint.

    Raises:
      RuntimeError: when checkpoints exist but none restores into `abstract_state`.
    """
    target = _to_abstract(abstract_state)
    failed: list[tuple[int, Exception]] = []
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(
          step,
          args=ocp.args.Composite(
            **{STATE_ITEM: ocp.args.StandardRestore(target), DATA_ITEM: ocp.args.JsonRestore()}
          ),
        )
      except Exception as e:  # noqa: BLE001 - any read failure: try the previous one
        logger.warning(
          "Checkpoint of step %d in %s cannot be restored (%s: %s); trying the previous one.",
          step,
          self.directory,
          type(e).__name__,
          str(e)[:500],
        )
        failed.append((step, e))
        continue
      for bad_step, error in failed:
        self._quarantine(bad_step, error)
      logger.info("Restored checkpoint of step %d from %s", step, self.directory)
      return restored[STATE_ITEM], dict(restored[DATA_ITEM] or {}), step
    if failed:
      step, error = failed[0]
      raise RuntimeError(
        f"No checkpoint in {self.directory} restores into the given state (newest: step "
        f"{step}); does the model/optimizer config match the run's? Error: {error}"
      ) from error
    return None

  def _quarantine(self, step: int, error: Exception) -> None:
    corrupt = self.directory.parent / (self.directory.name + ".corrupt")
    logger.warning(
      "Skipping corrupt checkpoint of step %d (%s); moved to %s, resuming from an older one.",
      step,
      type(error).__name__,
      corrupt,
    )
    if jax.process_index() == 0:
      corrupt.mkdir(parents=True, exist_ok=True)
      dest = corrupt / str(step)
      if dest.exists():
        dest.rmtree()
      (self.directory / str(step)).rename(dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"t5x_ext_quarantine_{step}")
    self._manager.reload()


# --------------------------------------------------------------------------------------
# Parameters only (fine-tuning, continued pretraining from converted weights)
# --------------------------------------------------------------------------------------


def _complete_steps(root: epath.Path) -> list[int]:
  """Steps of the complete checkpoints written by `Checkpointer` directly under `root`."""
  if not root.is_dir():
    return []
  return [
    int(child.name)
    for child in root.iterdir()
    if child.name.isdigit()
    and (child / STATE_ITEM).is_dir()
    and ocp.path.step.is_path_finalized(child)
  ]


def _resolve_params_source(path: epath.Path) -> tuple[epath.Path, bool]:
  """Returns (directory to read, whether it is a train-state item holding 'params')."""
  if (path / STATE_ITEM).is_dir():  # a step directory of ours
    return path / STATE_ITEM, True
  for root in (path, path / "checkpoints"):
    steps = _complete_steps(root)
    if steps:
      return root / str(max(steps)) / STATE_ITEM, True
  for tree_dir in (path, path / "params"):  # `python -m t5x_ext.hf.convert` writes OUT/params
    if (tree_dir / "_METADATA").exists() or (tree_dir / "manifest.ocdbt").exists():
      return tree_dir, False  # a plain StandardCheckpointer tree (e.g. converted weights)
  raise FileNotFoundError(
    f"No checkpoint at {path}: expected a MODEL_DIR, a checkpoints directory, a step "
    "directory, a directory written by ocp.StandardCheckpointer (converted weights), or a "
    "T5X checkpoint_<step> directory."
  )


def _tree_shapes(metadata: Any) -> dict[str, tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(metadata, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in flat if hasattr(v, "shape")}


def restore_params(path: str | os.PathLike, abstract_params: Any) -> Any:
  """Restores only the parameters, into the target's shapes, dtypes and shardings.

  `path` may be a MODEL_DIR, its `checkpoints/` directory (newest step), one step directory,
  or a directory written by `ocp.StandardCheckpointer().save(OUT / 'params', params)` (the
  converted Transformers weights; `OUT` itself works too; the tree may be the params or
  `{'params': params}`), or a native T5X checkpoint (`checkpoint_<step>/`, its `checkpoint`
  file, or a T5X MODEL_DIR; see `t5x_ext.t5x_ckpt.restore`).
  The optimizer state is not read; values are cast to the target dtypes (float32).

  Args:
    path: where to read.
    abstract_params: unboxed params as `jax.ShapeDtypeStruct`s with shardings (or arrays).

  Returns:
    The params tree, placed with the target's shardings.

  Raises:
    FileNotFoundError: when `path` holds no checkpoint.
    ValueError: when parameter names or shapes differ from the target (names them).
  """
  from t5x_ext.t5x_ckpt import t5x_format

  if t5x_format.is_t5x_checkpoint(path):  # native T5X: sliced TensorStore reads per device
    from t5x_ext.t5x_ckpt.restore import restore_params as restore_t5x_params

    return restore_t5x_params(path, _to_abstract(abstract_params))
  # Orbax reads no metadata from a relative path (its metadata comes back None).
  path = run_paths.path(path if "://" in os.fspath(path) else os.path.abspath(path))
  source, in_state = _resolve_params_source(path)
  target = _to_abstract(abstract_params)
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    metadata = checkpointer.metadata(source).item_metadata.tree
    metadata = dict(metadata) if isinstance(metadata, Mapping) else metadata
    wrapped = in_state or (isinstance(metadata, Mapping) and set(metadata) == {"params"})
    if wrapped:
      if not isinstance(metadata, Mapping) or "params" not in metadata:
        raise ValueError(f"{source} holds no 'params' entry (top-level keys: {list(metadata)}).")
      stored = _tree_shapes(metadata["params"])
    else:
      stored = _tree_shapes(metadata)
    wanted = _tree_shapes(target)
    missing = sorted(set(wanted) - set(stored))
    extra = sorted(set(stored) - set(wanted))
    if missing or extra:
      raise ValueError(
        f"Parameters in {source} do not match the model: missing {missing[:10]}"
        f"{' ...' if len(missing) > 10 else ''}, unexpected {extra[:10]}{' ...' if len(extra) > 10 else ''}."
      )
    mismatched = {k: (stored[k], wanted[k]) for k in wanted if stored[k] != wanted[k]}
    if mismatched:
      raise ValueError(f"Parameter shapes in {source} (stored, model) differ: {mismatched}")
    item = {"params": target} if wrapped else target
    restored = checkpointer.restore(
      source,
      args=ocp.args.PyTreeRestore(
        item=item,
        restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True,
      ),
    )
  finally:
    checkpointer.close()
  return restored["params"] if wrapped else restored


def checkpoint_step(path: str | os.PathLike) -> int | None:
  """The step of the newest complete checkpoint under `path` (a MODEL_DIR), if any.

  Complete means what `Checkpointer` finalised: a step directory with its state item, not an
  Orbax temporary directory left by a kill during a save. Works on any `epath` location.

  Args:
    path: a MODEL_DIR or its checkpoints directory.

  Returns:
    The step, or None.
  """
  root = epath.Path(path)
  for d in (root / "checkpoints", root):
    steps = _complete_steps(d)
    if steps:
      return max(steps)
  return None


def load_params(
  model: Any,
  batch: Mapping[str, np.ndarray],
  checkpoint_path: str,
  *,
  mesh_shape: Mapping[str, int] | None = None,
  logical_axis_rules: Any = None,
  denoiser_names=(),
) -> tuple[Any, Any]:
  """Builds a `Trainer` (no optimizer) and restores only the params, sharded on the mesh.

  Args:
    model: the model.
    batch: a numpy batch with the shapes to evaluate on.
    checkpoint_path: MODEL_DIR, a checkpoints/step directory, or converted weights.
    mesh_shape: MESH_SHAPE.
    logical_axis_rules: rules (default `partitioning.DEFAULT_RULES`).
    denoiser_names: for per-denoiser metrics.

  Returns:
    `(trainer, params)`.
  """
  import optax

  from t5x_ext.training import partitioning
  from t5x_ext.training.trainer import Trainer

  mesh = partitioning.make_mesh(mesh_shape)
  rules = partitioning.DEFAULT_RULES if logical_axis_rules is None else logical_axis_rules
  trainer = Trainer(model, optax.identity(), mesh, rules, denoiser_names=denoiser_names)
  abstract = trainer.abstract_state(batch)
  params = restore_params(checkpoint_path, abstract.params)
  return trainer, params
