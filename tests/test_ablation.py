"""The ablation runner (t5x_ext.experiments.ablation): the whole path at smoke scale.

One command through gin (a tiny network, 2 steps, 2 runs + a second seed, a small eval):
ablation.json holds every run's raw results, the Markdown table's relative changes follow
from the raw means, the PNG is a PNG, a second call trains and evaluates nothing, and a run
whose checkpoint is short of TRAIN_STEPS resumes from it.
"""

from __future__ import annotations

import json
import pathlib
import re
import statistics

import pytest

from t5x_ext.experiments import ablation, ablation_report, ablation_runs

# A network small enough that compiling dominates: 1+1 layers of width 32 over the embedded
# corpus's vocabulary.
TINY_FLAGS = [
  "--gin.network.TransformerConfig.emb_dim=32",
  "--gin.network.TransformerConfig.num_heads=2",
  "--gin.network.TransformerConfig.head_dim=16",
  "--gin.network.TransformerConfig.mlp_dim=64",
  "--gin.network.TransformerConfig.num_encoder_layers=1",
  "--gin.network.TransformerConfig.num_decoder_layers=1",
]


def _argv(model_dir, *, steps=2, runs=("sc_ed", "ul2_dec"), extra="{'sc_ed': [1]}"):
  return [
    "--gin_file=experiments/ablation_tiny_cpu.gin",
    f"--gin.MODEL_DIR='{model_dir}'",
    f"--gin.TRAIN_STEPS={steps}",
    f"--gin.RUNS={list(runs)!r}",
    f"--gin.EXTRA_SEEDS={extra}",
    "--gin.BATCH_SIZE=2",
    "--gin.LOG_EVERY=1",
    "--gin.EVAL_PARTS=('family_loss', 'mode_matrix')",
    "--gin.EVAL_BATCH_SIZE=2",
    "--gin.EVAL_BATCHES=1",
    *TINY_FLAGS,
  ]


def _mtimes(root: pathlib.Path) -> dict[str, float]:
  files = list(root.glob("runs/*/" + ablation.TRAIN_MARKER))
  files += list(root.glob(f"runs/*/{ablation.EVAL_DIR}/*.json"))
  files += list(root.glob("runs/*/checkpoints/*"))
  return {str(p): p.stat().st_mtime_ns for p in files}


def _table_after(md: str, heading: str) -> list[list[str]]:
  lines = md.split(heading, 1)[1].splitlines()
  rows, started = [], False
  for line in lines:
    if line.startswith("|"):
      started = True
      if not set(line.replace("|", "").strip()) <= set("-"):
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    elif started:
      break
  return rows


def test_ablation_end_to_end_then_skip_then_resume(tmp_path):
  root = tmp_path / "abl"
  record = ablation.main(_argv(root))

  # ---- ablation.json: every run with its raw results, the config and timings.
  saved = json.loads((root / "ablation.json").read_text())
  assert set(saved["runs"]) == {"sc_ed_seed0", "sc_ed_seed1", "ul2_dec_seed0"}
  assert saved["config"]["baseline"] == "sc_ed"
  assert saved["config"]["positions_per_run"] == 2 * 2 * (512 + 128)
  assert saved["machine"]["cores"] >= 1
  for run_id, run in saved["runs"].items():
    for fam in ("R", "X", "S"):
      assert 0 < run["results"][f"family_loss/{fam}"] < 20, run_id
      for col in ("[NLU]", "[NLG]", "[S2S]", "none"):
        assert f"mode_matrix/{fam}/{col}" in run["results"]
    assert run["train_seconds"] > 0 and run["params"] > 1e5
    assert run["positions_per_step"] == 2 * 640
  assert saved["runs"]["ul2_dec_seed0"]["family_prefix"] == "matching"
  assert saved["runs"]["sc_ed_seed0"]["family_prefix"] == "none"
  assert saved["runs"]["ul2_dec_seed0"]["architecture"] == "decoder_only"
  assert sorted(record["invocation"]["trained"]) == sorted(saved["runs"])
  # Seeds differ, so the two SC runs do too (the spread is a real spread).
  sc = [saved["runs"][f"sc_ed_seed{k}"]["results"]["family_loss/R"] for k in (0, 1)]
  assert sc[0] != sc[1]
  assert saved["summary"]["sc_ed"]["mean"]["family_loss/R"] == pytest.approx(statistics.fmean(sc))
  assert saved["summary"]["sc_ed"]["std"]["family_loss/R"] == pytest.approx(statistics.stdev(sc))

  # ---- the Markdown table: relative change recomputed from the raw means in the json.
  md = (root / "ablation.md").read_text()
  raw = _table_after(md, "## Raw scores")
  rel = _table_after(md, "## Relative change against SC (ED)")
  assert raw[0][:4] == ["run", "backbone", "params", "seeds"]
  assert rel[0] == ["run", "R loss ↓", "X loss ↓", "S loss ↓"]
  base = saved["summary"]["sc_ed"]["mean"]
  ul2 = saved["summary"]["ul2_dec"]["mean"]
  row = next(r for r in rel if r[0] == "UL2 (Dec)")
  for cell, fam in zip(row[1:], ("R", "X", "S")):
    key = f"family_loss/{fam}"
    expected = 100 * (base[key] - ul2[key]) / base[key]  # positive = lower loss than SC
    assert float(cell.rstrip("%")) == pytest.approx(expected, abs=0.051)
  sc_row = next(r for r in raw if r[0] == "SC (ED)")
  assert re.fullmatch(r"\d+\.\d{3} ± \d+\.\d{3}", sc_row[4])  # two seeds: mean ± std
  assert float(sc_row[4].split(" ± ")[0]) == pytest.approx(base["family_loss/R"], abs=6e-4)
  assert "## Mode-prefix matrix" in md and "UL2 (Dec)" in md.split("## Mode-prefix matrix")[1]

  # ---- the figure is a real PNG.
  png = (root / "ablation.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
  width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
  assert width > 600 and height > 300

  # ---- the same command again: nothing is trained or evaluated, nothing rewritten.
  before = _mtimes(root)
  again = ablation.main(_argv(root))
  assert again["invocation"]["trained"] == [] and again["invocation"]["resumed"] == []
  assert again["invocation"]["evaluated"] == []
  assert sorted(again["invocation"]["skipped"]) == sorted(saved["runs"])
  assert _mtimes(root) == before
  assert again["runs"]["sc_ed_seed1"]["results"] == saved["runs"]["sc_ed_seed1"]["results"]

  # ---- more steps: the run resumes from its step-2 checkpoint, not from scratch.
  resumed = ablation.main(_argv(root, steps=4, runs=("sc_ed",), extra="{}"))
  assert resumed["invocation"]["resumed"] == ["sc_ed_seed0"]
  marker = json.loads((root / "runs/sc_ed_seed0" / ablation.TRAIN_MARKER).read_text())
  assert [(s["from_step"], s["to_step"]) for s in marker["segments"]] == [(0, 2), (2, 4)]
  steps = [
    json.loads(line)["step"]
    for line in (root / "runs/sc_ed_seed0/metrics/train.jsonl").read_text().splitlines()
  ]
  assert steps == [1, 2, 3, 4]
  assert resumed["invocation"]["evaluated"] == ["sc_ed_seed0: family_loss, mode_matrix"]


def test_relative_improvement_signs():
  assert ablation_report.relative_improvement(2.0, 4.0, lower_is_better=True) == 50.0
  assert ablation_report.relative_improvement(5.0, 4.0, lower_is_better=True) == -25.0
  assert ablation_report.relative_improvement(60.0, 50.0, lower_is_better=False) == 20.0
  assert ablation_report.relative_improvement(1.0, 0.0, lower_is_better=True) is None


def test_summary_uses_each_runs_own_rank_prefix():
  def run(name, seed, prefix, nlu, none):
    return {
      "run": name,
      "label": name,
      "seed": seed,
      "objective": "x",
      "architecture": "encoder_decoder",
      "params": 1,
      "family_prefix": prefix,
      "results": {
        "rank_classification/zero_shot/[NLU]/accuracy": nlu,
        "rank_classification/zero_shot/none/accuracy": none,
      },
    }

  record = {
    "config": {"runs": ["a", "b"], "baseline": "a"},
    "runs": {"a0": run("a", 0, "none", 10.0, 40.0), "b0": run("b", 0, "matching", 50.0, 0.0)},
  }
  out = ablation_report.summarize(record)
  key = "rank_classification/zero_shot/own/accuracy"
  assert out["summary"]["a"]["mean"][key] == 40.0  # no prefixes: the "none" column
  assert out["summary"]["b"]["mean"][key] == 50.0  # prefixes: [NLU]
  assert out["summary"]["b"]["relative"][key] == pytest.approx(25.0)


def test_bad_settings_fail_before_training(tmp_path):
  from t5x_ext.model import models, network

  cfg = network.TransformerConfig(
    vocab_size=8192, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, num_encoder_layers=1,
    num_decoder_layers=1, dtype="float32",
  )  # fmt: skip
  model = models.EncoderDecoderModel(cfg)
  with pytest.raises(ValueError, match="unknown ablation run 'gpt'"):
    ablation.run_ablation(model=model, model_dir=str(tmp_path), train_steps=1, runs=["gpt"])
  with pytest.raises(ValueError, match="baseline = 'sc_ed' is not among RUNS"):
    ablation.run_ablation(model=model, model_dir=str(tmp_path), train_steps=1, runs=["ul2_ed"])
  with pytest.raises(ValueError, match="CORPUS = 'nosuchcorpus'"):
    ablation.run_ablation(
      model=model, model_dir=str(tmp_path), train_steps=1, corpus="nosuchcorpus"
    )
  assert not list(tmp_path.iterdir())


def test_decoder_only_twin_is_compute_matched():
  from t5x_ext.model import models, network

  cfg = network.TransformerConfig(
    vocab_size=512, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, num_encoder_layers=3,
    num_decoder_layers=3, dtype="float32",
  )  # fmt: skip
  ed = models.EncoderDecoderModel(cfg, z_loss=1e-3)
  plm = ablation_runs.model_for(ablation_runs.get_run("plm_dec"), ed)
  clm = ablation_runs.model_for(ablation_runs.get_run("clm_dec"), ed)
  assert plm.config.num_decoder_layers == 3 and plm.config.decoder_only
  assert plm.inputs_bidirectional_attention and not clm.inputs_bidirectional_attention
  assert plm.z_loss == clm.z_loss == 1e-3
  assert ablation_runs.get_run("clm_dec").train_lengths({"inputs": 512, "targets": 128}) == {
    "targets": 640
  }
  lengths = {"inputs": 16, "targets": 8}
  assert ablation_runs.param_count(ed, lengths) > ablation_runs.param_count(plm, lengths)
