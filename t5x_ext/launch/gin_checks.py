"""Checks on a parsed gin config that gin itself does not make.

gin accepts `--gin.TRAIN_STEPZ=5`: a macro is just a name, so a typo'd one is bound, read by
nothing, and the run silently uses the default. `check_flag_macros` rejects a macro set on
the command line that no binding reads and no loaded gin file declares, and suggests the
close names.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence

import gin
from t5x_ext.errors import UserError

_MACRO_SELECTOR = "gin.macro"
# `NAME = value` with no dot or slash in NAME binds a macro (a configurable's parameter
# always has `scope/fn.param`).
_MACRO_BINDING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


def bound_macros() -> set[str]:
  """The macros bound in the current gin config.

  Returns:
    Macro names.
  """
  return {key[0] for key in gin.config._CONFIG if key[1] == _MACRO_SELECTOR}


def _references(value) -> Iterable[str]:
  if isinstance(value, gin.config.ConfigurableReference):
    if value.configurable.name == "macro":
      yield value.scoped_selector.rsplit("/", 2)[-2]
    return
  if isinstance(value, dict):
    for v in value.values():
      yield from _references(v)
  elif isinstance(value, list | tuple | set):
    for v in value:
      yield from _references(v)


def read_macros() -> set[str]:
  """The macros that some binding of the current gin config refers to (`%NAME`).

  Returns:
    Macro names.
  """
  out: set[str] = set()
  for params in gin.config._CONFIG.values():
    for value in params.values():
      out.update(_references(value))
  return out


def macros_in_bindings(bindings: Sequence[str]) -> list[str]:
  """The macro names that binding strings (`--gin.KEY=VALUE`, `--gin_bindings`) assign.

  Args:
    bindings: binding strings, possibly with several lines each.

  Returns:
    Names, in order of appearance.
  """
  out = []
  for binding in bindings:
    for line in binding.splitlines():
      m = _MACRO_BINDING.match(line)
      if m and m.group(1) not in out:
        out.append(m.group(1))
  return out


def check_flag_macros(bindings: Sequence[str], declared: set[str]) -> None:
  """Fails on a command-line macro that nothing reads and no gin file declares.

  Args:
    bindings: the command-line binding strings.
    declared: the macros that the parsed gin files bound (before the bindings).

  Raises:
    ValueError: naming the macro and the closest known names.
  """
  read = read_macros()
  known = sorted(declared | read)
  for name in macros_in_bindings(bindings):
    if name in read or name in declared:
      continue
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise UserError(
      f"--gin.{name}: no gin file declares the macro {name} and no setting reads it, so it "
      f"would be ignored.{hint}"
    )
