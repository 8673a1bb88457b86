"""Self-pretraining, then fine-tuning, in one command (Amos, Berant, Gupta 2023).

  python -m t5x_ext.experiments.self_pretrain \
    --gin_file=experiments/self_pretrain_topic_tiny.gin --gin.MODEL_DIR="'/tmp/self_pt'"

"Never train from scratch" (arXiv:2310.02980): before fine-tuning a task, pretrain on the
task's own train inputs with a denoising objective. The stages, each a command's public
function, each into its own folder of MODEL_DIR:

  1. register `<TASK>_self_<OBJECTIVE>_v1` (`tasks.self_pretraining`: the objective's
     denoisers over TASK's train-split inputs; never its validation split, never its targets)
  2. self_pretrain/  `t5x_ext.train.train` on that task for PRETRAIN_STEPS (from
                     INITIAL_CHECKPOINT_PATH's params when given, else from scratch)
  3. finetune/       `t5x_ext.train.train` on TASK for FINETUNE_STEPS, params restored from
                     self_pretrain/ (`restore_params_from`), fresh optimizer state
  4. `t5x_ext.evaluation.task_eval.evaluate` of finetune/'s checkpoint on TASK's validation
     split (teacher-forced loss and the task's SeqIO metrics, e.g. accuracy)

and writes MODEL_DIR/self_pretrain.json (config, each stage's steps and seconds, the
evaluation). PRETRAIN_STEPS = 0 skips stage 2: fine-tuning then starts from
INITIAL_CHECKPOINT_PATH (a model pretrained on a corpus) or from scratch, the comparison
arms of the paper (docs/self_pretraining.md).

Resumable: a stage whose marker (`stage.json` in its folder) says it reached its steps with
the same settings is skipped, and an evaluation of the same checkpoint with the same settings
is not run again; an unfinished stage resumes from its newest checkpoint (`train` does that).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from etils import epath

from t5x_ext.errors import UserError
from t5x_ext.training import run_paths

REQUIRED_MACROS = ("MODEL_DIR",)
PRETRAIN_DIR = "self_pretrain"
FINETUNE_DIR = "finetune"
STAGE_MARKER = "stage.json"
EVAL_RECORD = "self_pretrain_eval.json"
RESULTS_JSON = "self_pretrain.json"
DEFAULT_PRETRAIN_LENGTHS = {"inputs": 512, "targets": 128}
DEFAULT_FINETUNE_LENGTHS = {"inputs": 192, "targets": 8}


def _is_chief() -> bool:
  import jax

  return jax.process_index() == 0


def _read_json(path: epath.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _write_json(path: epath.Path, obj: Any) -> None:
  if _is_chief():  # every process decides from the same files; process 0 writes them
    run_paths.write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


def _normalized(obj: Any) -> Any:
  return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _train_stage(
  stage_dir: epath.Path,
  *,
  config: Mapping[str, Any],
  train_steps: int,
  train_kwargs: Mapping[str, Any],
  say: Callable[[str], None],
) -> tuple[dict[str, Any], str]:
  """Trains one stage to `train_steps` unless its marker says it got there.

  Returns:
    (the marker, "skipped" | "trained" | "resumed").
  """
  from t5x_ext import train as train_lib
  from t5x_ext.training import checkpointing

  marker_path = stage_dir / STAGE_MARKER
  config = _normalized(config)
  marker = _read_json(marker_path)
  if marker is not None and marker.get("config") != config:
    diff = sorted(k for k in config if marker.get("config", {}).get(k) != config[k])
    raise UserError(
      f"{stage_dir} was trained with other settings ({', '.join(diff)} differ); use another "
      "MODEL_DIR or remove that folder."
    )
  if marker is not None and marker.get("step") == train_steps:
    return marker, "skipped"
  start = checkpointing.checkpoint_step(str(stage_dir)) or 0
  how = "resumed" if start else "trained"
  say(f"[{stage_dir.name}] {how} from step {start} to {train_steps} on {config['task']}")
  t0 = time.time()
  result = train_lib.train(train_steps=train_steps, model_dir=str(stage_dir), **train_kwargs)
  seconds = time.time() - t0
  step = checkpointing.checkpoint_step(str(stage_dir))
  if step != train_steps:  # stopped early (preempted): no marker, the next call resumes
    raise RuntimeError(f"{stage_dir}: training stopped at step {step} of {train_steps}.")
  segments = [*(marker or {}).get("segments", []), {"from_step": start, "to_step": step}]
  segments[-1]["seconds"] = round(seconds, 2)
  marker = {
    "config": config,
    "step": step,
    "segments": segments,
    "train_seconds": round(sum(s["seconds"] for s in segments), 2),
    "last_metrics": {k: float(v) for k, v in result.last_metrics.items()},
  }
  _write_json(marker_path, marker)
  return marker, how


def run_self_pretraining(
  *,
  model: Any,
  model_dir: str,
  task: str,
  pretrain_steps: int,
  finetune_steps: int,
  objective: str = "ul2_mod",
  pretrain_feature_lengths: Mapping[str, int] = DEFAULT_PRETRAIN_LENGTHS,
  task_feature_lengths: Mapping[str, int] = DEFAULT_FINETUNE_LENGTHS,
  batch_size: int = 16,
  pretrain_batch_size: int | None = None,
  seed: int = 0,
  initial_checkpoint_path: str | None = None,
  mesh_shape: Mapping[str, int] | None = None,
  optimizer: Any = None,
  pretrain_learning_rate: Any = 0.01,
  finetune_learning_rate: Any = 0.001,
  checkpoint_every: int = 100,
  keep_checkpoints: int | None = 1,
  log_every: int = 50,
  progress_bar: bool = False,
  eval_batch_size: int = 32,
  eval_batches: int | None = None,
  evaluator_num_examples: int | None = None,
) -> dict[str, Any]:
  """Self-pretrains on `task`'s train inputs, fine-tunes on `task`, evaluates; resumable.

  Args:
    model: the model (gin: %MODEL), the same in both stages.
    model_dir: where everything goes (MODEL_DIR): self_pretrain/, finetune/,
      self_pretrain.json.
    task: the downstream SeqIO task (TASK), e.g. "pydocs_topic_classification_v1".
    pretrain_steps: self-pretraining steps (PRETRAIN_STEPS); 0: no self-pretraining.
    finetune_steps: fine-tuning steps (FINETUNE_STEPS).
    objective: a key of `tasks.pretraining.OBJECTIVES` (OBJECTIVE): "ul2_mod", "bart", ...
    pretrain_feature_lengths: lengths of the self-pretraining examples
      (PRETRAIN_FEATURE_LENGTHS); they must fit every denoiser (UL2's X(64) needs 512 inputs).
    task_feature_lengths: lengths of fine-tuning and evaluation (TASK_FEATURE_LENGTHS).
    batch_size: fine-tuning rows per step (BATCH_SIZE).
    pretrain_batch_size: self-pretraining rows per step (PRETRAIN_BATCH_SIZE; None: as
      `batch_size`).
    seed: seed of init, dropout and the data of both stages (SEED).
    initial_checkpoint_path: params to start from (INITIAL_CHECKPOINT_PATH): the
      self-pretraining's start, or fine-tuning's when `pretrain_steps` is 0; None: scratch.
    mesh_shape: MESH_SHAPE.
    optimizer: as `train` (gin: @optimizers.make_optimizer), called per stage.
    pretrain_learning_rate: float or schedule of self-pretraining (PRETRAIN_LEARNING_RATE).
    finetune_learning_rate: float or schedule of fine-tuning (FINETUNE_LEARNING_RATE).
    checkpoint_every: checkpoint period of both stages (what a killed stage resumes from).
    keep_checkpoints: checkpoints kept per stage.
    log_every: training log period.
    progress_bar: tqdm bars while training.
    eval_batch_size: rows per evaluation batch (EVAL_BATCH_SIZE).
    eval_batches: teacher-forced evaluation batches (EVAL_BATCHES; None: the whole split).
    evaluator_num_examples: validation examples decoded for the task's metrics
      (EVALUATOR_NUM_EXAMPLES; None: all).

  Returns:
    The record written to MODEL_DIR/self_pretrain.json.

  Raises:
    UserError: (a ValueError) an unknown task or objective, a bad setting, or a stage folder
      trained with other settings.
  """
  import tasks
  from t5x_ext.evaluation import task_eval
  from t5x_ext.experiments import ablation  # machine_info only

  t_start = time.time()
  if int(pretrain_steps) < 0:
    raise UserError(f"PRETRAIN_STEPS = {pretrain_steps!r}: must be >= 0.")
  pretrain_steps = int(pretrain_steps)
  root = run_paths.path(model_dir)
  if _is_chief():
    root.mkdir(parents=True, exist_ok=True)

  def say(msg: str) -> None:
    print(msg, flush=True)
    logging.info(msg)

  common = {
    "model": model,
    "mesh_shape": mesh_shape,
    "optimizer": optimizer,
    "seed": seed,
    "checkpoint_every": checkpoint_every,
    "keep_checkpoints": keep_checkpoints,
    "log_every": log_every,
    "progress_bar": progress_bar,
    "tensorboard": False,
    "eval_period": None,
  }
  pre_lengths = {k: int(v) for k, v in pretrain_feature_lengths.items()}
  ft_lengths = {k: int(v) for k, v in task_feature_lengths.items()}
  invocation: dict[str, list[str]] = {"trained": [], "resumed": [], "skipped": [], "evaluated": []}
  stages: dict[str, Any] = {}
  pretrain_task = None
  start_from = initial_checkpoint_path
  if pretrain_steps:
    pretrain_task = tasks.register_self_pretraining(task, objective, check_lengths=pre_lengths)
    pre_dir = root / PRETRAIN_DIR
    pre_batch = int(pretrain_batch_size or batch_size)
    config = {
      "task": pretrain_task,
      "objective": objective,
      "task_feature_lengths": pre_lengths,
      "batch_size": pre_batch,
      "seed": seed,
      "model": repr(model.config),
      "initial_checkpoint_path": initial_checkpoint_path,
    }
    marker, how = _train_stage(
      pre_dir,
      config=config,
      train_steps=pretrain_steps,
      train_kwargs={
        **common,
        "mixture_or_task_name": pretrain_task,
        "task_feature_lengths": pre_lengths,
        "batch_size": pre_batch,
        "learning_rate": pretrain_learning_rate,
        "restore_params_from": initial_checkpoint_path,
      },
      say=say,
    )
    invocation[how].append(PRETRAIN_DIR)
    stages[PRETRAIN_DIR] = marker
    start_from = str(pre_dir)

  ft_dir = root / FINETUNE_DIR
  config = {
    "task": task,
    "task_feature_lengths": ft_lengths,
    "batch_size": int(batch_size),
    "seed": seed,
    "model": repr(model.config),
    "start_from": PRETRAIN_DIR if pretrain_steps else initial_checkpoint_path,
    "pretrain_steps": pretrain_steps,
  }
  marker, how = _train_stage(
    ft_dir,
    config=config,
    train_steps=int(finetune_steps),
    train_kwargs={
      **common,
      "mixture_or_task_name": task,
      "task_feature_lengths": ft_lengths,
      "batch_size": int(batch_size),
      "learning_rate": finetune_learning_rate,
      "restore_params_from": start_from,
    },
    say=say,
  )
  invocation[how].append(FINETUNE_DIR)
  stages[FINETUNE_DIR] = marker

  eval_key = _normalized(
    {
      "step": marker["step"],
      "finetune_config": marker["config"],
      "batch_size": eval_batch_size,
      "max_batches": eval_batches,
      "max_predict_examples": evaluator_num_examples,
    }
  )
  record_path = ft_dir / EVAL_RECORD
  cached = _read_json(record_path)
  if cached is not None and cached.get("key") == eval_key:
    results = cached["results"]
    invocation["skipped"].append("eval")
  else:
    say(f"[{FINETUNE_DIR}] evaluating step {marker['step']} on {task}")
    t0 = time.time()
    results = task_eval.evaluate(
      model=model,
      mixture_or_task_name=task,
      task_feature_lengths=ft_lengths,
      model_dir=str(ft_dir),
      batch_size=eval_batch_size,
      mesh_shape=mesh_shape,
      max_batches=eval_batches,
      max_predict_examples=evaluator_num_examples,
      verbose=False,
    )
    results = {k: float(v) for k, v in results.items()}
    _write_json(
      record_path, {"key": eval_key, "results": results, "seconds": round(time.time() - t0, 2)}
    )
    invocation["evaluated"].append(FINETUNE_DIR)

  record = {
    "config": {
      "task": task,
      "objective": objective if pretrain_steps else None,
      "pretrain_task": pretrain_task,
      "pretrain_steps": pretrain_steps,
      "finetune_steps": int(finetune_steps),
      "pretrain_feature_lengths": pre_lengths,
      "task_feature_lengths": ft_lengths,
      "seed": seed,
      "initial_checkpoint_path": initial_checkpoint_path,
      "model": repr(model.config),
      # Not in the stage markers: a schedule's repr names its address, new every process.
      "pretrain_learning_rate": repr(pretrain_learning_rate),
      "finetune_learning_rate": repr(finetune_learning_rate),
    },
    "machine": ablation.machine_info(),
    "stages": stages,
    "eval": results,
    "invocation": {**invocation, "seconds": round(time.time() - t_start, 2)},
  }
  _write_json(root / RESULTS_JSON, record)
  say(f"Wrote {root / RESULTS_JSON}: {json.dumps(results, sort_keys=True)}")
  return record


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs `run_self_pretraining` configured by gin flags (see `t5x_ext.launch.flags`).

  Args:
    argv: command-line arguments (default `sys.argv[1:]`).

  Returns:
    The record of MODEL_DIR/self_pretrain.json.
  """
  import gin
  from t5x_ext.launch import flags as cli
  from t5x_ext.launch import scaffold

  def around(fn):
    model_dir = cli.macro_value("MODEL_DIR")
    if isinstance(model_dir, str) and _is_chief():
      run_paths.path(model_dir).mkdir(parents=True, exist_ok=True)
      run_paths.path(model_dir, "config.gin").write_text(gin.config_str())
    return fn()

  return scaffold.run(
    [
      scaffold.EntryPoint(
        run_self_pretraining,
        REQUIRED_MACROS,
        "gin/experiments/self_pretrain_topic_tiny.gin",
        "'experiments/self_pretrain_topic_tiny.gin'",
      )
    ],
    argv,
    around=around,
  )


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  # Run through the importable module so gin binds the function that runs.
  from t5x_ext.experiments import self_pretrain as _module
  from t5x_ext.launch import flags as _cli

  _cli.main_guard(_module.main)
