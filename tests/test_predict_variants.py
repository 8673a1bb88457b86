"""Prediction of every model variant equals an uncached greedy reference.

The reference reruns the whole network for every generated token (no cache) and takes the
argmax of the last position: encoder-decoder, decoder-only prefix LM, decoder-only causal LM
(`inputs_bidirectional_attention=False`, which once ignored the prompt), with and without
scanned layers.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from t5x_ext.model import models
from tests.tiny_network import tiny_config

DECODE_LEN = 5
VARIANTS = [
  ("encdec", False),
  ("encdec", True),
  ("prefix_lm", False),  # scanned prefix LM: tests/test_decoding.py
  ("causal_lm", False),
  ("causal_lm", True),
]


def _shift_right(x):
  return np.concatenate([np.zeros_like(x[:, :1]), x[:, :-1]], axis=1)


def _prompts_batch(kind: str, rng: np.random.RandomState) -> dict[str, np.ndarray]:
  """Three prompts of different lengths (one padded), as the feature converters lay out."""
  lengths = [3, 6, 2]
  if kind == "encdec":
    enc = np.zeros((3, 8), np.int32)
    for i, n in enumerate(lengths):
      enc[i, :n] = rng.randint(2, 64, n)
    tgt = rng.randint(2, 64, (3, 4)).astype(np.int32)
    return dict(
      encoder_input_tokens=enc, decoder_input_tokens=_shift_right(tgt), decoder_target_tokens=tgt
    )
  # PrefixLM layout: BOS + inputs marked by decoder_causal_attention.
  targets = np.zeros((3, 10), np.int32)
  causal = np.zeros((3, 10), np.int32)
  for i, n in enumerate(lengths):
    targets[i, :n] = rng.randint(2, 64, n)
    causal[i, : n + 1] = 1
  return dict(
    decoder_input_tokens=_shift_right(targets) * causal,
    decoder_target_tokens=targets * causal,
    decoder_causal_attention=causal,
  )


def _model(kind: str, scan: bool):
  if kind == "encdec":
    return models.EncoderDecoderModel(tiny_config(scan_layers=scan))
  cfg = tiny_config(decoder_only=True, num_encoder_layers=0, scan_layers=scan)
  return models.DecoderOnlyModel(cfg, inputs_bidirectional_attention=kind == "prefix_lm")


def _uncached_greedy(model, params, batch, kind: str) -> list[list[int]]:
  apply = jax.jit(model.module.apply)
  out = []
  for b in range(batch["decoder_input_tokens"].shape[0]):
    if kind == "encdec":
      enc = batch["encoder_input_tokens"][b : b + 1]
      seq, start = [0], 1
    else:
      n = int(batch["decoder_causal_attention"][b].sum())
      seq = [int(t) for t in batch["decoder_input_tokens"][b, :n]]
      start = n
    while len(seq) - start < DECODE_LEN:
      tokens = np.zeros((1, 16), np.int32)
      tokens[0, : len(seq)] = seq
      if kind == "encdec":
        logits = apply({"params": params}, enc, tokens)
      else:
        prefix = (np.arange(16) < start).astype(np.int32)[None] if kind == "prefix_lm" else None
        logits = apply({"params": params}, tokens, decoder_causal_attention=prefix)
      nxt = int(np.argmax(np.asarray(logits)[0, len(seq) - 1]))
      seq.append(nxt)
      if nxt == model.eos_id:
        break
    out.append(seq[start:])
  return out


@pytest.mark.parametrize("kind,scan", VARIANTS)
def test_greedy_prediction_equals_uncached_reference(kind, scan):
  batch = _prompts_batch(kind, np.random.RandomState(0))
  model = _model(kind, scan)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, np.int32) for k, v in batch.items()}
  params = nn.unbox(jax.jit(model.init_variables)(jax.random.PRNGKey(1), shapes)["params"])
  got = np.asarray(model.predict_batch(params, batch, decode_len=DECODE_LEN))
  expected = _uncached_greedy(model, params, batch, kind)
  # The reference depends on the prompt (else a model that ignores it would pass).
  assert len({tuple(e) for e in expected}) > 1, expected
  for b, exp in enumerate(expected):
    row = list(got[b])
    assert row[: len(exp)] == exp, f"row {b}: {row} != {exp}"
    assert not any(row[len(exp) :]), f"row {b}: tokens after EOS"
