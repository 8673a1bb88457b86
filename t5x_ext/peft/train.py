"""LoRA fine-tuning command: `python -m t5x_ext.peft.train --gin_file=FILE [--gin.KEY=VALUE]`.

The run file `gin/runs/finetune_lora.gin` binds `train` below; its `%gin.REQUIRED` macros are
MODEL_DIR, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, TRAIN_STEPS and
INITIAL_CHECKPOINT_PATH (the base). The LoRA settings are the macros LORA_RANK, LORA_ALPHA,
LORA_DROPOUT, LORA_TARGETS and LORA_BASE_DTYPE. For example, the topic task on the main
job's tiny model:

  python -m t5x_ext.peft.train --gin_file=gin/local/tiny_model.gin \
    --gin_file=runs/finetune_lora.gin --gin.MODEL_DIR="'/tmp/topic_lora'" \
    --gin.INITIAL_CHECKPOINT_PATH="'/tmp/ul2_tiny'" \
    --gin.MIXTURE_OR_TASK_NAME="'pydocs_topic_classification_v1'" \
    --gin.TASK_FEATURE_LENGTHS="{'inputs': 192, 'targets': 8}" --gin.TRAIN_STEPS=200
  python -m t5x_ext.peft.merge --adapters=/tmp/topic_lora --output_dir=/tmp/topic_merged

MODEL_DIR receives checkpoints/ (the adapters and their optimizer state), adapters.json (the
LoRA settings, the base's path and fingerprint), config.gin and metrics/train.jsonl. A
restart resumes from the newest adapter checkpoint, after checking the base's fingerprint.
From Python without gin: `t5x_ext.peft.finetune.finetune_lora`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import optax

from t5x_ext.peft import finetune, lora
from t5x_ext.training import partitioning, run_lock

REQUIRED_MACROS = (
  "MODEL_DIR",
  "MIXTURE_OR_TASK_NAME",
  "TASK_FEATURE_LENGTHS",
  "TRAIN_STEPS",
  "INITIAL_CHECKPOINT_PATH",
)


def train(
  *,
  model: Any,
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  train_steps: int,
  model_dir: str,
  base_checkpoint: str,
  lora_rank: int = 8,
  lora_alpha: float = 16.0,
  lora_dropout: float = 0.0,
  lora_targets: Sequence[str] = lora.ATTENTION_TARGETS,
  lora_base_dtype: str = "float32",
  batch_size: int = 128,
  mesh_shape: Mapping[str, int] | None = None,
  logical_axis_rules: partitioning.Rules = partitioning.DEFAULT_RULES,
  optimizer: optax.GradientTransformation | Callable[..., Any] | None = None,
  learning_rate: float | Callable[[Any], Any] = 1e-3,
  num_microbatches: int = 1,
  seed: int = 0,
  checkpoint_every: int = 1000,
  keep_checkpoints: int | None = 3,
  log_every: int = 100,
  pack: bool = True,
  use_cached: bool = False,
) -> finetune.LoraResult:
  """Fine-tunes LoRA adapters of `model` from `base_checkpoint` (see `finetune.finetune_lora`).

  Args:
    model: `%MODEL`.
    mixture_or_task_name: `%MIXTURE_OR_TASK_NAME`.
    task_feature_lengths: `%TASK_FEATURE_LENGTHS`.
    train_steps: `%TRAIN_STEPS` (counting restored steps).
    model_dir: `%MODEL_DIR`.
    base_checkpoint: `%INITIAL_CHECKPOINT_PATH`: the frozen base.
    lora_rank: `%LORA_RANK`.
    lora_alpha: `%LORA_ALPHA` (scale alpha / rank).
    lora_dropout: `%LORA_DROPOUT`.
    lora_targets: `%LORA_TARGETS` (kernel names or path patterns).
    lora_base_dtype: `%LORA_BASE_DTYPE` ('float32' or 'bfloat16').
    batch_size: `%BATCH_SIZE`.
    mesh_shape: `%MESH_SHAPE`.
    logical_axis_rules: logical-to-mesh rules.
    optimizer: an optax transformation or a factory called with `learning_rate=`.
    learning_rate: `%LEARNING_RATE`.
    num_microbatches: `%NUM_MICROBATCHES`.
    seed: `%SEED`.
    checkpoint_every: `%CHECKPOINT_EVERY`.
    keep_checkpoints: `%KEEP_CHECKPOINTS`.
    log_every: `%LOG_EVERY`.
    pack: pack examples into rows.
    use_cached: read SeqIO's offline cache.

  Returns:
    A `finetune.LoraResult`.
  """
  config = lora.LoraConfig(
    rank=lora_rank,
    alpha=float(lora_alpha),
    dropout=float(lora_dropout),
    targets=tuple(lora_targets),
    base_dtype=lora_base_dtype,
  )
  is_chief = jax.process_index() == 0

  def on_log(step, scalars):
    if is_chief:
      shown = ", ".join(f"{k}={scalars[k]:.4g}" for k in ("loss", "accuracy") if k in scalars)
      print(f"step {step}: {shown}", flush=True)

  return finetune.finetune_lora(
    model=model,
    base_checkpoint=base_checkpoint,
    model_dir=model_dir,
    train_steps=train_steps,
    mixture_or_task_name=mixture_or_task_name,
    task_feature_lengths=task_feature_lengths,
    lora_config=config,
    batch_size=batch_size,
    mesh_shape=mesh_shape,
    logical_axis_rules=logical_axis_rules,
    optimizer=optimizer,
    learning_rate=learning_rate,
    num_microbatches=num_microbatches,
    seed=seed,
    checkpoint_every=checkpoint_every,
    keep_checkpoints=keep_checkpoints,
    log_every=log_every,
    pack=pack,
    use_cached=use_cached,
    on_log=on_log,
  )


def main(argv=None) -> finetune.LoraResult:
  """Runs `train` configured by gin flags (see `t5x_ext.launch.flags`).

  Args:
    argv: command-line arguments (default `sys.argv[1:]`).

  Returns:
    The `finetune.LoraResult`.
  """
  from etils import epath

  import gin
  from t5x_ext.launch import flags as cli
  from t5x_ext.launch import scaffold

  def around(fn):
    model_dir = cli.macro_value("MODEL_DIR")
    if not (isinstance(model_dir, str) and jax.process_index() == 0):
      return fn()
    # One writer per MODEL_DIR; config.gin names the model for `t5x_ext.peft.merge`.
    with run_lock.RunLock(model_dir):
      (epath.Path(model_dir) / "config.gin").write_text(gin.config_str())
      return fn()

  return scaffold.run(
    [
      scaffold.EntryPoint(
        train, REQUIRED_MACROS, "gin/runs/finetune_lora.gin", "'runs/finetune_lora.gin'"
      )
    ],
    argv,
    around=around,
  )


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  # Run through the importable module, so gin files bind the function that runs.
  from t5x_ext.launch import flags as _cli
  from t5x_ext.peft import train as _train_module

  _cli.main_guard(_train_module.main)
