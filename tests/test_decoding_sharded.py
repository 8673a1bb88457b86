"""Decoding with parameters and batch sharded over a ('data', 'fsdp', 'model') mesh of 8
simulated CPU devices gives the same tokens as on one device.

The device count must be set before JAX starts, so the test reruns this file in a
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import os
import subprocess
import sys

import pytest


def test_sharded_decoding_matches_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600
  )
  if proc.returncode != 0:
    pytest.fail(f"subprocess failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
  assert proc.stdout.strip().endswith("OK 4"), proc.stdout


def _main():
  import jax
  import numpy as np

  from t5x_ext.model import models
  from t5x_ext.training import partitioning
  from tests.tiny_network import tiny_config

  assert jax.device_count() == 8, jax.devices()
  mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "model": 2})
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 64, (4, 7)).astype(np.int32)
  causal = np.zeros((4, 9), np.int32)
  for i, n in enumerate([2, 4, 1, 3]):
    causal[i, : n + 1] = 1
  prompts = rng.randint(2, 64, (4, 9)).astype(np.int32) * causal
  cases = [
    (
      models.EncoderDecoderModel,
      tiny_config(num_encoder_layers=1),
      dict(
        encoder_input_tokens=enc,
        decoder_input_tokens=np.zeros((4, 5), np.int32),
        decoder_target_tokens=np.ones((4, 5), np.int32),
      ),
    ),
    (
      models.DecoderOnlyModel,
      tiny_config(decoder_only=True, num_encoder_layers=0, scan_layers=True),
      dict(
        decoder_input_tokens=prompts,
        decoder_target_tokens=prompts,
        decoder_causal_attention=causal,
      ),
    ),
  ]
  checked = 0
  for model_cls, cfg, batch in cases:
    sharded_model, local_model = model_cls(cfg), model_cls(cfg)
    params, _ = partitioning.sharded_init(
      lambda r, b, m=sharded_model: m.init_variables(r, b)["params"],
      jax.random.PRNGKey(0),
      batch,
      mesh=mesh,
    )
    # At least one parameter really is split over the 'model' axis.
    assert any("model" in str(x.sharding.spec) for x in jax.tree.leaves(params)), (
      "nothing sharded over 'model'"
    )
    local_params = jax.device_put(jax.device_get(params), jax.devices()[0])
    global_batch = partitioning.make_global_batch(batch, mesh)
    for kw in ({"method": "greedy"}, {"method": "beam", "beam_size": 3}):
      expected = np.asarray(local_model.predict_batch(local_params, batch, decode_len=5, **kw))
      with partitioning.axis_rules(mesh):
        got = sharded_model.predict_batch(params, global_batch, decode_len=5, **kw)
      np.testing.assert_array_equal(np.asarray(jax.device_get(got)), expected)
      checked += 1
  print("OK", checked)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  _main()
