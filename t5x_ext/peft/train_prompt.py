"""Prompt-tuning command: `python -m t5x_ext.peft.train_prompt --gin_file=FILE [--gin.KEY=VALUE]`.

The run file `gin/runs/finetune_prompt.gin` binds `train` below; its `%gin.REQUIRED` macros
are MODEL_DIR, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, TRAIN_STEPS and
INITIAL_CHECKPOINT_PATH (the base). The prompt's settings are the macros PROMPT_LENGTH,
PROMPT_POSITION, PROMPT_PREFIX_LENGTH, PROMPT_SAMPLE_VOCAB_SIZE and PROMPT_BASE_DTYPE. For
example, the topic task on the main job's tiny model:

  python -m t5x_ext.peft.train_prompt --gin_file=gin/local/tiny_model.gin \
    --gin_file=runs/finetune_prompt.gin --gin.MODEL_DIR="'/tmp/topic_prompt'" \
    --gin.INITIAL_CHECKPOINT_PATH="'/tmp/ul2_tiny'" \
    --gin.MIXTURE_OR_TASK_NAME="'pydocs_topic_classification_v1'" \
    --gin.TASK_FEATURE_LENGTHS="{'inputs': 192, 'targets': 8}" --gin.TRAIN_STEPS=200

MODEL_DIR receives checkpoints/ (the prompt and its optimizer state), adapters.json (the
settings, the base's path and fingerprint), config.gin and metrics/train.jsonl. Batches are
unpacked (prompt tuning needs one prompt per row). From Python without gin:
`t5x_ext.peft.prompt_tuning.finetune_prompt`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

from t5x_ext.peft import prompt_tuning
from t5x_ext.peft.train import REQUIRED_MACROS
from t5x_ext.training import partitioning, run_lock


def train(
  *,
  model: Any,
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  train_steps: int,
  model_dir: str,
  base_checkpoint: str,
  prompt_length: int = 100,
  prompt_position: str = "before",
  prompt_prefix_length: int = 0,
  prompt_sample_vocab_size: int = 5000,
  prompt_base_dtype: str = "float32",
  batch_size: int = 32,
  mesh_shape: Mapping[str, int] | None = None,
  logical_axis_rules: partitioning.Rules = partitioning.DEFAULT_RULES,
  optimizer: optax.GradientTransformation | Callable[..., Any] | None = None,
  learning_rate: float | Callable[[Any], Any] = 0.3,
  num_microbatches: int = 1,
  seed: int = 0,
  checkpoint_every: int = 1000,
  keep_checkpoints: int | None = 3,
  log_every: int = 100,
  use_cached: bool = False,
) -> prompt_tuning.PromptResult:
  """Trains a soft prompt for `model` from `base_checkpoint` (see `finetune_prompt`).

  Args:
    model: `%MODEL`.
    mixture_or_task_name: `%MIXTURE_OR_TASK_NAME`.
    task_feature_lengths: `%TASK_FEATURE_LENGTHS` (inputs exclude the prompt's vectors).
    train_steps: `%TRAIN_STEPS` (counting restored steps).
    model_dir: `%MODEL_DIR`.
    base_checkpoint: `%INITIAL_CHECKPOINT_PATH`: the frozen base.
    prompt_length: `%PROMPT_LENGTH`.
    prompt_position: `%PROMPT_POSITION` ('before' or 'after' the mode prefix).
    prompt_prefix_length: `%PROMPT_PREFIX_LENGTH` (the mode prefix's tokens).
    prompt_sample_vocab_size: `%PROMPT_SAMPLE_VOCAB_SIZE`.
    prompt_base_dtype: `%PROMPT_BASE_DTYPE` ('float32' or 'bfloat16').
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
    use_cached: read SeqIO's offline cache.

  Returns:
    A `prompt_tuning.PromptResult`.
  """
  config = prompt_tuning.PromptConfig(
    length=prompt_length,
    position=prompt_position,
    prefix_length=prompt_prefix_length,
    sample_vocab_size=prompt_sample_vocab_size,
    base_dtype=prompt_base_dtype,
  )
  is_chief = jax.process_index() == 0

  def on_log(step, scalars):
    if is_chief:
      shown = ", ".join(f"{k}={scalars[k]:.4g}" for k in ("loss", "accuracy") if k in scalars)
      print(f"step {step}: {shown}", flush=True)

  return prompt_tuning.finetune_prompt(
    model=model,
    base_checkpoint=base_checkpoint,
    model_dir=model_dir,
    train_steps=train_steps,
    mixture_or_task_name=mixture_or_task_name,
    task_feature_lengths=task_feature_lengths,
    prompt_config=config,
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
    use_cached=use_cached,
    on_log=on_log,
  )


def main(argv=None) -> prompt_tuning.PromptResult:
  """Runs `train` configured by gin flags (see `t5x_ext.launch.flags`).

  Args:
    argv: command-line arguments (default `sys.argv[1:]`).

  Returns:
    The `prompt_tuning.PromptResult`.
  """
  from etils import epath

  import gin
  from t5x_ext.launch import flags as cli
  from t5x_ext.launch import scaffold

  def around(fn):
    model_dir = cli.macro_value("MODEL_DIR")
    if not (isinstance(model_dir, str) and jax.process_index() == 0):
      return fn()
    with run_lock.RunLock(model_dir):
      (epath.Path(model_dir) / "config.gin").write_text(gin.config_str())
      return fn()

  return scaffold.run(
    [
      scaffold.EntryPoint(
        train, REQUIRED_MACROS, "gin/runs/finetune_prompt.gin", "'runs/finetune_prompt.gin'"
      )
    ],
    argv,
    around=around,
  )


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  from t5x_ext.launch import flags as _cli
  from t5x_ext.peft import train_prompt as _train_module

  _cli.main_guard(_train_module.main)
