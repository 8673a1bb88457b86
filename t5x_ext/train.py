"""Training entry point: `python -m t5x_ext.train --gin_file=FILE [--gin.KEY=VALUE ...]`.

The run file `gin/runs/pretrain.gin` binds `train` below; its `%gin.REQUIRED` macros are
MODEL_DIR, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS and TRAIN_STEPS (BATCH_SIZE and
MESH_SHAPE have defaults). The same function is a plain Python function for notebooks:

  from t5x_ext import train
  from t5x_ext.model import models
  from t5x_ext.model import network
  result = train.train(model=models.EncoderDecoderModel(network.TransformerConfig(...)),
                       mixture_or_task_name="pydocs_ul2_mod_v1",
                       task_feature_lengths={"inputs": 128, "targets": 64},
                       train_steps=100, model_dir="/tmp/run", batch_size=16)

Every setting is checked before anything is compiled, with the setting and value named.
A run restores the newest checkpoint in MODEL_DIR/checkpoints (params, optimizer state,
step and data position) and continues exactly; `restore_params_from` (fine-tuning) is used
only when MODEL_DIR has no checkpoint yet.

With `eval_period` set (EVAL_PERIOD; the run files default it to CHECKPOINT_EVERY), the
params are evaluated on the task's validation split every `eval_period` steps and at the last
step (`t5x_ext.evaluation.periodic`): `eval/loss`, `eval/loss/<denoiser>`, `eval/loss/<mode>`, the
task's SeqIO metrics, to MODEL_DIR/metrics/eval.jsonl, MODEL_DIR/tensorboard/eval and the
console. A task without a validation split gets a warning and no evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

from t5x_ext.evaluation import periodic as periodic_eval
from t5x_ext.launch import scaffold as entry
from t5x_ext.training import (
  checkpointing,
  hosts,
  loop,
  optimizers,
  partitioning,
  run_lock,
  tensorboard_events,
)
from t5x_ext.training import metric_writers as metrics_lib
from t5x_ext.training.trainer import Trainer, TrainState

REQUIRED_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS")
SAMPLE_MODES = ("[NLU]", "[NLG]", "[S2S]")


@dataclasses.dataclass
class TrainResult:
  """What `train` returns.

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


def _build_optimizer(optimizer, learning_rate) -> optax.GradientTransformation:
  if optimizer is None:
    return optimizers.make_optimizer(learning_rate=learning_rate)
  if isinstance(optimizer, optax.GradientTransformation):
    return optimizer
  if callable(optimizer):  # a factory such as gin's `@optimizers.make_optimizer`
    return optimizer(learning_rate=learning_rate)
  raise ValueError(f"optimizer = {optimizer!r}: expected an optax transformation or a factory.")


def _state_to_tree(state: TrainState) -> dict[str, Any]:
  # Checkpoints hold a plain dict so `checkpointing.restore_params` finds `params` by name.
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def _tree_to_state(tree: Mapping[str, Any]) -> TrainState:
  return TrainState(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"])


class _CheckpointAdapter:
  """Gives `loop.train_loop` the Checkpointer with dict-shaped state."""

  def __init__(self, ckpt: checkpointing.Checkpointer):
    self.ckpt = ckpt

  @property
  def stop_requested(self) -> bool:
    return self.ckpt.stop_requested

  def should_save(self, step: int) -> bool:
    return self.ckpt.should_save(step)

  def save(self, step, state, position, *, force=False) -> bool:
    return self.ckpt.save(step, _state_to_tree(state), position, force=force)


class _Peeked:
  """An iterator with its first batch already drawn (for shapes), replayed first."""

  def __init__(self, first, it):
    self._first, self._it = first, it
    self._first_state = it.state()

  def __iter__(self):
    return self

  def __next__(self):
    if self._first is not None:
      batch, self._first = self._first, None
      return batch
    return next(self._it)

  def state(self):
    return self._first_state if self._first is not None else self._it.state()


def _position_for_checkpoint(position: Mapping[str, Any] | None) -> dict[str, Any]:
  # Only process 0 writes the data item, so it must not hold per-process values.
  if not position:
    return {}
  out = dict(position)
  if "spec" in out:
    out["spec"] = {k: v for k, v in out["spec"].items() if k != "shard_id"}
  return out


def _restore_position(it, saved: Mapping[str, Any]) -> None:
  saved = dict(saved)
  if "spec" in saved:
    saved["spec"] = {**saved["spec"], "shard_id": it.spec.get("shard_id", 0)}
  it.restore(saved)


def _tensorboard_writer(logdir: str, start: int = 0):
  if start:
    # Steps logged after the restored checkpoint are replayed: show each step once.
    tensorboard_events.truncate_after(logdir, start)
  try:
    from clu import metric_writers  # imports TensorFlow: entry point only
  except ImportError as e:  # pragma: no cover - tensorboard is a dependency
    logging.warning("No TensorBoard events (%s).", e)
    return None
  return metric_writers.SummaryWriter(logdir)


def _build_evaluator(
  trainer,
  *,
  provider,
  mixture_or_task_name,
  lengths,
  model_dir,
  start,
  period,
  max_batches,
  predict_examples,
  rows,
  template,
  shard,
  pack,
  use_cached,
  denoiser_groups,
  tensorboard,
  say,
) -> periodic_eval.PeriodicEvaluator | None:
  is_chief = jax.process_index() == 0
  eval_jsonl = pathlib.Path(model_dir) / "metrics" / "eval.jsonl"
  if not period:
    if is_chief and start and eval_jsonl.exists():
      # Evaluations of steps after the restored one belong to a future that was not kept.
      metrics_lib.JsonlWriter(eval_jsonl, truncate_after=start).close()
    return None
  writers: list[Any] = []
  if is_chief:
    writers.append(metrics_lib.JsonlWriter(eval_jsonl, truncate_after=start))
    if tensorboard:
      tb = _tensorboard_writer(os.path.join(model_dir, "tensorboard", "eval"), start)
      if tb is not None:
        writers.append(tb)
  return periodic_eval.build(
    trainer,
    provider=provider,
    mixture_or_task_name=mixture_or_task_name,
    lengths=lengths,
    period=period,
    max_batches=max_batches,
    predict_examples=predict_examples,
    rows=rows,
    template=template,
    shard_id=shard[0],
    num_shards=shard[1],
    pack=pack,
    use_cached=use_cached,
    denoiser_groups=denoiser_groups,
    writer=metrics_lib.MultiWriter(writers) if writers else None,
    say=say,
  )


def _device_memory_bytes(device_memory: Any) -> int:
  from t5x_ext.training import memory_plan

  try:
    return memory_plan.parse_memory(device_memory)
  except ValueError:
    raise ValueError(
      f"device_memory = {device_memory!r}: expected bytes or a size such as '16GiB', '80GB' "
      "or '512MiB'."
    ) from None


def _plan_memory(trainer, first, batch_size, memory_bytes, device_memory, say):
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


def _print_samples(trainer, params, mixture_or_task_name, lengths, *, per_mode, decode_len, say):
  from t5x_ext.data import providers as run_data

  provider = run_data.get_provider(mixture_or_task_name)
  vocab = run_data.vocabulary_of(provider)
  examples, batch = run_data.sample_examples(
    mixture_or_task_name,
    lengths,
    feature_converter_name=trainer.model.feature_converter_name,
    modes=SAMPLE_MODES,
    per_mode=per_mode,
  )
  if not examples:
    say("No validation examples with [NLU]/[NLG]/[S2S] prefixes to show.")
    return []
  predictions, _ = hosts.predict(trainer, params, batch, decode_len=decode_len)
  samples = []
  say("\nDenoised samples (greedy decoding):")
  for ex, row, pred in zip(examples, batch["decoder_target_tokens"], predictions):
    inputs_ids = ex.get("inputs", [])
    sample = {
      "mode": ex["mode"],
      "denoiser": ex["denoiser"],
      "inputs": run_data.decode_ids(vocab, inputs_ids),
      "targets": run_data.decode_ids(vocab, row),
      "prediction": run_data.decode_ids(vocab, pred),
    }
    samples.append(sample)
    say(f"--- {sample['mode']} ({sample['denoiser']})")
    say(f"  input : {sample['inputs'][:300]}")
    say(f"  target: {sample['targets'][:200]}")
    say(f"  model : {sample['prediction'][:200]}")
  return samples


def train(
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
  samples_per_mode: int = 0,
  sample_decode_len: int = 32,
  peak_flops_per_device: float | None = None,
  check_sharding: bool = True,
  eval_period: int | None = None,
  eval_batches: int | None = 20,
  evaluator_num_examples: int | None = 128,
  plan_memory: bool = True,
  device_memory: int | str | None = None,
) -> TrainResult:
  """Trains `model` on a SeqIO task or mixture, with checkpoints, metrics and resume.

  Args:
    model: an `EncoderDecoderModel` or `DecoderOnlyModel` (gin: `%MODEL`).
    mixture_or_task_name: registered SeqIO task or mixture (MIXTURE_OR_TASK_NAME).
    task_feature_lengths: e.g. {"inputs": 512, "targets": 114} (TASK_FEATURE_LENGTHS).
    train_steps: the step to train to, counting restored steps (TRAIN_STEPS).
    model_dir: run directory: checkpoints/, metrics/train.jsonl, tensorboard/ (MODEL_DIR).
    batch_size: global batch size in rows (BATCH_SIZE).
    mesh_shape: mesh axis sizes, e.g. {"data": -1} or {"data": 2, "fsdp": 2, "model": 2}
      (MESH_SHAPE); default all devices on `data`.
    logical_axis_rules: logical-to-mesh axis rules.
    optimizer: an optax transformation, or a factory called with `learning_rate=` (gin:
      `@optimizers.make_optimizer`); default Adafactor.
    learning_rate: float or schedule (`t5x_ext.training.schedules`); logged as `learning_rate`.
    num_microbatches: gradient accumulation over this many microbatches per step.
    seed: seed of parameter init, dropout and the data pipeline.
    checkpoint_every: save every this many steps (and at the end).
    keep_checkpoints: keep the newest this many checkpoints (None: all).
    async_checkpointing: write checkpoints in the background.
    restore_params_from: a checkpoint (ours or converted Transformers weights) whose params
      initialise a fresh run (fine-tuning); ignored when MODEL_DIR has a checkpoint.
    log_every: log metrics every this many steps.
    tensorboard: also write TensorBoard events (clu SummaryWriter) to MODEL_DIR/tensorboard.
    progress_bar: show a tqdm bar with ETA on process 0.
    pack: pack examples into rows.
    use_cached: read SeqIO's offline cache of the task.
    prefetch: batches prepared ahead on a background thread.
    samples_per_mode: at the end, print this many denoised validation samples for each of
      [NLU], [NLG] and [S2S] (0 = none).
    sample_decode_len: decoding length of those samples.
    peak_flops_per_device: for the MFU estimate; default from the device kind (None on CPU).
    check_sharding: with fsdp or model > 1, fail if a parameter over 1 MiB is replicated.
    eval_period: evaluate on the validation split every this many steps and at the last step
      (EVAL_PERIOD); None or 0: no evaluation during training. Batches of
      `batch_size // num_microbatches` rows, sharded over processes like training.
    eval_batches: validation batches per evaluation (EVAL_BATCHES); None: the whole split.
    evaluator_num_examples: validation examples decoded for the task's SeqIO metrics, when
      the task has any (EVALUATOR_NUM_EXAMPLES); 0: none, None: all.
    plan_memory: before the first step, compile the train step and print its per-device
      memory plan (`t5x_ext.training.memory_plan`); fail when it exceeds `device_memory`. The run then
      executes that compiled step, so the plan costs no extra compile.
    device_memory: usable memory of one device, in bytes or as text ('16GiB', '80GB');
      default: what the runtime reports (`bytes_limit` on GPU/TPU; nothing on CPU, where the
      plan is only printed).

  Returns:
    A `TrainResult`.

  Raises:
    ValueError: on a bad setting, naming it and its value (before compiling anything).
    memory_plan.PlanTooLargeError: (a ValueError) the train step needs more memory per device
      than `device_memory`, before any step runs or checkpoint is written.
    checkpointing.NonFiniteStateError / trainer.NonFiniteLossError: when training diverges.
  """
  from t5x_ext.data import providers as run_data  # data side, imported only here

  # ---- checks, cheapest first; nothing is compiled before they all pass.
  train_steps = entry.positive_int("TRAIN_STEPS", train_steps)
  log_every = entry.positive_int("log_every", log_every)
  checkpoint_every = entry.positive_int("checkpoint_every", checkpoint_every)
  if not model_dir or not isinstance(model_dir, str | os.PathLike):
    raise ValueError(f"MODEL_DIR = {model_dir!r}: must be a directory path.")
  model_dir = str(model_dir)
  memory_bytes = None
  if plan_memory and device_memory is not None:
    memory_bytes = _device_memory_bytes(device_memory)
  run = entry.prepare(
    model,
    mixture_or_task_name,
    task_feature_lengths,
    batch_size=batch_size,
    mesh_shape=mesh_shape,
    num_microbatches=num_microbatches,
  )
  provider, lengths, denoisers, mesh = run.provider, run.lengths, run.denoisers, run.mesh
  batch_size = run.batch_size
  tx = _build_optimizer(optimizer, learning_rate)
  eval_period, eval_batches, evaluator_num_examples = periodic_eval.check_settings(
    eval_period, eval_batches, evaluator_num_examples
  )
  eval_warning = None
  if eval_period and not periodic_eval.has_split(provider):
    # Warn and train on: the run files turn evaluation on by default, and a corpus of the
    # user's own files often has only a train split.
    eval_warning = (
      f"EVAL_PERIOD = {eval_period}, but {mixture_or_task_name!r} has no "
      f"{periodic_eval.EVAL_SPLIT!r} split (splits: {sorted(provider.splits)}): no evaluation "
      "during training. Set EVAL_PERIOD = 0 to silence this."
    )
    logging.warning(eval_warning)
    eval_period = None

  # ---- data: this process's shard of every global batch.
  from t5x_ext.data import pipeline

  shard_id, num_shards = run.shard_id, run.num_shards
  data = pipeline.get_batches(
    mixture_or_task_name,
    lengths,
    split="train",
    batch_size=batch_size // num_shards,
    feature_converter_name=model.feature_converter_name,
    pack=pack,
    seed=seed,
    shard_id=shard_id,
    num_shards=num_shards,
    use_cached=use_cached,
  )
  first = next(data)

  trainer = Trainer(
    model,
    tx,
    mesh,
    logical_axis_rules,
    learning_rate_fn=learning_rate,
    num_microbatches=num_microbatches,
    denoiser_names=[d.name for d in denoisers],
    dropout_seed=seed,
  )
  abstract = trainer.abstract_state(first)
  if check_sharding:
    partitioning.check_params_sharded(abstract.params, mesh)
  is_chief = jax.process_index() == 0
  say = print if is_chief else (lambda *a, **k: None)
  if plan_memory:
    # Compiles the train step (the run then executes this executable: no second compile)
    # and fails here, before any checkpoint or step, when it cannot fit.
    _plan_memory(trainer, first, batch_size, memory_bytes, device_memory, say)

  # ---- state: resume, else fine-tune from params, else fresh.
  ckpt = checkpointing.Checkpointer(
    model_dir,
    save_interval_steps=checkpoint_every,
    max_to_keep=keep_checkpoints,
    async_save=async_checkpointing,
  )
  restored = ckpt.restore_latest(_state_to_tree(abstract))
  if restored is not None:
    tree, position, start = restored
    state = _tree_to_state(tree)
    _restore_position(data, position)
    batches_iter = data
    say(f"Resumed from step {start} in {ckpt.directory}.")
  else:
    start = 0
    state = trainer.init_state(jax.random.key(seed), first)
    if restore_params_from:
      params = checkpointing.restore_params(restore_params_from, abstract.params)
      opt_state, _ = partitioning.init_optimizer_state(tx, params, trainer.state_shardings.params)
      state = TrainState(step=state.step, params=params, opt_state=opt_state)
      say(f"Initialised params from {restore_params_from}.")
    batches_iter = _Peeked(first, data)

  # ---- metrics.
  global_rows = batch_size
  tokens_per_step = global_rows * sum(
    v.shape[1] for k, v in first.items() if k in ("encoder_input_tokens", "decoder_target_tokens")
  )
  flops_per_step = None
  if hasattr(model, "flops_per_token"):
    # models.py counts FLOPs per decoder position (targets, or inputs + targets).
    flops_per_step = (
      float(model.flops_per_token(lengths))
      * global_rows
      * int(first["decoder_target_tokens"].shape[1])
    )
  peak = peak_flops_per_device or metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind)
  peak_total = peak * jax.device_count() if peak else None
  writers: list[Any] = []
  if is_chief:
    writers.append(
      metrics_lib.JsonlWriter(
        pathlib.Path(model_dir) / "metrics" / "train.jsonl", truncate_after=start
      )
    )
    if tensorboard:
      tb = _tensorboard_writer(os.path.join(model_dir, "tensorboard", "train"), start)
      if tb is not None:
        writers.append(tb)
  writer = metrics_lib.MultiWriter(writers)
  progress = metrics_lib.Progress(train_steps, start, enabled=is_chief and progress_bar)
  last: dict[str, float] = {}
  if eval_warning:
    say(eval_warning)
  evaluator = _build_evaluator(
    trainer,
    provider=provider,
    mixture_or_task_name=mixture_or_task_name,
    lengths=lengths,
    model_dir=model_dir,
    start=start,
    period=eval_period,
    max_batches=eval_batches,
    predict_examples=evaluator_num_examples,
    rows=batch_size // num_microbatches,
    template=first,
    shard=(shard_id, num_shards),
    pack=pack,
    use_cached=use_cached,
    denoiser_groups=run_data.denoiser_groups(denoisers),
    tensorboard=tensorboard,
    say=progress.write if is_chief else None,
  )

  def on_log(step, scalars):
    last.clear()
    last.update(scalars)
    if not progress_bar:
      shown = ", ".join(f"{k}={scalars[k]:.4g}" for k in ("loss", "accuracy") if k in scalars)
      say(f"step {step}: {shown}")

  batches = loop.Prefetcher(batches_iter, trainer.shard_batch, size=prefetch)
  try:
    state = loop.train_loop(
      trainer,
      state,
      batches,
      train_steps=train_steps,
      log_every=log_every,
      writer=writer,
      checkpointer=_CheckpointAdapter(ckpt),
      progress=progress,
      tokens_per_step=tokens_per_step,
      flops_per_step=flops_per_step,
      peak_flops=peak_total,
      denoiser_groups=run_data.denoiser_groups(denoisers),
      on_log=on_log,
      position_fn=_position_for_checkpoint,
      evaluator=evaluator,
    )
  finally:
    batches.close()
    progress.close()
    writer.close()
    if evaluator is not None:
      evaluator.close()
    ckpt.close()

  samples: list[dict[str, str]] = []
  if samples_per_mode and not ckpt.stop_requested and jax.process_count() == 1:
    samples = _print_samples(
      trainer,
      state.params,
      mixture_or_task_name,
      lengths,
      per_mode=samples_per_mode,
      decode_len=min(sample_decode_len, lengths.get("targets", sample_decode_len)),
      say=say,
    )
  eval_metrics = dict(evaluator.last) if evaluator is not None else {}
  return TrainResult(
    state,
    trainer,
    model_dir,
    dict(last),
    samples,
    eval_metrics,
    stopped_by_signal=ckpt.stop_requested,
  )


def _check_model_dir(model_dir: str) -> None:
  """Creates MODEL_DIR, or fails with a message naming it (a file, not writable)."""
  if "://" in model_dir:
    from etils import epath

    epath.Path(model_dir).mkdir(parents=True, exist_ok=True)
    return
  if os.path.exists(model_dir) and not os.path.isdir(model_dir):
    raise ValueError(f"MODEL_DIR = {model_dir!r} exists and is not a directory.")
  try:
    os.makedirs(model_dir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"MODEL_DIR = {model_dir!r} cannot be created: {e.strerror}.") from e
  if not os.access(model_dir, os.W_OK | os.X_OK):
    raise ValueError(f"MODEL_DIR = {model_dir!r} is not writable.")


def main(argv=None) -> TrainResult:
  """Runs `train` configured by gin flags (see `t5x_ext.launch.flags`).

  Args:
    argv: command-line arguments (default `sys.argv[1:]`).

  Returns:
    The `TrainResult`.
  """
  import gin
  from t5x_ext.launch import flags as cli

  def around(fn):
    model_dir = cli.macro_value("MODEL_DIR")
    if not (isinstance(model_dir, str) and jax.process_index() == 0):
      return fn()
    _check_model_dir(model_dir)
    # One writer per MODEL_DIR, taken before config.gin is written: a second trainer fails
    # here, naming the first, and changes nothing.
    with run_lock.RunLock(model_dir):
      from etils import epath  # gs:// and other object stores, as the checkpoints

      (epath.Path(model_dir) / "config.gin").write_text(gin.config_str())
      return fn()

  return entry.run(
    [
      entry.EntryPoint(
        train,
        REQUIRED_MACROS,
        "gin/runs/pretrain.gin",
        "'runs/pretrain.gin' (or 'runs/finetune.gin')",
      )
    ],
    argv,
    around=around,
  )


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  # Run through the importable module, not `__main__`, so gin files that configure
  # `t5x_ext.train.train` bind the function that runs.
  from t5x_ext import train as _train_module
  from t5x_ext.launch import flags as _cli

  _cli.main_guard(_train_module.main)
