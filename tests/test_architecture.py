"""The floors of the library hold: no import circle, and no import that runs up a floor.

The import graph is read from the source (every `import`, at module level or inside a
function), so a lazy import that closes a circle counts too. The floors are those of
docs/internals.md: objectives < tasks < data beside model < training < evaluation < launch
< commands < experiments, with the side doors (hf, t5x_ckpt, peft, lm_eval) where their
imports put them.
"""

from __future__ import annotations

import ast
import collections
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Top-level modules that only re-export a moved module, for gin files and old config.gin.
SHIMS = {
  "t5x_ext.network": "model",
  "t5x_ext.models": "model",
  "t5x_ext.losses": "model",
  "t5x_ext.optimizers": "training",
  "t5x_ext.schedules": "training",
  "t5x_ext.partitioning": "training",
}
COMMANDS = {"t5x_ext.train", "t5x_ext.eval", "t5x_ext.infer", "t5x_ext.plan"}

# floor -> the floors it may import (itself included).
ALLOWED = {
  "objectives": {"objectives"},
  "tasks": {"objectives", "tasks"},
  "data": {"objectives", "tasks", "data"},
  "model": {"model"},
  "training": {"model", "training", "data", "t5x_ckpt", "package"},
  "t5x_ckpt": {"model", "t5x_ckpt", "hf"},
  "hf": {"model", "training", "hf", "launch", "tasks"},
  "peft": {"model", "training", "data", "peft", "launch", "package"},
  "evaluation": {"objectives", "tasks", "data", "model", "training", "evaluation"},
  "launch": {"training", "launch"},
  "commands": {
    "objectives",
    "tasks",
    "data",
    "model",
    "training",
    "evaluation",
    "launch",
    "commands",
    "package",
  },
  "lm_eval": {"tasks", "data", "model", "training", "evaluation", "launch", "lm_eval", "package"},
  "experiments": {
    "objectives",
    "tasks",
    "data",
    "model",
    "training",
    "evaluation",
    "launch",
    "commands",
    "experiments",
    "package",
  },
  "package": {"package"},
  "errors": {"errors"},
  "modes": {"modes"},
}
# Floors every floor may import: t5x_ext.errors imports nothing and holds the error classes
# that settings and input checks everywhere raise; t5x_ext.modes imports nothing and holds
# the mode prefixes ("[NLU]", ...).
EVERYWHERE = {"errors", "modes"}


def floor(module: str) -> str:
  if module in SHIMS:
    return SHIMS[module]
  if module in COMMANDS or module.endswith(".__main__"):  # `python -m t5x_ext.data inspect`
    return "commands"
  if module == "t5x_ext":
    return "package"
  parts = module.split(".")
  if parts[0] == "tasks":
    return "tasks"
  return parts[1]


def modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in [*ROOT.glob("t5x_ext/**/*.py"), *ROOT.glob("tasks/**/*.py")]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def import_graph() -> dict[str, set[str]]:
  mods = modules()

  def resolve(name: str) -> str | None:
    while name and name not in mods:
      name = name.rpartition(".")[0]
    return name or None

  graph: dict[str, set[str]] = collections.defaultdict(set)
  for mod, path in mods.items():
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
          base = ".".join([*up, base] if base else up)
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
      for target in targets:
        found = resolve(target)
        if found and found != mod and not mod.startswith(found + "."):
          graph[mod].add(found)
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return [*stack[stack.index(nxt) :], nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_no_import_circle():
  cycle = find_cycle(import_graph())
  assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_import_runs_up_a_floor():
  bad = []
  for mod, targets in import_graph().items():
    if mod in SHIMS:
      continue
    for target in targets:
      if floor(target) not in ALLOWED[floor(mod)] | EVERYWHERE:
        bad.append(f"{mod} ({floor(mod)}) imports {target} ({floor(target)})")
  assert not bad, "\n".join(sorted(bad))


def test_every_module_is_on_a_floor():
  unknown = {floor(m) for m in modules()} - set(ALLOWED)
  assert not unknown, f"modules outside the known floors: {sorted(unknown)}"


def test_the_check_finds_a_circle_and_an_upward_import():
  # The checks themselves can fail: a circle and an upward edge are both reported.
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None
  assert floor("t5x_ext.train") not in ALLOWED[floor("t5x_ext.evaluation.probes")]
  assert floor("t5x_ext.errors") in EVERYWHERE and not ALLOWED["errors"] - {"errors"}


@pytest.mark.parametrize("name", sorted(SHIMS))
def test_old_module_paths_re_export_the_new_ones(name):
  import importlib

  old = importlib.import_module(name)
  new = importlib.import_module(f"t5x_ext.{SHIMS[name]}.{name.rpartition('.')[2]}")
  public = [k for k in vars(new) if not k.startswith("__")]
  assert public and all(getattr(old, k) is getattr(new, k) for k in public)
