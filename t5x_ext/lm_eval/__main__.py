"""`python -m t5x_ext.lm_eval ARGS`: the harness's `lm_eval ARGS`, with `--model t5x_ext` known.

lm-eval 0.4.13 has no plugin entry points for models: a model is found only when the module
that registers it is imported. This imports ours, then runs the harness's own command line
with the same arguments (`run`, `ls`, `validate`, or the legacy form without a subcommand).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
  """Runs the harness's command line with the `t5x_ext` model registered.

  Args:
    argv: arguments without the program name (default `sys.argv[1:]`).
  """
  from lm_eval.__main__ import cli_evaluate

  import t5x_ext.lm_eval  # noqa: F401  registers the model `t5x_ext`

  if argv is not None:
    sys.argv = [sys.argv[0], *argv]
  cli_evaluate()


if __name__ == "__main__":
  main()
