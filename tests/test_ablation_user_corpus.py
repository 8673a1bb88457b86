"""The ablation and the evaluation suite on a corpus a user registers from files.

docs/ablation.md's recipe: a module of the user's registers a corpus with
`tasks.register_text_files` (JSONL or plain text), `--gin.MIXTURE_OR_TASK_MODULE` names it
and `--gin.CORPUS` picks it. The suite's eval tasks must read that corpus as its pretraining
tasks do (the text-files reading step), which the first test checks on the data alone and
the second through the whole ablation command, for both formats.
"""

from __future__ import annotations

import json
import random
import re
import sys
import textwrap

import pytest
import seqio

import tasks
from tasks import evaluation as eval_tasks
from tasks import pretraining

WORDS = (
  "the harbour lantern glows over quiet pebble streets while a marmalade cat watches "
  "old telescopes turn toward distant zanzibar stars and every quokka sleeps"
).split()


def _documents(n: int, seed: int) -> list[str]:
  rng = random.Random(seed)
  return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 140))) + "." for _ in range(n)]


def _write_corpus(root, fmt: str, *, train: int = 48, validation: int = 12) -> dict[str, str]:
  """Writes train and validation files of `fmt` ("jsonl": field `body`; "text")."""
  out = {}
  for split, n, seed in (("train", train, 0), ("validation", validation, 1)):
    docs = _documents(n, seed)
    if fmt == "jsonl":
      path = root / f"{split}.jsonl"
      lines = [json.dumps({"id": i, "body": d}) for i, d in enumerate(docs)]
    else:
      path = root / f"{split}.txt"
      lines = docs
    path.write_text("\n".join(lines) + "\n\n")  # a trailing blank line, as files often have
    out[split] = str(path)
  return out


def _register(root, fmt: str, prefix: str) -> list[str]:
  kwargs = {"format": "jsonl", "text_key": "body"} if fmt == "jsonl" else {"format": "text"}
  return tasks.register_text_files(prefix, _write_corpus(root, fmt), **kwargs)


@pytest.mark.parametrize("fmt", ["jsonl", "text"])
def test_family_tasks_read_the_corpus_like_its_pretraining_tasks(tmp_path, fmt):
  prefix = f"user_{fmt}"
  _register(tmp_path, fmt, prefix)
  base = eval_tasks.corpus_task(prefix)
  reading = pretraining.reading_preprocessors(base)
  assert len(reading) == 1  # the text-files step: numbered lines -> {"text": document}
  assert pretraining.text_key(base) == "text"
  voc = base.output_features["targets"].vocabulary
  lengths = {"inputs": 128, "targets": 64}
  for family in ("R", "X", "S"):
    # X(mu=64) needs 512 input positions: left out at these lengths, as the suite does.
    denoisers = [d for d in eval_tasks.family_denoisers(family) if d.mean_span_length < 64]
    name = eval_tasks.register_family_task(prefix, family, denoisers=denoisers)
    task = seqio.get_mixture_or_task(name)
    assert tuple(task.preprocessors[: len(reading)]) == reading
    ds = task.get_dataset(lengths, split="validation", shuffle=False, seed=0, num_epochs=1)
    exs = list(ds.take(8).as_numpy_iterator())
    assert len(exs) == 8, family
    chars = 0
    for ex in exs:
      # Pieces of the corpus's words, not JSON syntax, ids or file names: documents were read.
      for key in ("inputs", "targets"):
        ids = [int(t) for t in ex[key] if t < voc.vocab_size - voc.extra_ids]
        text = voc.decode(ids)
        assert re.fullmatch(r"[a-z. ]*", text), (key, text)
        assert "body" not in text
        chars += len(text)
    assert chars > 8 * 40, family
  # Every objective of the corpus keeps the reading step (the same one object).
  for objective in pretraining.OBJECTIVES:
    task = seqio.get_mixture_or_task(f"{prefix}_{objective}_v1")
    assert pretraining.reading_preprocessors(task) == reading, objective


# The smoke: a network as small as tests/test_ablation.py's, one run (the baseline), 2 steps
# at short lengths, the two cheap suite parts.
TINY_FLAGS = [
  "--gin.network.TransformerConfig.emb_dim=32",
  "--gin.network.TransformerConfig.num_heads=2",
  "--gin.network.TransformerConfig.head_dim=16",
  "--gin.network.TransformerConfig.mlp_dim=64",
  "--gin.network.TransformerConfig.num_encoder_layers=1",
  "--gin.network.TransformerConfig.num_decoder_layers=1",
]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
  """Writes a user's task module registering a JSONL and a text corpus; returns its name."""
  files = {}
  for fmt in ("jsonl", "text"):
    (tmp_path / fmt).mkdir()
    files[fmt] = _write_corpus(tmp_path / fmt, fmt)
  name = f"user_corpus_tasks_{tmp_path.name.replace('-', '_')}"
  (tmp_path / f"{name}.py").write_text(
    textwrap.dedent(
      f"""
      import tasks

      tasks.register_text_files(
        "myjsonl", {files["jsonl"]!r}, format="jsonl", text_key="body"
      )
      tasks.register_text_files("mytext", {files["text"]!r}, format="text")
      """
    )
  )
  monkeypatch.syspath_prepend(str(tmp_path))
  yield name
  sys.modules.pop(name, None)


@pytest.mark.parametrize("corpus", ["myjsonl", "mytext"])
def test_ablation_smoke_on_a_user_corpus_from_mixture_or_task_module(tmp_path, user_module, corpus):
  from t5x_ext.experiments import ablation

  root = tmp_path / "abl"
  record = ablation.main(
    [
      "--gin_file=experiments/ablation_tiny_cpu.gin",
      f"--gin.MIXTURE_OR_TASK_MODULE='{user_module}'",
      f"--gin.CORPUS='{corpus}'",
      f"--gin.MODEL_DIR='{root}'",
      "--gin.TRAIN_STEPS=2",
      "--gin.RUNS=['sc_ed']",
      "--gin.EXTRA_SEEDS={}",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 32}",
      "--gin.BATCH_SIZE=2",
      "--gin.LOG_EVERY=1",
      "--gin.EVAL_PARTS=('family_loss', 'mode_matrix')",
      "--gin.EVAL_BATCH_SIZE=2",
      "--gin.EVAL_BATCHES=1",
      *TINY_FLAGS,
    ]
  )
  saved = json.loads((root / "ablation.json").read_text())
  assert saved["config"]["corpus"] == corpus
  run = saved["runs"]["sc_ed_seed0"]
  assert record["invocation"]["trained"] == ["sc_ed_seed0"]
  for fam in ("R", "X", "S"):
    assert 0 < run["results"][f"family_loss/{fam}"] < 20, fam
    assert f"mode_matrix/{fam}/none" in run["results"]
