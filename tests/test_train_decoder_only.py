"""The trainer runs the decoder-only (prefix LM) model on PrefixLM batches, with
per-denoiser losses and samples, from Python without gin files for the run."""

from __future__ import annotations

import copy

import pytest

import gin
from t5x_ext import train as train_lib
from t5x_ext.launch import flags as cli


def test_decoder_only_prefix_lm_trains_and_samples(tmp_path):
  cli.parse_gin(["models/decoder_only/tiny.gin"])
  model = copy.deepcopy(gin.query_parameter("MODEL/macro.value"))
  gin.clear_config(clear_constants=True)
  assert model.feature_converter_name == "PrefixLMFeatureConverter"
  result = train_lib.train(
    model=model,
    mixture_or_task_name="pydocs_prefix_lm_v1",
    task_feature_lengths={"inputs": 48, "targets": 16},
    train_steps=2,
    model_dir=str(tmp_path),
    batch_size=2,
    log_every=1,
    learning_rate=0.01,
    tensorboard=False,
    progress_bar=False,
    samples_per_mode=0,
  )
  assert int(result.state.step) == 2
  assert result.last_metrics["loss"] > 0
  assert "loss/prefix_lm" in result.last_metrics
  # tokens_per_s counts the one decoder row of inputs + targets.
  steps_per_s = result.last_metrics["steps_per_s"]
  assert result.last_metrics["tokens_per_s"] == pytest.approx(steps_per_s * 2 * 64, rel=1e-6)
