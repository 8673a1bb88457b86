"""Tests of the `tasks` registry: embedded corpus, vocabulary, pretraining tasks, factories."""

import ast
import json
import pathlib
import re
import subprocess
import sys

import pytest
import seqio

import tasks
from t5x_ext import objectives
from tasks import corpus, finetune, pretraining, vocab

REPO = pathlib.Path(__file__).resolve().parents[1]
OBJECTIVE_NAMES = (
  "ul2_mod",
  "ul2r_mod",
  "span_corruption",
  "prefix_lm",
  "causal_lm",
  "ul2_mod_noprefix",
  "sclm",
  "bart",
  "codet5p",
)
LENGTHS = {"inputs": 128, "targets": 128}


def test_corpus_is_deterministic_and_split(monkeypatch):
  docs = corpus.documents()
  assert len(docs) > 300
  ids = [d["id"] for d in docs]
  assert len(set(ids)) == len(ids)
  train, val = corpus.split_documents("train"), corpus.split_documents("validation")
  assert len(train) + len(val) == len(docs)
  assert 0.02 < len(val) / len(docs) < 0.10
  assert not {d["id"] for d in train} & {d["id"] for d in val}
  assert any(d["source"].startswith("pydoc:") for d in docs)
  assert any(d["source"] == "json" for d in docs)
  # Rebuilding from scratch gives the same corpus as the cached one.
  rebuilt = corpus._build_documents()
  assert rebuilt == list(docs)
  # The fingerprint is a function of the corpus text: the rebuilt corpus gives the same one
  # (not the memoised value), and one changed character or id gives another.
  fingerprint = corpus.corpus_fingerprint()
  assert re.fullmatch("[0-9a-f]{16}", fingerprint), fingerprint

  def fingerprint_of(documents):
    monkeypatch.setattr(corpus, "documents", lambda: tuple(documents))
    corpus.corpus_fingerprint.cache_clear()
    return corpus.corpus_fingerprint()

  i = len(rebuilt) // 2
  try:
    assert fingerprint_of(rebuilt) == fingerprint
    changed_text = {**rebuilt[i], "text": rebuilt[i]["text"] + "#"}
    assert fingerprint_of([*rebuilt[:i], changed_text, *rebuilt[i + 1 :]]) != fingerprint
    changed_id = {**rebuilt[i], "id": rebuilt[i]["id"] + "#"}
    assert fingerprint_of([*rebuilt[:i], changed_id, *rebuilt[i + 1 :]]) != fingerprint
    assert fingerprint_of(rebuilt[:-1]) != fingerprint
  finally:
    monkeypatch.undo()
    corpus.corpus_fingerprint.cache_clear()
  assert corpus.corpus_fingerprint() == fingerprint
  with pytest.raises(ValueError, match="split='test'"):
    corpus.split_documents("test")


def test_default_vocabulary_layout():
  v = tasks.default_vocabulary()
  assert v.vocab_size == 8100
  assert v.extra_ids == 100
  assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
  assert v.bos_id == -1
  assert v.encode("<extra_id_0>")[-1] == 8099
  text = "Return the value of the named attribute of object."
  assert v.decode(v.encode(text)) == text
  assert corpus.corpus_fingerprint() in pathlib.Path(tasks.default_vocabulary_path()).name
  assert v == vocab.default_vocabulary()  # mixtures need equal vocabularies across tasks


def test_vocabulary_built_concurrently_by_two_processes(tmp_path):
  """Two processes training at once both succeed and agree (atomic rename, deterministic)."""
  code = (
    "import hashlib, pathlib\n"
    "from tasks import vocab\n"
    "p = vocab.default_vocabulary_path()\n"
    "print(hashlib.md5(pathlib.Path(p).read_bytes()).hexdigest())\n"
  )
  env = {"T5X_EXT_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"}
  procs = [
    subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE)
    for _ in range(2)
  ]
  outs = [p.communicate(timeout=240)[0].decode().split()[-1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0]
  assert outs[0] == outs[1]
  assert len(list(tmp_path.glob("*.model"))) == 1
  assert not list(tmp_path.glob("*.tmp"))
  assert len(set(outs)) == 1


def test_all_tasks_registered():
  names = set(seqio.TaskRegistry.names())
  for prefix in ("pydocs", "c4"):
    for obj in OBJECTIVE_NAMES:
      assert f"{prefix}_{obj}_v1" in names
  for name in (
    "glue_sst2_nlu_v1",
    "cnn_dailymail_s2s_v1",
    "pydocs_topic_classification_v1",
    "pydocs_topic_classification_nlg_v1",
    "pydocs_topic_classification_s2s_v1",
  ):
    assert name in names
  assert pretraining.task_denoisers(seqio.get_mixture_or_task("pydocs_ul2_mod_v1")) == (
    objectives.UL2_DENOISERS
  )
  assert pretraining.task_denoisers(seqio.get_mixture_or_task("c4_ul2r_mod_v1")) == (
    objectives.UL2R_DENOISERS
  )


def test_registering_again_is_idempotent():
  before = sorted(seqio.TaskRegistry.names())
  tasks.register_all()
  tasks.register_all()
  assert sorted(seqio.TaskRegistry.names()) == before
  next(
    iter(seqio.get_mixture_or_task("pydocs_causal_lm_v1").get_dataset(LENGTHS, split="validation"))
  )


# Modules with no imports of their own (the error classes, the mode strings) that every floor,
# `tasks` included, may import.
LEAVES = ("t5x_ext.errors", "t5x_ext.modes")


def test_leaf_modules_import_nothing():
  for name in LEAVES:
    tree = ast.parse((REPO / (name.replace(".", "/") + ".py")).read_text())
    imports = [
      n
      for n in ast.walk(tree)
      if isinstance(n, ast.Import | ast.ImportFrom) and n.module != "__future__"
    ]
    assert not imports, f"{name} imports {[ast.unparse(n) for n in imports]}"


def test_import_is_offline_and_model_free():
  """`import tasks` twice in a fresh process: no model code, no gin, no network, no training."""
  code = (
    "import importlib, sys, json\n"
    "import tasks\n"
    "importlib.reload(tasks)\n"
    # seqio itself imports jax and flax (through clu); we check for our model side and gin.
    "bad = [m for m in sys.modules if m.startswith(('t5x_ext', 'gin'))"
    f" and not m.startswith('t5x_ext.objectives') and m not in ('t5x_ext', *{LEAVES!r})]\n"
    "import seqio\n"
    "print(json.dumps({'bad': bad, 'n': len(seqio.TaskRegistry.names())}))\n"
  )
  env = {
    "T5X_EXT_CACHE": "/nonexistent/should-not-be-created",
    "PATH": "/usr/bin:/bin",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "NO_GCE_CHECK": "true",
  }
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, timeout=120, check=True
  )
  result = json.loads(out.stdout.decode().strip().splitlines()[-1])
  assert result["bad"] == []
  assert result["n"] >= 13
  assert not pathlib.Path("/nonexistent/should-not-be-created").exists()


def test_tasks_sources_import_no_jax():
  """seqio itself pulls in jax (via clu); our own task modules must not import it."""
  for path in (REPO / "tasks").glob("*.py"):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import | ast.ImportFrom):
        names = (
          [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
        for n in names:
          assert not n.startswith(("jax", "flax", "gin")), f"{path.name} imports {n}"
          if n.startswith("t5x_ext"):
            ok = n == "t5x_ext" or n.startswith("t5x_ext.objectives") or n in LEAVES
            assert ok, f"{path.name}: {n}"


@pytest.mark.parametrize("obj", OBJECTIVE_NAMES)
def test_pydocs_tasks_produce_valid_examples(obj):
  task = seqio.get_mixture_or_task(f"pydocs_{obj}_v1")
  v = task.output_features["targets"].vocabulary
  # UL2's X(64, 0.15) needs chunks of >= 427 tokens, hence 512.
  ds = task.get_dataset({"inputs": 512, "targets": 512}, split="validation", shuffle=False, seed=1)
  n = 0
  for ex in ds.take(30).as_numpy_iterator():
    n += 1
    assert len(ex["inputs"]) <= 512 and len(ex["targets"]) <= 512
    assert ex["targets"][-1] == 1 and ex["inputs"][-1] == 1
    assert 0 <= ex["denoiser_id"] < len(pretraining.OBJECTIVES[obj])
    assert ex["targets"].min() > 0
    assert ex["targets"].max() < v.vocab_size
  assert n == 30


def test_bad_configuration_fails_at_registration():
  bad = (objectives.Denoiser("R_bad", "span", mean_span_length=3, noise_density=1.5, mode="[NLU]"),)
  with pytest.raises(ValueError, match=r"test_bad_ul2_mod_v1.*R_bad.*1\.5"):
    pretraining.register_objectives(
      "test_bad", corpus_source(), vocab.default_vocabulary(), objectives_map={"ul2_mod": bad}
    )
  with pytest.raises(ValueError, match="test_short_ul2_mod_v1"):
    pretraining.register_objectives(
      "test_short",
      corpus_source(),
      vocab.default_vocabulary(),
      objectives_map={"ul2_mod": objectives.UL2_DENOISERS},
      check_lengths={"inputs": 4, "targets": 4},
    )
  assert "test_bad_ul2_mod_v1" not in seqio.TaskRegistry.names()


def corpus_source():
  from tasks import pydocs

  return pydocs.source()


def test_register_text_files(tmp_path):
  lines = [
    f"Document number {i} talks about parsing files and writing tests." * 3 for i in range(40)
  ]
  (tmp_path / "a.txt").write_text("\n".join(lines[:30]) + "\n")
  (tmp_path / "val.txt").write_text("\n".join(lines[30:]) + "\n")
  names = tasks.register_text_files(
    "mytext", {"train": str(tmp_path / "a.txt"), "validation": str(tmp_path / "val.txt")}
  )
  assert names == [f"mytext_{o}_v1" for o in OBJECTIVE_NAMES]
  task = seqio.get_mixture_or_task("mytext_causal_lm_v1")
  exs = list(task.get_dataset(LENGTHS, split="validation", shuffle=False).as_numpy_iterator())
  v = task.output_features["targets"].vocabulary
  text = " ".join(v.decode(e["targets"].tolist()) for e in exs)
  # The 10 validation lines (not the training ones) are what the task reads.
  assert text.count("Document number 3") >= 3 and "Document number 0 " not in text
  span = seqio.get_mixture_or_task("mytext_span_corruption_v1")
  ex = next(span.get_dataset(LENGTHS, split="validation", shuffle=False).as_numpy_iterator())
  assert ex["targets"][0] == 8099  # <extra_id_0> starts the span targets

  (tmp_path / "d.jsonl").write_text(
    "\n".join(json.dumps({"body": line, "id": i}) for i, line in enumerate(lines)) + "\n"
  )
  names = tasks.register_text_files(
    "myjson",
    str(tmp_path / "d.jsonl"),
    format="jsonl",
    text_key="body",
    objectives={"causal_lm": objectives.CAUSAL_LM},
  )
  assert names == ["myjson_causal_lm_v1"]
  ex = next(
    seqio.get_mixture_or_task(names[0])
    .get_dataset(LENGTHS, split="train", shuffle=False)
    .as_numpy_iterator()
  )
  assert v.decode(ex["targets"].tolist()).startswith("Document number 0")
  with pytest.raises(ValueError, match="format='csv'"):
    tasks.register_text_files("x", "y", format="csv")


def test_topic_classification_task():
  train, val = finetune.topic_examples("train"), finetune.topic_examples("validation")
  assert 800 < len(train) < 1300 and 60 < len(val) < 200
  assert not {e["text"] for e in train} & {e["text"] for e in val}
  labels = {e["label"] for e in train}
  assert labels == set(finetune.TOPIC_PACKAGES.values())
  counts = [sum(e["label"] == lab for e in train) for lab in labels]
  assert max(counts) <= finetune.TOPIC_PER_CLASS
  task = seqio.get_mixture_or_task("pydocs_topic_classification_v1")
  v = task.output_features["inputs"].vocabulary
  nlu = v.encode("[NLU]")
  ex = next(
    task.get_dataset(
      {"inputs": 256, "targets": 8}, split="validation", shuffle=False
    ).as_numpy_iterator()
  )
  assert list(ex["inputs"][: len(nlu)]) == nlu
  assert v.decode(ex["targets"].tolist()) == val[0]["label"]
  assert task.metric_fns[0](["email", "xml"], ["email", "http"]) == {"accuracy": 50.0}


def test_finetune_mode_is_configurable():
  name = finetune.register_pydocs_topic(mode="[S2S]")
  assert name == "pydocs_topic_classification_s2s_v1"
  task = seqio.get_mixture_or_task(name)
  v = task.output_features["inputs"].vocabulary
  ex = next(
    task.get_dataset(
      {"inputs": 256, "targets": 8}, split="validation", shuffle=False
    ).as_numpy_iterator()
  )
  assert list(ex["inputs"][:3]) == v.encode("[S2S]")[:3]
  with pytest.raises(ValueError, match="mode='<X>'"):
    finetune.register_pydocs_topic(mode="<X>")


def test_mode_as_reserved_token():
  ids = {"[NLU]": 8000, "[NLG]": 8001, "[S2S]": 8002}
  names = pretraining.register_objectives(
    "test_tok",
    corpus_source(),
    vocab.default_vocabulary(),
    mode_prefix="token",
    mode_token_ids=ids,
    objectives_map={"ul2r_mod": objectives.UL2R_DENOISERS},
  )
  task = seqio.get_mixture_or_task(names[0])
  ds = task.get_dataset({"inputs": 512, "targets": 512}, split="validation", shuffle=False, seed=0)
  for ex in ds.take(20).as_numpy_iterator():
    d = objectives.UL2R_DENOISERS[int(ex["denoiser_id"])]
    assert ex["inputs"][0] == ids[d.mode]
    assert not set(ex["targets"].tolist()) & {8000, 8001, 8002}  # not used as sentinels
  with pytest.raises(ValueError, match="test_tok2_ul2r_mod_v1"):
    pretraining.register_objectives(
      "test_tok2",
      corpus_source(),
      vocab.default_vocabulary(),
      mode_prefix="token",
      objectives_map={"ul2r_mod": objectives.UL2R_DENOISERS},
    )
