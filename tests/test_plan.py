"""The memory plan: device names, sizes, the largest-batch search, the error, and the plan
against what a real CPU run holds and peaks at (tests/_plan_runner.py, 4 simulated devices)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from t5x_ext.training import memory_plan
from t5x_ext.training.memory_plan import GiB

REPO = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ names and sizes


@pytest.mark.parametrize(
  "name, canonical",
  [
    ("v4", "v4"),
    ("TPU v4", "v4"),
    ("tpu-v5p", "v5p"),
    ("TPU v5 lite", "v5e"),  # a device_kind
    ("v5e", "v5e"),
    ("v3", "v3"),
    ("a100-80gb", "A100-80GB"),
    ("A100 40GB", "A100-40GB"),
    ("NVIDIA H100 80GB HBM3", "H100"),  # a device_kind
    ("h200", "H200"),
  ],
)
def test_device_names(name, canonical):
  assert memory_plan.accelerator(name).name == canonical


def test_device_memory_figures():
  acc = memory_plan.ACCELERATORS
  assert acc["v3"].memory_bytes == 16 * GiB
  assert acc["v4"].memory_bytes == 32 * GiB
  assert acc["v5e"].memory_bytes == 16 * 10**9
  assert acc["v5p"].memory_bytes == 95 * 10**9
  assert acc["A100-80GB"].memory_bytes == 80 * 10**9
  assert acc["H200"].memory_bytes == 141 * 10**9


def test_unknown_and_ambiguous_device_names():
  with pytest.raises(ValueError, match="A100-40GB or A100-80GB"):
    memory_plan.accelerator("A100")
  with pytest.raises(ValueError, match=r"'v9' is not known; known: v3, v4"):
    memory_plan.accelerator("v9")


def test_parse_memory():
  assert memory_plan.parse_memory("16GiB") == 16 * GiB
  assert memory_plan.parse_memory("80GB") == 80 * 10**9
  assert memory_plan.parse_memory("512 mib") == 512 * 2**20
  assert memory_plan.parse_memory("1.5e10") == 15 * 10**9
  assert memory_plan.parse_memory(4096) == 4096
  for bad in ("lots", "16 GiBs", "0GB", ""):
    with pytest.raises(ValueError, match="device_memory"):
      memory_plan.parse_memory(bad)


# ------------------------------------------------------------------ search (no compiles)


def _fake_plan(batch_size, total):
  return memory_plan.Plan(
    batch_size=batch_size,
    mesh_shape={"data": 4, "fsdp": 1, "model": 1},
    num_microbatches=1,
    platform="cpu",
    params_bytes=1000,
    opt_state_bytes=500,
    batch_bytes=10,
    argument_bytes=1510,
    output_bytes=1500,
    alias_bytes=1500,
    temp_bytes=total - 1510,
    generated_code_bytes=0,
    compile_seconds=0.0,
  )


@pytest.fixture
def fake_compiles(monkeypatch):
  """plan_train_step without compiling: total = 1510 + 100 * batch + a bump; logs sizes."""
  compiled = []

  def fake(trainer, batch):
    b = batch["rows"]
    compiled.append(b)
    return _fake_plan(b, 1510 + 100 * b + (50 if b > 30 else 0))

  monkeypatch.setattr(memory_plan, "plan_train_step", fake)
  return compiled


@pytest.mark.parametrize("start", [4, 36, 40, 128, 4096])
def test_search_finds_the_largest_multiple(fake_compiles, start):
  memory = 1510 + 100 * 37 + 50  # batch 36 fits (3660 + 50), 40 does not
  found = memory_plan.largest_batch(
    None, lambda b: {"rows": b}, memory, start=start, step=4, max_compiles=8
  )
  assert (found.largest, found.exact, found.step) == (36, True, 4)
  assert 40 in found.plans and not found.plans[40].fits(memory)
  assert len(fake_compiles) <= 8 and len(set(fake_compiles)) == len(fake_compiles)


def test_search_when_nothing_fits_and_when_out_of_compiles(fake_compiles):
  found = memory_plan.largest_batch(None, lambda b: {"rows": b}, 100, start=64, step=4)
  assert (found.largest, found.exact) == (None, True)
  assert 4 in found.plans
  found = memory_plan.largest_batch(
    None, lambda b: {"rows": b}, 1510 + 100 * 1001, start=4, step=4, max_compiles=2
  )
  assert found.exact is False and found.largest is not None
  assert found.plans[found.largest].fits(1510 + 100 * 1001)
  known = {8: _fake_plan(8, 2310)}
  fake_compiles.clear()
  found = memory_plan.largest_batch(
    None, lambda b: {"rows": b}, 2400, start=8, step=4, max_compiles=4, known=known
  )
  assert found.largest == 8 and found.exact and 8 not in fake_compiles


def test_too_large_message_names_numbers_and_settings():
  plan = _fake_plan(128, 5_000)
  msg = memory_plan.too_large_message(plan, 4_000, "v4")
  for part in (
    "5000 bytes",
    "4000 bytes",
    "(v4)",
    "BATCH_SIZE (now 128)",
    "NUM_MICROBATCHES",
    "MESH_SHAPE = {'data': 4}",
  ):
    assert part in msg, part
  msg = memory_plan.too_large_message(plan, 1_200, "")
  assert "Parameters and optimizer state alone do not fit" in msg and "'fsdp'" in msg


def test_abstract_batch_layouts():
  class Model:
    feature_converter_name = "EncDecFeatureConverter"

  b = memory_plan.abstract_batch(Model(), {"inputs": 32, "targets": 8}, 4)
  assert b["encoder_input_tokens"].shape == (4, 32) and b["decoder_target_tokens"].shape == (4, 8)
  assert "encoder_segment_ids" in b and "decoder_denoiser_ids" in b
  Model.feature_converter_name = "PrefixLMFeatureConverter"
  b = memory_plan.abstract_batch(Model(), {"inputs": 32, "targets": 8}, 4, pack=False)
  assert b["decoder_causal_attention"].shape == (4, 40) and "decoder_segment_ids" not in b
  Model.feature_converter_name = "DecoderFeatureConverter"
  b = memory_plan.abstract_batch(Model(), {"inputs": 32, "targets": 8}, 4)
  assert b["decoder_input_tokens"].shape == (4, 8)


# ------------------------------------------------------------------ against a real CPU run


@pytest.fixture(scope="module")
def report():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-m", "tests._plan_runner"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-4000:]
  return json.loads(lines[-1][len("REPORT ") :])


def test_plan_matches_what_one_step_holds_and_peaks_at(report):
  r = report["one_device"]
  plan = r["plan"]
  # Arguments (state + batch) and outputs are what lives on the device after the step.
  held = plan["argument_bytes"] + plan["output_bytes"] - plan["alias_bytes"]
  assert r["live_bytes"] == pytest.approx(held, rel=0.01)
  # Within 0.5%: jit drops state leaves the step never reads (Adafactor's one-element
  # placeholders for the statistics a parameter does not use) from its arguments.
  assert plan["argument_bytes"] == pytest.approx(
    plan["params_bytes"] + plan["opt_state_bytes"] + plan["batch_bytes"], rel=0.005
  )
  # Temporaries: the process's peak RSS during the first step grows by about them.
  if not r["rss_reset"]:
    pytest.skip("no /proc/self/clear_refs to reset the peak RSS")
  assert plan["temp_bytes"] > 100 * 2**20
  assert 0.8 < r["step_peak_rss_extra"] / plan["temp_bytes"] < 1.35
  assert r["said"] and r["said"][0].startswith("Memory plan: ")


def test_plan_per_device_on_a_sharded_mesh(report):
  r = report["sharded"]
  plan = r["plan"]
  assert plan["mesh_shape"] == {"data": 2, "fsdp": 2, "model": 1} and plan["num_devices"] == 4
  # The state's shards on device 0 weigh what the plan says (fsdp halves the big params).
  assert r["real_state_bytes_device0"] == plan["params_bytes"] + plan["opt_state_bytes"]
  held = plan["argument_bytes"] + plan["output_bytes"] - plan["alias_bytes"]
  assert r["live_bytes_device0"] == pytest.approx(held, rel=0.02)


def test_command_prints_the_table_and_searches(report):
  r = report["cli_fits"]
  assert r["code"] == 0, r["stderr"]
  out = r["stdout"]
  assert "mesh      data=2 fsdp=2 model=1 (4 cpu devices)" in out
  assert "activations, temporaries" in out and ": fits, 100% used" in out
  assert "largest batch that fits: 8 (a lower bound" in out


def test_command_fails_clearly_when_the_plan_is_too_big(report):
  r = report["cli_too_big"]
  assert r["code"] == 1
  data = json.loads(r["stdout"])
  total = data["plan"]["total_bytes"]
  assert data["fits"] is False and data["memory_bytes"] == total - 1
  assert report["sharded"]["plan"]["total_bytes"] == total  # same step, same plan
  assert f"({total} bytes" in r["stderr"] and f"({total - 1} bytes)" in r["stderr"]
  assert "BATCH_SIZE (now 8)" in r["stderr"] and "MESH_SHAPE" in r["stderr"]


def test_command_reruns_itself_with_more_simulated_devices(report):
  r = report["cli_rerun"]
  assert r["code"] == 2  # the child rejects --device_memory=lots before compiling
  (call,) = r["calls"]
  assert call["args"][1:3] == ["-m", "t5x_ext.plan"] and "--num_devices=8" in call["args"]
  assert "--xla_force_host_platform_device_count=8" in call["xla_flags"]
