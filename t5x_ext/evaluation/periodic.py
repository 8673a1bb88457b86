"""Evaluation during training: every `eval_period` steps, the cheap metrics of the eval suite.

  evaluator = periodic_eval.build(trainer, mixture_or_task_name=..., lengths=..., period=100,
                                  max_batches=20, rows=8, template=first_batch, ...)
  state = loop.train_loop(..., evaluator=evaluator)   # calls evaluator.evaluate(step, params)

At steps that are multiples of the period, and at the last step, the training params are
evaluated on the validation split of the training task or mixture:

  teacher-forced   `eval/loss`, `eval/accuracy`, `eval/cross_entropy`, `eval/z_loss`,
                   `eval/loss/<denoiser>`, `eval/loss/<mode>` (e.g. `eval/loss/[NLU]`),
                   from the trainer's jitted eval step (compiled once, reused every period)
                   over at most `max_batches` batches (`t5x_ext.evaluation.teacher_forced`)
  SeqIO metrics    the task's predict/score metric functions on at most `predict_examples`
                   decoded examples (`eval/<task>/<metric>`; `t5x_ext.evaluation.seqio_metrics`)

Each process reads its own shard of the validation data (`partitioning.process_batch_shard`),
as in training; the eval step returns replicated global sums, so every process computes the
same numbers. Shards of unequal length are padded with all-zero batches (no loss weight) until
every process has run out, so the collectives line up.

The validation batches are deterministic (fixed seed, no shuffling), so they are read once and
kept in host memory when they fit in `cache_bytes`; later periods reuse them. Evaluation never
touches the training data iterator, the dropout RNG or the train state (params are only read),
so a run's training losses are the same with evaluation on or off, and resuming stays exact.

Library code: no gin; the data side (TensorFlow) is imported only inside `build`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from t5x_ext.errors import UserError
from t5x_ext.evaluation import seqio_metrics as seqio_metrics_lib
from t5x_ext.evaluation.teacher_forced import teacher_forced_metrics
from t5x_ext.training import hosts

EVAL_SPLIT = "validation"
# The same examples as `python -m t5x_ext.eval` sees with its default seed, whatever the
# training seed: runs with different seeds are compared on one validation sample.
EVAL_SEED = 0
DEFAULT_CACHE_BYTES = 256 << 20


def _is_int(value: Any) -> bool:
  return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_settings(
  eval_period: Any, eval_batches: Any, predict_examples: Any
) -> tuple[int | None, int | None, int | None]:
  """Validates the evaluation settings before anything is built.

  Args:
    eval_period: EVAL_PERIOD: steps between evaluations; None or 0 turns evaluation off.
    eval_batches: EVAL_BATCHES: validation batches per evaluation; None for the whole split.
    predict_examples: EVALUATOR_NUM_EXAMPLES: examples decoded for the task's SeqIO metrics;
      None for all, 0 for none.

  Returns:
    `(period or None, eval_batches, predict_examples)`.

  Raises:
    ValueError: naming the setting and its value.
  """
  if eval_period is not None and (not _is_int(eval_period) or eval_period < 0):
    raise UserError(
      f"EVAL_PERIOD = {eval_period!r}: must be a positive int (steps between evaluations), "
      "or 0/None to turn evaluation during training off."
    )
  if eval_batches is not None and (not _is_int(eval_batches) or eval_batches < 1):
    raise UserError(
      f"EVAL_BATCHES = {eval_batches!r}: must be a positive int (validation batches per "
      "evaluation), or None for the whole validation split."
    )
  if predict_examples is not None and (not _is_int(predict_examples) or predict_examples < 0):
    raise UserError(
      f"EVALUATOR_NUM_EXAMPLES = {predict_examples!r}: must be an int >= 0 (examples decoded "
      "for the task's SeqIO metrics; 0: none), or None for all."
    )
  period = None if not eval_period else int(eval_period)
  return (
    period,
    None if eval_batches is None else int(eval_batches),
    None if predict_examples is None else int(predict_examples),
  )


class EvalData:
  """This process's validation batches, read once and cached in host memory when small.

  Iterating yields numpy batches (this process's rows), at most `max_batches` of them; with
  several processes, every process yields the same number of batches (zero batches pad the
  shorter shards), so the sharded eval step runs in step on all of them.
  """

  def __init__(
    self,
    make_iterator: Callable[[], Iterator[Mapping[str, np.ndarray]]],
    template: Mapping[str, np.ndarray],
    *,
    max_batches: int | None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
  ):
    """Keeps the factory; nothing is read until the first evaluation.

    Args:
      make_iterator: returns a fresh, finite iterator over this process's validation batches.
      template: a batch with the eval shapes and dtypes (the padding batch is zeros like it).
      max_batches: cap per evaluation (None: the whole split).
      cache_bytes: keep the batches in memory when they take at most this many bytes.
    """
    self._make = make_iterator
    self._zeros = hosts.zero_batch(template)
    self.max_batches = max_batches
    self.cache_bytes = cache_bytes
    self._cache: list[dict[str, np.ndarray]] | None = None
    self.reads = 0  # times the pipeline was (re)built: 1 once cached

  def _local(self) -> Iterator[Mapping[str, np.ndarray]]:
    if self._cache is not None:
      yield from self._cache
      return
    self.reads += 1
    kept: list[dict[str, np.ndarray]] | None = []
    size = 0
    it = self._make()
    n = 0
    while self.max_batches is None or n < self.max_batches:
      try:
        batch = next(it)
      except StopIteration:
        break
      n += 1
      if kept is not None:
        size += sum(np.asarray(v).nbytes for v in batch.values())
        if size <= self.cache_bytes:
          kept.append(dict(batch))
        else:
          kept = None  # too large: read the split again next time
      yield batch
    if kept is not None:
      self._cache = kept

  def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]:
    if jax.process_count() == 1:
      yield from self._local()
      return
    yield from hosts.lockstep(self._local(), lambda: self._zeros)


class PeriodicEvaluator:
  """Evaluates the training params every `period` steps and writes the results.

  Attributes:
    period: steps between evaluations.
    last: the results of the latest evaluation (`{"eval/loss": ..., ...}`), or {}.
    history: `(step, results)` of every evaluation of this run.
  """

  def __init__(
    self,
    trainer: Any,
    data: Iterable[Mapping[str, np.ndarray]],
    *,
    period: int,
    denoiser_groups: Mapping[str, Sequence[int]] | None = None,
    seqio_fn: Callable[[Any], Mapping[str, float]] | None = None,
    writer: Any | None = None,
    say: Callable[[str], None] | None = None,
  ):
    """Keeps what each evaluation needs.

    Args:
      trainer: the `Trainer` (its jitted eval step is reused).
      data: re-iterable validation batches (an `EvalData`).
      period: evaluate when `step % period == 0` (and at the last step).
      denoiser_groups: mode -> denoiser indices, for `eval/loss/<mode>`.
      seqio_fn: params -> the task's SeqIO metrics (`{"<task>/<metric>": value}`), or None.
      writer: gets `write_scalars(step, results)` (the JSONL and TensorBoard writers).
      say: prints the one-line console summary.
    """
    if not _is_int(period) or period < 1:
      raise UserError(f"EVAL_PERIOD = {period!r}: must be a positive int.")
    self.trainer = trainer
    self.data = data
    self.period = int(period)
    self.denoiser_groups = dict(denoiser_groups or {})
    self.seqio_fn = seqio_fn
    self.writer = writer
    self.say = say
    self.last: dict[str, float] = {}
    self.history: list[tuple[int, dict[str, float]]] = []

  def due(self, step: int, *, is_last: bool = False) -> bool:
    """Whether to evaluate after `step`.

    Args:
      step: the step just trained.
      is_last: whether it is the run's last step.

    Returns:
      True on multiples of the period and at the last step.
    """
    return is_last or step % self.period == 0

  def evaluate(self, step: int, params: Any) -> dict[str, float]:
    """Evaluates `params`, writes and prints the results, and returns them.

    Args:
      step: the training step the params are from.
      params: the sharded training params (read only).

    Returns:
      `{"eval/loss": ..., "eval/loss/<denoiser>": ..., "eval/<task>/<metric>": ...}`.
    """
    start = time.perf_counter()
    teacher = teacher_forced_metrics(
      self.trainer, params, self.data, max_batches=None, denoiser_groups=self.denoiser_groups
    )
    results = {f"eval/{k}": float(v) for k, v in teacher.items()}
    if self.seqio_fn is not None:
      results.update({f"eval/{k}": float(v) for k, v in self.seqio_fn(params).items()})
    seconds = time.perf_counter() - start
    if not results:
      logging.warning("Evaluation at step %d: the validation split gave no batches.", step)
    if self.writer is not None and results:
      self.writer.write_scalars(step, results)
      self.writer.flush()
    if self.say is not None and results:
      self.say(summary_line(step, results, seconds))
    self.last = results
    self.history.append((step, results))
    return results

  def close(self) -> None:
    """Closes the writer."""
    if self.writer is not None:
      self.writer.close()


def summary_line(step: int, results: Mapping[str, float], seconds: float) -> str:
  """The console line of one evaluation: loss, accuracy, per-mode losses, SeqIO metrics.

  Args:
    step: the training step.
    results: what `PeriodicEvaluator.evaluate` returned.
    seconds: how long the evaluation took.

  Returns:
    E.g. `eval @ 100: loss 4.12, accuracy 0.31 | [NLU] 3.9 [NLG] 4.4 [S2S] 4.0 (2.1 s)`.
  """
  head = ", ".join(
    f"{k.split('/', 1)[1]} {results[k]:.4g}" for k in ("eval/loss", "eval/accuracy") if k in results
  )
  modes = [
    f"{k[len('eval/loss/') :]} {v:.4g}" for k, v in results.items() if k.startswith("eval/loss/[")
  ]
  seqio = [
    f"{k[len('eval/') :]} {v:.4g}"
    for k, v in results.items()
    if k.count("/") >= 2 and not k.startswith(("eval/loss/", "eval/tokens/"))
  ]
  parts = [head] + ([" ".join(modes)] if modes else []) + ([", ".join(seqio)] if seqio else [])
  return f"eval @ {step}: " + " | ".join(parts) + f" ({seconds:.1f} s)"


def has_split(provider: Any, split: str = EVAL_SPLIT) -> bool:
  """Whether the task or mixture has `split` (a mixture: any of its tasks).

  Args:
    provider: a SeqIO task or mixture.
    split: the split name.

  Returns:
    True if SeqIO can read the split.
  """
  return split in tuple(getattr(provider, "splits", ()) or ())


def _has_metric_fns(provider: Any) -> bool:
  for task in getattr(provider, "tasks", None) or [provider]:
    if getattr(task, "predict_metric_fns", None) or getattr(task, "score_metric_fns", None):
      if has_split(task):
        return True
  return False


def build(
  trainer: Any,
  *,
  provider: Any,
  mixture_or_task_name: str,
  lengths: Mapping[str, int],
  period: int,
  max_batches: int | None,
  predict_examples: int | None,
  rows: int,
  template: Mapping[str, np.ndarray],
  shard_id: int = 0,
  num_shards: int = 1,
  pack: bool = True,
  use_cached: bool = False,
  denoiser_groups: Mapping[str, Sequence[int]] | None = None,
  writer: Any | None = None,
  say: Callable[[str], None] | None = None,
  cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> PeriodicEvaluator:
  """Builds the evaluator of a training run (reads nothing yet).

  Args:
    trainer: the run's `Trainer`.
    provider: the SeqIO task or mixture (it must have a validation split).
    mixture_or_task_name: its name.
    lengths: TASK_FEATURE_LENGTHS.
    period: EVAL_PERIOD (positive).
    max_batches: EVAL_BATCHES (None: the whole split).
    predict_examples: EVALUATOR_NUM_EXAMPLES for the SeqIO metrics (0: none, None: all).
    rows: global rows per eval batch.
    template: a batch with the eval shapes on this process (for the zero padding batch).
    shard_id: this process's shard (`partitioning.process_batch_shard`).
    num_shards: the number of shards.
    pack: pack the validation examples (as in training).
    use_cached: read SeqIO's offline cache.
    denoiser_groups: mode -> denoiser indices.
    writer: the results' writer (process 0) or None.
    say: console printer (process 0) or None.
    cache_bytes: keep the validation batches in memory up to this size.

  Returns:
    A `PeriodicEvaluator`.
  """
  from t5x_ext.data import pipeline  # data side (TensorFlow): only when evaluation is on

  local_rows = rows // num_shards
  feature_converter_name = trainer.model.feature_converter_name

  def make_iterator():
    return pipeline.get_batches(
      mixture_or_task_name,
      lengths,
      split=EVAL_SPLIT,
      batch_size=local_rows,
      feature_converter_name=feature_converter_name,
      pack=pack,
      shuffle=False,
      seed=EVAL_SEED,
      shard_id=shard_id,
      num_shards=num_shards,
      repeat=False,
      use_cached=use_cached,
    )

  zeros = hosts.zero_batch(template, local_rows)
  data = EvalData(make_iterator, zeros, max_batches=max_batches, cache_bytes=cache_bytes)

  seqio_fn = None
  if predict_examples != 0 and _has_metric_fns(provider):
    # Every process decodes its shard of the examples in lockstep and the metrics see each
    # example once (`seqio_metrics.seqio_metrics`), so this runs on one process or many alike.
    decode_len = int(lengths.get("targets", 64))

    def seqio_fn(params):
      return seqio_metrics_lib.seqio_metrics(
        trainer,
        params,
        provider,
        lengths,
        split=EVAL_SPLIT,
        batch_size=rows,
        decode_len=decode_len,
        max_examples=predict_examples,
        seed=EVAL_SEED,
      )

  return PeriodicEvaluator(
    trainer,
    data,
    period=period,
    denoiser_groups=denoiser_groups,
    seqio_fn=seqio_fn,
    writer=writer,
    say=say,
  )
