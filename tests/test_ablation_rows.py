"""Rows of the ablation runner that map to the other seq2seq objectives (issue 19).

Each row resolves to the task `tasks.pretraining` registers for the corpus, and the task's
denoisers are the objective's.
"""

from __future__ import annotations

import seqio

import tasks
from t5x_ext import objectives
from t5x_ext.experiments import ablation_runs


def test_bart_row_resolves_to_the_registered_task():
  from tasks import pretraining

  for corpus in ("pydocs", "c4"):
    task = seqio.get_mixture_or_task(f"{corpus}_bart_v1")
    assert tasks.task_denoisers(task) == objectives.BART_LARGE
  spec = ablation_runs.get_run("bart_ed")
  assert spec.objective == "bart" and spec.label == "BART (ED)"
  assert spec.architecture == ablation_runs.ENCODER_DECODER and not spec.causal
  assert spec.family_prefix == "none"
  name = spec.task_name("pydocs")
  assert name == "pydocs_bart_v1" and name in seqio.TaskRegistry.names()
  assert spec.train_lengths({"inputs": 512, "targets": 128}) == {"inputs": 512, "targets": 128}
  # The ablation's lengths fit BART's noises with the embedded vocabulary.
  voc = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
  pretraining.validate(
    objectives.BART_LARGE, name, vocabulary=voc, sequence_length={"inputs": 512, "targets": 128}
  )


def test_bart_row_examples_fit_the_ablation_lengths():
  task = seqio.get_mixture_or_task("pydocs_bart_v1")
  ds = task.get_dataset({"inputs": 512, "targets": 128}, split="validation", shuffle=False)
  n = 0
  for ex in ds.take(20).as_numpy_iterator():
    assert 0 < len(ex["inputs"]) <= 512 and 0 < len(ex["targets"]) <= 128
    n += 1
  assert n == 20
