"""Self-pretraining (Amos et al. 2023): a denoising task over a downstream task's train inputs.

The registered task reads the topic task's train inputs and nothing else (no validation text,
no labels), its examples come from the chosen objective, and the one-command experiment
pretrains, fine-tunes from that checkpoint and evaluates, then skips finished stages.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks
from t5x_ext.experiments import self_pretrain
from tasks import finetune, pretraining
from tasks import self_pretraining as sp

REPO = pathlib.Path(__file__).resolve().parents[1]

TOPIC = "pydocs_topic_classification_v1"
LENGTHS = {"inputs": 512, "targets": 128}
NGRAM = 8


def _texts(ds) -> list[str]:
  return [ex["text"].decode() for ex in ds.as_numpy_iterator()]


def test_documents_are_the_train_inputs_only():
  name = sp.register_self_pretraining(TOPIC, "ul2_mod")
  assert name == "pydocs_topic_classification_v1_self_ul2_mod_v1"
  task = seqio.get_mixture_or_task(name)
  assert tuple(task.splits) == ("train",)
  ds = task.source.get_dataset(split="train", shuffle=False)
  # One feature, the text: no targets, no label.
  assert set(ds.element_spec) == {"text"}
  docs = _texts(ds)
  train = finetune.topic_examples("train")
  # Exactly the task's train inputs, in its order (the task's text, before its [NLU] ids).
  assert docs == [f"topic: {e['text']}" for e in train]
  val = finetune.topic_examples("validation")
  assert val and not any(v["text"] in d for v in val for d in docs)
  labels = set(finetune.TOPIC_PACKAGES.values())
  assert not set(docs) & labels and not any(d.endswith(tuple(labels)) for d in docs)
  with pytest.raises(ValueError, match="only the 'train' split"):
    next(iter(task.get_dataset(LENGTHS, split="validation", shuffle=False)))


def _ngrams(ids, n=NGRAM) -> set[tuple[int, ...]]:
  return {tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)}


def test_examples_hold_train_text_and_no_validation_text():
  # The prefix LM keeps text contiguous: inputs + targets is a piece of the document stream.
  name = sp.register_self_pretraining(TOPIC, "prefix_lm")
  task = seqio.get_mixture_or_task(name)
  voc = task.output_features["targets"].vocabulary
  train, val = set(), set()
  for e in finetune.topic_examples("train"):
    train |= _ngrams(voc.encode(f"topic: {e['text']}"))
  for e in finetune.topic_examples("validation"):
    val |= _ngrams(voc.encode(f"topic: {e['text']}"))
  val_only = val - train
  assert len(val_only) > 1000
  hits = collections.Counter()
  ds = task.get_dataset(LENGTHS, split="train", shuffle=False, seed=0)
  for ex in ds.take(40).as_numpy_iterator():
    ids = [*ex["inputs"][:-1], *ex["targets"][:-1]]  # less each EOS
    for g in _ngrams(ids):
      hits["val_only" if g in val_only else "train" if g in train else "neither"] += 1
  assert hits["val_only"] == 0, hits
  # Windows across a document boundary are in neither set; everything else is train text.
  assert hits["train"] > 0.8 * sum(hits.values()), hits


@pytest.mark.parametrize("objective", ["ul2_mod", "bart"])
def test_examples_come_from_the_objective(objective):
  name = sp.register_self_pretraining(TOPIC, objective, check_lengths=LENGTHS)
  assert name == f"{TOPIC}_self_{objective}_v1"
  task = seqio.get_mixture_or_task(name)
  denoisers = pretraining.OBJECTIVES[objective]
  assert tasks.task_denoisers(task) == denoisers
  voc = task.output_features["targets"].vocabulary
  assert voc is seqio.get_mixture_or_task(TOPIC).output_features["inputs"].vocabulary
  prefixes = [list(voc.encode(d.mode)) if d.mode else [] for d in denoisers]
  seen = collections.Counter()
  ds = task.get_dataset(LENGTHS, split="train", shuffle=False, seed=0)
  for ex in ds.take(60).as_numpy_iterator():
    k = int(ex["denoiser_id"])
    seen[k] += 1
    assert 0 <= k < len(denoisers)
    assert list(ex["inputs"][: len(prefixes[k])]) == prefixes[k]
    assert len(ex["inputs"]) <= LENGTHS["inputs"] and len(ex["targets"]) <= LENGTHS["targets"]
  if objective == "ul2_mod":
    assert len(seen) >= 4, seen  # R, X and S denoisers all drawn
  else:
    assert set(seen) == {0}
  # Registering again replaces the task with an identical one.
  assert sp.register_self_pretraining(TOPIC, objective) == name


def test_bad_arguments_name_the_setting():
  with pytest.raises(ValueError, match="not one of"):
    sp.register_self_pretraining(TOPIC, "no_such_objective")
  with pytest.raises(ValueError, match="not registered"):
    sp.register_self_pretraining("no_such_task_v1", "ul2_mod")
  with pytest.raises(ValueError, match="no 'question' feature"):
    sp.register_self_pretraining(TOPIC, "ul2_mod", inputs_key="question")
  # Other denoisers under a name of one's own.
  name = sp.register_self_pretraining(
    TOPIC, "sc_only", denoisers=pretraining.OBJECTIVES["span_corruption"]
  )
  assert tasks.task_denoisers(seqio.get_mixture_or_task(name)) == tuple(
    pretraining.OBJECTIVES["span_corruption"]
  )


def test_decoded_inputs_where_the_task_keeps_no_text():
  # A task whose source already holds ids (no `tokenize`, so no `inputs_pretokenized`).
  voc = seqio.get_mixture_or_task(TOPIC).output_features["inputs"].vocabulary
  texts = ["first train document here", "second train document"]

  def dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files, seed
    rows = [voc.encode(t) for t in texts] if split == "train" else [voc.encode("val")]
    return tf.data.Dataset.from_generator(
      lambda: ({"inputs": np.array(r, np.int32), "targets": np.array([5], np.int32)} for r in rows),
      output_signature={
        "inputs": tf.TensorSpec([None], tf.int32),
        "targets": tf.TensorSpec([None], tf.int32),
      },
    )

  pretraining.register_task(
    "ids_only_v1",
    source=seqio.FunctionDataSource(dataset_fn, splits=("train", "validation")),
    preprocessors=[seqio.preprocessors.append_eos_after_trim],
    output_features=pretraining.output_features(voc),
  )
  name = sp.register_self_pretraining("ids_only_v1", "ul2_mod")
  docs = _texts(seqio.get_mixture_or_task(name).source.get_dataset(split="train"))
  assert docs == texts


# ------------------------------------------------------------------ the one-command experiment

TINY_FLAGS = [
  "--gin.network.TransformerConfig.emb_dim=32",
  "--gin.network.TransformerConfig.num_heads=2",
  "--gin.network.TransformerConfig.head_dim=16",
  "--gin.network.TransformerConfig.mlp_dim=64",
  "--gin.network.TransformerConfig.num_encoder_layers=1",
  "--gin.network.TransformerConfig.num_decoder_layers=1",
]


def _argv(model_dir):
  return [
    "--gin_file=experiments/self_pretrain_topic_tiny.gin",
    f"--gin.MODEL_DIR='{model_dir}'",
    "--gin.PRETRAIN_STEPS=2",
    "--gin.FINETUNE_STEPS=2",
    "--gin.PRETRAIN_BATCH_SIZE=2",
    "--gin.BATCH_SIZE=2",
    "--gin.LOG_EVERY=1",
    "--gin.EVAL_BATCH_SIZE=4",
    "--gin.EVAL_BATCHES=1",
    "--gin.EVALUATOR_NUM_EXAMPLES=4",
    *TINY_FLAGS,
  ]


def _mtimes(root: pathlib.Path) -> dict[str, int]:
  files = [p for p in root.rglob("*") if p.is_file() and p.name != "config.gin"]
  files = [p for p in files if p.name != self_pretrain.RESULTS_JSON]
  return {str(p): p.stat().st_mtime_ns for p in files}


def test_one_command_pretrains_finetunes_evaluates_then_skips(tmp_path):
  root = tmp_path / "self_pt"
  # The command itself, as a user runs it (under a timeout: a hang fails the test).
  proc = subprocess.run(
    [sys.executable, "-m", "t5x_ext.experiments.self_pretrain", *_argv(root)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  for stage in (self_pretrain.PRETRAIN_DIR, self_pretrain.FINETUNE_DIR):
    assert (root / stage / "checkpoints" / "2").is_dir(), stage
    marker = json.loads((root / stage / self_pretrain.STAGE_MARKER).read_text())
    assert marker["step"] == 2
  record = json.loads((root / self_pretrain.RESULTS_JSON).read_text())
  assert record["config"]["pretrain_task"] == f"{TOPIC}_self_ul2_mod_v1"
  assert record["stages"]["self_pretrain"]["config"]["task"] == f"{TOPIC}_self_ul2_mod_v1"
  assert record["stages"]["finetune"]["config"]["start_from"] == "self_pretrain"
  assert sorted(record["invocation"]["trained"]) == ["finetune", "self_pretrain"]
  assert record["eval"]["step"] == 2
  assert 0 <= record["eval"][f"eval/{TOPIC}/accuracy"] <= 100
  assert 0 < record["eval"]["eval/loss"] < 20
  assert "Initialised params from" in proc.stdout and "self_pretrain" in proc.stdout

  # Again: every stage and the evaluation are skipped, nothing is rewritten.
  before = _mtimes(root)
  again = self_pretrain.main(_argv(root))
  assert again["invocation"]["trained"] == [] and again["invocation"]["resumed"] == []
  assert again["invocation"]["evaluated"] == []
  assert again["invocation"]["skipped"] == ["self_pretrain", "finetune", "eval"]
  assert again["eval"] == record["eval"]
  assert _mtimes(root) == before


def test_no_self_pretraining_fine_tunes_from_scratch(tmp_path):
  # The comparison's from-scratch arm: PRETRAIN_STEPS=0 registers and trains no pretraining.
  root = tmp_path / "scratch"
  record = self_pretrain.main([*_argv(root), "--gin.PRETRAIN_STEPS=0"])
  assert not (root / self_pretrain.PRETRAIN_DIR).exists()
  assert (root / self_pretrain.FINETUNE_DIR / "checkpoints" / "2").is_dir()
  assert record["config"]["pretrain_task"] is None and record["config"]["objective"] is None
  assert record["stages"]["finetune"]["config"]["start_from"] is None
  assert record["invocation"]["trained"] == ["finetune"]
  assert record["invocation"]["evaluated"] == ["finetune"]
  assert record["eval"]["step"] == 2
