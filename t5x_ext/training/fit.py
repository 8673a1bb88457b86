"""`fit`: train a model on a SeqIO task, with checkpoints, metrics and resume; no gin.

The command `python -m t5x_ext.train` (`t5x_ext.train.train`, what gin binds) and the
evaluation suite's fine-tuning probes both call `fit`, so a probe fine-tunes exactly as a
user's run does. `fit` takes its settings as plain arguments and reads as its steps:

  1. check the settings, cheapest first (`run_setup.prepare`): nothing is compiled before
  2. open this process's shard of the training data
  3. build the `Trainer` and, optionally, the memory plan of its compiled step
  4. restore the newest checkpoint, else initialise (from `restore_params_from` if given)
  5. open the metric writers and the progress bar
  6. build the evaluator (`make_evaluator`, given by the caller; evaluation is a floor above)
  7. run the loop (`loop.train_loop`), close everything, return a `TrainResult`

The data side (TensorFlow) is imported in step 2 only, when a SeqIO task is read.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax
from etils import epath

from t5x_ext.errors import UserError
from t5x_ext.training import (
  checkpointing,
  flops,
  loop,
  optimizers,
  partitioning,
  preemption,
  run_paths,
  run_setup,
  tensorboard_events,
)
from t5x_ext.training import metric_writers as metrics_lib
from t5x_ext.training.trainer import Trainer, TrainState


@dataclasses.dataclass
class TrainResult:
  """What `fit` (and `t5x_ext.train.train`) returns.

  Attributes:
    state: the final sharded `TrainState`.
    trainer: the `Trainer` (for `eval_step`, or `trainer.model.predict_batch`).
    model_dir: the run directory.
    last_metrics: the scalars of the last logging step.
    samples: the printed samples (dicts with mode, denoiser, inputs, targets, prediction).
    eval_metrics: the results of the last evaluation during training (`eval/loss`, ...), or
      {} when there was none.
    stopped_by_signal: the run stopped early at SIGTERM, after checkpointing (the command
      line then exits with status 143; run it again to resume).
  """

  state: TrainState
  trainer: Trainer
  model_dir: str
  last_metrics: dict[str, float]
  samples: list[dict[str, str]]
  eval_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
  stopped_by_signal: bool = False


@dataclasses.dataclass(frozen=True)
class FitContext:
  """What `make_evaluator` gets: the run as built, before the first step.

  Attributes:
    trainer: the `Trainer`.
    run: the checked settings (`run_setup.RunSetup`).
    first: this process's first training batch (shapes for the evaluator's batches).
    start: the step the run starts from (restored, else 0).
    model_dir: the run directory.
    say: prints on process 0 (through the progress bar when it is on); None elsewhere.
  """

  trainer: Trainer
  run: run_setup.RunSetup
  first: Mapping[str, Any]
  start: int
  model_dir: str
  say: Callable[[str], None] | None


def fit(
  *,
  model: Any,
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  train_steps: int,
  model_dir: str,
  batch_size: int = 128,
  mesh_shape: Mapping[str, int] | None = None,
  logical_axis_rules: partitioning.Rules = partitioning.DEFAULT_RULES,
  optimizer: optax.GradientTransformation | Callable[..., Any] | None = None,
  learning_rate: float | Callable[[Any], Any] = 0.01,
  num_microbatches: int = 1,
  seed: int = 0,
  checkpoint_every: int = 1000,
  keep_checkpoints: int | None = 3,
  async_checkpointing: bool = True,
  restore_params_from: str | None = None,
  log_every: int = 100,
  tensorboard: bool = True,
  progress_bar: bool = True,
  pack: bool = True,
  use_cached: bool = False,
  prefetch: int = 2,
  peak_flops_per_device: float | None = None,
  check_sharding: bool = True,
  plan_memory: bool = True,
  device_memory: int | str | None = None,
  make_evaluator: Callable[[FitContext], Any] | None = None,
) -> TrainResult:
  """Trains `model` on a SeqIO task or mixture, with checkpoints, metrics and resume.

  The arguments are those of `t5x_ext.train.train` (which documents each with its macro),
  less the evaluation and sample settings, plus:

  Args:
    make_evaluator: called once before the first step with a `FitContext`; returns an
      evaluator for `loop.train_loop` (`maybe_evaluate(step, params)`, `close()`, `last`) or
      None.
    (others): see `t5x_ext.train.train`.

  Returns:
    A `TrainResult` (no samples).

  Raises:
    ValueError: on a bad setting, naming it and its value (before compiling anything).
    memory_plan.PlanTooLargeError: (a ValueError) the train step needs more memory per device
      than `device_memory`, before any step runs or checkpoint is written.
    checkpointing.NonFiniteStateError / trainer.NonFiniteLossError: when training diverges.
  """
  # 1. Settings, cheapest first; nothing is compiled before they all pass.
  train_steps = run_setup.positive_int("TRAIN_STEPS", train_steps)
  log_every = run_setup.positive_int("LOG_EVERY", log_every)
  checkpoint_every = run_setup.positive_int("CHECKPOINT_EVERY", checkpoint_every)
  if not model_dir or not isinstance(model_dir, str | os.PathLike):
    raise UserError(f"MODEL_DIR = {model_dir!r}: must be a directory path.")
  model_dir = str(model_dir)
  memory_bytes = None
  if plan_memory and device_memory is not None:
    memory_bytes = _device_memory_bytes(device_memory)
  run = run_setup.prepare(
    model,
    mixture_or_task_name,
    task_feature_lengths,
    batch_size=batch_size,
    mesh_shape=mesh_shape,
    num_microbatches=num_microbatches,
  )
  tx = build_optimizer(optimizer, learning_rate)

  # 2. This process's shard of every global batch.
  data = _open_data(run, mixture_or_task_name, model, pack=pack, seed=seed, use_cached=use_cached)
  first = next(data)

  # 3. The trainer, and the plan of its compiled step (the run executes that executable).
  trainer = Trainer(
    model,
    tx,
    run.mesh,
    logical_axis_rules,
    learning_rate_fn=learning_rate,
    num_microbatches=num_microbatches,
    denoiser_names=run.denoiser_names,
    dropout_seed=seed,
  )
  abstract = trainer.abstract_state(first)
  if check_sharding:
    partitioning.check_params_sharded(abstract.params, run.mesh)
  is_chief = jax.process_index() == 0
  say = print if is_chief else (lambda *a, **k: None)
  _say_attention(model, run, pack, say)
  if plan_memory:
    _plan_memory(trainer, first, run.batch_size, memory_bytes, device_memory, say)

  # 4. Resume, else fine-tune from params, else fresh.
  ckpt = checkpointing.Checkpointer(
    model_dir,
    save_interval_steps=checkpoint_every,
    max_to_keep=keep_checkpoints,
    async_save=async_checkpointing,
  )
  # A SIGTERM save must not wait for this compilation (seconds on a loaded host).
  checkpointing.warm_up_check_finite(state_to_tree(abstract))
  state, start, batches_iter = _restore_or_init(
    ckpt, trainer, abstract, tx, data, first, seed=seed, params_from=restore_params_from, say=say
  )

  # 5. Metric writers and progress.
  throughput = _throughput(model, run, first, peak_flops_per_device, say)
  writer = _writers(model_dir, "train", start, enabled=is_chief, tensorboard=tensorboard)
  progress = metrics_lib.Progress(train_steps, start, enabled=is_chief and progress_bar)

  # 6. The evaluator, if the caller wants one.
  evaluator = None
  if make_evaluator is not None:
    context = FitContext(
      trainer, run, first, start, model_dir, progress.write if is_chief else None
    )
    evaluator = make_evaluator(context)

  # 7. The loop.
  last: dict[str, float] = {}

  def on_log(step, scalars):
    last.clear()
    last.update(scalars)
    if not progress_bar:
      shown = ", ".join(f"{k}={scalars[k]:.4g}" for k in ("loss", "accuracy") if k in scalars)
      say(f"step {step}: {shown}")

  batches = loop.Prefetcher(batches_iter, trainer.shard_batch, size=prefetch)
  try:
    with preemption.training():  # SIGTERM from here flags; the loop saves, then stops
      state = loop.train_loop(
        trainer,
        state,
        batches,
        train_steps=train_steps,
        log_every=log_every,
        writer=writer,
        checkpointer=CheckpointAdapter(ckpt),
        progress=progress,
        **throughput,
        denoiser_groups=run.denoiser_groups,
        on_log=on_log,
        position_fn=position_for_checkpoint,
        evaluator=evaluator,
      )
  finally:
    batches.close()
    progress.close()
    writer.close()
    if evaluator is not None:
      evaluator.close()
    ckpt.close()
    preemption.set_unsaved(False)  # every save committed (or the run failed)
  return TrainResult(
    state,
    trainer,
    model_dir,
    dict(last),
    [],
    dict(evaluator.last) if evaluator is not None else {},
    stopped_by_signal=ckpt.stop_requested or preemption.requested(),
  )


# ---------------------------------------------------------------------------- the steps


def build_optimizer(optimizer, learning_rate) -> optax.GradientTransformation:
  if optimizer is None:
    return optimizers.make_optimizer(learning_rate=learning_rate)
  if isinstance(optimizer, optax.GradientTransformation):
    return optimizer
  if callable(optimizer):  # a factory such as gin's `@optimizers.make_optimizer`
    return optimizer(learning_rate=learning_rate)
  raise UserError(f"optimizer = {optimizer!r}: expected an optax transformation or a factory.")


def _open_data(run, mixture_or_task_name, model, *, pack, seed, use_cached):
  from t5x_ext.data import pipeline  # data side (TensorFlow): only where a task is read

  return pipeline.get_batches(
    mixture_or_task_name,
    run.lengths,
    split="train",
    batch_size=run.local_rows,
    feature_converter_name=model.feature_converter_name,
    pack=pack,
    seed=seed,
    shard_id=run.shard_id,
    num_shards=run.num_shards,
    use_cached=use_cached,
  )


def _device_memory_bytes(device_memory: Any) -> int:
  from t5x_ext.training import memory_plan

  try:
    return memory_plan.parse_memory(device_memory)
  except ValueError:
    raise UserError(
      f"device_memory = {device_memory!r}: expected bytes or a size such as '16GiB', '80GB' "
      "or '512MiB'."
    ) from None


def _say_attention(model, run, pack, say) -> None:
  """Prints the attention kernel each attention takes (`attention_implementation`).

  An explicit kernel that cannot run on this backend fails here, before compiling.
  """
  config = getattr(model, "config", None)
  if config is None or not hasattr(config, "attention_implementation"):
    return
  from t5x_ext.model import attention

  chosen = attention.describe(
    config,
    int(run.lengths.get("inputs", 0)),
    flops.decoder_length(config, run.lengths),
    packed=pack,
    prefix_lm=bool(getattr(model, "inputs_bidirectional_attention", False)),
  )
  say("Attention: " + ", ".join(f"{k} {v['implementation']}" for k, v in chosen.items()) + ".")


def _plan_memory(trainer, first, batch_size, memory_bytes, device_memory, say):
  """Compiles the train step and fails here, before any checkpoint or step, if it cannot fit."""
  from t5x_ext.training import memory_plan

  if memory_bytes is not None:
    label = f"device_memory = {device_memory!r}"
  else:
    # This process's own device: on several hosts every process decides alike.
    device = jax.local_devices()[0]
    memory_bytes = memory_plan.device_memory_limit(device)
    label = f"bytes_limit of {device.device_kind}; set device_memory to override"
  try:
    return memory_plan.check_fits(
      trainer, first, memory_bytes, batch_size=batch_size, memory_label=label, say=say
    )
  except RuntimeError as e:  # a backend without memory analysis: train without a plan
    if device_memory is not None:
      raise
    logging.warning("No memory plan: %s", e)
    return None


def state_to_tree(state: TrainState) -> dict[str, Any]:
  # Checkpoints hold a plain dict so `checkpointing.restore_params` finds `params` by name.
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def _tree_to_state(tree: Mapping[str, Any]) -> TrainState:
  return TrainState(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"])


def _restore_or_init(ckpt, trainer, abstract, tx, data, first, *, seed, params_from, say):
  """Returns `(state, start step, batches)`: resumed, fine-tuned from params, or fresh."""
  restored = ckpt.restore_latest(state_to_tree(abstract))
  if restored is not None:
    tree, position, start = restored
    restore_position(data, position)
    say(f"Resumed from step {start} in {ckpt.directory}.")
    return _tree_to_state(tree), start, data
  state = trainer.init_state(jax.random.key(seed), first)
  if params_from:
    params = checkpointing.restore_params(params_from, abstract.params)
    opt_state, _ = partitioning.init_optimizer_state(tx, params, trainer.state_shardings.params)
    state = TrainState(step=state.step, params=params, opt_state=opt_state)
    say(f"Initialised params from {params_from}.")
  return state, 0, Peeked(first, data)


def _throughput(model, run, first, peak_flops_per_device, say) -> dict[str, Any]:
  """`loop.train_loop`'s tokens, FLOPs and peak FLOPs per step (for tokens/s and MFU).

  The peak is per device as JAX counts devices (`training.flops`), times the devices; a
  device kind without a known peak gets no MFU and a one-line note (PEAK_FLOPS_PER_DEVICE
  gives it).
  """
  rows = run.batch_size
  tokens_per_step = rows * sum(
    v.shape[1] for k, v in first.items() if k in ("encoder_input_tokens", "decoder_target_tokens")
  )
  flops_per_step = None
  config = getattr(model, "config", None)
  if config is not None and hasattr(config, "emb_dim"):
    flops_per_step = flops.training_flops_per_step(config, run.lengths, rows)
  peak, note = flops.total_peak_flops(
    jax.devices()[0].device_kind, jax.device_count(), peak_flops_per_device
  )
  if note and flops_per_step is not None:
    say(note)
  return {"tokens_per_step": tokens_per_step, "flops_per_step": flops_per_step, "peak_flops": peak}


def tensorboard_writer(logdir: str, start: int = 0):
  """A clu SummaryWriter for `logdir`, its events after `start` dropped (None without clu).

  Args:
    logdir: the event directory (e.g. MODEL_DIR/tensorboard/train).
    start: the restored step: events of later steps belong to a future that was not kept.

  Returns:
    The writer, or None.
  """
  if start:
    tensorboard_events.truncate_after(logdir, start)
  if run_paths.is_object_store(logdir):
    # clu's writer goes through TensorFlow's GCS filesystem, which cannot reach an emulator
    # and streams no appends: the scalars go through epath instead.
    return tensorboard_events.ScalarEventWriter(logdir)
  try:
    from clu import metric_writers  # imports TensorFlow: only when TensorBoard is on
  except ImportError as e:  # pragma: no cover - tensorboard is a dependency
    logging.warning("No TensorBoard events (%s).", e)
    return None
  return metric_writers.SummaryWriter(logdir)


def _writers(model_dir, name, start, *, enabled, tensorboard):
  """MODEL_DIR/metrics/<name>.jsonl (cut back to `start`) and TensorBoard, on process 0."""
  writers: list[Any] = []
  if enabled:
    jsonl = epath.Path(model_dir) / "metrics" / f"{name}.jsonl"
    writers.append(metrics_lib.JsonlWriter(jsonl, truncate_after=start))
    if tensorboard:
      tb = tensorboard_writer(os.path.join(model_dir, "tensorboard", name), start)
      if tb is not None:
        writers.append(tb)
  return metrics_lib.MultiWriter(writers)


class CheckpointAdapter:
  """Gives `loop.train_loop` the Checkpointer with dict-shaped state."""

  def __init__(self, ckpt: checkpointing.Checkpointer):
    self.ckpt = ckpt

  @property
  def stop_requested(self) -> bool:
    return self.ckpt.stop_requested

  def should_save(self, step: int) -> bool:
    return self.ckpt.should_save(step)

  def save(self, step, state, position) -> bool:
    return self.ckpt.save(step, state_to_tree(state), position)


class Peeked:
  """An iterator with its first batch already drawn (for shapes), replayed first."""

  def __init__(self, first, it):
    self._first, self._it = first, it
    self._first_state = it.state() if hasattr(it, "state") else None

  def __iter__(self):
    return self

  def __next__(self):
    if self._first is not None:
      batch, self._first = self._first, None
      return batch
    return next(self._it)

  def state(self):
    if self._first is not None:
      return self._first_state
    return self._it.state() if hasattr(self._it, "state") else None

  def close(self):
    """Closes the underlying iterator (its input pipeline), if it can be closed."""
    self._first = None
    close = getattr(self._it, "close", None)
    if callable(close):
      close()


def position_for_checkpoint(position: Mapping[str, Any] | None) -> dict[str, Any]:
  # Only process 0 writes the data item, so it must not hold per-process values.
  if not position:
    return {}
  out = dict(position)
  if isinstance(out.get("spec"), Mapping):
    out["spec"] = {k: v for k, v in out["spec"].items() if k != "shard_id"}
  return out


def restore_position(it, saved: Mapping[str, Any]) -> None:
  """Puts `it` at a checkpoint's data position, with this process's own shard id."""
  if not saved or not hasattr(it, "restore"):
    return
  saved = dict(saved)
  if isinstance(saved.get("spec"), Mapping):
    spec = getattr(it, "spec", {}) or {}
    saved["spec"] = {**saved["spec"], "shard_id": spec.get("shard_id", 0)}
  it.restore(saved)
