"""bench/scaling.py in-process on a shrunken tiny T5.1.1: the JSON's structure, and that the
chunked attention variant needs fewer compiled temporaries than the plain one at a length
where the [B, H, L, L] attention logits dominate (no timing is asserted)."""

import json

import pytest

from tests.bench_scripts import SHRINK, bench_module


@pytest.fixture(scope="module")
def scaling():
  with bench_module("scaling") as module:
    yield module


def test_rows_keep_tokens_per_batch_fixed(scaling):
  flags, bindings = scaling._flags(
    ["--models=tiny,small", "--lengths=512,4096", "--tokens_per_batch=2048", "--gin.X=1"]
  )
  specs = scaling.row_specs(flags, bindings)
  assert [(s["model"], s["inputs"], s["variant"]) for s in specs] == [
    (m, n, v) for m in ("tiny", "small") for n in (512, 4096) for v in ("plain", "chunked")
  ]
  for s in specs:
    # The batch shrinks as the length grows (never below one row); targets are L / 4.
    assert (s["batch"], s["targets"]) == ((4, 128) if s["inputs"] == 512 else (1, 1024))
    chunk = [b for b in s["bindings"] if "attention_chunk_size" in b]
    assert chunk == (
      ["network.TransformerConfig.attention_chunk_size=128"] if s["variant"] == "chunked" else []
    )
    assert s["bindings"][0] == "X=1"


def test_a_row_runs_and_plots(scaling, tmp_path):
  plot = tmp_path / "scaling.png"
  result = scaling.run(
    [
      "--models=tiny",
      "--lengths=32",
      "--tokens_per_batch=64",
      "--variants=plain",
      "--steps=1",
      "--warmup=0",
      "--no_isolate",
      f"--plot={plot}",
      *SHRINK,
    ]
  )
  json.dumps(result)  # JSON-ready
  assert result["machine"]["platform"] == "cpu"
  assert result["machine"]["peak_bf16_flops"] is None
  (r,) = result["rows"]
  assert "error" not in r, r
  assert (r["inputs"], r["targets"], r["batch"], r["tokens_per_step"]) == (32, 8, 2, 80)
  assert r["tokens_per_s"] > 0 and r["step_best_s"] > 0
  assert r["flops_per_s"] == pytest.approx(r["flops_per_step"] / r["step_best_s"])
  assert r["mfu"] is None  # CPU: no known peak
  assert r["compiled_total_bytes"] >= r["compiled_temp_bytes"] > 0
  assert r["attention_chunk_size"] == 0 and r["dtype"] == "float32" and r["num_params"] > 0
  assert r["measured_rss_growth_bytes"] is None  # not isolated: no per-row peak
  assert plot.stat().st_size > 1000


def test_chunked_variant_shrinks_compiled_temporaries_at_a_long_length(scaling):
  result = scaling.run(
    [
      "--models=tiny",
      "--lengths=1024",
      "--tokens_per_batch=1024",
      "--variants=plain,chunked",
      "--chunk_size=64",
      "--memory_only",
      "--no_isolate",
      *SHRINK,
    ]
  )
  plain, chunked = result["rows"]
  assert "tokens_per_s" not in plain  # --memory_only runs no step
  # Each row gets its own bindings (gin is cleared between rows run in one process).
  assert (plain["attention_chunk_size"], chunked["attention_chunk_size"]) == (0, 64)
  # Plain keeps one [1, 4, 1024, 1024] float32 map (16 MiB) per attention for the backward
  # pass; blocks of 64 queries keep none of it.
  saved = plain["compiled_temp_bytes"] - chunked["compiled_temp_bytes"]
  assert saved >= 16 * 2**20, (plain["compiled_temp_bytes"], chunked["compiled_temp_bytes"])


def test_unknown_variant_and_peak_table(scaling):
  with pytest.raises(ValueError, match="--variants"):
    scaling.run(["--variants=fast", "--no_isolate"])
  assert scaling.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert scaling.peak_flops("TPU v4") == 275e12
  assert scaling.peak_flops("TPU v5 lite") == 197e12
  assert scaling.peak_flops("cpu") is None
