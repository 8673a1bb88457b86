"""Every notebook under notebooks/ runs top to bottom in QUICK mode (T5X_EXT_QUICK=1).

The kernel is this interpreter (a kernelspec written for the test), so the notebooks see the
same installed t5x_ext as the tests. A failing cell fails the test with its traceback.
"""

import json
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
KERNEL = "t5x_ext_test_python"


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
  """A kernelspec running this interpreter, QUICK mode, and a scratch work directory."""
  spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
  spec_dir.mkdir(parents=True)
  spec = {
    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "t5x_ext tests",
    "language": "python",
  }
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  # JUPYTER_PATH is searched before the user and system kernel directories.
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("T5X_EXT_QUICK", "1")
  monkeypatch.setenv("T5X_EXT_WORKDIR", str(tmp_path / "work"))
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
  return tmp_path


def test_notebooks_exist():
  names = {p.name for p in NOTEBOOKS}
  assert {"ul2_quickstart.ipynb", "finetune_mode_switching.ipynb"} <= names


def test_notebooks_are_committed_without_outputs():
  # Outputs of a local run would bloat the repository and go stale.
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


def _errors(nb) -> list[str]:
  found = []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      if out.get("output_type") == "error":
        found.append(f"{out['ename']}: {out['evalue']}")
  return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path, kernel_env):
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
    nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(kernel_env)}}
  )
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as e:
    pytest.fail(f"{path.name} failed:\n{e}")
  assert not _errors(nb)
  # Each notebook shows HTML examples and at least one plot or table of results.
  outputs = [o for c in nb.cells for o in c.get("outputs", [])]
  assert any("text/html" in o.get("data", {}) for o in outputs), f"{path.name}: no HTML output"
  assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name}: no figure"
