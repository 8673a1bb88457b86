"""Child of tests/test_attention_implementation.py: the TPU kernel's `shard_map` on a mesh.

Runs on 4 simulated CPU devices (a 'data' x 'model' mesh of 2 x 2). Pallas's TPU interpret
mode does not finish under a multi-device `shard_map` on CPU, so the kernel is replaced by
a pure-JAX reference with its signature; what is tested is the wrapping: per-device shapes (a
batch-sized `ab` of the local rows and heads), the specs, and that the network's loss and
gradients (the relative bias's, summed over the batch shards) equal XLA's. Prints "OK".
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash  # noqa: E402

from t5x_ext.model import models  # noqa: E402
from t5x_ext.training import partitioning  # noqa: E402
from tests import tiny_network  # noqa: E402
from tests.test_attention_implementation import TOL, _batch  # noqa: E402

SEEN = []


def reference_kernel(q, k, v, ab=None, segment_ids=None, *, causal=False, sm_scale=1.0, **_):
  """`flash_attention`'s maths on [B, H, L, E], checking the shapes it is called with."""
  b, h, lq, _ = q.shape
  lk = k.shape[2]
  SEEN.append((b, h))
  logits = jnp.einsum("bhqe,bhke->bhqk", q, k, preferred_element_type=jnp.float32) * sm_scale
  if ab is not None:
    assert ab.shape == (b, h, lq, lk), (ab.shape, q.shape)
    logits = logits + ab.astype(jnp.float32)
  mask = jnp.ones((b, 1, lq, lk), bool)
  if segment_ids is not None:
    assert segment_ids.q.shape == (b, lq) and segment_ids.kv.shape == (b, lk)
    mask = mask & (segment_ids.q[:, None, :, None] == segment_ids.kv[:, None, None, :])
  if causal:
    mask = mask & jnp.tril(jnp.ones((lq, lk), bool))[None, None]
  logits = jnp.where(mask, logits, tpu_flash.DEFAULT_MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bhke->bhqe", probs, v)


def run(impl, batch, mesh, cfg):
  model = models.EncoderDecoderModel(cfg.replace(attention_implementation=impl))
  shapes = nn.unbox(jax.eval_shape(model.init_variables, jax.random.key(0), batch)["params"])
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), s.dtype), shapes)
  global_batch = partitioning.make_global_batch(batch, mesh)
  SEEN.clear()  # the init traced above ran without a mesh

  @jax.jit
  def loss_and_grads(params, batch):
    (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, None)
    return loss, grads

  with partitioning.axis_rules(mesh):
    return jax.device_get(loss_and_grads(params, global_batch))


def main():
  tpu_flash.flash_attention = reference_kernel
  from jax.experimental.pallas import tpu as pltpu

  batch = {k: np.concatenate([v, v[::-1]]) for k, v in _batch().items()}  # 4 rows
  cfg = tiny_network.tiny_config(num_decoder_layers=1)
  mesh = partitioning.make_mesh({"data": 2, "model": 2})
  ref = run("xla", batch, mesh, cfg)
  with pltpu.force_tpu_interpret_mode():  # lets 'pallas_tpu' be chosen off a TPU
    got = run("pallas_tpu", batch, mesh, cfg)
  # 4 rows over data=2 and 4 heads over model=2: every call saw its device's 2 rows, 2 heads.
  assert SEEN and set(SEEN) == {(2, 2)}, SEEN
  np.testing.assert_allclose(got[0], ref[0], **TOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), got[1], ref[1])
  print("OK")


if __name__ == "__main__":
  main()
