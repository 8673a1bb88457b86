"""`finetune_lora`: fine-tune a model with LoRA from a base checkpoint; plain Python, no gin.

  from t5x_ext.peft import finetune, lora
  result = finetune.finetune_lora(
    model=model, base_checkpoint="/tmp/ul2_tiny", model_dir="/tmp/topic_lora",
    mixture_or_task_name="pydocs_topic_classification_v1",
    task_feature_lengths={"inputs": 192, "targets": 8}, train_steps=200, batch_size=16,
    lora=lora.LoraConfig(rank=8, alpha=16))
  params = result.trainer.merged_params(result.state.params)   # for decoding

The steps:

  1. the mesh and this process's shard of the training batches (`t5x_ext.data.get_batches`)
  2. a `LoraTrainer`; the base params restored into it, frozen (`LoraConfig.base_dtype`)
  3. MODEL_DIR/adapters.json: written on a fresh run (base path and fingerprint); on a
     restart the base is checked against it (`adapters_io.BaseMismatchError`)
  4. resume the newest adapter checkpoint (adapters, optimizer state, step, data position),
     else fresh adapters (B = 0: the first step starts from the base model's exact loss)
  5. `loop.train_loop` with `Checkpointer` saves of the adapter state only

Metrics go to MODEL_DIR/metrics/train.jsonl, as in full runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import optax
from etils import epath

from t5x_ext.errors import UserError
from t5x_ext.peft import adapters_io, lora
from t5x_ext.peft.trainer import LoraTrainer
from t5x_ext.training import checkpointing, fit, loop, partitioning
from t5x_ext.training import metric_writers as metrics_lib
from t5x_ext.training.trainer import TrainState


@dataclasses.dataclass
class LoraResult:
  """What `finetune_lora` returns.

  Attributes:
    state: the final `TrainState` (its params are the adapters).
    trainer: the `LoraTrainer` (`merged_params`, `eval_step`, `frozen`).
    model_dir: the run directory.
    last_metrics: the scalars of the last logging step.
    start_step: the step the run started from (restored, else 0).
    stopped_by_signal: stopped at SIGTERM after checkpointing.
  """

  state: TrainState
  trainer: LoraTrainer
  model_dir: str
  last_metrics: dict[str, float]
  start_step: int
  stopped_by_signal: bool = False


def decode_merged(evaluator: Any, trainer: LoraTrainer) -> Any:
  """Makes an evaluator of a LoRA run decode with the merged params.

  A `t5x_ext.evaluation.periodic.PeriodicEvaluator` built on the `LoraTrainer` gets the
  adapters from the loop: its teacher-forced metrics go through `trainer.eval_step`, which
  adds the base, but its SeqIO metrics decode with `model.predict_batch`, which needs full
  params. Its `seqio_fn` is wrapped to merge first (one fold per evaluation).

  Args:
    evaluator: the evaluator (its `seqio_fn`, if any, is replaced).
    trainer: the run's `LoraTrainer`.

  Returns:
    `evaluator`.
  """
  seqio_fn = getattr(evaluator, "seqio_fn", None)
  if seqio_fn is not None:
    evaluator.seqio_fn = lambda adapters: seqio_fn(trainer.merged_params(adapters))
  return evaluator


def finetune_lora(
  *,
  model: Any,
  base_checkpoint: str | os.PathLike,
  model_dir: str | os.PathLike,
  train_steps: int,
  mixture_or_task_name: str | None = None,
  task_feature_lengths: Mapping[str, int] | None = None,
  batches: Iterator[Mapping[str, Any]] | None = None,
  lora_config: lora.LoraConfig | None = None,
  batch_size: int = 16,
  mesh_shape: Mapping[str, int] | None = None,
  logical_axis_rules: partitioning.Rules = partitioning.DEFAULT_RULES,
  optimizer: optax.GradientTransformation | Callable[..., Any] | None = None,
  learning_rate: float | Callable[[Any], Any] = 1e-3,
  num_microbatches: int = 1,
  seed: int = 0,
  checkpoint_every: int = 1000,
  keep_checkpoints: int | None = 3,
  async_checkpointing: bool = True,
  log_every: int = 100,
  pack: bool = True,
  use_cached: bool = False,
  prefetch: int = 2,
  evaluator: Any | None = None,
  on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> LoraResult:
  """Trains LoRA adapters of `model` on a SeqIO task, the base frozen; resumes exactly.

  Args:
    model: an `EncoderDecoderModel` or `DecoderOnlyModel`.
    base_checkpoint: the base params (anything `checkpointing.restore_params` reads).
    model_dir: the run directory: checkpoints/ (adapters only), adapters.json, metrics/.
    train_steps: the step to train to, counting restored steps.
    mixture_or_task_name: the SeqIO task or mixture (unless `batches` is given).
    task_feature_lengths: its feature lengths.
    batches: instead of a task: this process's numpy batches (with `state()`/`restore()`
      for an exact resume), e.g. in tests.
    lora_config: the `LoraConfig` (default: rank 8 on q, k, v, o).
    batch_size: global rows per step.
    mesh_shape: mesh axis sizes (default all devices on `data`).
    logical_axis_rules: logical-to-mesh rules (the adapters follow their kernels' names).
    optimizer: an optax transformation or a factory called with `learning_rate=`; default
      Adafactor (`optimizers.make_optimizer`).
    learning_rate: float or schedule.
    num_microbatches: gradient accumulation.
    seed: seed of the adapters' init, dropout and the data.
    checkpoint_every: save every this many steps (and at the end).
    keep_checkpoints: newest checkpoints kept (None: all).
    async_checkpointing: write in the background.
    log_every: log every this many steps.
    pack: pack examples into rows.
    use_cached: read SeqIO's offline cache.
    prefetch: batches prepared ahead.
    evaluator: for `loop.train_loop` (`due`, `evaluate(step, adapters)`); None: none. A
      periodic evaluator decodes right after `decode_merged`.
    on_log: `(step, scalars)` at every logging step.

  Returns:
    A `LoraResult`.

  Raises:
    ValueError: on bad settings; `adapters_io.BaseMismatchError` when MODEL_DIR's adapters
      were trained on another base.
  """
  config = lora_config or lora.LoraConfig()
  model_dir = os.fspath(model_dir)
  mesh = partitioning.make_mesh(mesh_shape)
  partitioning.validate_batch_size(batch_size, mesh, num_microbatches)
  tx = fit.build_optimizer(optimizer, learning_rate)

  # 1. Data: this process's shard of every global batch.
  shard_id, num_shards = partitioning.process_batch_shard(mesh)
  if batches is None:
    if mixture_or_task_name is None or task_feature_lengths is None:
      raise UserError("finetune_lora needs mixture_or_task_name and task_feature_lengths.")
    from t5x_ext.data import pipeline  # data side (TensorFlow): only when a task is read

    batches = pipeline.get_batches(
      mixture_or_task_name,
      task_feature_lengths,
      split="train",
      batch_size=batch_size // num_shards,
      feature_converter_name=model.feature_converter_name,
      pack=pack,
      seed=seed,
      shard_id=shard_id,
      num_shards=num_shards,
      use_cached=use_cached,
    )
  first = next(batches)

  # 2. The trainer and its frozen base.
  trainer = LoraTrainer(
    model,
    tx,
    mesh,
    logical_axis_rules,
    lora=config,
    learning_rate_fn=learning_rate,
    num_microbatches=num_microbatches,
    dropout_seed=seed,
  )
  base = trainer.load_base(base_checkpoint, first)

  # 3. The record of the base (checked on a restart).
  found = adapters_io.find_record(model_dir)
  if found is not None and epath.Path(found[0]) == epath.Path(adapters_io.absolute(model_dir)):
    record = found[1]
    if lora.LoraConfig.from_json(record["lora"]) != config:
      raise UserError(
        f"{model_dir} holds adapters with LoraConfig {record['lora']}, not {config.to_json()}."
      )
    adapters_io.check_base(record, base, where=model_dir)
  else:
    record = {
      "method": "lora",
      "lora": config.to_json(),
      "base": adapters_io.base_record(base_checkpoint, base, config.base_dtype),
    }
    adapters_io.write_record(model_dir, record)

  # 4. Resume, else fresh adapters.
  abstract = trainer.abstract_state(first)
  ckpt = checkpointing.Checkpointer(
    model_dir,
    save_interval_steps=checkpoint_every,
    max_to_keep=keep_checkpoints,
    async_save=async_checkpointing,
  )
  is_chief = jax.process_index() == 0
  restored = ckpt.restore_latest(fit.state_to_tree(abstract))
  if restored is not None:
    tree, position, start = restored
    state = TrainState(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"])
    fit.restore_position(batches, position)
    data = batches
    logging.info("Resumed adapters from step %d in %s.", start, ckpt.directory)
  else:
    start = 0
    state = trainer.init_state(jax.random.key(seed), first)
    data = fit.Peeked(first, batches)

  # 5. The loop.
  writer = metrics_lib.MultiWriter(
    [
      metrics_lib.JsonlWriter(
        epath.Path(model_dir) / "metrics" / "train.jsonl", truncate_after=start
      )
    ]
    if is_chief
    else []
  )
  last: dict[str, float] = {}

  def log(step, scalars):
    last.clear()
    last.update(scalars)
    if on_log is not None:
      on_log(step, scalars)

  prefetcher = loop.Prefetcher(data, trainer.shard_batch, size=prefetch)
  try:
    state = loop.train_loop(
      trainer,
      state,
      prefetcher,
      train_steps=train_steps,
      log_every=log_every,
      writer=writer,
      checkpointer=fit.CheckpointAdapter(ckpt),
      on_log=log,
      position_fn=fit.position_for_checkpoint,
      evaluator=evaluator,
    )
  finally:
    prefetcher.close()
    writer.close()
    ckpt.close()
  return LoraResult(state, trainer, model_dir, dict(last), start, ckpt.stop_requested)
