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
  procs = [
    subprocess.Popen(
      [sys.executable, child, str(i), port, str(tmp_path), stop_mode],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      env=env,
    )
    for i in range(2)
  ]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=240)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0 and f"OK {i}" in out, out[-4000:]
