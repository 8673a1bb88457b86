"""Query-chunked attention (`TransformerConfig.attention_chunk_size`) and the gathered bias.

The chunked path must give the plain path's outputs and gradients (relative-position bias,
padding, packing, causal and prefix-LM masks, dropout elsewhere in the network). That it
shrinks the compiled training step's temporaries at a long length, its purpose, is tested
in tests/test_bench_scaling.py through the benchmark.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_ext.model import layers, models
from tests import tiny_network

ATTEND = functools.partial(jax.nn.dot_product_attention, scale=1.0)
TOL = dict(rtol=1e-5, atol=1e-5)


def _qkvbm(b=2, q=37, k=29, h=3, e=8, mask_q=None, seed=0):
  rng = np.random.default_rng(seed)
  q_ = jnp.asarray(rng.normal(size=(b, q, h, e)), jnp.float32)
  k_ = jnp.asarray(rng.normal(size=(b, k, h, e)), jnp.float32)
  v_ = jnp.asarray(rng.normal(size=(b, k, h, e)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(1, h, q, k)), jnp.float32)
  mask = jnp.asarray(rng.random((b, 1, mask_q or q, k)) > 0.3)
  return q_, k_, v_, bias, mask


# 37 queries: 4 blocks of 8 and a remainder of 5, or one block of 36 and a remainder of 1;
# a mask per query, or one broadcast over the queries (Q axis 1).
@pytest.mark.parametrize("chunk, mask_q", [(8, None), (36, 1)])
def test_chunked_attention_matches_one_call_and_its_gradients(chunk, mask_q):
  q, k, v, bias, mask = _qkvbm(mask_q=mask_q)
  w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

  def loss(fn, q, k, v, bias):
    return jnp.sum(fn(q, k, v, bias, mask) * w)

  plain = ATTEND
  chunked = functools.partial(layers.chunked_attention, ATTEND, chunk_size=chunk)
  np.testing.assert_allclose(chunked(q, k, v, bias, mask), plain(q, k, v, bias, mask), **TOL)
  grad = functools.partial(jax.grad, argnums=(0, 1, 2, 3))
  grads_plain = jax.jit(grad(functools.partial(loss, plain)))(q, k, v, bias)
  grads_chunk = jax.jit(grad(functools.partial(loss, chunked)))(q, k, v, bias)
  for gp, gc in zip(grads_plain, grads_chunk, strict=True):
    np.testing.assert_allclose(gc, gp, **TOL)


def test_chunked_attention_without_bias_or_mask():
  q, k, v, _, _ = _qkvbm(q=16)
  out = layers.chunked_attention(ATTEND, q, k, v, None, None, 4)
  np.testing.assert_allclose(out, ATTEND(q, k, v, None, None), **TOL)


def test_relative_position_bias_equals_the_one_hot_contraction():
  for bidirectional in (True, False):
    module = layers.RelativePositionBias(4, 8, 16, bidirectional)
    qpos, kpos = jnp.arange(40), jnp.arange(40)
    params = module.init(jax.random.key(0), qpos, kpos)
    bias = module.apply(params, qpos, kpos)
    table = nn.unbox(params)["params"]["rel_embedding"]
    buckets = layers.relative_position_bucket(
      kpos[None] - qpos[:, None], bidirectional=bidirectional, num_buckets=8, max_distance=16
    )
    expected = jnp.einsum("hn,qkn->hqk", table, jax.nn.one_hot(buckets, 8))[None]
    np.testing.assert_array_equal(bias, expected)


def _packed_encdec_batch(b, li, lt, vocab, seed=0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab, (b, li), dtype=np.int32)
  tgt = rng.integers(2, vocab, (b, lt), dtype=np.int32)
  enc_seg = np.where(np.arange(li) < li // 3, 1, 2).astype(np.int32)[None].repeat(b, 0)
  dec_seg = np.where(np.arange(lt) < lt // 2, 1, 2).astype(np.int32)[None].repeat(b, 0)
  enc[:, -3:], tgt[:, -2:] = 0, 0  # padding at the end of each row
  enc_seg[:, -3:], dec_seg[:, -2:] = 0, 0
  dec_in = np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], axis=1)
  dec_in[:, lt // 2] = 0  # each segment starts with the 0 start token
  return {
    "encoder_input_tokens": enc,
    "encoder_segment_ids": enc_seg,
    "encoder_positions": np.zeros_like(enc),
    "decoder_input_tokens": dec_in,
    "decoder_target_tokens": tgt,
    "decoder_segment_ids": dec_seg,
    "decoder_positions": np.zeros_like(tgt),
    "decoder_loss_weights": (tgt > 0).astype(np.float32),
  }


def _random_params(model, batch):
  # Random values in the init's shapes: tracing the init is cheap, compiling it is not.
  shapes = nn.unbox(jax.eval_shape(model.init_variables, jax.random.key(0), batch)["params"])
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), s.dtype), shapes)


def _loss_and_grads(model, params, batch, rng):
  @jax.jit
  def run(params, batch, rng):
    (loss, aux), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, rng)
    return loss, aux["token_loss"], grads

  return run(params, batch, rng)


def test_encoder_decoder_chunked_matches_plain():
  # Packed, padded, with dropout (same rng) and rematerialised layers.
  cfg = tiny_network.tiny_config(num_decoder_layers=1, dropout_rate=0.1, remat_policy="full")
  batch = _packed_encdec_batch(2, 27, 14, cfg.vocab_size)
  plain = models.EncoderDecoderModel(cfg)
  chunked = models.EncoderDecoderModel(cfg.replace(attention_chunk_size=4))
  params = _random_params(plain, batch)
  rng = jax.random.key(3)
  ref = _loss_and_grads(plain, params, batch, rng)
  got = _loss_and_grads(chunked, params, batch, rng)
  np.testing.assert_allclose(got[0], ref[0], **TOL)
  np.testing.assert_allclose(got[1], ref[1], **TOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), got[2], ref[2])


def test_prefix_lm_chunked_matches_plain():
  cfg = tiny_network.tiny_config(decoder_only=True, num_encoder_layers=0)
  rng = np.random.default_rng(0)
  b, length = 2, 30
  tgt = rng.integers(2, cfg.vocab_size, (b, length), dtype=np.int32)
  tgt[:, -4:] = 0
  batch = {
    "decoder_input_tokens": np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], 1),
    "decoder_target_tokens": tgt,
    "decoder_loss_weights": (np.arange(length) >= 11)[None].repeat(b, 0).astype(np.float32),
    "decoder_causal_attention": (np.arange(length) < 11)[None].repeat(b, 0).astype(np.int32),
  }
  plain = models.DecoderOnlyModel(cfg)
  chunked = models.DecoderOnlyModel(cfg.replace(attention_chunk_size=7))
  params = _random_params(plain, batch)
  ref = _loss_and_grads(plain, params, batch, None)
  got = _loss_and_grads(chunked, params, batch, None)
  np.testing.assert_allclose(got[1], ref[1], **TOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), got[2], ref[2])


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_chunk_size_fails_clearly(bad):
  with pytest.raises(ValueError, match="attention_chunk_size"):
    tiny_network.tiny_config(attention_chunk_size=bad)
