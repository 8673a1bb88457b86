"""Models: loss / z-loss / label smoothing against numpy, normalisation, aux, score, checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_ext.model import losses, models
from tests.tiny_network import tiny_config


def config(**kw):
  return tiny_config(**{"num_decoder_layers": 1, **kw})


def np_reference(logits, targets, weights, z_loss, smoothing):
  """Dense float64 reference: KL(smoothed one-hot || softmax) + z_loss * logZ^2."""
  logits = logits.astype(np.float64)
  v = logits.shape[-1]
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  logp = logits - log_z[..., None]
  one_hot = np.eye(v)[targets]
  q = one_hot * (1 - smoothing) + (1 - one_hot) * smoothing / (v - 1)
  with np.errstate(divide="ignore", invalid="ignore"):
    q_log_q = np.where(q > 0, q * np.log(q), 0.0)
  per_token = (q_log_q - q * logp).sum(-1) + z_loss * log_z**2
  return per_token * weights, z_loss * log_z**2 * weights


@pytest.mark.parametrize("z_loss, smoothing", [(0.0, 0.0), (1e-4, 0.0), (1e-2, 0.1)])
def test_cross_entropy_matches_numpy(z_loss, smoothing):
  rng = np.random.RandomState(0)
  logits = rng.randn(3, 5, 11).astype(np.float32) * 3
  targets = rng.randint(0, 11, (3, 5))
  total, z, logp = losses.cross_entropy_with_z_loss(
    jnp.asarray(logits), jnp.asarray(targets), z_loss=z_loss, label_smoothing=smoothing
  )
  ref_total, ref_z = np_reference(logits, targets, 1.0, z_loss, smoothing)
  np.testing.assert_allclose(total, ref_total, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(z, ref_z, rtol=1e-5, atol=1e-8)
  ref_logp = np_reference(logits, targets, 1.0, 0.0, 0.0)[0]
  np.testing.assert_allclose(-logp, ref_logp, rtol=1e-5, atol=1e-5)


def test_loss_normalizing_factors():
  token_loss = jnp.array([[1.0, 2.0, 3.0, 0.0], [4.0, 6.0, 0.0, 0.0]])
  weights = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
  segments = jnp.array([[1, 1, 2, 0], [1, 1, 0, 0]])
  assert float(losses.normalize(token_loss, weights, None, None)) == pytest.approx(16 / 5)
  assert float(
    losses.normalize(token_loss, weights, None, "NUM_REAL_TARGET_TOKENS")
  ) == pytest.approx(16 / 5)
  assert float(
    losses.normalize(token_loss, weights, None, "NUM_TOTAL_TARGET_TOKENS")
  ) == pytest.approx(16 / 8)
  assert float(losses.normalize(token_loss, weights, None, 4.0)) == pytest.approx(4.0)
  # Three sequences with means 1.5, 3 and 5.
  per_seq = losses.normalize(token_loss, weights, segments, "AVERAGE_PER_SEQUENCE")
  assert float(per_seq) == pytest.approx((1.5 + 3 + 5) / 3)
  # Unpacked: each row is one sequence (means 2 and 5).
  per_row = losses.normalize(token_loss, weights, None, "AVERAGE_PER_SEQUENCE")
  assert float(per_row) == pytest.approx(3.5)
  for bad in ("NUM_TOKENS", -1.0, 0, True):
    with pytest.raises(ValueError, match="loss_normalizing_factor"):
      losses.check_normalizing_factor(bad)


def encdec_batch(rng, b=2, li=7, lt=6, vocab=64):
  tgt = rng.randint(2, vocab, (b, lt)).astype(np.int32)
  tgt[0, -2:] = 0
  weights = (tgt > 0).astype(np.float32)
  dec_in = np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], axis=1)
  return dict(
    encoder_input_tokens=rng.randint(2, vocab, (b, li)).astype(np.int32),
    decoder_input_tokens=dec_in,
    decoder_target_tokens=tgt,
    decoder_loss_weights=weights,
  )


@pytest.fixture(scope="module")
def encdec_setup():
  rng = np.random.RandomState(1)
  batch = encdec_batch(rng)
  model = models.EncoderDecoderModel(config(), z_loss=1e-3, label_smoothing=0.1)
  variables = model.init_variables(jax.random.PRNGKey(0), batch)
  return model, variables, batch


def test_init_variables_is_boxed_and_works_under_eval_shape(encdec_setup):
  model, variables, batch = encdec_setup
  assert set(variables) == {"params"}
  leaves = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  abstract = jax.eval_shape(model.init_variables, jax.random.PRNGKey(0), shapes)
  assert jax.tree.map(lambda x: x.shape, nn.unbox(abstract)) == jax.tree.map(
    lambda x: x.shape, nn.unbox(variables)
  )


def test_loss_fn_matches_numpy_on_model_logits(encdec_setup):
  model, variables, batch = encdec_setup
  params = nn.unbox(variables["params"])
  loss, aux = jax.jit(model.loss_fn)(params, batch, None)
  logits = np.asarray(
    model.logits(
      params,
      batch["encoder_input_tokens"],
      batch["decoder_input_tokens"],
      batch["decoder_target_tokens"],
    )
  )
  w = batch["decoder_loss_weights"]
  ref_tok, ref_z = np_reference(logits, batch["decoder_target_tokens"], w, 1e-3, 0.1)
  np.testing.assert_allclose(aux["token_loss"], ref_tok, rtol=1e-5, atol=1e-5)
  assert aux["token_loss"].shape == batch["decoder_target_tokens"].shape
  assert float(aux["loss_sum"]) == pytest.approx(ref_tok.sum(), rel=1e-5)
  assert float(aux["z_loss_sum"]) == pytest.approx(ref_z.sum(), rel=1e-5)
  assert float(aux["num_tokens"]) == w.sum() == 10
  correct = ((logits.argmax(-1) == batch["decoder_target_tokens"]) * w).sum()
  assert float(aux["correct"]) == correct
  assert float(loss) == pytest.approx(ref_tok.sum() / w.sum(), rel=1e-5)
  for value in aux.values():
    assert value.dtype == jnp.float32


def test_score_batch_is_log_likelihood_of_targets(encdec_setup):
  model, variables, batch = encdec_setup
  params = nn.unbox(variables["params"])
  logits = np.asarray(
    model.logits(params, batch["encoder_input_tokens"], batch["decoder_input_tokens"])
  )
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  picked = np.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
  expected = (picked * batch["decoder_loss_weights"]).sum(-1)
  np.testing.assert_allclose(model.score_batch(params, batch), expected, rtol=1e-5)


def test_dropout_rng_makes_the_loss_stochastic():
  rng = np.random.RandomState(2)
  batch = encdec_batch(rng)
  model = models.EncoderDecoderModel(config(dropout_rate=0.3))
  params = nn.unbox(model.init_variables(jax.random.PRNGKey(0), batch)["params"])
  fn = jax.jit(model.loss_fn)
  eval_a, eval_b = fn(params, batch, None)[0], fn(params, batch, None)[0]
  assert float(eval_a) == float(eval_b)
  train_a = fn(params, batch, jax.random.PRNGKey(1))[0]
  train_b = fn(params, batch, jax.random.PRNGKey(2))[0]
  assert float(train_a) != float(train_b)


def test_decoder_only_loss_covers_only_targets():
  # PrefixLM layout: BOS + 3 inputs attended bidirectionally, then 3 targets.
  targets = np.array([[5, 6, 7, 8, 9, 1, 0, 0]], np.int32)
  causal = np.array([[1, 1, 1, 1, 0, 0, 0, 0]], np.int32)
  weights = np.array([[0, 0, 0, 1, 1, 1, 0, 0]], np.float32)
  batch = dict(
    decoder_input_tokens=np.concatenate([[[0]], targets[:, :-1]], axis=1).astype(np.int32),
    decoder_target_tokens=targets,
    decoder_causal_attention=causal,
    decoder_loss_weights=weights,
  )
  # Two layers: with one, the target positions see the same (embedding) keys either way.
  cfg = config(decoder_only=True, num_encoder_layers=0, num_decoder_layers=2)
  model = models.DecoderOnlyModel(cfg, z_loss=0.0)
  assert model.feature_converter_name == "PrefixLMFeatureConverter"
  params = nn.unbox(model.init_variables(jax.random.PRNGKey(0), batch)["params"])
  loss, aux = model.loss_fn(params, batch, None)
  assert float(aux["num_tokens"]) == 3
  np.testing.assert_array_equal(np.asarray(aux["token_loss"])[weights == 0], 0.0)
  assert float(loss) == pytest.approx(-float(model.score_batch(params, batch)[0]) / 3, rel=1e-5)
  # The prefix is really attended bidirectionally: a causal model scores differently.
  causal_model = models.DecoderOnlyModel(
    model.config, inputs_bidirectional_attention=False, z_loss=0.0
  )
  assert float(causal_model.loss_fn(params, batch, None)[0]) != pytest.approx(float(loss))


def test_decoder_only_default_weights_follow_seqio_prefix_lm():
  # SeqIO's PrefixLMFeatureConverter docstring example (packed), minus the loss weights.
  batch = dict(
    decoder_target_tokens=np.array([[7, 8, 5, 1, 3, 9, 1, 8, 4, 9, 3, 1, 4, 1, 0]]),
    decoder_causal_attention=np.array([[1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]]),
    decoder_segment_ids=np.array([[1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 0]]),
  )
  model = models.DecoderOnlyModel(config(decoder_only=True, num_encoder_layers=0))
  np.testing.assert_array_equal(
    model._loss_weights(batch), [[0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0]]
  )


def test_feature_converter_names():
  assert models.EncoderDecoderModel(config()).feature_converter_name == "EncDecFeatureConverter"
  dec = config(decoder_only=True, num_encoder_layers=0)
  lm = models.DecoderOnlyModel(dec, feature_converter_name="DecoderFeatureConverter")
  assert lm.feature_converter_name == "DecoderFeatureConverter"
  with pytest.raises(ValueError, match="feature_converter_name='EncDec'"):
    models.DecoderOnlyModel(dec, feature_converter_name="EncDec")


def test_bad_model_settings_and_batches_fail_clearly():
  with pytest.raises(ValueError, match="decoder_only=False"):
    models.EncoderDecoderModel(config(decoder_only=True, num_encoder_layers=0))
  with pytest.raises(ValueError, match="decoder_only=True"):
    models.DecoderOnlyModel(config())
  with pytest.raises(ValueError, match="label_smoothing=1.0"):
    models.EncoderDecoderModel(config(), label_smoothing=1.0)
  with pytest.raises(ValueError, match="z_loss=-1"):
    models.EncoderDecoderModel(config(), z_loss=-1)
  with pytest.raises(ValueError, match="loss_normalizing_factor='MEAN'"):
    models.EncoderDecoderModel(config(), loss_normalizing_factor="MEAN")
  with pytest.raises(TypeError, match="TransformerConfig"):
    models.EncoderDecoderModel({"vocab_size": 8})
  model = models.EncoderDecoderModel(config(vocab_size=32))
  batch = encdec_batch(np.random.RandomState(3), vocab=64)  # ids up to 63 > vocab 32
  with pytest.raises(
    ValueError, match=r"decoder_target_tokens|encoder_input_tokens.*vocab_size=32"
  ):
    model.init_variables(jax.random.PRNGKey(0), batch)
  with pytest.raises(ValueError, match="vocab_size=32"):
    model.validate_batch(batch)
  missing = {k: v for k, v in batch.items() if k != "encoder_input_tokens"}
  with pytest.raises(ValueError, match="'encoder_input_tokens'"):
    model.validate_batch(missing)


def test_flops_per_token_matches_six_n_for_dense_parts():
  cfg = config(vocab_size=1000, emb_dim=64, mlp_dim=256, num_encoder_layers=2, num_decoder_layers=3)
  model = models.EncoderDecoderModel(cfg)
  # With length-1 sequences attention scores are negligible, and every weight is used once
  # per token: FLOPs ~ 6 * (non-embedding-input parameters), split across the two stacks.
  params = nn.unbox(
    jax.eval_shape(
      model.init_variables,
      jax.random.PRNGKey(0),
      {
        k: jax.ShapeDtypeStruct((1, 1), jnp.int32)
        for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
      },
    )["params"]
  )
  n = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
  dense = n(params["encoder"]) + n(params["decoder"]) + n(params["logits_dense"])
  norms_and_bias = sum(
    n(v) for stack in ("encoder", "decoder") for k, v in params[stack].items() if "layers" not in k
  ) + sum(
    n(v)
    for stack in ("encoder", "decoder")
    for k, layer in params[stack].items()
    if "layers" in k
    for name, v in layer.items()
    if "norm" in name
  )
  flops = model.flops_per_token({"inputs": 1, "targets": 1})
  attention_scores = 6 * (2 * 2 * 32 + 3 * (2 * 32 + 2 * 32))
  assert flops == pytest.approx(6 * (dense - norms_and_bias) + attention_scores, rel=1e-9)
  # Longer inputs cost more per decoder token.
  assert model.flops_per_token({"inputs": 64, "targets": 8}) > flops
