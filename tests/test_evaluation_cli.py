"""The evaluation suite end to end: `python -m t5x_ext.eval` with runs/eval_suite.gin, a
decoder-only model, and the fine-tuning probes for a step each."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
from evaluation_util import CONFIG, save_random_params

import gin
from t5x_ext import eval as eval_lib
from t5x_ext.evaluation import suite
from t5x_ext.launch import flags as cli
from t5x_ext.model import models

LENGTHS = "{'inputs': 96, 'targets': 48}"


def _gin_model(files):
  cli.parse_gin(files, ["MODEL_DIR = '/unused'"])
  model = copy.deepcopy(gin.query_parameter("MODEL/macro.value"))
  gin.clear_config(clear_constants=True)
  return model


def test_cli_runs_the_suite_and_writes_json(tmp_path, capsys):
  model = _gin_model(["local/tiny_model.gin", "runs/eval_suite.gin"])
  save_random_params(model, tmp_path / "params")
  results = eval_lib.main(
    [
      "--gin_file=local/tiny_model.gin",
      "--gin_file=runs/eval_suite.gin",
      f"--gin.MODEL_DIR='{tmp_path}'",
      f"--gin.CHECKPOINT_PATH='{tmp_path / 'params'}'",
      f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
      "--gin.BATCH_SIZE=4",
      "--gin.MAX_EVAL_BATCHES=1",
      "--gin.EVAL_SUITE_PARTS=('family_loss', 'mode_matrix')",
    ]
  )
  matrix = {f"mode_matrix/{f}/{c}" for f in suite.FAMILIES for c in suite.PREFIXES}
  assert matrix <= set(results)
  for f in suite.FAMILIES:
    assert math.isfinite(results[f"family_loss/{f}"])
    # A random model: the loss is about log(vocab) (8192 ids), whatever the prefix.
    assert 7.0 < results[f"family_loss/{f}"] < 11.0
    # family_loss reads the family's own prefix column of the matrix, and the prefix reaches
    # the model: the columns of one family (the same examples) all differ.
    row = {c: results[f"mode_matrix/{f}/{c}"] for c in suite.PREFIXES}
    assert len(set(row.values())) == len(row), row
    assert results[f"family_loss/{f}"] == row[suite.FAMILY_MODES[f]], row
  # At 96 input positions the X(mu=64) denoisers do not fit and are skipped.
  assert "denoiser_loss/X_mu3_r0.5" in results and "denoiser_loss/X_mu64_r0.5" not in results
  record = json.loads((tmp_path / "metrics" / suite.RESULTS_FILE).read_text())
  assert record["results"] == pytest.approx(results)
  assert record["checkpoint_path"] == str(tmp_path / "params")
  out = capsys.readouterr().out
  assert "| family | [NLU] | [NLG] | [S2S] | none |" in out


def test_cli_suite_needs_model_dir():
  with pytest.raises(ValueError, match="MODEL_DIR"):
    eval_lib.main(["--gin_file=local/tiny_model.gin", "--gin_file=runs/eval_suite.gin"])


def test_decoder_only_family_losses(tmp_path):
  model = models.DecoderOnlyModel(
    dataclasses.replace(CONFIG, num_encoder_layers=0, decoder_only=True)
  )
  save_random_params(model, tmp_path / "params")
  results = suite.run_suite(
    model=model,
    checkpoint_path=str(tmp_path / "params"),
    task_feature_lengths={"inputs": 96, "targets": 48},
    batch_size=4,
    max_eval_batches=1,
    parts=("family_loss",),
    family_prefix="none",
    verbose=False,
  )
  assert {f"family_loss/{f}" for f in suite.FAMILIES} <= set(results)
  assert not any(k.startswith("mode_matrix/") for k in results)
  assert all(np.isfinite(v) for v in results.values())


@pytest.mark.slow  # two fine-tunes and two evaluations, each compiling its steps
def test_probes_run_end_to_end(tmp_path):
  model = models.EncoderDecoderModel(CONFIG)
  save_random_params(model, tmp_path / "params")
  results = suite.run_suite(
    model=model,
    checkpoint_path=str(tmp_path / "params"),
    parts=("probes",),
    probe_steps=1,
    probe_batch_size=4,
    probe_eval_examples=4,
    work_dir=str(tmp_path / "work"),
    verbose=False,
  )
  assert set(results) == {
    "probe/classification/accuracy",
    "probe/generation/rouge1",
    "probe/generation/rouge2",
    "probe/generation/rougeL",
  }
  assert all(0.0 <= v <= 100.0 for v in results.values())
  for probe in ("classification", "generation"):
    assert (tmp_path / "work" / f"probe_{probe}" / "checkpoints" / "1").is_dir()
