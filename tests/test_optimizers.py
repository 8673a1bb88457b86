"""Adafactor against a numpy reference of T5's update, AdamW, clipping, gradient accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5x_ext.training import optimizers


def _rms(x):
  return np.sqrt(np.mean(np.square(x)))


def _t5_adafactor_reference(
  params, grads_per_step, lrs, *, min_dim=128, d=1.0, eps1=1e-30, eps2=1e-3
):
  """T5's Adafactor (Shazeer & Stern 2018, Alg. 4/5 with T5's choices), written in numpy.

  decay 1 - t^-0.8 (t from 1), factored second moments for matrices whose two dims are at
  least `min_dim`, update clipping at d, relative step max(eps2, RMS(param)), no momentum.
  """
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  stats = {}
  for t, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
    beta2 = 1.0 - t**-0.8
    for name, p in params.items():
      g = np.asarray(grads[name], np.float64)
      g2 = g * g + eps1
      if p.ndim == 2 and min(p.shape) >= min_dim:
        r, c = stats.get(name, (np.zeros(p.shape[0]), np.zeros(p.shape[1])))
        r = beta2 * r + (1 - beta2) * g2.mean(axis=1)
        c = beta2 * c + (1 - beta2) * g2.mean(axis=0)
        stats[name] = (r, c)
        v = np.outer(r, c) / r.mean()
      else:
        v = beta2 * stats.get(name, np.zeros_like(p)) + (1 - beta2) * g2
        stats[name] = v
      u = g / np.sqrt(v)
      u = u / max(1.0, _rms(u) / d)
      params[name] = p - lr * max(eps2, _rms(p)) * u
  return params


def test_adafactor_matches_a_numpy_reference_of_t5s_update():
  rng = np.random.default_rng(0)
  params = {
    "matrix": rng.normal(size=(6, 10)).astype(np.float32),  # factored (min_dim 4)
    "vector": rng.normal(size=(10,)).astype(np.float32) * 1e-5,  # RMS < eps2: floor applies
    "thin": rng.normal(size=(3, 10)).astype(np.float32),  # a dim < 4: not factored
  }
  grads = [
    {k: rng.normal(size=v.shape).astype(np.float32) * s for k, v in params.items()}
    for s in (1.0, 0.1, 10.0, 1.0)
  ]
  # Make one step's update spiky so that update clipping (RMS > 1) is exercised.
  grads[2]["matrix"][0, 0] = 1e4
  lrs = [0.01, 0.01, 0.005, 0.001]
  schedule = lambda step: jnp.asarray(lrs)[step]  # noqa: E731
  tx = optimizers.adafactor(schedule, min_dim_size_to_factor=4)
  state = tx.init(params)
  p = {k: jnp.asarray(v) for k, v in params.items()}
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
  expected = _t5_adafactor_reference(params, grads, lrs, min_dim=4)
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), expected[k], rtol=2e-5, atol=1e-7, err_msg=k)


def test_adafactor_keeps_factored_statistics_and_no_momentum():
  params = {"kernel": jnp.zeros((256, 512)), "scale": jnp.ones((512,))}
  state = optimizers.adafactor(0.01).init(params)
  factored = state[0]
  assert factored.v_row["kernel"].shape == (256,)
  assert factored.v_col["kernel"].shape == (512,)
  assert factored.v["kernel"].size == 1  # placeholder: no full second moment for matrices
  assert factored.v["scale"].shape == (512,)
  # No first moment anywhere: the state is O(rows + cols) per matrix.
  total = sum(x.size for x in jax.tree.leaves(state))
  assert total < 256 + 512 + 512 + 16


def test_adafactor_update_is_relative_to_the_parameter_scale_and_clipped():
  big = {"w": jnp.full((4, 4), 100.0)}
  small = {"w": jnp.full((4, 4), 1.0)}
  g = {"w": jnp.asarray(np.random.default_rng(1).normal(size=(4, 4)), jnp.float32)}
  tx = optimizers.adafactor(0.1)
  u_big, _ = tx.update(g, tx.init(big), big)
  u_small, _ = tx.update(g, tx.init(small), small)
  np.testing.assert_allclose(u_big["w"], 100 * u_small["w"], rtol=1e-5)
  # First step: v = g^2, so |u| = 1 everywhere, RMS 1: exactly the clipping threshold.
  np.testing.assert_allclose(np.abs(u_small["w"]), 0.1, rtol=1e-5)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(decay_rate=0.0), "decay_rate = 0.0"),
    (dict(clipping_threshold=-1.0), "clipping_threshold = -1.0"),
  ],
)
def test_adafactor_rejects_bad_settings(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optimizers.adafactor(0.01, **kwargs)


def test_make_optimizer_rejects_unknown_names_and_bad_clip():
  with pytest.raises(ValueError, match="optimizer name = 'sgd'"):
    optimizers.make_optimizer("sgd")
  with pytest.raises(ValueError, match="grad_clip = 0"):
    optimizers.make_optimizer("adamw", learning_rate=1e-3, grad_clip=0)


def test_grad_clip_rescales_gradients_to_the_global_norm_before_the_optimizer():
  params = {"a": jnp.ones((3, 3)), "b": jnp.ones((3,))}
  rng = np.random.default_rng(2)
  g1 = {k: jnp.asarray(rng.normal(size=v.shape) * 50, jnp.float32) for k, v in params.items()}
  g2 = {k: jnp.asarray(rng.normal(size=v.shape) * 0.1, jnp.float32) for k, v in params.items()}
  clipped = optimizers.make_optimizer("adamw", learning_rate=1e-2, grad_clip=1.0)
  plain = optimizers.make_optimizer("adamw", learning_rate=1e-2)
  s_c, s_p = clipped.init(params), plain.init(params)
  for g in (g1, g2):
    norm = float(optax.global_norm(g))
    g_clipped = jax.tree.map(lambda x: x * min(1.0, 1.0 / norm), g)  # noqa: B023
    u_c, s_c = clipped.update(g, s_c, params)
    u_p, s_p = plain.update(g_clipped, s_p, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), u_c, u_p)
  # ... and clipping changed something: unclipped AdamW gives another second update.
  s_n = plain.init(params)
  _, s_n = plain.update(g1, s_n, params)
  u_n, _ = plain.update(g2, s_n, params)
  assert not np.allclose(u_n["a"], u_c["a"], rtol=1e-3)


def test_adamw_decays_matrices_but_not_norm_scales():
  params = {"kernel": jnp.ones((4, 4)), "scale": jnp.ones((4,))}
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx = optimizers.make_optimizer("adamw", learning_rate=0.1, weight_decay=0.5)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.05)
  np.testing.assert_allclose(updates["scale"], 0.0)


def test_learning_rate_at_handles_floats_and_schedules():
  assert float(optimizers.learning_rate_at(0.5, 10)) == 0.5
  assert float(optimizers.learning_rate_at(lambda s: s * 2.0, 3)) == 6.0


# ------------------------------------------------------------------ gradient accumulation


def _toy_problem(batch_size=12, length=7, seed=0):
  rng = np.random.default_rng(seed)
  batch = {
    "x": rng.normal(size=(batch_size, length, 5)).astype(np.float32),
    # Very uneven target counts per row: a plain mean of microbatch losses would be wrong.
    "w": (rng.random((batch_size, length)) < rng.random((batch_size, 1))).astype(np.float32),
  }
  params = {"k": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), "b": jnp.zeros((3,))}

  def loss_fn(p, b, dropout_rng):
    del dropout_rng
    h = jnp.tanh(b["x"] @ p["k"] + p["b"])
    token_loss = jnp.sum(h**2, -1) * b["w"]
    n = jnp.sum(b["w"])
    aux = {
      "loss_sum": jnp.sum(token_loss),
      "num_tokens": n,
      "correct": jnp.sum((h[..., 0] > 0) * b["w"]),
      "token_loss": token_loss,
    }
    return jnp.sum(token_loss) / jnp.maximum(n, 1.0), aux

  return loss_fn, params, batch


@pytest.mark.parametrize("num_microbatches", [2, 3, 4, 12])
def test_accumulated_gradients_equal_the_full_batch(num_microbatches):
  loss_fn, params, batch = _toy_problem()
  rng = jax.random.key(0)
  l1, a1, g1 = optimizers.accumulate_gradients(loss_fn, params, batch, None, rng)
  lm, am, gm = jax.jit(
    lambda p, b: optimizers.accumulate_gradients(loss_fn, p, b, num_microbatches, rng)
  )(params, batch)
  np.testing.assert_allclose(lm, l1, rtol=1e-6)
  for k in params:
    np.testing.assert_allclose(gm[k], g1[k], rtol=1e-6, atol=1e-7)
  for k in ("loss_sum", "num_tokens", "correct"):
    np.testing.assert_allclose(am[k], a1[k], rtol=1e-6)
  # Per-example aux comes back in the original batch order.
  np.testing.assert_allclose(am["token_loss"], a1["token_loss"], rtol=1e-6)


def test_plain_averaging_of_microbatch_losses_would_differ():
  # Guards the test above: with these uneven token counts the naive mean is measurably off.
  loss_fn, params, batch = _toy_problem()
  rng = jax.random.key(0)
  l1, _, _ = optimizers.accumulate_gradients(loss_fn, params, batch, 1, rng)
  lmean, _, _ = optimizers.accumulate_gradients(loss_fn, params, batch, 4, rng, weighting="mean")
  assert abs(float(lmean) - float(l1)) > 1e-3


def test_sum_weighting_adds_microbatch_losses():
  rng = np.random.default_rng(3)
  batch = {"x": rng.normal(size=(8, 4)).astype(np.float32)}
  params = {"w": jnp.ones((4,))}

  def loss_fn(p, b, _):
    return jnp.sum((b["x"] @ p["w"]) ** 2) / 100.0, {}

  l1, _, g1 = optimizers.accumulate_gradients(loss_fn, params, batch, 1, jax.random.key(0))
  l4, _, g4 = optimizers.accumulate_gradients(
    loss_fn, params, batch, 4, jax.random.key(0), weighting="sum"
  )
  np.testing.assert_allclose(l4, l1, rtol=1e-6)
  np.testing.assert_allclose(g4["w"], g1["w"], rtol=1e-6)


def test_each_microbatch_gets_its_own_dropout_rng():
  batch = {"x": np.ones((4, 2), np.float32)}
  params = {"w": jnp.ones(())}

  def loss_fn(p, b, dropout_rng):
    noise = jax.random.uniform(dropout_rng, ())
    return p["w"] * noise, {"noise": noise}

  _, aux, _ = optimizers.accumulate_gradients(
    loss_fn, params, batch, 2, jax.random.key(0), weighting="sum"
  )
  expected = sum(
    float(jax.random.uniform(jax.random.fold_in(jax.random.key(0), m))) for m in (0, 1)
  )
  np.testing.assert_allclose(aux["noise"], expected, rtol=1e-6)


def test_accumulation_rejects_a_batch_that_does_not_split():
  loss_fn, params, batch = _toy_problem(batch_size=10)
  with pytest.raises(ValueError, match="num_microbatches = 4 does not divide the batch size 10"):
    optimizers.accumulate_gradients(loss_fn, params, batch, 4, jax.random.key(0))
  with pytest.raises(ValueError, match="weighting = 'tokens'"):
    optimizers.accumulate_gradients(
      loss_fn, params, batch, 2, jax.random.key(0), weighting="tokens"
    )


def test_accumulation_weighting_follows_the_models_loss_normalisation():
  assert optimizers.accumulation_weighting(None) == "num_tokens"
  assert optimizers.accumulation_weighting("NUM_REAL_TARGET_TOKENS") == "num_tokens"
  assert optimizers.accumulation_weighting("NUM_TOTAL_TARGET_TOKENS") == "mean"
  assert optimizers.accumulation_weighting(4096.0) == "sum"
  with pytest.raises(ValueError, match="loss_normalizing_factor = 'tokens'"):
    optimizers.accumulation_weighting("tokens")


def test_accumulation_equals_the_full_batch_for_the_real_encoder_decoder():
  models = pytest.importorskip("t5x_ext.model.models")
  from t5x_ext.model import network

  cfg = network.TransformerConfig(
    vocab_size=128,
    emb_dim=32,
    num_heads=2,
    head_dim=16,
    mlp_dim=64,
    num_encoder_layers=1,
    num_decoder_layers=1,
    dtype="float32",
  )
  model = models.EncoderDecoderModel(cfg, z_loss=1e-4)
  rng = np.random.default_rng(0)
  b, li, lt = 8, 12, 10
  lengths = rng.integers(1, lt + 1, size=b)  # very different target counts per row
  targets = rng.integers(2, 128, size=(b, lt)).astype(np.int32) * (np.arange(lt) < lengths[:, None])
  batch = {
    "encoder_input_tokens": rng.integers(2, 128, size=(b, li)).astype(np.int32),
    "decoder_target_tokens": targets,
    "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
    "decoder_loss_weights": (targets > 0).astype(np.float32),
  }
  # Random params of the right shapes: tracing the init is enough (no extra compile).
  shapes = nn_unbox(jax.eval_shape(model.init_variables, jax.random.key(0), batch)["params"])
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  params = jax.tree.unflatten(
    treedef, [0.1 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  )
  rng_key = jax.random.key(1)

  @jax.jit  # both variants in one compile
  def run(p):
    full = optimizers.accumulate_gradients(model.loss_fn, p, batch, 1, rng_key)
    micro = optimizers.accumulate_gradients(model.loss_fn, p, batch, 4, rng_key)
    return full, micro

  (l1, a1, g1), (l4, a4, g4) = run(params)
  np.testing.assert_allclose(l4, l1, rtol=1e-6)
  np.testing.assert_allclose(a4["num_tokens"], lengths.sum())
  np.testing.assert_allclose(a4["token_loss"], a1["token_loss"], rtol=1e-5, atol=1e-6)
  diffs = jax.tree.leaves(jax.tree.map(lambda a, c: float(jnp.max(jnp.abs(a - c))), g1, g4))
  scale = max(jax.tree.leaves(jax.tree.map(lambda a: float(jnp.max(jnp.abs(a))), g1)))
  assert max(diffs) <= 1e-6 * max(scale, 1.0), (max(diffs), scale)


def nn_unbox(tree):
  import flax.linen as nn

  return nn.unbox(tree)


def test_accumulation_without_an_rng_is_deterministic():
  loss_fn, params, batch = _toy_problem()
  l1, _, g1 = optimizers.accumulate_gradients(loss_fn, params, batch, 1, None)
  l3, _, g3 = optimizers.accumulate_gradients(loss_fn, params, batch, 3, None)
  np.testing.assert_allclose(l3, l1, rtol=1e-6)
  np.testing.assert_allclose(g3["k"], g1["k"], rtol=1e-6, atol=1e-7)


def _path(*names):
  return tuple(jax.tree_util.DictKey(n) for n in names)


@pytest.mark.parametrize(
  "names, shape, expected",
  [
    (("encoder", "layers_0", "attention", "query", "kernel"), (512, 8, 64), (512, 512)),
    (("encoder", "layers_0", "attention", "out", "kernel"), (8, 64, 512), (512, 512)),
    (("decoder", "layers", "self_attention", "key", "kernel"), (4, 512, 8, 64), (4, 512, 512)),
    (("decoder", "layers", "self_attention", "out", "kernel"), (4, 8, 64, 512), (4, 512, 512)),
    (("decoder", "layers", "mlp", "wi_0", "kernel"), (4, 512, 1024), (4, 512, 1024)),
    (("token_embedder", "embedding"), (32128, 512), (32128, 512)),
    (("encoder", "layers_0", "pre_attention_layer_norm", "scale"), (512,), (512,)),
  ],
)
def test_adafactor_factors_every_kernel_as_one_matrix_like_t5x(names, shape, expected):
  assert optimizers.factoring_shape(_path(*names), shape) == expected


def test_adafactor_factors_attention_kernels_whose_head_dim_is_small():
  # T5.1.1 XL/XXL have head_dim 64 < min_dim_size_to_factor: per-head axes would not factor,
  # and the second moment would be a full copy of the kernel.
  params = {
    "query": {"kernel": jnp.zeros((256, 4, 64))},
    "out": {"kernel": jnp.zeros((4, 64, 256))},
  }
  state = optimizers.adafactor(0.01).init(params)[0]
  for name in ("query", "out"):
    assert state.v[name]["kernel"].size == 1
    assert state.v_row[name]["kernel"].size + state.v_col[name]["kernel"].size == 512


def test_adafactor_update_of_a_kernel_is_optax_on_its_matrix_view():
  rng = np.random.default_rng(0)
  params = {"out": {"kernel": jnp.asarray(rng.normal(size=(4, 64, 256)), jnp.float32)}}
  grads = [
    {"out": {"kernel": jnp.asarray(rng.normal(size=(4, 64, 256)), jnp.float32)}} for _ in range(3)
  ]
  ours = optimizers.adafactor(0.05)
  ref = optax.adafactor(0.05, min_dim_size_to_factor=128, decay_rate=0.8, clipping_threshold=1.0)
  flat = lambda t: {"out": {"kernel": t["out"]["kernel"].reshape(256, 256)}}  # noqa: E731
  s_ours, s_ref, p_ours, p_ref = ours.init(params), ref.init(flat(params)), params, flat(params)
  for g in grads:
    u_ours, s_ours = ours.update(g, s_ours, p_ours)
    u_ref, s_ref = ref.update(flat(g), s_ref, p_ref)
    assert u_ours["out"]["kernel"].shape == (4, 64, 256)
    np.testing.assert_allclose(
      u_ours["out"]["kernel"].reshape(256, 256), u_ref["out"]["kernel"], rtol=1e-6, atol=1e-9
    )
    p_ours, p_ref = optax.apply_updates(p_ours, u_ours), optax.apply_updates(p_ref, u_ref)


def test_factored_statistics_of_a_kernel_view_are_sharded_like_its_axes():
  from jax.sharding import PartitionSpec as P

  from t5x_ext.training import partitioning

  derived = partitioning._derived_spec
  # query kernel [embed, heads, head_dim] sharded (data, model, -), factored as
  # [embed, heads * head_dim]; v_row averages over the larger axis, v_col over the other.
  spec = P("data", "model", None)
  assert derived((256,), (512, 4, 64), spec, "v_row") == P("model")
  assert derived((512,), (512, 4, 64), spec, "v_col") == P("data")
  # square view (d_model = heads * head_dim): the field decides, as in optax (the last of two
  # equal axes counts as the larger one)
  assert derived((512,), (512, 8, 64), spec, "v_row") == P("data")
  assert derived((512,), (512, 8, 64), spec, "v_col") == P("model")
  # scanned out kernel [layers, heads, head_dim, embed]
  spec = P(None, "model", None, "data")
  assert derived((3, 256), (3, 4, 64, 512), spec, "v_row") == P(None, "model")
  assert derived((3, 512), (3, 4, 64, 512), spec, "v_col") == P(None, "data")
  # both merged axes sharded: the merged axis keeps both, major first
  assert derived((2048,), (8, 256, 512), P("a", "b", None), "v_col") == P(("a", "b"))
  # unfactored second moment of a view, and Adam's moments: the view's / the param's spec
  assert derived((512, 512), (512, 8, 64), P("data", "model", None)) == P("data", "model")
  assert derived((512, 8, 64), (512, 8, 64), P("data", "model")) == P("data", "model", None)
