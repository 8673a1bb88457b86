"""Decoding cache layouts: self-attention cache in the step's layout, beams sharing the
cross-attention cache of their example."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_ext.model import layers, models, network
from tests.tiny_network import tiny_config


def test_self_attention_cache_is_laid_out_for_the_step_and_attends_like_full():
  b, t, c, h, e, d = 2, 5, 8, 3, 4, 16
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(1, h, t, t)), jnp.float32)
  causal = jnp.tril(jnp.ones((t, t), jnp.bool_))[None, None]
  full = layers.MultiHeadAttention(h, e, d)
  params = nn.unbox(full.init(jax.random.PRNGKey(0), x, None, bias, causal))
  want = full.apply(params, x, None, bias, causal)
  # Prefill the first two positions, then step through the others one at a time.
  p = 2
  prefill = layers.MultiHeadAttention(h, e, d, mode=layers.PREFILL, cache_length=c)
  out, state = prefill.apply(
    params, x[:, :p], None, bias[:, :, :p, :p], causal[..., :p, :p], mutable=["cache"]
  )
  np.testing.assert_allclose(out, want[:, :p], rtol=1e-5, atol=1e-5)
  cache = state["cache"]
  assert cache["cached_key"].shape == (b, h, e, c)  # [B, H, E, C]: no per-step transpose
  assert cache["cached_value"].shape == (b, h, c, e)
  assert not np.asarray(cache["cached_key"])[..., p:].any()
  step = layers.MultiHeadAttention(h, e, d, mode=layers.STEP, cache_length=c)
  for i in range(p, t):
    step_bias = jnp.zeros((1, h, 1, c)).at[..., :t].set(bias[:, :, i : i + 1])
    step_mask = (jnp.arange(c) <= i)[None, None, None]
    out, state = step.apply(
      {**params, "cache": cache},
      x[:, i : i + 1],
      None,
      step_bias,
      step_mask,
      index=jnp.int32(i),
      mutable=["cache"],
    )
    cache = state["cache"]
    np.testing.assert_allclose(out[:, 0], want[:, i], rtol=1e-5, atol=1e-5, err_msg=f"pos {i}")
  # The slots written so far hold the keys of the full pass, transposed.
  k_full = jnp.einsum("btd,dhe->bhet", x, params["params"]["key"]["kernel"])
  np.testing.assert_allclose(cache["cached_key"][..., :t], k_full, rtol=1e-5, atol=1e-5)


def test_grouped_queries_attend_like_a_repeated_cache():
  b, g, q, k, h, e = 2, 3, 2, 7, 2, 4
  rng = np.random.default_rng(1)
  q_NQHE = jnp.asarray(rng.normal(size=(b * g, q, h, e)), jnp.float32)
  k_BHEK = jnp.asarray(rng.normal(size=(b, h, e, k)), jnp.float32)
  v_BHKE = jnp.asarray(rng.normal(size=(b, h, k, e)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(1, h, q, k)), jnp.float32)
  mask = jnp.asarray(rng.random((b, 1, 1, k)) > 0.3).at[..., 0].set(True)
  got = layers._attend_cached(q_NQHE, k_BHEK, v_BHKE, bias, mask, jnp.float32)
  rep = lambda x: jnp.repeat(x, g, axis=0)  # noqa: E731
  want = layers._attend_cached(q_NQHE, rep(k_BHEK), rep(v_BHKE), bias, rep(mask), jnp.float32)
  assert got.shape == (b * g, q, h, e)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="not a multiple"):
    layers._attend_cached(q_NQHE[:5], k_BHEK, v_BHKE, None, None, jnp.float32)
  with pytest.raises(ValueError, match="mask of shape"):
    layers._attend_cached(q_NQHE, k_BHEK, v_BHKE, None, rep(mask), jnp.float32)


@pytest.mark.parametrize("scan", [False, True])
def test_beam_cache_moves_only_beam_sources(scan):
  cfg = tiny_config(scan_layers=scan)
  model = models.EncoderDecoderModel(cfg)
  b, i, t, k = 2, 5, 4, 3
  enc = np.random.RandomState(0).randint(2, 64, (b, i)).astype(np.int32)
  batch = dict(
    encoder_input_tokens=enc,
    decoder_input_tokens=np.zeros((b, t), np.int32),
    decoder_target_tokens=np.ones((b, t), np.int32),
  )
  params = nn.unbox(jax.jit(model.init_variables)(jax.random.PRNGKey(0), batch)["params"])
  module = model.module

  @jax.jit
  def prefill_cache(params):
    encoded = module.apply({"params": params}, enc, method=module.encode)
    _, state = module.apply(
      {"params": params},
      encoded,
      enc,
      jnp.zeros((b, 1), jnp.int32),
      mode=network.PREFILL,
      cache_length=t,
      method=module.decode,
      mutable=["cache"],
    )
    return state["cache"]

  ax = 1 if scan else 0
  prefilled = prefill_cache(params)
  cache = model._repeat_cache(prefilled, k)
  rows = jnp.array([2, 2, 0, 4, 5, 3])
  reordered = model._reorder_cache(cache, rows)
  before = dict(jax.tree_util.tree_leaves_with_path(prefilled))
  after = jax.tree_util.tree_leaves_with_path(reordered)
  names = [jax.tree_util.keystr(p) for p, _ in after]
  assert sum(layers.BEAM_SOURCE in n for n in names) == (1 if scan else cfg.num_decoder_layers)
  for (path, x), name in zip(after, names):
    if "encoder_decoder_attention" in name:
      assert x.shape[ax] == b, name  # one row per example, never copied
      np.testing.assert_array_equal(x, before[path])
    elif layers.BEAM_SOURCE in name:
      assert x.shape[ax:] == (b * k, t), name
      np.testing.assert_array_equal(
        np.asarray(rows) % k, np.asarray(x).reshape(-1, b * k, t)[0, :, 0]
      )
    else:  # keys [B, H, E, K * C] / values [B, H, K * C, E]: every column the prefill's
      slots = ax + (3 if "key" in name else 2)
      assert x.shape[ax] == b and x.shape[slots] == k * t, name
      col = np.take(np.asarray(x), np.arange(t, 2 * t), axis=slots)
      np.testing.assert_array_equal(col, before[path])


def test_beam_layout_step_equals_a_step_on_the_reordered_cache():
  b, k, c, h, e, d = 2, 3, 6, 2, 4, 8
  n = b * k
  rng = np.random.default_rng(2)
  attn = layers.MultiHeadAttention(h, e, d, mode=layers.STEP, cache_length=c)
  x = jnp.asarray(rng.normal(size=(n, 1, d)), jnp.float32)
  params = nn.unbox(
    layers.MultiHeadAttention(h, e, d).init(jax.random.PRNGKey(0), x, None, None, None)
  )
  # A history in which each beam row holds different keys/values in slots [0, 3).
  plain = {
    "cached_key": jnp.asarray(rng.normal(size=(n, h, e, c)), jnp.float32).at[..., 3:].set(0),
    "cached_value": jnp.asarray(rng.normal(size=(n, h, c, e)), jnp.float32).at[:, :, 3:].set(0),
  }
  # The same history in beam layout: column s (slots s * C ...) of example b holds row b * K + s.
  beam = {
    "cached_key": plain["cached_key"]
    .reshape(b, k, h, e, c)
    .transpose(0, 2, 3, 1, 4)
    .reshape(b, h, e, k * c),
    "cached_value": plain["cached_value"]
    .reshape(b, k, h, c, e)
    .transpose(0, 2, 1, 3, 4)
    .reshape(b, h, k * c, e),
    layers.BEAM_SOURCE: jnp.tile(jnp.arange(k, dtype=jnp.int32), b)[:, None].repeat(c, 1),
  }
  bias = jnp.asarray(rng.normal(size=(1, h, 1, c)), jnp.float32)
  mask = (jnp.arange(c) <= 3)[None, None, None] & jnp.asarray(rng.random((n, 1, 1, c)) > 0.2)
  mask = mask.at[..., 0].set(True)
  rows = jnp.array([1, 1, 0, 5, 3, 3])  # parents, within each example
  plain = jax.tree.map(lambda a: jnp.take(a, rows, axis=0), plain)
  beam[layers.BEAM_SOURCE] = jnp.take(beam[layers.BEAM_SOURCE], rows, axis=0)
  step = jax.jit(
    lambda cache: attn.apply(
      {**params, "cache": cache}, x, None, bias, mask, index=jnp.int32(3), mutable=["cache"]
    )
  )
  want, _ = step(plain)
  got, new = step(beam)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  # The new slot went into each beam's own column.
  np.testing.assert_array_equal(new["cache"][layers.BEAM_SOURCE][:, 3], np.tile(np.arange(k), b))


def test_decoding_compiles_without_ynnpack_fusions_on_cpu():
  """Decoding steps are weight-read bound: on CPU their dots go to Eigen (no per-step
  YNNPACK weight packing), and the tokens do not change."""
  if jax.default_backend() != "cpu":
    pytest.skip("a CPU-only compiler option")
  model = models.EncoderDecoderModel(tiny_config())
  rng = np.random.default_rng(0)
  batch = {
    "encoder_input_tokens": rng.integers(2, 64, (2, 6), dtype=np.int32),
    "decoder_input_tokens": np.zeros((2, 4), np.int32),
    "decoder_target_tokens": np.ones((2, 4), np.int32),
  }
  params = nn.unbox(model.init_variables(jax.random.PRNGKey(0), batch)["params"])
  feats = {"encoder_input_tokens": jnp.asarray(batch["encoder_input_tokens"])}
  kw = dict(decode_len=4, method="greedy", temperature=0.0, top_k=0, top_p=1.0)
  kw.update(beam_size=1, length_penalty=0.6)
  args = (params, feats, jax.random.PRNGKey(0))
  names = tuple(kw)
  default = jax.jit(model._predict, static_argnames=names).lower(*args, **kw).compile()
  if "ynn_fusion" not in default.as_text():
    pytest.skip("this XLA build does not use YNNPACK fusions for these dots")
  assert models.decode_compiler_options() == models.CPU_DECODE_COMPILER_OPTIONS
  ours = model._predict_jit.lower(*args, **kw).compile()
  assert "ynn_fusion" not in ours.as_text()
  np.testing.assert_array_equal(model.predict_batch(params, feats, decode_len=4), default(*args))
