"""bench/decode.py: it runs against Transformers on a shrunken T5.1.1 tiny and prints the
documented JSON, and its read roofline counts the bytes a decoding step must read (no timing
is asserted)."""

import json
import subprocess
import sys
import types

import numpy as np
import pytest

from tests.bench_scripts import REPO, SHRINK, bench_module


@pytest.fixture(scope="module")
def decode_bench():
  with bench_module("decode") as module:
    yield module


def test_read_roofline_counts_decoder_weights_and_the_cross_attention_cache(
  decode_bench, monkeypatch
):
  cfg = types.SimpleNamespace(num_decoder_layers=2, num_heads=2, head_dim=4, dtype="float32")
  params = {
    "encoder": {"w": np.zeros((100, 100), np.float32)},  # read once per call, not per step
    "token_embedder": {"embedding": np.zeros((50, 8), np.float32)},
    "decoder": {"a": np.zeros((3, 4), np.float32), "b": {"c": np.zeros((5,), np.float32)}},
  }
  seconds = {"jax": {"best_s": 1.0}, "jax_encoder": {"best_s": 0.2}}
  monkeypatch.setattr(decode_bench._common, "read_bandwidth", lambda: 1e4)
  cross_cache = 2 * 2 * 2 * 5 * 2 * 4 * 4  # layers x (K, V) x batch x inputs x H x E x bytes
  # Logits tied to the embedding: every step reads the whole table.
  got = decode_bench.read_roofline(cfg, params, batch=2, inputs=5, seconds=seconds, steps=4)
  assert got["bytes_read_per_step"] == (12 + 5 + 400) * 4 + cross_cache
  assert got["jax_step_s"] == pytest.approx(0.2)  # (1.0 - 0.2) / 4
  assert got["jax_share_of_read_bandwidth"] == pytest.approx((1668 + 1280) / 0.2 / 1e4)
  # An output layer of its own: the table's looked-up rows are not counted.
  params["logits_dense"] = {"kernel": np.zeros((8, 10), np.float32)}
  got = decode_bench.read_roofline(cfg, params, batch=2, inputs=5, seconds=seconds, steps=4)
  assert got["bytes_read_per_step"] == (12 + 5 + 80) * 4 + cross_cache
  # Noise can make the encoder's fastest round slower than the whole call's: no step time.
  seconds["jax_encoder"]["best_s"] = 1.1
  got = decode_bench.read_roofline(cfg, params, batch=2, inputs=5, seconds=seconds, steps=4)
  assert got["jax_step_s"] is None and got["jax_share_of_read_bandwidth"] is None


def test_greedy_bench_runs_against_transformers():
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  cmd = [
    sys.executable,
    str(REPO / "bench" / "decode.py"),
    "--gin_file=gin/models/t5_1_1/tiny.gin",
    *SHRINK,
    "--gin.network.TransformerConfig.dtype='float32'",
    "--batch=2",
    "--inputs=8",
    "--decode_len=3",
    "--calls=1",
    "--rounds=1",
    "--compare_hf",
  ]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout)
  assert result["benchmark"] == "decode_greedy" and result["batch"] == 2
  for key in ("jax_tokens_per_s", "hf_tokens_per_s", "read_bandwidth_bytes_per_s"):
    assert result[key] > 0, key
  # One decoder layer of the shrunken tiny model, in float32: self-attention (4 D x H x E),
  # cross-attention (4 D x H x E), the gated MLP (2 D x F + F x D), three layer norms, the
  # final norm, relative-position buckets (H x 32) and the untied output layer (D x V);
  # plus the cross-attention cache: (K, V) x batch x inputs x H x E.
  d, h, e, f, v = 32, 4, 8, 32, 128
  weights = 8 * d * h * e + 3 * d * f + 4 * d + h * 32 + d * v
  assert result["bytes_read_per_step"] == 4 * (weights + 2 * 2 * 8 * h * e)
  assert result["cpu_isa"] and "speedup_tokens_per_s_vs_hf" in result and "jax_step_s" in result
