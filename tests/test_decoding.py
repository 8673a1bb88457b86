"""Cached decoding: equal to full forward passes, beam 1 = greedy, exact small beams, filters."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_ext.model import decoding, models, network
from tests.tiny_network import tiny_config


def config(**kw):
  return tiny_config(**kw)


def make(model_cls, cfg, batch, **kw):
  model = model_cls(cfg, **kw)
  shapes = {k: jax.ShapeDtypeStruct(np.shape(v), np.int32) for k, v in batch.items()}
  params = nn.unbox(jax.jit(model.init_variables)(jax.random.PRNGKey(0), shapes)["params"])
  return model, params


def shift_right(targets):
  return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def up_to_eos(row, eos=1):
  row = list(row)
  return row[: row.index(eos) + 1] if eos in row else row


@pytest.fixture(scope="module")
def encdec():
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 64, (3, 9)).astype(np.int32)
  enc[1, 6:] = 0
  tgt = rng.randint(2, 64, (3, 7)).astype(np.int32)
  batch = dict(
    encoder_input_tokens=enc, decoder_input_tokens=shift_right(tgt), decoder_target_tokens=tgt
  )
  model, params = make(models.EncoderDecoderModel, config(), batch)
  return model, params, batch


def test_encdec_step_logits_equal_full_forward(encdec):
  model, params, batch = encdec
  enc, dec_in = batch["encoder_input_tokens"], batch["decoder_input_tokens"]
  full = np.asarray(model.logits(params, enc, dec_in))
  module, t = model.module, dec_in.shape[1]
  encoded = module.apply({"params": params}, enc, method=module.encode)
  logits, cache = module.apply(
    {"params": params},
    encoded,
    enc,
    dec_in[:, :1],
    mode=network.PREFILL,
    cache_length=t,
    method=module.decode,
    mutable=["cache"],
  )
  np.testing.assert_allclose(logits[:, 0], full[:, 0], atol=1e-5)
  step = jax.jit(
    lambda c, tok, i: module.apply(
      {"params": params, **c},
      None,
      enc,
      tok,
      mode=network.STEP,
      cache_length=t,
      index=i,
      method=module.decode,
      mutable=["cache"],
    )
  )
  for i in range(1, t):
    logits, cache = step(cache, dec_in[:, i : i + 1], jnp.int32(i))
    np.testing.assert_allclose(logits[:, 0], full[:, i], atol=1e-5, err_msg=f"position {i}")


def greedy_by_full_forward(logits_fn, prompt_rows, decode_len):
  """Greedy decoding that reruns the whole sequence for every token (no cache)."""
  out = []
  for row in prompt_rows:
    seq = list(row)
    for _ in range(decode_len):
      nxt = int(np.argmax(logits_fn(seq)))
      seq.append(nxt)
      if nxt == 1:
        break
    out.append(seq[len(row) :])
  return out


def test_encdec_greedy_equals_uncached_greedy_and_beam1(encdec):
  model, params, batch = encdec
  enc = batch["encoder_input_tokens"]
  decode_len = 6
  got = np.asarray(model.predict_batch(params, batch, decode_len=decode_len))
  full = jax.jit(model.logits)
  for b in range(enc.shape[0]):

    def last_logits(seq, b=b):
      padded = np.zeros((1, decode_len), np.int32)
      padded[0, : len(seq)] = seq
      return np.asarray(full(params, enc[b : b + 1], padded))[0, len(seq) - 1]

    expected = greedy_by_full_forward(last_logits, [[0]], decode_len)[0]
    assert up_to_eos(got[b]) == expected
    assert not got[b, len(expected) :].any()  # zeros after EOS
  beam1 = model.predict_batch(
    params, batch, decode_len=decode_len, method="beam", beam_size=1, length_penalty=0.0
  )
  np.testing.assert_array_equal(beam1, got)


def prefix_lm_batch(rng, input_lengths, length, vocab=64):
  """A PrefixLM-converted batch holding only the prompts (BOS + inputs)."""
  b = len(input_lengths)
  targets = np.zeros((b, length), np.int32)
  causal = np.zeros((b, length), np.int32)
  for i, n in enumerate(input_lengths):
    targets[i, :n] = rng.randint(2, vocab, n)
    causal[i, : n + 1] = 1
  inputs = shift_right(targets) * causal
  return dict(
    decoder_input_tokens=inputs,
    decoder_target_tokens=targets * causal,
    decoder_causal_attention=causal,
  )


@pytest.mark.parametrize("scan", [False, True])
def test_decoder_only_continues_prompts_like_full_forward(scan):
  rng = np.random.RandomState(1)
  batch = prefix_lm_batch(rng, [3, 6, 1], 10)
  cfg = config(decoder_only=True, num_encoder_layers=0, scan_layers=scan)
  model, params = make(models.DecoderOnlyModel, cfg, batch)
  decode_len = 5
  got = np.asarray(model.predict_batch(params, batch, decode_len=decode_len))
  apply = jax.jit(model.module.apply)
  prompts = [
    list(batch["decoder_input_tokens"][i, : c.sum()])
    for i, c in enumerate(batch["decoder_causal_attention"])
  ]
  for b, prompt in enumerate(prompts):
    n = len(prompt)

    def last_logits(seq, n=n):
      tokens = np.zeros((1, 16), np.int32)
      tokens[0, : len(seq)] = seq
      prefix = (np.arange(16) < n).astype(np.int32)[None]
      logits = apply({"params": params}, tokens, decoder_causal_attention=prefix)
      return np.asarray(logits)[0, len(seq) - 1]

    expected = greedy_by_full_forward(last_logits, [prompt], decode_len)[0]
    assert up_to_eos(got[b]) == expected, f"row {b}"
  beam1 = model.predict_batch(
    params, batch, decode_len=decode_len, method="beam", beam_size=1, length_penalty=0.0
  )
  np.testing.assert_array_equal(beam1, got)


def test_beam_search_is_exact_when_beams_cover_every_prefix():
  # Vocabulary 6, 3 tokens: 36 beams hold every 2-token prefix, so beam search must find
  # the most likely sequence (ending at its first EOS, or at the length limit).
  vocab, decode_len = 6, 3
  rng = np.random.RandomState(2)
  enc = rng.randint(2, vocab, (2, 5)).astype(np.int32)
  batch = dict(
    encoder_input_tokens=enc,
    decoder_input_tokens=np.zeros((2, decode_len), np.int32),
    decoder_target_tokens=np.ones((2, decode_len), np.int32),
  )
  model, params = make(models.EncoderDecoderModel, config(vocab_size=vocab), batch)
  best = np.asarray(
    model.predict_batch(
      params, batch, decode_len=decode_len, method="beam", beam_size=36, length_penalty=0.0
    )
  )
  seqs = np.array(list(itertools.product(range(vocab), repeat=decode_len)), np.int32)
  # Zero the tokens after the first EOS; duplicates then score the same.
  after_eos = np.cumsum(np.cumsum(seqs == 1, axis=1), axis=1) > 1
  seqs = np.where(after_eos, 0, seqs)
  weights = 1.0 - after_eos
  for b in range(2):
    all_batch = dict(
      encoder_input_tokens=np.repeat(enc[b : b + 1], len(seqs), 0),
      decoder_input_tokens=shift_right(seqs),
      decoder_target_tokens=seqs,
      decoder_loss_weights=weights,
    )
    scores = np.asarray(jax.jit(model.score_batch)(params, all_batch))
    np.testing.assert_array_equal(best[b], seqs[np.argmax(scores)])


def test_beam_and_sampling_outputs_stop_at_eos():
  vocab = 6  # EOS (1) is likely with so few tokens
  rng = np.random.RandomState(3)
  enc = rng.randint(2, vocab, (4, 5)).astype(np.int32)
  batch = dict(
    encoder_input_tokens=enc,
    decoder_input_tokens=np.zeros((4, 8), np.int32),
    decoder_target_tokens=np.ones((4, 8), np.int32),
  )
  model, params = make(models.EncoderDecoderModel, config(vocab_size=vocab), batch)
  outputs = [
    model.predict_batch(params, batch, decode_len=8, method="beam", beam_size=3),
    model.predict_batch(params, batch, jax.random.PRNGKey(5), decode_len=8, method="sample"),
  ]
  saw_eos = False
  for out in map(np.asarray, outputs):
    for row in out:
      if 1 in row[:-1]:
        saw_eos = True
        assert not row[list(row).index(1) + 1 :].any()
  assert saw_eos
  # Sampling is reproducible given the key and different for another key.
  again = model.predict_batch(params, batch, jax.random.PRNGKey(5), decode_len=8, method="sample")
  np.testing.assert_array_equal(again, outputs[1])


def test_sampling_with_top_k_1_or_tiny_top_p_is_greedy(encdec):
  model, params, batch = encdec
  greedy = model.predict_batch(params, batch, decode_len=6)
  for kw in ({"top_k": 1}, {"top_p": 1e-6}):
    sampled = model.predict_batch(
      params, batch, jax.random.PRNGKey(1), decode_len=6, method="sample", **kw
    )
    np.testing.assert_array_equal(sampled, greedy)


def test_decode_loop_is_one_while_loop_on_device(encdec):
  model, params, batch = encdec
  features = model._features(batch)
  jaxpr = jax.make_jaxpr(
    lambda p, f: model._predict(
      p,
      f,
      jax.random.PRNGKey(0),
      decode_len=5,
      method="greedy",
      temperature=0.0,
      top_k=0,
      top_p=1.0,
      beam_size=1,
      length_penalty=0.6,
    )
  )(params, features)
  text = str(jaxpr)
  assert text.count("while[") == 1
  assert "callback" not in text


def test_filters():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept_k = decoding.filter_top_k(logits, 2)
  np.testing.assert_array_equal(np.asarray(kept_k) > -1e29, [[True, True, False, False]])
  # 0.5 alone does not reach 0.7; 0.5 + 0.3 does.
  kept_p = decoding.filter_top_p(logits, 0.7)
  np.testing.assert_array_equal(np.asarray(kept_p) > -1e29, [[True, True, False, False]])
  kept_p = decoding.filter_top_p(logits, 0.5)
  np.testing.assert_array_equal(np.asarray(kept_p) > -1e29, [[True, False, False, False]])
  np.testing.assert_array_equal(decoding.filter_top_p(logits, 1.0), logits)
  np.testing.assert_array_equal(decoding.filter_top_k(logits, 0), logits)


def test_bad_prediction_arguments(encdec):
  model, params, batch = encdec
  with pytest.raises(ValueError, match="method='topk'"):
    model.predict_batch(params, batch, decode_len=4, method="topk")
  with pytest.raises(ValueError, match="decode_len=0"):
    model.predict_batch(params, batch, decode_len=0)
  with pytest.raises(ValueError, match="top_p=0.0"):
    model.predict_batch(params, batch, decode_len=4, method="sample", top_p=0.0)
  packed = dict(batch, decoder_segment_ids=np.ones_like(batch["decoder_input_tokens"]))
  with pytest.raises(ValueError, match="unpacked"):
    model.predict_batch(params, packed, decode_len=4)
