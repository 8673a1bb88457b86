"""Smoke test of `bench/data_throughput.py`: it runs, prints the documented JSON, and its
ratios are computed from the runs it reports. (Speed itself is measured by running the
benchmark, never asserted in tests.)"""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_data_throughput_prints_its_report():
  proc = subprocess.run(
    [sys.executable, str(REPO / "bench" / "data_throughput.py"), "--examples=500", "--rounds=1"],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout)
  ours = report["mixture_of_denoisers"]
  assert set(ours) == {"with_eos", "with_seqio_eos", "preprocessor_only"}
  for run in ours.values():
    assert run["examples"] >= 500 and run["examples_per_s"] > 0
    # Inputs of at most 512 and targets of at most 512 tokens, EOS or not.
    assert 2 < run["mean_tokens_per_example"] <= 1024
  base = report["appendix_t5"]
  if "skipped" in base:
    # Without the `t5` package the baseline is reported as skipped, with the reason.
    assert "t5" in base["skipped"] and "speedup" not in report
    return
  assert set(base) == {"with_eos", "preprocessor_only"}
  for variant, ratios in report["speedup"].items():
    baseline = base["preprocessor_only" if variant == "preprocessor_only" else "with_eos"]
    want = ours[variant]["examples_per_s"] / baseline["examples_per_s"]
    assert ratios["examples_per_s"] == pytest.approx(want)
