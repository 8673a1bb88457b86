"""On 8 simulated CPU devices: the same 5 steps on three meshes give the same losses, and
sharding meshes leave no large parameter replicated; bad meshes/batches fail early."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests import _train_runner

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out = tmp_path_factory.mktemp("multidevice")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-m", "tests._train_runner", str(out)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-4000:]
  return json.loads(lines[-1][len("REPORT ") :])


def test_same_losses_on_every_mesh_and_one_device(report, tmp_path):
  assert report["devices"] == 8
  one_device, _ = _train_runner.train_losses(tmp_path / "one", {"data": 1})
  assert len(one_device) == 5
  for name, losses in report["losses"].items():
    assert losses == pytest.approx(one_device, abs=1e-5), name
  # And training did something: the loss moved.
  assert abs(one_device[-1] - one_device[0]) > 1e-3


def test_no_large_parameter_is_replicated_when_sharding(report):
  name = "data2_fsdp2_model2"
  assert report["big_params"][name] >= 2  # the embeddings and the output layer
  assert report["replicated"][name] == []
  # With pure data parallelism everything is replicated, as it should be.
  assert len(report["replicated"]["data8"]) == report["big_params"]["data8"]


def test_batch_and_mesh_errors_name_the_setting(report):
  assert "BATCH_SIZE = 4" in report["errors"]["batch"]
  assert "MESH_SHAPE" in report["errors"]["mesh"] and "3" in report["errors"]["mesh"]
