"""Two processes on loopback (CPU collectives via gloo): batches and checkpoints across hosts."""

import os
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(__file__)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("stop_mode", ["sigterm", "flag"])
def test_two_processes_share_batches_and_checkpoints(tmp_path, stop_mode):
  port = str(_free_port())
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.path.dirname(HERE),
  )
  child = os.path.join(HERE, "multiprocess_child.py")
  # Output to files: waiting on one child while the other fills a pipe could deadlock them.
  logs = [open(tmp_path / f"process_{i}.log", "w") for i in range(2)]
  procs = [
    subprocess.Popen(
      [sys.executable, child, str(i), port, str(tmp_path / "run"), stop_mode],
      stdout=logs[i],
      stderr=subprocess.STDOUT,
      text=True,
      env=env,
    )
    for i in range(2)
  ]
  try:
    for p in procs:
      p.wait(timeout=240)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for f in logs:
      f.close()
  for i, p in enumerate(procs):
    out = (tmp_path / f"process_{i}.log").read_text()
    assert p.returncode == 0 and f"OK {i}" in out, out[-4000:]
