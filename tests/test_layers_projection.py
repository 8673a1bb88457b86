"""`layers.Projection` computes its einsum as one 2-D matmul: same values, params and grads."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_ext import layers

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
