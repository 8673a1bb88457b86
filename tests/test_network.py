"""Networks: config validation, logical axes, packing, causality, prefix LM, scan/remat."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_ext.model import axes, layers, network
from tests import tiny_network


def tiny_config(**kw):
  return tiny_network.tiny_config(**{"num_encoder_layers": 2, **kw})


def decoder_only_config(**kw):
  return tiny_config(decoder_only=True, num_encoder_layers=0, **kw)


def init_params(module, *args):
  variables = module.init(jax.random.PRNGKey(0), *args)
  return nn.unbox(variables["params"])


# ---- config validation ------------------------------------------------------------------


@pytest.mark.parametrize(
  "changes, match",
  [
    ({"activations": ("gelu", "tanhh")}, r"activations.*unknown activation 'tanhh'"),
    ({"activations": ()}, r"activations.*at least one"),
    ({"head_dim": None, "num_heads": 5}, r"emb_dim=32 is not divisible by num_heads=5"),
    ({"head_dim": 0}, r"head_dim=0"),
    ({"num_heads": 0}, r"num_heads=0"),
    ({"vocab_size": -3}, r"vocab_size=-3"),
    ({"dropout_rate": 1.0}, r"dropout_rate=1.0"),
    ({"dtype": "int8"}, r"dtype='int8'.*floating"),
    ({"dtype": "bfloat17"}, r"dtype='bfloat17'"),
    ({"remat_policy": "some"}, r"remat_policy='some'"),
    ({"relative_attention_num_buckets": 7}, r"relative_attention_num_buckets=7"),
    ({"relative_attention_max_distance": 3}, r"relative_attention_max_distance=3"),
    ({"num_encoder_layers": 0}, r"num_encoder_layers=0.*encoder-decoder"),
    ({"decoder_only": True}, r"num_encoder_layers=2.*decoder-only"),
    ({"attention_implementation": "flash"}, r"attention_implementation='flash'"),
    ({"attention_implementation": "cudnn"}, r"attention_implementation='cudnn'.*bfloat16"),
  ],
)
def test_bad_configs_fail_with_clear_errors(changes, match):
  with pytest.raises(ValueError, match=match):
    tiny_config(**changes)


def test_head_dim_none_derives_from_emb_dim():
  assert tiny_config(head_dim=None, num_heads=4).head_dim == 8


def test_module_rejects_config_of_other_family():
  enc = jnp.ones((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="decoder_only=True"):
    network.DecoderOnly(tiny_config()).init(jax.random.PRNGKey(0), enc)
  with pytest.raises(ValueError, match="decoder_only=False"):
    network.EncoderDecoder(decoder_only_config()).init(jax.random.PRNGKey(0), enc, enc)


# ---- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize("scan", [False, True])
def test_every_param_has_logical_axes(scan):
  cfg = tiny_config(scan_layers=scan)
  toks = jnp.ones((1, 4), jnp.int32)
  shapes = jax.eval_shape(network.EncoderDecoder(cfg).init, jax.random.PRNGKey(0), toks, toks)
  leaves = jax.tree.leaves(
    shapes["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
  )
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned)
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) <= set(axes.ALL_AXES)
  if scan:
    kernel = shapes["params"]["encoder"]["layers"]["attention"]["query"]["kernel"]
    assert kernel.names == (axes.LAYERS, axes.EMBED, axes.HEADS, axes.KV)
    assert kernel.value.shape == (2, 32, 4, 8)


def test_param_layout_and_tied_embeddings():
  toks = jnp.ones((1, 4), jnp.int32)

  def abstract(cfg):
    shapes = jax.eval_shape(network.EncoderDecoder(cfg).init, jax.random.PRNGKey(0), toks, toks)
    return nn.unbox(shapes["params"])

  untied = abstract(tiny_config())
  assert untied["logits_dense"]["kernel"].shape == (32, 64)
  assert set(untied["decoder"]["layers_0"]["mlp"]) == {"wi_0", "wi_1", "wo"}
  tied = abstract(tiny_config(logits_via_embedding=True, activations=("relu",)))
  assert "logits_dense" not in tied
  assert set(tied["decoder"]["layers_0"]["mlp"]) == {"wi", "wo"}


def test_relative_position_bucket_matches_transformers():
  torch = pytest.importorskip("torch")
  t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
  rel = np.arange(-300, 300)
  for bidirectional in (True, False):
    for nb, md in ((32, 128), (8, 20)):
      ours = layers.relative_position_bucket(
        jnp.asarray(rel), bidirectional=bidirectional, num_buckets=nb, max_distance=md
      )
      ref = t5.T5Attention._relative_position_bucket(
        torch.tensor(rel), bidirectional=bidirectional, num_buckets=nb, max_distance=md
      )
      np.testing.assert_array_equal(np.asarray(ours), ref.numpy())


# ---- masking ----------------------------------------------------------------------------


def test_packed_segments_do_not_interact():
  cfg = tiny_config()
  model = network.EncoderDecoder(cfg)
  rng = np.random.RandomState(0)
  # Row 0 packs two examples: encoder 5 + 4 tokens, decoder 4 + 3 tokens, then padding.
  enc = rng.randint(2, 64, (1, 11)).astype(np.int32)
  enc_seg = np.array([[1] * 5 + [2] * 4 + [0] * 2])
  enc[enc_seg == 0] = 0
  tgt = rng.randint(2, 64, (1, 9)).astype(np.int32)
  dec_seg = np.array([[1] * 4 + [2] * 3 + [0] * 2])
  tgt[dec_seg == 0] = 0
  dec_in = np.zeros_like(tgt)
  for s in (1, 2):
    idx = np.where(dec_seg[0] == s)[0]
    dec_in[0, idx[1:]] = tgt[0, idx[:-1]]
  params = init_params(model, enc, dec_in)

  apply = jax.jit(model.apply)

  def run(e, di, t, es=enc_seg, ds=dec_seg):
    return np.asarray(apply({"params": params}, e, di, t, es, ds))

  packed = run(enc, dec_in, tgt)
  # Changing every token of segment 2 leaves segment 1's logits unchanged...
  enc2, dec_in2, tgt2 = enc.copy(), dec_in.copy(), tgt.copy()
  enc2[enc_seg == 2] = rng.randint(2, 64, 4)
  dec_in2[0, 5:7] = rng.randint(2, 64, 2)
  tgt2[dec_seg == 2] = rng.randint(2, 64, 3)
  changed = run(enc2, dec_in2, tgt2)
  np.testing.assert_array_equal(packed[0, :4], changed[0, :4])
  assert not np.allclose(packed[0, 4:7], changed[0, 4:7])
  # ...and each segment's logits equal those of the example run on its own.
  alone1 = run(enc[:, :5], dec_in[:, :4], tgt[:, :4], None, None)
  alone2 = run(enc[:, 5:9], dec_in[:, 4:7] * np.array([0, 1, 1]), tgt[:, 4:7], None, None)
  np.testing.assert_allclose(packed[0, :4], alone1[0], atol=1e-5)
  np.testing.assert_allclose(packed[0, 4:7], alone2[0], atol=1e-5)


def test_encoder_padding_is_ignored():
  model = network.EncoderDecoder(tiny_config())
  enc = np.array([[5, 6, 7, 0, 0]], np.int32)
  dec = np.array([[0, 3, 4]], np.int32)
  params = init_params(model, enc, dec)
  short = model.apply({"params": params}, enc[:, :3], dec)
  padded = model.apply({"params": params}, enc, dec)
  np.testing.assert_allclose(short, padded, atol=1e-5)


def _dependence(fn, tokens, position, rng):
  """Which output positions change when the token at `position` changes."""
  base = np.asarray(fn(tokens))
  changed = tokens.copy()
  changed[0, position] = (changed[0, position] + 1 + rng.randint(1, 50)) % 60 + 2
  other = np.asarray(fn(changed))
  return np.abs(base - other).max(axis=-1)[0] > 1e-6


def test_decoder_is_causal():
  model = network.EncoderDecoder(tiny_config())
  rng = np.random.RandomState(1)
  enc = rng.randint(2, 64, (1, 6)).astype(np.int32)
  dec = rng.randint(2, 64, (1, 8)).astype(np.int32)
  params = init_params(model, enc, dec)
  apply = jax.jit(model.apply)
  for pos in (0, 3, 7):
    dep = _dependence(lambda d: apply({"params": params}, enc, d), dec, pos, rng)
    np.testing.assert_array_equal(dep, np.arange(8) >= pos)


def test_prefix_lm_is_bidirectional_over_exactly_the_inputs():
  model = network.DecoderOnly(decoder_only_config())
  rng = np.random.RandomState(2)
  tokens = rng.randint(2, 64, (1, 10)).astype(np.int32)
  prefix = np.array([[1] * 4 + [0] * 6], np.int32)  # BOS + 3 input tokens, as SeqIO marks
  params = init_params(model, tokens)

  apply = jax.jit(model.apply)

  def fn(t):
    return apply({"params": params}, t, decoder_causal_attention=prefix)

  for pos in range(10):
    dep = _dependence(fn, tokens, pos, rng)
    # A prefix token is seen by every prefix position; later tokens only causally.
    expected = (np.arange(10) >= pos) | ((pos < 4) & (np.arange(10) < 4))
    np.testing.assert_array_equal(dep, expected, err_msg=f"position {pos}")
  causal = lambda t: apply({"params": params}, t)  # noqa: E731
  np.testing.assert_array_equal(_dependence(causal, tokens, 2, rng), np.arange(10) >= 2)


# ---- scan / remat ------------------------------------------------------------------------


def test_scan_and_remat_match_unrolled():
  rng = np.random.RandomState(3)
  enc = rng.randint(2, 64, (2, 7)).astype(np.int32)
  dec = rng.randint(2, 64, (2, 5)).astype(np.int32)
  cfg = tiny_config()
  params = init_params(network.EncoderDecoder(cfg), enc, dec)

  def value_and_grad(config, p):
    model = network.EncoderDecoder(config)
    fn = jax.jit(jax.value_and_grad(lambda p: jnp.sum(model.apply({"params": p}, enc, dec) ** 2)))
    return fn(p)

  ref_value, ref_grads = value_and_grad(cfg, params)
  stacked = network.stack_layer_params(params)
  assert stacked["decoder"]["layers"]["mlp"]["wo"]["kernel"].shape == (2, 48, 32)
  # Scanned, rematerialised layers compute the same loss and gradients as unrolled ones.
  value, grads = value_and_grad(cfg.replace(scan_layers=True, remat_policy="dots"), stacked)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  grads = network.unstack_layer_params(grads)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  cfg = tiny_config(dtype="bfloat16")
  toks = jnp.ones((1, 4), jnp.int32)
  model = network.EncoderDecoder(cfg)
  params = init_params(model, toks, toks)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  assert model.apply({"params": params}, toks, toks).dtype == jnp.float32


def test_dropout_is_active_only_when_not_deterministic():
  model = network.EncoderDecoder(tiny_config(dropout_rate=0.5))
  toks = jnp.arange(2, 8)[None]
  params = init_params(model, toks, toks)
  a = model.apply({"params": params}, toks, toks)
  b = model.apply({"params": params}, toks, toks, deterministic=True)
  np.testing.assert_array_equal(a, b)
  c = model.apply(
    {"params": params}, toks, toks, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)}
  )
  assert not np.allclose(a, c)
