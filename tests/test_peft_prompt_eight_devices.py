"""Prompt tuning on 8 simulated devices (mesh data=2, fsdp=2, model=2): the same losses and
prompt as on one device, the base untouched, decoding with the sharded prompt.

Skipped in a normal run: jax must start with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`, so `test_peft_prompt.py` runs this file
in a subprocess. Alone:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest tests/test_peft_prompt_eight_devices.py
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from t5x_ext.model import models
from t5x_ext.peft.prompt_tuning import PromptConfig, PromptTrainer
from t5x_ext.training import partitioning
from tests.test_peft_lora import encdec_batch
from tests.tiny_network import tiny_config

pytestmark = pytest.mark.skipif(jax.device_count() != 8, reason="needs 8 (simulated) devices")

CONFIG = PromptConfig(length=4, sample_vocab_size=40)
MESH = {"data": 2, "fsdp": 2, "model": 2}


def _run(mesh_shape, params, devices=None, steps=3):
  model = models.EncoderDecoderModel(tiny_config())
  trainer = PromptTrainer(
    model, optax.adam(1e-1), partitioning.make_mesh(mesh_shape, devices), prompt=CONFIG
  )
  batch = encdec_batch(1, b=8)
  trainer.set_base(params, batch)
  state = trainer.init_state(jax.random.key(0), batch)
  losses = []
  for i in range(steps):
    state, metrics = trainer.train_step(state, trainer.shard_batch(encdec_batch(i + 1, b=8)))
    losses.append(float(metrics["loss"]))
  tokens = np.asarray(trainer.predict(state.params, encdec_batch(9, b=8), decode_len=3))
  return trainer, state, losses, tokens


def test_eight_devices_match_one():
  model = models.EncoderDecoderModel(tiny_config())
  params = jax.device_get(
    nn.unbox(model.init_variables(jax.random.key(0), encdec_batch(0, b=8))["params"])
  )
  trainer, state, losses, tokens = _run(MESH, params)
  _, one_state, one_losses, one_tokens = _run({"data": 1}, params, devices=jax.devices()[:1])
  np.testing.assert_allclose(losses, one_losses, rtol=1e-5)
  np.testing.assert_allclose(
    np.asarray(state.params["prompt"]), np.asarray(one_state.params["prompt"]), atol=1e-5
  )
  np.testing.assert_array_equal(tokens, one_tokens)
  assert losses[-1] < losses[0]
  # The prompt's width is sharded as the embedding table's (its logical axis is `embed`).
  table = trainer.frozen["token_embedder"]["embedding"]
  assert state.params["prompt"].sharding.spec[1] == table.sharding.spec[1]
  for x, y in zip(jax.tree.leaves(jax.device_get(trainer.frozen)), jax.tree.leaves(params)):
    np.testing.assert_array_equal(x, y)
