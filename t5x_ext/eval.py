"""Evaluation entry point: `python -m t5x_ext.eval --gin_file=FILE [--gin.KEY=VALUE ...]`.

`gin/runs/eval.gin` binds `evaluate`; its required macros are MODEL_DIR,
MIXTURE_OR_TASK_NAME and TASK_FEATURE_LENGTHS. Two kinds of metrics, for the newest
checkpoint in MODEL_DIR (or CHECKPOINT_PATH):

  teacher-forced   loss, accuracy and per-denoiser losses over the split, from the same
                   eval step as training (`eval/loss`, `eval/loss/<denoiser>`, ...)
  SeqIO metrics    the task's `predict_metric_fns` on decoded predictions and its
                   `score_metric_fns` on log-likelihoods, after its postprocessor
                   (`eval/<task>/<metric>`)

Results go to MODEL_DIR/metrics/eval.jsonl (one line per evaluated checkpoint step) and are
returned as a dict. Usable from Python without gin: `evaluate(model=..., ...)`.

`gin/runs/eval_suite.gin` instead binds the evaluation suite
(`t5x_ext.evaluation.suite.run_suite`: per-family losses, the mode-prefix matrix, rank
classification, fine-tuning probes; required macro MODEL_DIR); `main` runs whichever of the
two the gin files configure.
"""

from __future__ import annotations

import logging

from t5x_ext.evaluation.task_eval import evaluate
from t5x_ext.launch import scaffold as entry
from t5x_ext.training.checkpointing import checkpoint_step, load_params

# `evaluate` is gin's `eval_script.evaluate`; `checkpoint_step` and `load_params` stay
# importable from here for earlier notebooks and scripts.
__all__ = ["checkpoint_step", "evaluate", "load_params", "main"]

REQUIRED_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS")
SUITE_REQUIRED_MACROS = ("MODEL_DIR",)


def main(argv=None) -> dict[str, float]:
  """Runs `evaluate`, or the evaluation suite, as the gin flags configure it (`t5x_ext.launch.flags`).

  `runs/eval.gin` configures `evaluate`; `runs/eval_suite.gin` configures
  `t5x_ext.evaluation.suite.run_suite` (then the suite runs, and its required macros are
  checked instead).

  Args:
    argv: command-line arguments (default `sys.argv[1:]`).

  Returns:
    The metrics dict.
  """
  from t5x_ext.evaluation import suite

  return entry.run(
    [
      entry.EntryPoint(
        suite.run_suite, SUITE_REQUIRED_MACROS, "gin/runs/eval_suite.gin", "'runs/eval_suite.gin'"
      ),
      entry.EntryPoint(
        evaluate, REQUIRED_MACROS, "gin/runs/eval.gin", "'runs/eval.gin'", "t5x_ext.eval.evaluate"
      ),
    ],
    argv,
  )


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  from t5x_ext import eval as _eval_module  # the module gin binds, not `__main__`
  from t5x_ext.launch import flags as _cli

  _cli.main_guard(_eval_module.main)
