"""bench/cpu_kernels.py in-process at tiny shapes: every T5 weight shape is measured with both
dot libraries, as a chain of as many distinct matrices as the byte budget holds (no timing
is asserted)."""

import pytest

from tests.bench_scripts import bench_module


@pytest.fixture(scope="module")
def kernels():
  with bench_module("cpu_kernels") as module:
    yield module


def test_every_shape_with_both_dot_libraries(kernels, monkeypatch):
  monkeypatch.setattr(kernels._common, "read_bandwidth", lambda: 2.0e10)
  monkeypatch.setattr(kernels._common, "matmul_peak_flops", lambda: 1.0e11)
  argv = ["--emb=64", "--mlp=96", "--heads_x_dim=48", "--vocab=500", "--tokens=32"]
  result = kernels.run([*argv, "--chain_bytes=100000", "--repeats=1"])
  shapes = {
    "attention_qkv": [64, 48],
    "attention_out": [48, 64],
    "mlp_in": [64, 96],
    "mlp_out": [96, 64],
    "output_layer": [64, 500],
  }
  assert {k: v["shape"] for k, v in result["gemv"].items()} == shapes
  # 100,000 bytes hold 8 float32 [64, 48] matrices; the output layer, larger, runs once.
  assert result["gemv"]["attention_qkv"]["matrices"] == 8
  assert result["gemv"]["output_layer"]["matrices"] == 1
  for name, (d_in, d_out) in shapes.items():
    assert result["matmul"][name]["shape"] == [32, d_in, d_out]
    for variant in kernels.VARIANTS:
      assert result["gemv"][name][f"{variant}_bytes_per_s"] > 0
      assert result["matmul"][name][f"{variant}_forward_flops"] > 0
      assert result["matmul"][name][f"{variant}_weight_grad_flops"] > 0
  assert result["read_bandwidth_bytes_per_s"] == 2.0e10 and result["cpu_isa"]
