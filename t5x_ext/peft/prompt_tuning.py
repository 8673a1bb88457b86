"""Prompt tuning (Lester et al. 2021, arXiv:2104.08691): a learned soft prompt, all else frozen.

P vectors of width D (default 100) are inserted after the token embedding lookup, in front of
the encoder inputs (encoder-decoder) or of the sequence (decoder-only), and trained while
every parameter of the model stays frozen:

  config = PromptConfig(length=100)
  trainer = PromptTrainer(model, tx, mesh, prompt=config)
  trainer.load_base("/path/to/base", first_batch)              # frozen, as LoraTrainer
  state = trainer.init_state(jax.random.key(0), first_batch)   # {"prompt": [P, D]} + opt state
  state, metrics = trainer.train_step(state, trainer.shard_batch(batch))
  tokens = trainer.predict(state.params, batch, decode_len=8)  # model.predict_batch(prompt=)
  scores = trainer.score(state.params, batch)                  # model.score_batch(prompt=)

The prompt is initialised from rows of the base's embedding table sampled without
replacement among the first `sample_vocab_size` ids (the paper samples the 5,000 most common
tokens; SentencePiece ids are roughly in frequency order).

Placement: `position='before'` puts the prompt first (before a mode prefix such as
`[NLU]`); `position='after'` puts it after the first `prefix_length` tokens (the mode
prefix's token count; decoder-only sequences also keep their BOS in front). The network
(`t5x_ext.model.network`: `insert_prompt`, `prompt_tokens`) extends the attention masks over
the prompt's positions (real tokens; in a prefix LM inside the bidirectional prefix), and the
relative position bias sees them at their place; decoder-only logits drop them.

Packing: prompt tuning needs unpacked batches (`pack=False`): one prompt per row. A packed
batch (with `*_segment_ids`) fails with a message; `finetune_prompt` refuses `pack=True`.

Checkpoints (`finetune_prompt`, `Checkpointer`) hold the prompt and its optimizer state
only; MODEL_DIR/adapters.json names the base checkpoint and its fingerprint
(`adapters_io`), as LoRA runs do.

Library code: no gin, no TensorFlow (the data side is imported only when a task is read).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from etils import epath

from t5x_ext.model import axes
from t5x_ext.peft import adapters_io, lora
from t5x_ext.peft.trainer import LoraTrainer
from t5x_ext.training import checkpointing, fit, loop, partitioning
from t5x_ext.training import metric_writers as metrics_lib
from t5x_ext.training.trainer import TrainState

PROMPT = "prompt"
POSITIONS = ("before", "after")
METHOD = "prompt_tuning"


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """Prompt tuning's settings.

  Attributes:
    length: P, the number of soft-prompt vectors (the paper's default: 100).
    position: 'before' (the prompt first, before a mode prefix) or 'after' (after the first
      `prefix_length` tokens, e.g. the `[NLU]` mode prefix).
    prefix_length: tokens the prompt follows with `position='after'`.
    sample_vocab_size: the prompt is initialised from embedding rows sampled among the
      first this many ids (capped at the vocabulary size).
    dtype: the prompt's (and its optimizer state's) dtype.
    base_dtype: the dtype the frozen base is held in ('float32' or 'bfloat16').
  """

  length: int = 100
  position: str = "before"
  prefix_length: int = 0
  sample_vocab_size: int = 5000
  dtype: str = "float32"
  base_dtype: str = "float32"

  def __post_init__(self):
    for name in ("length", "prefix_length", "sample_vocab_size"):
      value = getattr(self, name)
      low = 1 if name != "prefix_length" else 0
      if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"PromptConfig.{name} = {value!r}: must be an int >= {low}.")
    if self.position not in POSITIONS:
      raise ValueError(f"PromptConfig.position = {self.position!r}: one of {POSITIONS}.")
    for name in ("dtype", "base_dtype"):
      if getattr(self, name) not in lora.DTYPES:
        raise ValueError(
          f"PromptConfig.{name} = {getattr(self, name)!r}: one of {sorted(lora.DTYPES)}."
        )

  def offset(self, decoder_only: bool) -> int:
    """The token position the prompt goes before (the network's `prompt_offset`).

    Args:
      decoder_only: the model is decoder-only (its sequences start with BOS).

    Returns:
      0 for 'before'; `prefix_length` (plus 1 for the BOS of decoder-only) for 'after'.
    """
    if self.position == "before":
      return 0
    return self.prefix_length + (1 if decoder_only else 0)

  def to_json(self) -> dict[str, Any]:
    """The settings as JSON types (for the run's adapters.json)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> PromptConfig:
    """The inverse of `to_json`."""
    return cls(**data)


def init_prompt(rng: jax.Array, embedding_VD: jax.Array, config: PromptConfig) -> jax.Array:
  """The initial prompt: `config.length` rows of the embedding table, sampled.

  Rows are drawn without replacement among the first `sample_vocab_size` ids when there are
  enough of them, else with replacement.

  Args:
    rng: a PRNG key.
    embedding_VD: the base's token embedding table [V, D].
    config: the settings.

  Returns:
    [P, D] in `config.dtype`.
  """
  n = min(config.sample_vocab_size, embedding_VD.shape[0])
  ids = jax.random.choice(rng, n, (config.length,), replace=config.length > n)
  return jnp.take(embedding_VD, ids, axis=0).astype(lora.DTYPES[config.dtype])


class PromptTrainer(LoraTrainer):
  """Trains a soft prompt in front of `model`'s inputs with every model parameter frozen.

  The base handling (`load_base`, `set_base`, `base_abstract`, `frozen`) is `LoraTrainer`'s;
  `TrainState.params` is `{"prompt": [P, D]}`.

  Attributes:
    prompt: the `PromptConfig`.
    prompt_offset: the network's `prompt_offset` for this model.
    (others): see `LoraTrainer`.
  """

  def __init__(self, model: Any, tx: Any, mesh: Any, rules=partitioning.DEFAULT_RULES, **kw):
    """Configures the trainer.

    Args:
      model: the model (`EncoderDecoderModel` or `DecoderOnlyModel`).
      tx: the optax optimizer of the prompt.
      mesh: the mesh.
      rules: logical axis rules.
      **kw: `prompt=PromptConfig(...)` (default `PromptConfig()`) and `Trainer`'s keywords.
    """
    self.prompt = kw.pop("prompt", None) or PromptConfig()
    # LoraTrainer's base handling reads only `lora.base_dtype`; no adapters are made.
    kw["lora"] = lora.LoraConfig(base_dtype=self.prompt.base_dtype)
    super().__init__(model, tx, mesh, rules, **kw)
    self.prompt_offset = self.prompt.offset(model.config.decoder_only)

  def _init_params(self, rng, batch):
    # Shapes only (abstract_state); `init_state` samples the real rows from the base.
    del rng, batch
    shape = (self.prompt.length, self.model.config.emb_dim)
    zeros = jnp.zeros(shape, lora.DTYPES[self.prompt.dtype])
    return {PROMPT: nn.LogicallyPartitioned(zeros, (None, axes.EMBED))}

  def init_state(self, rng: jax.Array, batch: Mapping[str, Any]) -> TrainState:
    """The step-0 state: the prompt sampled from the frozen base's embedding table.

    Args:
      rng: a `jax.random.key`.
      batch: a batch with the training shapes.

    Returns:
      The sharded `TrainState`.
    """
    self.abstract_state(batch)
    table = self._base()["token_embedder"]["embedding"]
    init = jax.jit(
      lambda key, t: {PROMPT: init_prompt(key, t, self.prompt)},
      out_shardings=self.state_shardings.params,
    )
    with partitioning.axis_rules(self.mesh, self.rules):
      params = init(rng, table)
    opt_state, _ = partitioning.init_optimizer_state(self.tx, params, self.state_shardings.params)
    step = jax.device_put(jnp.zeros((), jnp.int32), self.replicated)
    return TrainState(step=step, params=params, opt_state=opt_state)

  def _base(self):
    if self.frozen is None:
      raise RuntimeError("PromptTrainer has no base params: call load_base or set_base first.")
    return self.frozen

  def model_params(self, params: Any, frozen: Any, rng: jax.Array | None = None) -> Any:
    """The model's params: the frozen base as it is (the prompt is not a model parameter)."""
    del params, rng
    if frozen is None:
      raise RuntimeError("PromptTrainer has no base params: call load_base or set_base first.")
    return frozen

  def _loss_fn(self, frozen, params, batch, dropout_rng):
    return self.model.loss_fn(
      self.model_params(params, frozen),
      batch,
      dropout_rng,
      prompt=params[PROMPT],
      prompt_offset=self.prompt_offset,
    )

  def merged_params(self, adapters: Any, dtype: Any = None) -> Any:
    """Not defined for a soft prompt: decode with `predict` (or the model's `prompt=`)."""
    raise NotImplementedError(
      "A soft prompt does not fold into the weights: use PromptTrainer.predict / score, or "
      "model.predict_batch(base, batch, prompt=..., prompt_offset=...)."
    )

  def predict(self, params: Any, batch: Mapping[str, Any], **kw) -> jax.Array:
    """`model.predict_batch` with the frozen base and the soft prompt.

    Args:
      params: `state.params`.
      batch: an unpacked batch.
      **kw: `predict_batch`'s keywords (decode_len, method, ...).

    Returns:
      int32 [B, decode_len].
    """
    return self.model.predict_batch(
      self._base(), batch, prompt=params[PROMPT], prompt_offset=self.prompt_offset, **kw
    )

  def score(self, params: Any, batch: Mapping[str, Any]) -> jax.Array:
    """`model.score_batch` with the frozen base and the soft prompt.

    Args:
      params: `state.params`.
      batch: an unpacked batch.

    Returns:
      float32 [B] log-likelihoods of the targets.
    """
    if getattr(self, "_score_fn", None) is None:
      self._score_fn = jax.jit(
        lambda base, prompt, b: self.model.score_batch(
          base, b, prompt=prompt, prompt_offset=self.prompt_offset
        )
      )
    return self._score_fn(self._base(), params[PROMPT], dict(batch))


@dataclasses.dataclass
class PromptResult:
  """What `finetune_prompt` returns.

  Attributes:
    state: the final `TrainState` (its params are `{"prompt": [P, D]}`).
    trainer: the `PromptTrainer` (`predict`, `score`, `frozen`).
    model_dir: the run directory.
    last_metrics: the scalars of the last logging step.
    start_step: the step the run started from (restored, else 0).
    stopped_by_signal: stopped at SIGTERM after checkpointing.
  """

  state: TrainState
  trainer: PromptTrainer
  model_dir: str
  last_metrics: dict[str, float]
  start_step: int
  stopped_by_signal: bool = False


def finetune_prompt(
  *,
  model: Any,
  base_checkpoint: str | os.PathLike,
  model_dir: str | os.PathLike,
  train_steps: int,
  mixture_or_task_name: str | None = None,
  task_feature_lengths: Mapping[str, int] | None = None,
  batches: Iterator[Mapping[str, Any]] | None = None,
  prompt_config: PromptConfig | None = None,
  batch_size: int = 16,
  mesh_shape: Mapping[str, int] | None = None,
  logical_axis_rules: partitioning.Rules = partitioning.DEFAULT_RULES,
  optimizer: optax.GradientTransformation | Callable[..., Any] | None = None,
  learning_rate: float | Callable[[Any], Any] = 0.3,
  num_microbatches: int = 1,
  seed: int = 0,
  checkpoint_every: int = 1000,
  keep_checkpoints: int | None = 3,
  async_checkpointing: bool = True,
  log_every: int = 100,
  pack: bool = False,
  use_cached: bool = False,
  prefetch: int = 2,
  evaluator: Any | None = None,
  on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> PromptResult:
  """Trains a soft prompt for `model` on a SeqIO task, the model frozen; resumes exactly.

  The steps are `finetune.finetune_lora`'s with a `PromptTrainer`: MODEL_DIR/adapters.json
  records the base (checked on a restart), checkpoints hold the prompt and its optimizer
  state, the data position resumes exactly.

  Args:
    model: an `EncoderDecoderModel` or `DecoderOnlyModel`.
    base_checkpoint: the base params (anything `checkpointing.restore_params` reads).
    model_dir: the run directory: checkpoints/ (the prompt only), adapters.json, metrics/.
    train_steps: the step to train to, counting restored steps.
    mixture_or_task_name: the SeqIO task or mixture (unless `batches` is given).
    task_feature_lengths: its feature lengths.
    batches: instead of a task: this process's unpacked numpy batches (with
      `state()`/`restore()` for an exact resume).
    prompt_config: the `PromptConfig` (default 100 vectors in front).
    batch_size: global rows per step.
    mesh_shape: mesh axis sizes (default all devices on `data`).
    logical_axis_rules: logical-to-mesh rules.
    optimizer: an optax transformation or a factory called with `learning_rate=`; default
      Adafactor (`optimizers.make_optimizer`), as the paper trains prompts.
    learning_rate: float or schedule (the paper: 0.3).
    num_microbatches: gradient accumulation.
    seed: seed of the prompt's init and the data.
    checkpoint_every: save every this many steps (and at the end).
    keep_checkpoints: newest checkpoints kept (None: all).
    async_checkpointing: write in the background.
    log_every: log every this many steps.
    pack: must be False: prompt tuning needs unpacked batches (one prompt per row).
    use_cached: read SeqIO's offline cache.
    prefetch: batches prepared ahead.
    evaluator: for `loop.train_loop` (`due`, `evaluate(step, params)`); None: none.
    on_log: `(step, scalars)` at every logging step.

  Returns:
    A `PromptResult`.

  Raises:
    ValueError: on bad settings (pack=True among them); `adapters_io.BaseMismatchError`
      when MODEL_DIR's prompt was trained on another base.
  """
  if pack:
    raise ValueError(
      "finetune_prompt(pack=True): prompt tuning needs unpacked batches (one soft prompt per "
      "row; packed rows would share it across examples). Use pack=False."
    )
  config = prompt_config or PromptConfig()
  model_dir = os.fspath(model_dir)
  mesh = partitioning.make_mesh(mesh_shape)
  partitioning.validate_batch_size(batch_size, mesh, num_microbatches)
  tx = fit.build_optimizer(optimizer, learning_rate)

  shard_id, num_shards = partitioning.process_batch_shard(mesh)
  if batches is None:
    if mixture_or_task_name is None or task_feature_lengths is None:
      raise ValueError("finetune_prompt needs mixture_or_task_name and task_feature_lengths.")
    from t5x_ext.data import pipeline  # data side (TensorFlow): only when a task is read

    batches = pipeline.get_batches(
      mixture_or_task_name,
      task_feature_lengths,
      split="train",
      batch_size=batch_size // num_shards,
      feature_converter_name=model.feature_converter_name,
      pack=False,
      seed=seed,
      shard_id=shard_id,
      num_shards=num_shards,
      use_cached=use_cached,
    )
  first = next(batches)
  if any(k.endswith("_segment_ids") for k in first):
    raise ValueError("finetune_prompt: the batches are packed (*_segment_ids); use unpacked ones.")

  trainer = PromptTrainer(
    model,
    tx,
    mesh,
    logical_axis_rules,
    prompt=config,
    learning_rate_fn=learning_rate,
    num_microbatches=num_microbatches,
    dropout_seed=seed,
  )
  base = trainer.load_base(base_checkpoint, first)

  found = adapters_io.find_record(model_dir)
  if found is not None and epath.Path(found[0]) == epath.Path(adapters_io.absolute(model_dir)):
    record = found[1]
    if record.get("method") != METHOD or PromptConfig.from_json(record[PROMPT]) != config:
      raise ValueError(
        f"{model_dir} holds a {record.get('method')} run with settings "
        f"{record.get(PROMPT, record.get('lora'))}, not prompt tuning with {config.to_json()}."
      )
    adapters_io.check_base(record, base, where=model_dir)
  else:
    record = {
      "method": METHOD,
      PROMPT: config.to_json(),
      "base": adapters_io.base_record(base_checkpoint, base, config.base_dtype),
    }
    adapters_io.write_record(model_dir, record)

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
    logging.info("Resumed the soft prompt from step %d in %s.", start, ckpt.directory)
  else:
    start = 0
    state = trainer.init_state(jax.random.key(seed), first)
    data = fit.Peeked(first, batches)

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
  return PromptResult(state, trainer, model_dir, dict(last), start, ckpt.stop_requested)
