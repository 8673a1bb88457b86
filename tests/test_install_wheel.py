"""A wheel, installed as users install it, finds its gin files from any working directory.

Builds a wheel from a copy of the source (no stale `build/` in the checkout), installs it
with `--no-deps` into a fresh venv that borrows this environment's site-packages for the
dependencies (TensorFlow, JAX: nothing is downloaded), and runs the main job
(`--gin_file=local/ul2_tiny.gin`) for 2 steps from a temporary directory, with `python -I`
so neither the working directory nor PYTHONPATH can bring the source tree back.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import site
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

SOURCES = ("setup.py", "pyproject.toml", "README.md", "t5x_ext", "tasks", "gin")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
  assert proc.returncode == 0, (
    f"{cmd}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
  )
  return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(python of the fresh venv, its site-packages)."""
  tmp = tmp_path_factory.mktemp("wheel")
  src = tmp / "src"
  src.mkdir()
  for name in SOURCES:
    path = REPO_ROOT / name
    if path.is_dir():
      shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
      shutil.copy(path, src / name)
  dist = tmp / "dist"
  _run(
    [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    + ["--no-index", "-w", str(dist), str(src)]
  )
  (wheel,) = dist.glob("t5x_ext-*.whl")
  venv = tmp / "venv"
  # A venv made from a venv's python gets the *base* interpreter's site-packages with
  # --system-site-packages, not this environment's; a .pth line appends ours instead (after
  # the new venv's own site-packages, so the installed wheel shadows the editable checkout).
  _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
  python = venv / "bin" / "python"
  purelib = pathlib.Path(
    _run(
      [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
    ).stdout.strip()
  )
  (purelib / "zz_parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
  _run(
    [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
    + ["--no-index", str(wheel)]
  )
  return python, purelib


def _env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  env["CUDA_VISIBLE_DEVICES"] = ""
  return env


def test_installed_package_is_the_wheel_and_ships_the_gin_files(installed, tmp_path):
  python, purelib = installed
  code = (
    "import json, t5x_ext, tasks; from t5x_ext.launch import flags as cli; "
    "print(json.dumps([t5x_ext.__file__, tasks.__file__, cli.gin_search_paths()]))"
  )
  out = _run([str(python), "-I", "-c", code], cwd=tmp_path, env=_env()).stdout
  pkg, tasks_file, paths = json.loads(out.strip().splitlines()[-1])
  assert pathlib.Path(pkg).is_relative_to(purelib), pkg
  assert pathlib.Path(tasks_file).is_relative_to(purelib), tasks_file
  assert paths == [str(purelib / "t5x_ext" / "gin")]
  for rel in (
    "local/ul2_tiny.gin",
    "models/t5_1_1/xxl.gin",
    "models/decoder_only/tiny.gin",
    "runs/pretrain.gin",
    "runs/infer.gin",
    "experiments/ul2_c4.gin",
  ):
    assert (pathlib.Path(paths[0]) / rel).is_file(), rel


def test_main_job_runs_two_steps_from_another_directory(installed, tmp_path):
  python, _ = installed
  model_dir = tmp_path / "run"
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  proc = _run(
    [str(python), "-I", "-m", "t5x_ext.train", "--gin_file=local/ul2_tiny.gin"]
    + [f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2"]
    + [
      "--gin.train_script.train.samples_per_mode=0",
      "--gin.train_script.train.progress_bar=False",
    ],
    cwd=cwd,
    env=_env(),
  )
  assert (model_dir / "checkpoints" / "2").is_dir(), proc.stderr[-3000:]
  # Includes resolved on the search path without gin's "Path not found" noise.
  assert "Path not found" not in proc.stderr
