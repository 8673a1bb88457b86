"""bench/accelerator.py and bench/device_check.sh on CPU: a shrunken tiny T5.1.1, a few steps.

The accelerator figures themselves need a GPU or TPU; here the JSON's fields are checked for
presence and sanity (no timing is asserted), and the device check's CPU mode runs every step
the GPU mode runs, so the script is right before it ever runs on a lent device.
"""

import json
import os
import subprocess

import pytest

from tests.bench_scripts import REPO, SHRINK, bench_module


@pytest.fixture(scope="module")
def acc():
  with bench_module("accelerator") as module:
    yield module


def test_rows_per_model_and_attention(acc):
  flags, bindings = acc._flags(
    ["--models=small,large", "--attention=auto,xla_chunked", "--gin.X=1"]
  )
  specs = acc.row_specs(flags, bindings)
  assert [(s["model"], s["attention"]) for s in specs] == [
    (m, a) for m in ("small", "large") for a in ("auto", "xla_chunked")
  ]
  for s in specs:
    assert (s["inputs"], s["targets"], s["gin_file"]) == (
      512,
      128,
      f"models/t5_1_1/{s['model']}.gin",
    )
    assert s["bindings"][0] == "X=1"
    assert "network.TransformerConfig.dtype='bfloat16'" in s["bindings"]
    chunked = s["attention"] == "xla_chunked"
    assert ("network.TransformerConfig.attention_chunk_size=128" in s["bindings"]) == chunked
    assert s["breakdown"] == (s["attention"] == "auto")  # --breakdown=first
  for bad in (["--models=huge"], ["--attention=flash"]):
    with pytest.raises(ValueError, match="unknown"):
      acc.row_specs(*acc._flags(bad))


def test_a_tiny_run_reports_every_field(acc):
  result = acc.run(
    [
      "--models=tiny",
      "--attention=auto,xla_chunked",
      "--inputs=32",
      "--targets=8",
      "--chunk_size=8",
      "--batch=0",  # the memory plan's extrapolation, against the given limit
      "--memory_limit=1GiB",
      "--search_start=1",
      "--max_batch=3",
      "--steps=2",
      "--warmup=0",
      "--no_isolate",
      *SHRINK,
    ]
  )
  json.dumps(result)  # JSON-ready
  m = result["machine"]
  assert m["platform"] == "cpu" and m["device_kind"] == "cpu" and m["num_devices"] == 1
  assert m["jax"] and m["jaxlib"] and "cuda_versions" in m
  assert result["rosetta_a100"]["sequences_per_s_per_gpu"] == {
    "small": 714.0,
    "large": 75.8,
    "xl": 16.9,
  }
  auto, chunked = result["rows"]
  for r in (auto, chunked):
    assert "error" not in r, r
    assert r["dtype"] == "bfloat16" and r["param_dtype"] == "float32"
    assert r["optimizer"] == "adafactor"
    assert r["batch_per_device"] == r["batch"] == 3  # capped by --max_batch
    assert "extrapolated" in r["batch_source"] and r["batch_search_plan"]["per_row_bytes"] > 0
    assert r["step_s"] > 0 and r["sequences_per_s_per_device"] == pytest.approx(3 / r["step_s"])
    assert r["tokens_per_s"] == pytest.approx(3 * 40 / r["step_s"])
    assert r["target_tokens_per_s"] == pytest.approx(3 * 8 / r["step_s"])
    assert r["model_flops_per_s"] == pytest.approx(r["flops_per_step"] / r["step_s"])
    assert r["mfu"] is None and r["peak_flops_per_device"] is None  # CPU: no known peak
    assert r["memory"]["plan_total_bytes"] > 0 and r["memory"]["plan"]["batch_size"] == 3
    assert r["loss"] > 0 and r["num_params"] > 0
    assert set(r["attention_taken"]) == {"encoder", "decoder_self", "cross"}
    assert all(v["implementation"] == "xla" for v in r["attention_taken"].values())
  assert "blocks of 8" in chunked["attention_taken"]["encoder"]["reason"]
  assert "cpu" in auto["attention_taken"]["encoder"]["reason"]
  b = auto["breakdown"]
  assert b["forward_s"] > 0 and b["forward_backward_s"] >= b["forward_s"]
  # The parts are the differences of the measured medians (clipped at 0), not any numbers >= 0.
  assert b["backward_s"] == max(0.0, b["forward_backward_s"] - b["forward_s"])
  assert b["optimizer_s"] == max(0.0, b["step_s"] - b["forward_backward_s"])
  assert "breakdown" not in chunked  # --breakdown=first


def test_explicit_cudnn_on_cpu_is_a_clear_row_error(acc):
  with pytest.raises(ValueError, match=r"attention_implementation='cudnn'.*backend 'cpu'"):
    acc.run(["--models=tiny", "--attention=cudnn", "--batch=1", "--no_isolate", *SHRINK])


def test_out_of_memory_rows_run_again_at_half_the_batch(acc, monkeypatch):
  seen = []

  def fake(spec, timeout):
    seen.append(spec["batch_per_device"])
    if spec["batch_per_device"] > 8:
      return {
        "model": spec["model"],
        "batch_per_device": spec["batch_per_device"],
        "error": ("out of memory: exit 1: RESOURCE_EXHAUSTED"),
      }
    return {"model": spec["model"], "batch_per_device": spec["batch_per_device"]}

  monkeypatch.setattr(acc, "_run_isolated", fake)
  flags, bindings = acc._flags(["--models=small", "--batch=32", "--retries=2"])
  (row,) = acc.run_rows(flags, bindings)
  assert seen == [32, 16, 8] and row == {
    "model": "small",
    "batch_per_device": 8,
    "retried_after_oom": 2,
  }
  assert acc._is_oom("XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
  assert not acc._is_oom("Buffer has been deleted or donated")


def _device_check(tmp_path, *args, env=None, timeout=900):
  full_env = {
    **os.environ,
    "PYTHON": "python",
    "T5X_EXT_DEVICE_CHECK_BENCH_ARGS": " ".join(SHRINK),
    **(env or {}),
  }
  return subprocess.run(
    ["bash", str(REPO / "bench" / "device_check.sh"), *args],
    cwd=tmp_path,
    env=full_env,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def test_device_check_cpu_mode_runs_every_step(tmp_path):
  out = tmp_path / "out"
  proc = _device_check(tmp_path, "--cpu", f"--out={out}")
  assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
  assert "device_check: ok" in proc.stdout
  # At most 8 files come back from a lent device's $OUT: the script writes five.
  assert sorted(p.name for p in out.iterdir()) == [
    "check.json",
    "device_check.json",
    "device_check.log",
    "large.json",
    "small.json",
  ]
  summary = json.loads((out / "device_check.json").read_text())
  assert summary["ok"] and summary["mode"] == "cpu"
  assert [s["name"] for s in summary["steps"]] == ["env", "check", "small", "large"]
  assert all(s["exit"] == "0" for s in summary["steps"])
  assert summary["check"]["logits"]["ok"] and "skipped" in summary["check"]["cudnn_attention"]
  assert [r["attention"] for r in summary["large"]] == ["auto", "xla"]
  assert summary["small"][0]["sequences_per_s_per_device"] > 0
  assert summary["machine"]["platform"] == "cpu"


def test_device_check_rejects_unknown_arguments(tmp_path):
  proc = _device_check(tmp_path, "--frobnicate", timeout=60)
  assert proc.returncode == 2 and "unknown argument" in proc.stderr
  proc = _device_check(tmp_path, env={"T5X_EXT_DEVICE_CHECK": "tpu"}, timeout=60)
  assert proc.returncode == 2 and "expected gpu or cpu" in proc.stderr
