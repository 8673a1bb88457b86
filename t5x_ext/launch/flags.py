"""Command-line plumbing shared by the entry points (`t5x_ext.train|eval|infer`).

T5X-style flags:

  --gin_file=FILE          a gin file; may repeat; relative paths are looked up in the
                           current directory, then in the gin search path
  --gin.KEY=VALUE          one binding, e.g. `--gin.TRAIN_STEPS=100`,
                           `--gin.MODEL_DIR="'/tmp/run'"` (values are gin literals)
  --gin_bindings=B         the same as a raw binding string; may repeat
  --gin_search_path=DIR    an extra directory for `include`; may repeat
  --multiprocess           call `jax.distributed.initialize()` first (multi-host; on TPU
                           pods and SLURM the arguments are detected), optionally with
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I

The gin search path always holds the project's gin files: the source tree's `gin/` (a
checkout, or `pip install -e .`) or else the copy a wheel or `pip install .` ships inside the
package (`t5x_ext/gin`), so `--gin_file=local/ul2_tiny.gin` and `include
'models/t5_1_1/tiny.gin'` work from any working directory.
"""

from __future__ import annotations

import argparse
import importlib.resources
import logging
import os
import pathlib
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import gin
from t5x_ext import errors
from t5x_ext.launch import gin_checks

PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1]  # t5x_ext/


def gin_search_paths() -> list[str]:
  """Directories where gin looks for `include`d and `--gin_file` files.

  Returns:
    One directory: the source tree's `gin/` when `t5x_ext` is imported from a checkout
    (edits there take effect), else the package data of an installed wheel. Empty if
    neither exists.
  """
  # Next to an installed package, `../gin` is gin-config's own package: only a directory
  # holding our run files counts as the source tree.
  source = PACKAGE_DIR.parent / "gin"
  if (source / "runs").is_dir():
    return [str(source)]
  packaged = importlib.resources.files("t5x_ext").joinpath("gin")
  if packaged.is_dir():
    return [str(packaged)]
  return []


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
  """Parses the entry points' flags (see the module docstring).

  Args:
    argv: command-line arguments without the program name.

  Returns:
    Namespace with gin_files, gin_bindings, gin_search_paths, multiprocess,
    coordinator_address, num_processes, process_id.

  Raises:
    SystemExit: on an unknown flag (argparse's usage message names it).
  """
  bindings: list[str] = []
  rest: list[str] = []
  for arg in argv:
    # `--gin.KEY=VALUE` cannot be declared to argparse (the key is free); peel it off here.
    if arg.startswith("--gin."):
      key, sep, value = arg[len("--gin.") :].partition("=")
      if not sep or not key:
        raise SystemExit(f"Flag {arg!r}: expected --gin.KEY=VALUE.")
      bindings.append(f"{key} = {value}")
    else:
      rest.append(arg)
  parser = argparse.ArgumentParser(allow_abbrev=False)
  parser.add_argument("--gin_file", action="append", default=[], dest="gin_files")
  parser.add_argument("--gin_bindings", action="append", default=[])
  parser.add_argument("--gin_search_path", action="append", default=[], dest="gin_search_paths")
  parser.add_argument("--multiprocess", action="store_true")
  parser.add_argument("--coordinator_address", default=None)
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  args = parser.parse_args(rest)
  args.gin_bindings = list(args.gin_bindings) + bindings
  return args


def _resolve_gin_file(path: str, search_paths: Sequence[str]) -> str:
  if os.path.exists(path):
    return path
  for base in search_paths:
    candidate = os.path.join(base, path)
    if os.path.exists(candidate):
      return candidate
    # Allow `gin/local/x.gin` when the search path already ends in `gin/`.
    if path.startswith("gin/") and os.path.exists(os.path.join(base, path[4:])):
      return os.path.join(base, path[4:])
  raise FileNotFoundError(
    f"--gin_file={path!r} not found in the current directory or the gin search path "
    f"{list(search_paths)}."
  )


def parse_gin(
  gin_files: Sequence[str],
  gin_bindings: Sequence[str] = (),
  search_paths: Sequence[str] = (),
  *,
  finalize: bool = False,
  known_macros: Sequence[str] = (),
) -> None:
  """Parses gin files and bindings, with the project's search path.

  Args:
    gin_files: files, parsed in order.
    gin_bindings: binding strings, applied after the files.
    search_paths: extra directories for `include`, searched before the defaults.
    finalize: lock the config afterwards.
    known_macros: macros the caller reads itself, so setting them on the command line is
      not a typo even when no gin file declares them.

  Raises:
    FileNotFoundError: naming a gin file that is nowhere on the path.
    UserError: a macro set by a binding that no gin file declares and nothing reads
      (a typo such as `--gin.TRAIN_STEPZ=5`), naming it and the close names, or gin's
      own error in a file or binding (an unknown configurable, a syntax error).
  """
  paths = list(search_paths) + gin_search_paths()
  for p in paths:
    if p not in _ADDED_SEARCH_PATHS:  # gin keeps appending duplicates otherwise
      _ADDED_SEARCH_PATHS.add(p)
      gin.add_config_file_search_path(p)
  # gin resolves `include` relative to the search path but the top-level files we resolve
  # ourselves, to give a clear error naming the flag.
  files = [_resolve_gin_file(f, paths) for f in gin_files]
  gin_bindings = rename_old_macros(gin_bindings)
  # gin's package-resource reader logs an ERROR for every search-path miss of an include
  # ("Path not found"), even when a later prefix finds the file; those lines are noise.
  quiet = _DropGinPathMisses(paths)
  root = logging.getLogger()
  root.addFilter(quiet)
  for handler in root.handlers:
    handler.addFilter(quiet)
  try:
    gin.parse_config_files_and_bindings(files, [], finalize_config=False)
    declared = gin_checks.bound_macros()
    gin.parse_config_files_and_bindings([], list(gin_bindings), finalize_config=finalize)
  except (ValueError, SyntaxError) as e:  # gin's: a binding or a file the user wrote
    if isinstance(e, errors.UserError):
      raise
    raise errors.UserError(f"{type(e).__name__} in the gin files or bindings: {e}") from e
  finally:
    root.removeFilter(quiet)
    for handler in root.handlers:
      handler.removeFilter(quiet)
  gin_checks.check_flag_macros(gin_bindings, declared | set(CLI_MACROS) | set(known_macros))
  _warn_old_macros_in_files()


# Macros that the command-line plumbing itself reads (no run file has to declare them).
CLI_MACROS = ("MIXTURE_OR_TASK_MODULE",)

# Old macro name -> its new name (docs/configuration.md). A run file keeps the old macro as
# a reference to the new one (`OLD = %NEW`), so old gin files still work; `parse_gin` turns a
# `--gin.OLD=...` binding into `NEW = ...` and says so in one line.
RENAMED_MACROS = {"EVAL_SUITE_PARTS": "EVAL_PARTS"}


def rename_old_macros(gin_bindings: Sequence[str]) -> list[str]:
  """Bindings with old macro names (`RENAMED_MACROS`) rewritten to the new ones.

  Args:
    gin_bindings: binding strings (`KEY = VALUE`).

  Returns:
    The bindings; each rewrite prints one deprecation line on stderr.
  """
  out = []
  for binding in gin_bindings:
    key, sep, value = binding.partition("=")
    new = RENAMED_MACROS.get(key.strip())
    if sep and new:
      print(f"warning: {key.strip()} is deprecated; use {new} (set it instead).", file=sys.stderr)
      binding = f"{new} ={value}"
    out.append(binding)
  return out


def _warn_old_macros_in_files() -> None:
  for old, new in RENAMED_MACROS.items():
    value = macro_value(old)
    if value is not None and str(value) != f"%{new}":
      print(f"warning: {old} is deprecated; use {new} (a gin file sets {old}).", file=sys.stderr)


def import_task_modules(modules: Any = None) -> list[str]:
  """Imports the modules named by MIXTURE_OR_TASK_MODULE, for their task registrations.

  T5X's convention: `--gin.MIXTURE_OR_TASK_MODULE="'my_project.tasks'"` makes the SeqIO
  tasks that module registers available to MIXTURE_OR_TASK_NAME. Modules are found on
  `sys.path` (the working directory included when run with `python -m`).

  Args:
    modules: a module name, a list of them, or None; default: the macro's value.

  Returns:
    The imported module names.

  Raises:
    ValueError: naming MIXTURE_OR_TASK_MODULE when a module cannot be found.
  """
  import importlib

  if modules is None:
    modules = macro_value("MIXTURE_OR_TASK_MODULE")
  if modules is None:
    return []
  names = [modules] if isinstance(modules, str) else list(modules)
  for name in names:
    if not isinstance(name, str):
      raise errors.UserError(f"MIXTURE_OR_TASK_MODULE = {modules!r}: expected module names.")
    try:
      importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name is None or not name.startswith(e.name):
        raise  # the module exists but imports something missing: its own error
      raise errors.UserError(
        f"MIXTURE_OR_TASK_MODULE = {modules!r}: no module {name!r} on sys.path ({e})."
      ) from None
  return names


def _unset_required_macros() -> list[str]:
  """Macros still `%gin.REQUIRED` that some binding reads (e.g. TEXT_FILES)."""
  return sorted(
    name
    for name in gin_checks.read_macros()
    if _is_required_marker(macro_value(name, default=None))
  )


_ADDED_SEARCH_PATHS: set[str] = set()


class _DropGinPathMisses(logging.Filter):
  """Drops gin's "Path not found: X" only when X is found under a later search path.

  gin tries each include under every search prefix, the working directory first, and its
  package-resource reader logs each miss as an ERROR. A miss that the search path resolves
  is noise; one that it does not is kept (gin then raises, listing the paths).
  """

  def __init__(self, search_paths: Sequence[str]):
    super().__init__()
    self._paths = [str(p) for p in search_paths]

  def filter(self, record: logging.LogRecord) -> bool:
    if not str(record.msg).startswith("Path not found") or not record.args:
      return True
    missed = str(record.args[0])
    rels = [missed] + [
      os.path.relpath(missed, p) for p in self._paths if missed.startswith(p.rstrip("/") + "/")
    ]
    found = any(os.path.isfile(os.path.join(p, r)) for p in self._paths for r in rels)
    return not found


def macro_value(name: str, default: Any = None) -> Any:
  """Returns the value bound to gin macro `name`, or `default` if it is not bound.

  Args:
    name: the macro, e.g. "MODEL_DIR".
    default: returned when the macro is unbound.

  Returns:
    The bound value (references are returned unevaluated).
  """
  try:
    return gin.query_parameter(f"{name}/macro.value")
  except ValueError:
    return default


def model_from_gin(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> Any:
  """Builds the gin macro `MODEL` of the given files (the convention of gin/models/).

  The one way the library and its tools (hf export, lm_eval, bench) get a model from gin.

  Args:
    gin_files: gin files (looked up as the entry points do: the working directory, then the
      gin search path, which also resolves `include`s).
    bindings: extra `KEY=VALUE` bindings, applied after the files.

  Returns:
    The model object (e.g. `t5x_ext.model.models.EncoderDecoderModel`).

  Raises:
    UserError: when the files do not bind `MODEL`.
  """
  parse_gin(list(gin_files), list(bindings))
  ref = macro_value("MODEL")
  if not isinstance(ref, gin.config.ConfigurableReference):
    raise errors.UserError(
      f"the gin files {list(gin_files)} do not bind MODEL = @models....Model()"
    )
  return ref.scoped_configurable_fn()


def _is_required_marker(value: Any) -> bool:
  return isinstance(value, gin.config.ConfigurableReference) and str(value) == "%gin.REQUIRED"


def check_required_macros(names: Sequence[str], *, run_file_hint: str = "") -> None:
  """Fails early, naming the macro, when a `%gin.REQUIRED` macro was never given a value.

  gin itself only fails when the configured function is called, and names the parameter
  rather than the macro the user must set.

  Args:
    names: the macros that must be bound (e.g. MODEL_DIR, MIXTURE_OR_TASK_NAME).
    run_file_hint: the run file that declares them, for the message.

  Raises:
    ValueError: naming the first missing macro and how to set it.
  """
  for name in names:
    value = macro_value(name, default=None)
    if value is None or _is_required_marker(value):
      where = f" (declared %gin.REQUIRED in {run_file_hint})" if run_file_hint else ""
      raise errors.UserError(
        f"Required gin macro {name} is not set{where}; pass --gin.{name}=... or bind it in a "
        "gin file."
      )


def maybe_initialize_distributed(args: argparse.Namespace) -> None:
  """Calls `jax.distributed.initialize` when `--multiprocess` is given.

  Args:
    args: parsed flags (multiprocess, coordinator_address, num_processes, process_id).
  """
  if not args.multiprocess:
    return
  import jax

  # Cross-process computations on CPU devices need a collectives library (gloo ships with
  # jaxlib); GPU and TPU backends ignore this setting.
  if jax.config.jax_cpu_collectives_implementation in (None, "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if args.coordinator_address:
    kwargs["coordinator_address"] = args.coordinator_address
  if args.num_processes is not None:
    kwargs["num_processes"] = args.num_processes
  if args.process_id is not None:
    kwargs["process_id"] = args.process_id
  jax.distributed.initialize(**kwargs)


def setup(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """Parses the flags, starts `jax.distributed` if asked, and parses the gin files.

  Args:
    argv: arguments (default `sys.argv[1:]`).

  Returns:
    The parsed flags.

  Raises:
    SystemExit: without a `--gin_file`, or on an unknown flag.
  """
  args = parse_flags(sys.argv[1:] if argv is None else argv)
  if not args.gin_files:
    raise SystemExit("At least one --gin_file is needed (e.g. --gin_file=gin/local/ul2_tiny.gin).")
  maybe_initialize_distributed(args)
  parse_gin(args.gin_files, args.gin_bindings, args.gin_search_paths)
  return args


def check_settings(required_macros: Sequence[str] = (), hint: str = "") -> None:
  """Checks the required macros, then imports MIXTURE_OR_TASK_MODULE (after `setup`).

  Args:
    required_macros: macros that must be set (checked before anything is built).
    hint: the run file that declares them, for error messages.

  Raises:
    ValueError: naming an unset macro, or a module that cannot be imported.
  """
  check_required_macros(required_macros, run_file_hint=hint)
  # Any other `%gin.REQUIRED` macro that a setting reads (a run file's own, such as
  # runs/text_files.gin's TEXT_FILES) fails here too, named, rather than deep in gin.
  check_required_macros(_unset_required_macros())
  import_task_modules()


def run(configured_main, argv: Sequence[str] | None = None, *, required_macros=(), hint="") -> Any:
  """Parses flags and gin, checks required macros, imports MIXTURE_OR_TASK_MODULE, then
  calls `configured_main()`.

  The entry points use `t5x_ext.launch.scaffold.run`, which also picks the configured function.

  Args:
    configured_main: a zero-argument callable that reads everything from gin.
    argv: arguments (default `sys.argv[1:]`).
    required_macros: macros that must be set (checked before anything is built).
    hint: the run file that declares them, for error messages.

  Returns:
    Whatever `configured_main` returns.
  """
  setup(argv)
  check_settings(required_macros, hint)
  return configured_main()


# What a user's settings, files or data can cause; anything else (a plain ValueError
# included) is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
  errors.UserError,
  FileNotFoundError,
  FileExistsError,
  NotADirectoryError,
  IsADirectoryError,
  PermissionError,
)
TRACEBACK_ENV = "T5X_EXT_TRACEBACK"
USER_ERROR_EXIT = 2
DIVERGED_EXIT = 3  # training diverged (errors.DivergedError): a NaN or infinite loss/state


def user_error_types() -> tuple[type[BaseException], ...]:
  """`USER_ERRORS` plus the project's own user-facing error classes.

  Returns:
    Exception types whose message is shown without a traceback.
  """
  from t5x_ext.training import checkpointing, run_lock

  return (*USER_ERRORS, run_lock.RunLockError, checkpointing.CheckpointSaveError)


# What gin (`In call to configurable 'train' (<function train at 0x...>)`) and TensorFlow
# (`[[{{node EagerPyFunc}}]]`) add to a message around the line that matters.
_ADDED_CONTEXT = re.compile(
  r"^\s*(In call to configurable '[^']*' \(<.*>\)|\[\[\{\{node [^}]*\}\}\]\])\s*$"
)


def error_message(error: BaseException) -> str:
  """`str(error)` without the lines gin and TensorFlow add around it.

  Args:
    error: the exception.

  Returns:
    The message as the code that raised it wrote it.
  """
  lines = [line for line in str(error).splitlines() if not _ADDED_CONTEXT.match(line)]
  return "\n".join(lines).strip()


STOPPED_EXIT = 143  # 128 + SIGTERM, as a shell reports a process ended by SIGTERM


def exit_status(result: Any) -> int:
  """The process exit status for what an entry point's `main` returned.

  Args:
    result: `main`'s return value; an int is the status itself (the converters' and
      `plan`'s `main`); a result with a true `stopped_by_signal` attribute (a run that
      checkpointed at SIGTERM and stopped early) gives `STOPPED_EXIT`.

  Returns:
    The int, 0 or `STOPPED_EXIT`.
  """
  if isinstance(result, int) and not isinstance(result, bool):  # a command's own status
    return result
  return STOPPED_EXIT if getattr(result, "stopped_by_signal", False) else 0


def _flush_and_exit(status: int) -> None:
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  logging.shutdown()
  try:
    import jax

    if jax.process_count() > 1:
      jax.distributed.shutdown()
  except Exception:  # noqa: BLE001 - leaving anyway
    pass
  # Skip interpreter teardown: destroying tf.data's thread pools and iterators there can block
  # for tens of seconds (or forever, after an input error); everything the run writes has
  # been closed and flushed by now.
  os._exit(status)


def _report(error: BaseException) -> None:
  if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
    traceback.print_exc()
  else:
    print(f"error: {error_message(error)}", file=sys.stderr)
    print(f"(set {TRACEBACK_ENV}=1 to see the traceback)", file=sys.stderr)


def main_guard(main_fn, argv: Sequence[str] | None = None, *, exit_fn=_flush_and_exit) -> None:
  """Runs an entry point's `main`, then exits the process promptly with a telling status.

  - success: 0; a run stopped by SIGTERM (after its checkpoint, or with nothing new to
    save, at any moment: `t5x_ext.training.preemption`): `STOPPED_EXIT` (143);
  - a user error (`t5x_ext.errors.UserError`: a bad setting, path, data; a held MODEL_DIR
    lock; a failed checkpoint write): `error: <message>` on stderr without the Python
    traceback, status 2 (set T5X_EXT_TRACEBACK=1 to see the traceback);
  - a diverged run (`t5x_ext.errors.DivergedError`: NaN/Inf loss or state): `error: ...`
    naming the step, status `DIVERGED_EXIT` (3);
  - any other exception, a plain `ValueError` included: its traceback, status 1 (a bug);
    Ctrl-C: 130.

  Args:
    main_fn: the entry point's `main(argv)`.
    argv: arguments (default `sys.argv[1:]`).
    exit_fn: ends the process with a status (tests pass a recorder).
  """
  from t5x_ext.training import preemption  # light: no JAX

  if exit_fn is _flush_and_exit:  # a real process (tests pass a recorder): SIGTERM exits it
    preemption.install(exit_fn)  # before anything compiles; see preemption.py
  status = 1
  try:
    status = exit_status(main_fn(argv))
  except SystemExit as e:  # argparse's usage errors and explicit exits
    if isinstance(e.code, int):
      status = e.code
    else:
      if e.code is not None:
        print(e.code, file=sys.stderr)
      status = 0 if e.code is None else USER_ERROR_EXIT
  except KeyboardInterrupt:
    status = 130
  except preemption.Preempted:  # SIGTERM with nothing new to checkpoint: left cleanly
    status = STOPPED_EXIT
  except user_error_types() as e:
    _report(e)
    status = USER_ERROR_EXIT
  except errors.DivergedError as e:
    _report(e)
    status = DIVERGED_EXIT
  except BaseException:  # noqa: BLE001 - a bug: show it, then still exit promptly
    traceback.print_exc()
    status = 1
  exit_fn(status)
