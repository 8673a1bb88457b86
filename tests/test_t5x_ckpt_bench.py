"""Smoke test of `bench/t5x_checkpoint_io.py` on a few-MB checkpoint: it runs every phase and
prints the documented JSON. (Speed and memory are measured by running it, never asserted.)"""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # four child processes, each starting JAX
def test_t5x_checkpoint_io_prints_its_report(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      str(REPO / "bench" / "t5x_checkpoint_io.py"),
      "--size=tiny",
      f"--workdir={tmp_path / 'work'}",
    ],
    capture_output=True,
    text=True,
    timeout=900,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout)
  stored = report["write"]["stored_bytes"]
  assert stored == 2 * report["write"]["params"] > 0
  for phase in ("convert", "restore_8", "host_slice"):
    r = report[phase]
    assert r["seconds"] > 0 and r["peak_rss"] >= r["rss_before"] > 0
    assert r["seconds_per_gb"] == r["seconds"] / (stored / 1e9)
  assert report["restore_8"]["devices"] == 8
  # One host of eight reads far less than the whole checkpoint (its fsdp slices + the small
  # replicated norms and tables).
  assert report["host_slice"]["bytes_read"] < stored / 4
  assert report["convert"]["written_bytes"] > 0
  assert not (tmp_path / "work").exists()  # cleaned up
