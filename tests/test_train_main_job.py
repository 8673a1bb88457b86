"""Three training steps of the main job (gin/local/ul2_tiny.gin) through the real entry point."""

from __future__ import annotations

import os
import pathlib

from t5x_ext import train as train_lib
from t5x_ext.training import metric_writers as metrics


def test_three_steps_of_the_main_job(tmp_path, capsys):
  result = train_lib.main(
    [
      "--gin_file=gin/local/ul2_tiny.gin",
      f"--gin.MODEL_DIR='{tmp_path}'",
      "--gin.TRAIN_STEPS=3",
      "--gin.BATCH_SIZE=2",
      "--gin.LOG_EVERY=1",
      "--gin.train_script.train.sample_decode_len=4",
    ]
  )
  out = capsys.readouterr().out
  assert int(result.state.step) == 3
  # The memory plan is printed before the first step (no device memory is known on CPU), and
  # the run executes the step the plan compiled: one compile, not two.
  plan_line = next(line for line in out.splitlines() if line.startswith("Memory plan: "))
  assert " per device: parameters " in plan_line and "(batch 2, mesh " in plan_line
  assert result.trainer.compiled_train_step is not None
  assert result.trainer._train_step is result.trainer.compiled_train_step
  # Checkpoint of the last step, metrics per step with every denoiser's and mode's loss.
  assert os.listdir(tmp_path / "checkpoints") == ["3"]
  rows = metrics.read_jsonl(tmp_path / "metrics" / "train.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 3]
  logged = set().union(*rows)
  for key in (
    "loss",
    "learning_rate",
    "tokens_per_s",
    "accuracy",
    "z_loss",
    "grad_norm",
    "model_flops_per_s",
    "loss/[NLU]",
    "loss/[NLG]",
    "loss/[S2S]",
  ):
    assert key in logged, key
  assert any(k.startswith("loss/R_") for k in logged) and "loss/S" in logged
  assert list(pathlib.Path(tmp_path, "tensorboard", "train").glob("events.out.tfevents.*"))
  assert "pydocs_ul2_mod_v1" in (tmp_path / "config.gin").read_text()
  # Samples for the three modes, printed and returned.
  assert [s["mode"] for s in result.samples] == ["[NLU]", "[NLG]", "[S2S]"]
  for mode in ("[NLU]", "[NLG]", "[S2S]"):
    assert f"--- {mode}" in out
  assert result.samples[0]["inputs"].startswith("[NLU]")
  assert "<extra_id_0>" in result.samples[0]["inputs"]
