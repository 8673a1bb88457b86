"""The notebooks' Colab install cell, run as Colab would (IPython's `!` transform), without
Colab: the source is a setting, unset is a clear error, and no address is invented."""

from __future__ import annotations

import json
import sys
import types

import pytest

from tests.conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
IPython = pytest.importorskip("IPython")


def _install_cell(path) -> str:
  cells = json.loads(path.read_text())["cells"]
  (cell,) = [c for c in cells if "T5X_EXT_SOURCE" in "".join(c["source"])]
  return "".join(cell["source"])


def _run(source: str, setting: str, monkeypatch) -> list[str]:
  """Runs the cell in a fake Colab where t5x_ext is not installed; returns shell commands."""
  from IPython.core.inputtransformer2 import TransformerManager

  source = source.replace('T5X_EXT_SOURCE = ""', f"T5X_EXT_SOURCE = {setting!r}", 1)
  code = TransformerManager().transform_cell(source)
  commands: list[str] = []

  class Shell:
    def system(self, cmd):
      commands.append(cmd)

    def var_expand(self, cmd, depth=0):
      return cmd

  monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
  real_find_spec = __import__("importlib.util").util.find_spec
  monkeypatch.setattr(
    "importlib.util.find_spec",
    lambda name, *a: None if name == "t5x_ext" else real_find_spec(name, *a),
  )
  namespace = {"get_ipython": lambda: Shell()}
  exec(compile(code, "<colab cell>", "exec"), namespace)
  return [c.replace("{T5X_EXT_SOURCE}", namespace["T5X_EXT_SOURCE"]) for c in commands]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_cell_needs_a_source_and_installs_from_it(path, monkeypatch):
  source = _install_cell(path)
  assert "github.com/t5x-ext" not in path.read_text()
  with pytest.raises(RuntimeError, match="set T5X_EXT_SOURCE"):
    _run(source, "", monkeypatch)
  (cmd,) = _run(source, "/content/t5x_ext-0.1.0-py3-none-any.whl", monkeypatch)
  assert "pip install" in cmd and "/content/t5x_ext-0.1.0-py3-none-any.whl[notebooks]" in cmd
  (cmd,) = _run(source, "https://example.org/me/t5x_ext", monkeypatch)
  assert "t5x_ext[notebooks] @ git+https://example.org/me/t5x_ext" in cmd


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_cell_does_nothing_outside_colab(path, monkeypatch):
  from IPython.core.inputtransformer2 import TransformerManager

  monkeypatch.delitem(sys.modules, "google.colab", raising=False)
  code = TransformerManager().transform_cell(_install_cell(path))
  exec(compile(code, "<cell>", "exec"), {"get_ipython": lambda: pytest.fail("ran a command")})
