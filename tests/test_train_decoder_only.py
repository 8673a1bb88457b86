"""The trainer runs the decoder-only (prefix LM) model on PrefixLM batches, with
per-denoiser losses and samples, from Python without gin files for the run."""

from __future__ import annotations

import copy

import jax
import numpy as np
import pytest

import gin
from t5x_ext import train as train_lib
from t5x_ext.data import providers
from t5x_ext.launch import flags as cli

TASK = "pydocs_ul2r_mod_v1"  # R [NLU], X [NLG], S [S2S]: one sample per mode
LENGTHS = {"inputs": 96, "targets": 64}
DECODE_LEN = 8


def _uncached_greedy(model, params, input_ids, decode_len, length):
  """Argmax of a full forward pass per token after `[0, *inputs]` (no cache)."""
  apply = jax.jit(model.module.apply)
  seq = [0, *input_ids]
  start = len(seq)
  prefix = (np.arange(length) < start).astype(np.int32)[None]
  if not model.inputs_bidirectional_attention:
    prefix = None
  while len(seq) - start < decode_len:
    tokens = np.zeros((1, length), np.int32)
    tokens[0, : len(seq)] = seq
    logits = apply({"params": params}, tokens, decoder_causal_attention=prefix)
    seq.append(int(np.argmax(np.asarray(logits)[0, len(seq) - 1])))
    if seq[-1] == 1:
      break
  return seq[start:]


def test_decoder_only_prefix_lm_trains_and_samples(tmp_path):
  cli.parse_gin(["models/decoder_only/tiny.gin"])
  model = copy.deepcopy(gin.query_parameter("MODEL/macro.value"))
  gin.clear_config(clear_constants=True)
  assert model.feature_converter_name == "PrefixLMFeatureConverter"
  assert model.inputs_bidirectional_attention
  result = train_lib.train(
    model=model,
    mixture_or_task_name=TASK,
    task_feature_lengths=LENGTHS,
    train_steps=2,
    model_dir=str(tmp_path),
    batch_size=4,
    log_every=1,
    learning_rate=0.01,
    tensorboard=False,
    progress_bar=False,
    samples_per_mode=1,
    sample_decode_len=DECODE_LEN,
  )
  assert int(result.state.step) == 2
  assert result.last_metrics["loss"] > 0
  # Per-denoiser and per-mode losses of the denoisers in the step's rows.
  names = ("R_mu3_r0.15", "X_mu32_r0.5", "S", "[NLU]", "[NLG]", "[S2S]")
  losses = {k for k in result.last_metrics if k.startswith("loss/")}
  assert {"loss/S", "loss/[S2S]"} <= losses <= {f"loss/{n}" for n in names}, losses
  # tokens_per_s counts the one decoder row of inputs + targets.
  steps_per_s = result.last_metrics["steps_per_s"]
  assert result.last_metrics["tokens_per_s"] == pytest.approx(steps_per_s * 4 * 160, rel=1e-6)
  # One greedy sample per mode, each the continuation of its input by full forward passes.
  assert [(s["mode"], s["denoiser"]) for s in result.samples] == [
    ("[NLU]", "R_mu3_r0.15"),
    ("[NLG]", "X_mu32_r0.5"),
    ("[S2S]", "S"),
  ]
  examples, _ = providers.sample_examples(
    TASK, LENGTHS, feature_converter_name=model.feature_converter_name, per_mode=1
  )
  vocab = providers.vocabulary_of(providers.get_provider(TASK))
  assert any(s["prediction"] for s in result.samples), result.samples
  params = jax.device_get(result.state.params)
  for sample, ex in zip(result.samples, examples, strict=True):
    assert sample["inputs"].startswith(sample["mode"]), sample
    inputs = [int(t) for t in ex["inputs"] if t]
    expected = _uncached_greedy(model, params, inputs, DECODE_LEN, 160)
    assert sample["prediction"] == providers.decode_ids(vocab, expected), sample
