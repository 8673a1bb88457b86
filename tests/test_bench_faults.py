"""Smoke test of bench/faults.py: a full disk at a save, then the run finishes exactly."""

import json
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "faults.py"


@pytest.mark.slow
def test_faults_bench_reports_a_survived_full_disk_and_exact_losses(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      str(BENCH),
      "--steps=4",
      "--checkpoint_every=2",
      "--cheap",
      "--faults=enospc",
      f"--work_dir={tmp_path}",
      "--timeout=600",
    ],
    capture_output=True,
    text=True,
    timeout=1500,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout)
  (fault,) = report["faults"]
  assert fault["fault"] == "enospc" and fault["exit_code"] == 2, fault
  assert fault["one_message"] and not fault["partial_left"], fault
  assert report["faults_survived"] == report["faults_injected"] == 1
  assert report["final_exit_code"] == 0 and report["final_steps_logged"] == 4
  assert report["losses_compared"] >= 4 and report["max_loss_diff"] == 0.0
