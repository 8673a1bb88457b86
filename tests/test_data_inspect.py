"""Tests of the data inspector (`python -m t5x_ext.data inspect`)."""

import collections
import os
import pathlib
import subprocess
import sys

import pytest
import seqio

import tasks
from t5x_ext.data import __main__ as cli
from t5x_ext.data import inspect
from tasks import pretraining

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_render_marks_sentinels_and_eos():
  v = tasks.default_vocabulary()
  ids = v.encode("[NLU] hello") + [8099] + v.encode("world") + [8098, 1]
  text = inspect.render(ids, v)
  assert text.startswith("[NLU] hello ⟦0⟧ world ⟦1⟧")
  assert text.endswith("</s>")
  assert inspect.sentinel_index(8000, v) == 99 and inspect.sentinel_index(7999, v) is None


def test_statistics_match_the_denoisers():
  lengths = {"inputs": 512, "targets": 512}
  rows = inspect.denoiser_statistics("pydocs_ul2_mod_v1", lengths, num_examples=400, seed=0)
  by_name = {r["name"]: r for r in rows}
  assert set(by_name) == {d.name for d in tasks.OBJECTIVES["ul2_mod"]}
  for name in ("R_mu3_r0.15", "X_mu3_r0.5"):
    r = by_name[name]
    assert abs(r["noise_density"] - r["spec_noise_density"]) < 0.03, r
    assert abs(r["mean_span_length"] - 3) < 0.5, r
    assert r["inputs_max"] <= 512 and r["targets_max"] <= 512
  assert by_name["S"]["mean_span_length"] is None
  # The counts behind the shares, from the task's own stream of the same 400 examples.
  task = seqio.get_mixture_or_task("pydocs_ul2_mod_v1")
  ds = task.get_dataset(lengths, split="train", shuffle=False, seed=0, num_epochs=None)
  counts = collections.Counter(int(ex["denoiser_id"]) for ex in ds.take(400).as_numpy_iterator())
  names = [d.name for d in pretraining.task_denoisers(task)]
  assert {r["name"]: r["examples"] for r in rows} == {names[k]: n for k, n in counts.items()}
  for r in rows:
    assert r["share"] == counts[names.index(r["name"])] / 400, r
  for r in rows:  # 400 examples: a loose bound (the objectives' tests check +-3% at scale)
    assert abs(r["share"] - r["spec_share"]) < 0.08, r
  assert {r["mode"] for r in rows} == {"[NLU]", "[NLG]", "[S2S]"}


def test_main_prints_examples_and_stats(capsys):
  rc = cli.main(
    [
      "inspect",
      "--task",
      "pydocs_ul2_mod_v1",
      "--n",
      "6",
      "--inputs",
      "512",
      "--targets",
      "512",
      "--stats_examples",
      "150",
    ]
  )
  assert rc == 0
  out = capsys.readouterr().out
  assert "--- example 5" in out and "⟦0⟧" in out
  assert "denoiser=" in out and "mode=[" in out
  assert "per-denoiser statistics" in out and "noise density" in out and "mean span" in out
  assert "packed" in out and "examples/row" in out


def test_main_reads_task_and_lengths_from_gin(capsys):
  rc = cli.main(
    [
      "inspect",
      "--n",
      "1",
      "--stats_examples",
      "40",
      "--gin.MIXTURE_OR_TASK_NAME='pydocs_prefix_lm_v1'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 64}",
    ]
  )
  assert rc == 0
  out = capsys.readouterr().out
  assert "task pydocs_prefix_lm_v1" in out and "'inputs': 96" in out


def test_unknown_task_is_an_error(capsys):
  with pytest.raises(SystemExit):
    cli.main(["inspect", "--task", "no_such_task"])
  assert "no_such_task" in capsys.readouterr().err


def test_module_runs_as_a_program():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "t5x_ext.data",
      "inspect",
      "--task",
      "pydocs_topic_classification_v1",
      "--n",
      "2",
      "--inputs",
      "256",
      "--targets",
      "8",
      "--stats_examples",
      "50",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    timeout=180,
    check=True,
  ).stdout.decode()
  assert "[NLU] topic:" in out and "non-padding" in out
