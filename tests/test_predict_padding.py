"""Decoding and scoring batches of any row count on 8 simulated CPU devices.

`hosts.predict` (samples, infer, eval, the suite, probes) and rank classification's `Scorer`
pad a process's rows to a multiple of the batch sharding with zero rows and cut the outputs
back: 1, 3 and 5 rows on the meshes data=2,fsdp=2,model=2 and data=8 give the same tokens
and scores as one device, and the main job's end-of-run samples (3 rows) decode on the 3-D
mesh. The device count must be set before JAX starts, so the checks run in a subprocess.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from t5x_ext.training import hosts

REPO = pathlib.Path(__file__).resolve().parents[1]
MESHES = {"data2_fsdp2_model2": {"data": 2, "fsdp": 2, "model": 2}, "data8": {"data": 8}}
ROWS = (1, 3, 5)


def test_pad_rows_appends_zero_rows_and_keeps_the_count():
  batch = {"a": np.arange(6, dtype=np.int32).reshape(3, 2), "b": np.ones((3,), np.float32)}
  padded, n = hosts.pad_rows(batch, 4)
  assert n == 3 and padded["a"].shape == (4, 2) and padded["b"].shape == (4,)
  np.testing.assert_array_equal(padded["a"][:3], batch["a"])
  assert not padded["a"][3:].any() and not padded["b"][3:].any()
  assert padded["a"].dtype == np.int32 and padded["b"].dtype == np.float32
  same, n = hosts.pad_rows(batch, 3)
  assert n == 3 and same["a"].shape == (3, 2)
  empty, n = hosts.pad_rows({"a": np.zeros((0, 2), np.int32)}, 4)
  assert n == 0 and empty["a"].shape == (4, 2)
  with pytest.raises(ValueError, match="row counts"):
    hosts.pad_rows({"a": np.zeros((2,)), "b": np.zeros((3,))}, 4)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out = tmp_path_factory.mktemp("predict_padding")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-m", "tests.test_predict_padding", str(out)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=1500,
  )
  lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
  assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
  return json.loads(lines[-1][len("REPORT ") :])


@pytest.mark.parametrize("family", ["encdec", "decoder_only"])
@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_any_row_count_matches_one_device(report, family, mesh):
  assert report["devices"] == 8
  for n in ROWS:
    got = report["cases"][family][mesh][str(n)]
    assert got["tokens_equal"], (family, mesh, n)
    assert got["rows"] == [n, n, n], (family, mesh, n)
    assert got["max_score_diff"] < 1e-5, (family, mesh, n, got["max_score_diff"])


def test_main_job_samples_decode_on_the_3d_mesh(report):
  samples = report["samples"]
  assert len(samples) == 3, samples  # one per mode: [NLU], [NLG], [S2S]
  assert {s["mode"] for s in samples} == {"[NLU]", "[NLG]", "[S2S]"}
  assert all(isinstance(s["prediction"], str) for s in samples)


# ---------------------------------------------------------------- the 8-device subprocess


def _batches(family: str, rng: np.random.RandomState) -> dict[str, np.ndarray]:
  """8 rows of real (non-zero) model input for `family`."""
  if family == "encdec":
    return dict(
      encoder_input_tokens=rng.randint(2, 64, (8, 7)).astype(np.int32),
      decoder_input_tokens=np.concatenate(
        [np.zeros((8, 1), np.int32), rng.randint(2, 64, (8, 4)).astype(np.int32)], axis=1
      ),
      decoder_target_tokens=rng.randint(2, 64, (8, 5)).astype(np.int32),
    )
  causal = np.zeros((8, 9), np.int32)
  for i, n in enumerate([2, 4, 1, 3, 2, 5, 3, 1]):
    causal[i, : n + 1] = 1
  tokens = rng.randint(2, 64, (8, 9)).astype(np.int32)
  return dict(
    decoder_input_tokens=tokens,
    decoder_target_tokens=tokens,
    decoder_causal_attention=causal,
  )


def _main(out_dir: str) -> None:
  import flax.linen as nn
  import jax
  import optax

  from t5x_ext import train as train_lib
  from t5x_ext.evaluation import rank_classification
  from t5x_ext.model import models
  from t5x_ext.training import partitioning
  from t5x_ext.training.trainer import Trainer
  from tests.tiny_network import tiny_config

  assert jax.device_count() == 8, jax.devices()
  families = {
    "encdec": (models.EncoderDecoderModel, tiny_config()),
    "decoder_only": (
      models.DecoderOnlyModel,
      tiny_config(decoder_only=True, num_encoder_layers=0),
    ),
  }
  cases: dict = {}
  for family, (cls, cfg) in families.items():
    model = cls(cfg)
    full = _batches(family, np.random.RandomState(0))
    local_params = nn.unbox(model.init_variables(jax.random.key(0), full)["params"])
    cases[family] = {}
    for mesh_name, shape in MESHES.items():
      trainer = Trainer(model, optax.sgd(0.0), partitioning.make_mesh(shape))
      shardings = jax.tree.map(lambda a: a.sharding, trainer.abstract_state(full).params)
      params = jax.device_put(local_params, shardings)
      scorer = rank_classification.Scorer(trainer)
      cases[family][mesh_name] = {}
      for n in ROWS:
        batch = {k: v[:n] for k, v in full.items()}
        want_tokens = np.asarray(model.predict_batch(local_params, batch, decode_len=4))
        want_scores = np.asarray(model.score_batch(local_params, batch))
        tokens, scores = hosts.predict(trainer, params, batch, decode_len=4, with_scores=True)
        rank_scores = scorer(params, batch)
        cases[family][mesh_name][str(n)] = {
          "rows": [len(tokens), len(scores), len(rank_scores)],
          "tokens_equal": bool(np.array_equal(tokens, want_tokens)),
          "max_score_diff": float(
            max(np.max(np.abs(scores - want_scores)), np.max(np.abs(rank_scores - want_scores)))
          ),
        }
  # The main job's command on the 3-D mesh: its samples are 3 rows, one per mode.
  result = train_lib.main(
    [
      "--gin_file=gin/local/ul2_tiny.gin",
      f"--gin.MODEL_DIR='{os.path.join(out_dir, 'main_job')}'",
      f"--gin.MESH_SHAPE={MESHES['data2_fsdp2_model2']!r}",
      "--gin.TRAIN_STEPS=1",
      "--gin.LOG_EVERY=1",
      "--gin.EVAL_PERIOD=0",
      "--gin.train_script.train.sample_decode_len=4",
      "--gin.train_script.train.plan_memory=False",
      "--gin.train_script.train.progress_bar=False",
    ]
  )
  report = {"devices": jax.device_count(), "cases": cases, "samples": result.samples}
  print("REPORT " + json.dumps(report), flush=True)


if __name__ == "__main__":
  _main(sys.argv[1])
