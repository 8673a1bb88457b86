"""The project's error classes that decide a command's exit status (docs/operations.md).

  UserError      a setting, path or input the user gave is wrong; the message names it
                 (the macro as the user sets it, e.g. `LOG_EVERY`). Commands print the
                 message alone and exit 2.
  DivergedError  training diverged (a NaN or infinite loss or state); nothing was saved
                 after the last checkpoint. Commands print one line naming the step and
                 exit 3.

Anything else that escapes a command, a plain `ValueError` included, is a bug: the
traceback is printed and the status is 1. A raise that guards an internal invariant stays a
`ValueError`/`RuntimeError`.

Imports nothing, so every part of the project (model, training, data, objectives, tasks)
may raise these.
"""

from __future__ import annotations


class UserError(ValueError):
  """A bad setting, path or input; the message names what the user sets or gave.

  A `ValueError` subclass, so code (and tests) that catch `ValueError` still catch it.
  """


class DivergedError(FloatingPointError):
  """Training diverged: a loss or the state became NaN or infinite (the message names the
  step)."""
