"""`python -m t5x_ext.lm_eval ARGS`: the harness's `lm_eval ARGS`, with `--model t5x_ext` known.

lm-eval 0.4.13 has no plugin entry points for models: a model is found only when the module
that registers it is imported. This imports ours, then runs the harness's own command line
with the same arguments (`run`, `ls`, `validate`, or the legacy form without a subcommand).

Several hosts: `--multiprocess` (with `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I` where JAX does not detect them) starts `jax.distributed` first, as the
project's commands do; every process runs the same command and takes its shard of each batch.
These flags are this wrapper's, taken out before the harness reads the rest.
"""

from __future__ import annotations

import argparse
import sys


def split_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  """This wrapper's multi-process flags, and the harness's arguments.

  Args:
    argv: arguments without the program name.

  Returns:
    `(flags with multiprocess, coordinator_address, num_processes, process_id, the rest)`.
  """
  parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  parser.add_argument("--multiprocess", action="store_true")
  parser.add_argument("--coordinator_address", default=None)
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> None:
  """Runs the harness's command line with the `t5x_ext` model registered.

  Args:
    argv: arguments without the program name (default `sys.argv[1:]`).
  """
  from lm_eval.__main__ import cli_evaluate

  import t5x_ext.lm_eval  # noqa: F401  registers the model `t5x_ext`
  from t5x_ext.launch import flags

  args, rest = split_flags(sys.argv[1:] if argv is None else argv)
  flags.maybe_initialize_distributed(args)
  sys.argv = [sys.argv[0], *rest]
  cli_evaluate()


if __name__ == "__main__":
  from t5x_ext.launch import flags as _cli

  _cli.main_guard(main)
