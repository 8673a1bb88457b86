"""T5X checkpoints restored onto 8 simulated devices (fsdp and model sharding), slice by slice.

Skipped in a normal run: jax must start with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`, so `test_t5x_ckpt.py` runs this file in
a subprocess. Alone:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest tests/test_t5x_ckpt_eight_devices.py
"""

import jax
import numpy as np
import pytest
from t5x_ckpt_util import (
  UL2_TINY,
  logits,
  random_params,
  tiny_config,
  write_fixture,
)

from t5x_ext.model import network
from t5x_ext.t5x_ckpt import t5x_format
from t5x_ext.training import checkpointing, partitioning

pytestmark = pytest.mark.skipif(jax.device_count() != 8, reason="needs 8 (simulated) devices")


def _target(config, mesh):
  import flax.linen as nn
  import jax.numpy as jnp

  tokens = jnp.ones((1, 4), jnp.int32)
  boxed = jax.eval_shape(
    lambda: network.EncoderDecoder(config).init(jax.random.key(0), tokens, tokens, tokens)
  )["params"]
  shardings = partitioning.logical_shardings(boxed, mesh)
  return partitioning.with_shardings(nn.unbox(boxed), shardings), shardings


@pytest.fixture(scope="module")
def params():
  return random_params(tiny_config(**UL2_TINY), seed=2)


@pytest.mark.parametrize(
  "naming,scan_layers,mesh_shape",
  [
    ("t5x", False, {"fsdp": 8}),
    ("flaxformer_scanned", True, {"data": 2, "fsdp": 2, "model": 2}),
  ],
  ids=["t5x-unscanned-fsdp8", "flaxformer_scanned-scanned-d2f2m2"],
)
def test_sharded_restore_reads_only_each_devices_slice(
  tmp_path, monkeypatch, params, naming, scan_layers, mesh_shape
):
  config = tiny_config(**UL2_TINY, relative_attention_max_distance=16, scan_layers=scan_layers)
  write_fixture(tmp_path, params, naming=naming, dtype="bfloat16")
  reads = []
  original = t5x_format.TensorRef.read

  def counting_read(self, index=()):
    out = original(self, index)
    reads.append((self.name, out.size, int(np.prod(self.shape))))
    return out

  monkeypatch.setattr(t5x_format.TensorRef, "read", counting_read)
  mesh = partitioning.make_mesh(mesh_shape)
  target, shardings = _target(config, mesh)
  restored = checkpointing.restore_params(tmp_path, target)
  jax.tree.map(lambda x, s: np.testing.assert_equal(x.sharding, s), restored, shardings)
  expected = jax.tree.map(lambda x: np.asarray(x.astype("bfloat16"), np.float32), params)
  if scan_layers:
    expected = jax.tree.map(np.asarray, network.stack_layer_params(expected))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), restored, expected)
  # The large matrices are sharded: no read of them covered the whole stored tensor.
  big = {n for n, _, size in reads if size >= 32 * 32}
  assert big
  for name in big:
    sizes = [(got, whole) for n, got, whole in reads if n == name]
    assert max(got for got, _ in sizes) < sizes[0][1], (name, sizes)
  if not scan_layers:  # one compile on 8 devices is enough to show the logits agree
    np.testing.assert_allclose(logits(config, restored), logits(config, expected), atol=1e-5)
