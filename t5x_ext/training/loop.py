"""The training loop: input prefetching, logging, evaluation, checkpointing and the NaN stop.

  batches = Prefetcher(numpy_iterator, trainer.shard_batch)
  state = train_loop(trainer, state, batches, train_steps=1000, writer=w, checkpointer=c)

The loop keeps the devices busy: a background thread pulls the next numpy batches (the
tf.data pipeline releases the GIL while it works) and places them as global arrays, while
the main thread dispatches steps without waiting for their results. Metrics are fetched to
the host only at logging and checkpoint steps; every step's loss is checked then, and a
non-finite loss raises `NonFiniteLossError` before anything is saved, so the last checkpoint
on disk is always from finite training.

Never imports TensorFlow or gin.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax

from t5x_ext.training import metric_writers as metrics_lib
from t5x_ext.training import preemption
from t5x_ext.training.trainer import NonFiniteLossError, Trainer, TrainState

_END = object()


class Prefetcher(Iterator[tuple[dict, Any]]):
  """Pulls batches on a background thread, with the data position after each one.

  Each item is `(batch, position)`: `batch` is `place_fn(numpy_batch)` (global arrays) and
  `position` is `iterator.state()` taken right after that batch was drawn, i.e. what a
  checkpoint saved after training on it must hold so that a restore continues with the next
  batch (the prefetched-but-unused batches are drawn again after a restore).

  Attributes:
    wait_seconds: total time the consumer spent blocked waiting for a batch.
  """

  def __init__(
    self,
    iterator: Iterator[Mapping[str, Any]],
    place_fn: Callable[[Any], Any] | None = None,
    *,
    size: int = 2,
  ):
    """Starts the thread.

    Args:
      iterator: numpy batches; if it has `state()`, positions are recorded.
      place_fn: turns a numpy batch into what the step takes (e.g. `Trainer.shard_batch`).
      size: batches to keep ready.
    """
    self._it = iterator
    self._place = place_fn or (lambda b: b)
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
    self._stop = threading.Event()
    self.wait_seconds = 0.0
    self._thread = threading.Thread(target=self._work, name="t5x_ext-prefetch", daemon=True)
    self._thread.start()

  def _work(self) -> None:
    try:
      while not self._stop.is_set():
        try:
          batch = next(self._it)
        except StopIteration:
          self._put(_END)
          return
        position = self._it.state() if hasattr(self._it, "state") else None
        self._put((self._place(batch), position))
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises
      self._put(e)

  def _put(self, item) -> None:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def __next__(self) -> tuple[dict, Any]:
    start = time.perf_counter()
    item = self._queue.get()
    self.wait_seconds += time.perf_counter() - start
    if item is _END:
      self._queue.put(_END)
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    """Stops the thread, then closes the underlying iterator if it has a `close()`.

    Closing tears down the input pipeline (tf.data's worker threads) now, while the process
    runs, so nothing is left for the interpreter's exit to wait on (a library caller's
    process would otherwise hang at exit after an input error).
    """
    self._stop.set()
    while True:
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout=10)
    close = getattr(self._it, "close", None)
    if callable(close):
      close()


def _check_finite(host_metrics: Sequence[Mapping[str, Any]], first_step: int) -> None:
  for i, m in enumerate(host_metrics):
    loss = float(m["loss"])
    if not math.isfinite(loss):
      raise NonFiniteLossError(
        f"Training stopped: the loss became {loss} at step {first_step + i}. Nothing was "
        "saved after the last checkpoint; lower the learning rate, check the data, or use "
        "float32 compute."
      )


def _emergency_save(checkpointer, step, state, position) -> Callable[[], None] | None:
  # What the SIGTERM watchdog writes if an evaluation is stuck in C++ (XLA compiling): the
  # params are only read while evaluating, so saving them from another thread is safe.
  if checkpointer is None:
    return None
  return lambda: checkpointer.save(step, state, position)


def train_loop(
  trainer: Trainer,
  state: TrainState,
  batches: Iterator[tuple[dict, Any]],
  *,
  train_steps: int,
  log_every: int = 100,
  writer: metrics_lib.ScalarWriter | None = None,
  checkpointer: Any | None = None,
  progress: metrics_lib.Progress | None = None,
  tokens_per_step: int | None = None,
  flops_per_step: float | None = None,
  peak_flops: float | None = None,
  denoiser_groups: Mapping[str, Sequence[int]] | None = None,
  on_log: Callable[[int, dict[str, float]], None] | None = None,
  position_fn: Callable[[Any], Any] | None = None,
  evaluator: Any | None = None,
) -> TrainState:
  """Runs train steps from `state.step` up to `train_steps`.

  Args:
    trainer: the trainer (its state shardings set up).
    state: the sharded state; donated step by step.
    batches: yields `(global_batch, data_position)` (a `Prefetcher`).
    train_steps: the step to stop at (total, not additional).
    log_every: log every this many steps (and at the last step).
    writer: receives `write_scalars(step, scalars)` at logging steps (process 0 only).
    checkpointer: a `checkpointing.Checkpointer` (or alike): `should_save(step)` is asked
      every step (on the interval, or after SIGTERM; a collective across processes),
      `save(step, state, data_position)` writes (always; `should_save` keeps the interval), and `stop_requested` ends the
      loop after a SIGTERM save. `None` saves nothing.
    progress: a progress bar.
    tokens_per_step: batch positions per step, for tokens/s and MFU.
    flops_per_step: training FLOPs of one step (model estimate), for MFU.
    peak_flops: peak FLOP/s of all devices, for MFU.
    denoiser_groups: pooled per-denoiser losses (e.g. per mode prefix).
    on_log: called with `(step, scalars)` at each logging step (tests, notebooks).
    position_fn: maps the data position before it is saved (e.g. drops per-process keys).
    evaluator: evaluation during training (a `periodic_eval.PeriodicEvaluator`):
      `due(step, is_last=...)` is asked every step and `evaluate(step, params)` runs when it
      says so, after logging and before that step's checkpoint is saved (so a checkpoint at
      step S implies the evaluation of S was written). It only reads the params; its time is
      left out of the next interval's throughput.

  Returns:
    The final state.

  Raises:
    NonFiniteLossError: when a step's loss is NaN or infinite (before any further save).
  """
  step = int(jax.device_get(state.step))
  acc = metrics_lib.MetricAccumulator()
  pending: list[dict] = []
  position = None
  wait_at_reset = getattr(batches, "wait_seconds", 0.0)

  def fetch_and_check() -> None:
    # One device->host transfer for all steps since the last check; a non-finite loss at
    # any of them stops training before the caller can save.
    host = jax.device_get(pending)
    _check_finite(host, step - len(host) + 1)
    for m in host:
      acc.add(m)
    pending.clear()

  while step < train_steps:
    try:
      batch, position = next(batches)
    except StopIteration:
      logging.warning(
        "The training data ended at step %d, before train_steps=%d.", step, train_steps
      )
      break
    state, step_metrics = trainer.train_step(state, batch)
    step += 1
    preemption.set_unsaved(True)
    pending.append(step_metrics)
    is_last = step == train_steps
    should_log = step % log_every == 0 or is_last
    save_due = checkpointer is not None and (is_last or checkpointer.should_save(step))
    eval_due = evaluator is not None and evaluator.due(step, is_last=is_last)
    if should_log or save_due or eval_due:
      fetch_and_check()  # never evaluate or save a diverged state
    if should_log:
      scalars = metrics_lib.summarize(
        acc,
        denoiser_names=trainer.denoiser_names,
        denoiser_groups=denoiser_groups,
        tokens_per_step=tokens_per_step,
        flops_per_step=flops_per_step,
        peak_flops=peak_flops,
      )
      waited = getattr(batches, "wait_seconds", 0.0) - wait_at_reset
      scalars["input_wait_share"] = waited / max(acc.elapsed(), 1e-9)
      if writer is not None:
        writer.write_scalars(step, scalars)
        writer.flush()
      if on_log is not None:
        on_log(step, scalars)
      acc.reset()
      wait_at_reset = getattr(batches, "wait_seconds", 0.0)
    if progress is not None:
      progress.update(step, scalars if should_log else None)
    saved_position = position_fn(position) if position_fn else position
    if eval_due:
      eval_start = time.perf_counter()
      try:
        # SIGTERM raises `Preempted` here: the evaluation stops, the step is saved below.
        with preemption.evaluating(_emergency_save(checkpointer, step, state, saved_position)):
          evaluator.evaluate(step, state.params)
      except preemption.Preempted:
        if checkpointer is None:
          raise
        logging.warning("SIGTERM during the evaluation of step %d: stopped it.", step)
        save_due = True
      # Throughput is of training: the next interval's clock skips the evaluation.
      acc.start_time += time.perf_counter() - eval_start
    if save_due:
      with preemption.saving():
        checkpointer.save(step, state, saved_position)
      if checkpointer.stop_requested:
        preemption.set_unsaved(False)  # the stop save waited for its commit
        logging.warning("Stopping at step %d after the preemption checkpoint.", step)
        break
  if pending:  # stopped early: still refuse to hand back a diverged state silently
    fetch_and_check()
  return state
