"""`python -m t5x_ext.data inspect --task NAME [--n N] [--split S] [--inputs LI --targets LT]
[--gin_file FILE ...] [--gin.KEY=VALUE ...]`: print decoded examples and statistics.

Gin is parsed here only (the library stays gin-free), with the entry points' parser
(`t5x_ext.launch.flags.parse_gin`: the project's `gin/` directory is on the include path). Gin files may
be this project's run or experiment files: the macros `MIXTURE_OR_TASK_NAME` and
`TASK_FEATURE_LENGTHS` (when set) give the defaults of `--task`, `--inputs`, `--targets`.
The task factories are configurable by gin here as `c4_tasks.register`, `text_files.register`
(e.g. `--gin.c4_tasks.register.vocabulary_path="'/my/spm.model'"`), and called once parsed.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _split_gin_args(argv):
  bindings, rest = [], []
  for a in argv:
    if a.startswith("--gin.") and "=" in a:
      bindings.append(a[len("--gin.") :])
    else:
      rest.append(a)
  return bindings, rest


def _macro(gin, name):
  import copy

  try:
    value = gin.query_parameter(f"{name}/macro.value")
  except (ValueError, KeyError):
    return None
  if isinstance(value, gin.config.ConfigurableReference):
    # e.g. runs/text_files.gin: MIXTURE_OR_TASK_NAME = @text_files.text_files_task()
    value = copy.deepcopy(value)  # gin evaluates a reference when it is copied
  return value


def _parse_gin(files, bindings):
  """Parses gin and returns (task name, lengths) macros if defined."""
  import gin
  import tasks
  from t5x_ext.launch import flags as cli
  from tasks import c4, text_files

  c4_register = gin.external_configurable(c4.register, "c4_tasks.register")
  files_register = gin.external_configurable(text_files.register_text_files, "text_files.register")
  # The entry points' parser: the project's gin/ directory on the include path, files
  # resolved from it too (`--gin_file=gin/local/ul2_tiny.gin` or `local/ul2_tiny.gin`).
  cli.parse_gin(files, bindings, known_macros=("MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS"))
  cli.import_task_modules()  # MIXTURE_OR_TASK_MODULE, as the entry points do
  # Call the factories only where gin configures them, so the defaults stay as `import tasks`
  # registered them.
  config = str(gin.config_str())
  if "c4_tasks.register" in config:
    c4_register()
  if "text_files.register" in config:
    files_register()
  del tasks
  return _macro(gin, "MIXTURE_OR_TASK_NAME"), _macro(gin, "TASK_FEATURE_LENGTHS")


def main(argv=None) -> int:
  """Entry point of `python -m t5x_ext.data`.

  Args:
    argv: command-line arguments without the program name (default `sys.argv[1:]`).

  Returns:
    The exit status.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  bindings, rest = _split_gin_args(argv)
  parser = argparse.ArgumentParser(prog="python -m t5x_ext.data")
  sub = parser.add_subparsers(dest="command", required=True)
  ins = sub.add_parser("inspect", help="decoded examples and per-denoiser statistics")
  ins.add_argument("--task", help="SeqIO task or mixture name (or MIXTURE_OR_TASK_NAME)")
  ins.add_argument("--n", type=int, default=4, help="examples to print")
  ins.add_argument("--split", default="train")
  ins.add_argument("--inputs", type=int, help="inputs length (default 512)")
  ins.add_argument("--targets", type=int, help="targets length (default 512)")
  ins.add_argument("--feature_converter", default="EncDecFeatureConverter")
  ins.add_argument("--stats_examples", type=int, default=1000)
  ins.add_argument("--seed", type=int, default=0)
  ins.add_argument("--gin_file", action="append", default=[])
  args = parser.parse_args(rest)

  import tasks  # noqa: F401  (registers everything)
  from t5x_ext.data import inspect

  task, lengths = None, None
  if args.gin_file or bindings:
    task, lengths = _parse_gin(args.gin_file, bindings)
  task = args.task or task
  if not task:
    parser.error("--task is required (or MIXTURE_OR_TASK_NAME in a gin file)")
  lengths = dict(lengths or {"inputs": 512, "targets": 512})
  if args.inputs is not None:
    lengths["inputs"] = args.inputs
  if args.targets is not None:
    lengths["targets"] = args.targets
  import seqio

  try:
    seqio.get_mixture_or_task(task)
  except ValueError:
    parser.error(f"--task={task!r} is not a registered SeqIO task or mixture")
  inspect.inspect(
    task,
    lengths,
    n=args.n,
    split=args.split,
    feature_converter_name=args.feature_converter,
    stats_examples=args.stats_examples,
    seed=args.seed,
  )
  return 0


if __name__ == "__main__":
  from t5x_ext.launch import flags as _cli

  _cli.main_guard(main)  # its status; a user error exits 2, a bug 1 (docs/operations.md)
