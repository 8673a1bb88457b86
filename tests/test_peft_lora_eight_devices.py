"""LoRA on 8 simulated devices (mesh data=2, fsdp=2, model=2): adapters sharded like their
base kernels, the same losses as on one device, the base untouched, checkpoints restored.

Skipped in a normal run: jax must start with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`, so `test_peft_lora.py` runs this file
in a subprocess. Alone:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest tests/test_peft_lora_eight_devices.py
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from t5x_ext.model import models
from t5x_ext.peft import lora
from t5x_ext.peft.trainer import LoraTrainer
from t5x_ext.training import checkpointing, partitioning
from tests.test_peft_lora import ALL_TARGETS, encdec_batch
from tests.tiny_network import tiny_config

pytestmark = pytest.mark.skipif(jax.device_count() != 8, reason="needs 8 (simulated) devices")

CONFIG = lora.LoraConfig(rank=4, alpha=8.0, targets=ALL_TARGETS)
MESH = {"data": 2, "fsdp": 2, "model": 2}


def _run(mesh_shape, params, steps=3, scan_layers=False, devices=None):
  model = models.EncoderDecoderModel(tiny_config(scan_layers=scan_layers))
  mesh = partitioning.make_mesh(mesh_shape, devices)
  trainer = LoraTrainer(model, optax.adam(1e-2), mesh, lora=CONFIG)
  batch = encdec_batch(1, b=8)
  trainer.set_base(params, batch)
  state = trainer.init_state(jax.random.key(0), batch)
  losses = []
  for i in range(steps):
    state, m = trainer.train_step(state, trainer.shard_batch(encdec_batch(i + 1, b=8)))
    losses.append(float(m["loss"]))
  return trainer, state, losses


def _spec(sharding, ndim):
  return tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_adapters_shard_like_their_kernels_and_train_as_on_one_device(scan_layers, tmp_path):
  model = models.EncoderDecoderModel(tiny_config(scan_layers=scan_layers))
  params = jax.device_get(
    nn.unbox(model.init_variables(jax.random.key(0), encdec_batch(0, b=8))["params"])
  )
  trainer, state, losses = _run(MESH, params, scan_layers=scan_layers)
  sharded_any = False
  for path in lora.adapter_paths(state.params):
    split = lora.target_kernels(
      jax.eval_shape(model.init_variables, jax.random.key(0), encdec_batch(0, b=8))["params"],
      CONFIG,
    )[path]
    kernel = lora._get(trainer.frozen, path)["kernel"]
    k_spec = _spec(kernel.sharding, kernel.ndim)
    pair = lora._get(state.params, path)
    a, b = pair["lora_a"], pair["lora_b"]
    n = split.lead + split.num_in
    assert _spec(a.sharding, a.ndim) == k_spec[:n] + (None,), path
    assert _spec(b.sharding, b.ndim) == k_spec[: split.lead] + (None,) + k_spec[n:], path
    sharded_any |= any(s is not None for s in _spec(a.sharding, a.ndim) + _spec(b.sharding, b.ndim))
  assert sharded_any
  # Same losses as one device; the base is unchanged.
  _, _, single = _run({"data": 1}, params, scan_layers=scan_layers, devices=jax.devices()[:1])
  np.testing.assert_allclose(losses, single, rtol=2e-5)
  for x, y in zip(jax.tree.leaves(jax.device_get(trainer.frozen)), jax.tree.leaves(params)):
    np.testing.assert_array_equal(x, y)
  # The adapter state checkpoints and restores into its shardings.
  ckpt = checkpointing.Checkpointer(tmp_path, async_save=False, handle_sigterm=False)
  tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
  ckpt.save(3, tree)
  ckpt.wait()
  abstract = trainer.abstract_state(encdec_batch(0, b=8))
  target = {"step": abstract.step, "params": abstract.params, "opt_state": abstract.opt_state}
  restored, _, step = ckpt.restore_latest(target)
  ckpt.close()
  assert step == 3
  for x, y in zip(jax.tree.leaves(restored["params"]), jax.tree.leaves(state.params)):
    assert x.sharding.is_equivalent_to(y.sharding, x.ndim)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_finetune_resumes_exactly_on_eight_devices(tmp_path):
  import orbax.checkpoint as ocp

  from t5x_ext.peft import finetune
  from tests.test_peft_lora import Batches

  model = models.EncoderDecoderModel(tiny_config())
  params = jax.device_get(
    nn.unbox(model.init_variables(jax.random.key(0), encdec_batch(0, b=8))["params"])
  )
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "base" / "params", {"params": params})
  checkpointer.wait_until_finished()
  checkpointer.close()

  def run(model_dir, steps, losses):
    return finetune.finetune_lora(
      model=model,
      base_checkpoint=tmp_path / "base",
      model_dir=model_dir,
      train_steps=steps,
      batches=Batches(lambda i: encdec_batch(i, b=8)),
      lora_config=CONFIG,
      batch_size=8,
      mesh_shape=MESH,
      optimizer=optax.adam(1e-2),
      checkpoint_every=1,
      log_every=1,
      on_log=lambda step, scalars: losses.__setitem__(step, scalars["loss"]),
    )

  straight: dict[int, float] = {}
  done = run(tmp_path / "straight", 3, straight)
  resumed: dict[int, float] = {}
  run(tmp_path / "resumed", 1, resumed)
  again = run(tmp_path / "resumed", 3, resumed)
  assert again.start_step == 1
  assert resumed == straight
  for x, y in zip(jax.tree.leaves(again.state.params), jax.tree.leaves(done.state.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
