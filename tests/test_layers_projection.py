"""`layers.Projection` computes its einsum as one 2-D matmul: same values, params and grads."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_ext.model import layers

CASES = [
  ("bld,dhe->blhe", (2, 3, 8), (8, 4, 5), ("embed", "heads", "kv")),
  ("blhe,hed->bld", (2, 3, 4, 5), (4, 5, 8), ("heads", "kv", "embed")),
  ("bld,df->blf", (2, 3, 8), (8, 6), ("embed", "mlp")),
]


@pytest.mark.parametrize("equation,x_shape,k_shape,names", CASES)
def test_projection_matches_einsum_values_and_grads(equation, x_shape, k_shape, names):
  proj = layers.Projection(k_shape, names, equation, 0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  params = nn.unbox(proj.init(jax.random.PRNGKey(1), x))
  kernel = params["params"]["kernel"]
  assert kernel.shape == k_shape  # param layout unchanged by the matmul form

  def loss_proj(k, x):
    return jnp.sum(jnp.sin(proj.apply({"params": {"kernel": k}}, x)))

  def loss_einsum(k, x):
    return jnp.sum(jnp.sin(jnp.einsum(equation, x, k)))

  y = proj.apply(params, x)
  np.testing.assert_allclose(y, jnp.einsum(equation, x, kernel), rtol=1e-5, atol=1e-5)
  got = jax.grad(loss_proj, argnums=(0, 1))(kernel, x)
  want = jax.grad(loss_einsum, argnums=(0, 1))(kernel, x)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation", ["bld,vd->blv", "bld,dhe->bhle", "bld,dl->bll"])
def test_projection_rejects_equation_not_lead_contracted_tail(equation):
  with pytest.raises(ValueError, match="equation="):
    layers._contracted_axes(equation)


def test_projection_rejects_mismatched_contracted_axes():
  # Same element count (4*5 == 5*4) but different axes: a silent reshape would be wrong.
  proj = layers.Projection((5, 4, 8), ("heads", "kv", "embed"), "blhe,hed->bld", 0.5)
  with pytest.raises(ValueError, match="contracted axes"):
    proj.init(jax.random.PRNGKey(0), jnp.ones((2, 3, 4, 5)))


def test_cross_attention_cache_is_laid_out_for_the_step_and_attends_like_jax():
  b, q, k, h, e, d = 2, 1, 7, 3, 4, 8
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(b, q, d)), jnp.float32)
  kv = jnp.asarray(rng.normal(size=(b, k, d)), jnp.float32)
  mask = jnp.asarray(rng.random((b, 1, 1, k)) > 0.3).at[:, :, :, 0].set(True)
  full = layers.MultiHeadAttention(h, e, d, cross=True)
  params = full.init(jax.random.PRNGKey(0), x, kv, None, mask)
  want = full.apply(params, x, kv, None, mask)
  prefill = layers.MultiHeadAttention(h, e, d, cross=True, mode=layers.PREFILL)
  _, state = prefill.apply(params, x, kv, None, mask, mutable=["cache"])
  cache = state["cache"]
  assert cache["cached_key"].shape == (b, h, e, k)  # [B, H, E, K]: no per-step transpose
  assert cache["cached_value"].shape == (b, h, k, e)
  step = layers.MultiHeadAttention(h, e, d, cross=True, mode=layers.STEP)
  got = step.apply({**params, "cache": cache}, x, None, None, mask, index=jnp.int32(0))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Also against jax.nn.dot_product_attention directly, with a bias.
  qs = jnp.asarray(rng.normal(size=(b, q, h, e)), jnp.float32)
  ks = jnp.asarray(rng.normal(size=(b, k, h, e)), jnp.float32)
  vs = jnp.asarray(rng.normal(size=(b, k, h, e)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(1, h, q, k)), jnp.float32)
  ref = jax.nn.dot_product_attention(qs, ks, vs, bias, mask, scale=1.0)
  out = layers._attend_cached(
    qs, ks.transpose(0, 2, 3, 1), vs.transpose(0, 2, 1, 3), bias, mask, jnp.float32
  )
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
