"""The scaffold `t5x_ext.train`, `t5x_ext.eval` and `t5x_ext.infer` share.

What every entry point's `main` does, written once:

  main        `run(entry_points, argv)`: flags and gin files (`t5x_ext.launch.flags`), the
              function the gin files configure, its required macros, MIXTURE_OR_TASK_MODULE,
              then the call

The start-up checks (`prepare`) live in `t5x_ext.training.run_setup`, and decoding on the
mesh with the multi-process helpers (`predict`, `lockstep`, `gather_shards`) in
`t5x_ext.training.hosts`, since training, evaluation and inference all use them.

Library code: `run` imports gin only when called (the entry points' `main`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from t5x_ext.errors import UserError

# ------------------------------------------------------------------------------- main


@dataclasses.dataclass(frozen=True)
class EntryPoint:
  """A gin-configurable function that an entry point's `main` runs.

  Attributes:
    fn: the function (e.g. `t5x_ext.train.train`).
    required_macros: the `%gin.REQUIRED` macros of its run file, checked before it runs.
    run_file: the run file that declares them, for messages (e.g. "gin/runs/pretrain.gin").
    include: what to include when the gin files configure nothing (e.g. "'runs/infer.gin'").
    name: the name gin files bind it by, for messages (default: where `fn` is defined).
  """

  fn: Callable[..., Any]
  required_macros: tuple[str, ...]
  run_file: str
  include: str
  name: str = ""


def configured_function(fn: Callable[..., Any]) -> Callable[..., Any] | None:
  """`fn` as gin configures it, or None when the parsed files bind nothing of it.

  Registration outlives `gin.clear_config` (a notebook or test that once parsed a run file),
  so what counts is a binding of `fn`'s `model` parameter, which every run file sets.

  Args:
    fn: the plain function.

  Returns:
    The gin-configured callable, or None.
  """
  import gin

  # Dynamic registration files a function under its import alias (`from t5x_ext import eval
  # as eval_script` -> `t5x_ext.eval_script.evaluate`), so match the function, not a name.
  for (_, selector), params in gin.config._CONFIG.items():
    if "model" not in params:
      continue
    try:
      configurable = gin.config._REGISTRY.get_match(selector)
    except (KeyError, ValueError):
      continue
    if configurable is not None and configurable.wrapped is fn:
      return gin.get_configurable(fn)
  return None


def _pick(entry_points: Sequence[EntryPoint]) -> tuple[EntryPoint, Callable[..., Any]]:
  import gin
  from t5x_ext.launch import flags as cli

  for ep in entry_points:
    fn = configured_function(ep.fn)
    if fn is not None:
      return ep, fn
  if len(entry_points) == 1:
    (only,) = entry_points
    # Without its run file the run's macros are usually unset: name the first one.
    cli.check_required_macros(only.required_macros, run_file_hint=only.run_file)
    try:  # bound without `model` (e.g. MODEL set elsewhere): gin reports what is missing
      return only, gin.get_configurable(only.fn)
    except (KeyError, ValueError):
      pass
  names = " nor ".join(ep.name or f"{ep.fn.__module__}.{ep.fn.__name__}" for ep in entry_points)
  which = "neither" if len(entry_points) > 1 else "not"
  includes = " or ".join(ep.include for ep in entry_points)
  raise UserError(f"The gin files configure {which} {names}; include {includes}.")


def run(
  entry_points: Sequence[EntryPoint],
  argv: Sequence[str] | None = None,
  *,
  around: Callable[[Callable[[], Any]], Any] | None = None,
) -> Any:
  """An entry point's `main`: flags, gin, the configured function, its checks, the call.

  Args:
    entry_points: the functions this `main` can run, in order of preference; the first one
      the gin files configure runs (its required macros are checked first).
    argv: command-line arguments (default `sys.argv[1:]`).
    around: wraps the call, e.g. to hold MODEL_DIR's run lock: `around(call)` must call
      `call()` and return its result.

  Returns:
    What the configured function returns.

  Raises:
    ValueError: naming an unset required macro, or when the gin files configure none of
      `entry_points` (naming the run files to include).
  """
  from t5x_ext.launch import flags as cli

  cli.setup(argv)
  ep, fn = _pick(entry_points)
  cli.check_settings(ep.required_macros, ep.run_file)
  return around(fn) if around is not None else fn()
