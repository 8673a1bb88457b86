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

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

from t5x_ext.errors import UserError
from t5x_ext.evaluation import periodic as periodic_eval
from t5x_ext.launch import scaffold as entry
from t5x_ext.training import fit as fit_lib
from t5x_ext.training import hosts, partitioning, run_lock
from t5x_ext.training import metric_writers as metrics_lib
from t5x_ext.training.fit import TrainResult

# `TrainResult` is what `train` returns (defined with `fit`, named here as before).
__all__ = ["REQUIRED_MACROS", "TrainResult", "main", "train"]

REQUIRED_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS")
SAMPLE_MODES = ("[NLU]", "[NLG]", "[S2S]")


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
  eval_period, eval_batches, evaluator_num_examples = periodic_eval.check_settings(
    eval_period, eval_batches, evaluator_num_examples
  )

  def make_evaluator(ctx: fit_lib.FitContext):
    return _build_evaluator(
      ctx,
      mixture_or_task_name=mixture_or_task_name,
      period=eval_period,
      max_batches=eval_batches,
      predict_examples=evaluator_num_examples,
      rows=ctx.run.batch_size // num_microbatches,
      pack=pack,
      use_cached=use_cached,
      tensorboard=tensorboard,
    )

  result = fit_lib.fit(
    model=model,
    mixture_or_task_name=mixture_or_task_name,
    task_feature_lengths=task_feature_lengths,
    train_steps=train_steps,
    model_dir=model_dir,
    batch_size=batch_size,
    mesh_shape=mesh_shape,
    logical_axis_rules=logical_axis_rules,
    optimizer=optimizer,
    learning_rate=learning_rate,
    num_microbatches=num_microbatches,
    seed=seed,
    checkpoint_every=checkpoint_every,
    keep_checkpoints=keep_checkpoints,
    async_checkpointing=async_checkpointing,
    restore_params_from=restore_params_from,
    log_every=log_every,
    tensorboard=tensorboard,
    progress_bar=progress_bar,
    pack=pack,
    use_cached=use_cached,
    prefetch=prefetch,
    peak_flops_per_device=peak_flops_per_device,
    check_sharding=check_sharding,
    plan_memory=plan_memory,
    device_memory=device_memory,
    make_evaluator=make_evaluator,
  )
  if samples_per_mode and not result.stopped_by_signal and jax.process_count() == 1:
    lengths = {k: int(v) for k, v in task_feature_lengths.items()}
    result.samples = _print_samples(
      result.trainer,
      result.state.params,
      mixture_or_task_name,
      lengths,
      per_mode=samples_per_mode,
      decode_len=min(sample_decode_len, lengths.get("targets", sample_decode_len)),
      say=print if jax.process_index() == 0 else (lambda *a, **k: None),
    )
  return result


def _build_evaluator(
  ctx: fit_lib.FitContext,
  *,
  mixture_or_task_name,
  period,
  max_batches,
  predict_examples,
  rows,
  pack,
  use_cached,
  tensorboard,
) -> periodic_eval.PeriodicEvaluator | None:
  """Evaluation during training on the validation split (None when EVAL_PERIOD is off)."""
  from etils import epath

  run, start, is_chief = ctx.run, ctx.start, jax.process_index() == 0
  if period and not periodic_eval.has_split(run.provider):
    # Warn and train on: the run files turn evaluation on by default, and a corpus of the
    # user's own files often has only a train split.
    warning = (
      f"EVAL_PERIOD = {period}, but {mixture_or_task_name!r} has no "
      f"{periodic_eval.EVAL_SPLIT!r} split (splits: {sorted(run.provider.splits)}): no "
      "evaluation during training. Set EVAL_PERIOD = 0 to silence this."
    )
    logging.warning(warning)
    if ctx.say is not None:
      ctx.say(warning)
    period = None
  eval_jsonl = epath.Path(ctx.model_dir) / "metrics" / "eval.jsonl"
  if not period:
    if is_chief and start and eval_jsonl.exists():
      # Evaluations of steps after the restored one belong to a future that was not kept.
      metrics_lib.JsonlWriter(eval_jsonl, truncate_after=start).close()
    return None
  writers: list[Any] = []
  if is_chief:
    writers.append(metrics_lib.JsonlWriter(eval_jsonl, truncate_after=start))
    if tensorboard:
      tb = fit_lib.tensorboard_writer(os.path.join(ctx.model_dir, "tensorboard", "eval"), start)
      if tb is not None:
        writers.append(tb)
  return periodic_eval.build(
    ctx.trainer,
    provider=run.provider,
    mixture_or_task_name=mixture_or_task_name,
    lengths=run.lengths,
    period=period,
    max_batches=max_batches,
    predict_examples=predict_examples,
    rows=rows,
    template=ctx.first,
    shard_id=run.shard_id,
    num_shards=run.num_shards,
    pack=pack,
    use_cached=use_cached,
    denoiser_groups=run.denoiser_groups,
    writer=metrics_lib.MultiWriter(writers) if writers else None,
    say=ctx.say,
  )


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


def _check_model_dir(model_dir: str) -> None:
  """Creates MODEL_DIR, or fails with a message naming it (a file, not writable)."""
  if "://" in model_dir:
    from etils import epath

    epath.Path(model_dir).mkdir(parents=True, exist_ok=True)
    return
  if os.path.exists(model_dir) and not os.path.isdir(model_dir):
    raise UserError(f"MODEL_DIR = {model_dir!r} exists and is not a directory.")
  try:
    os.makedirs(model_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f"MODEL_DIR = {model_dir!r} cannot be created: {e.strerror}.") from e
  if not os.access(model_dir, os.W_OK | os.X_OK):
    raise UserError(f"MODEL_DIR = {model_dir!r} is not writable.")


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
