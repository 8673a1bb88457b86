"""Your own corpus and tasks from the command line: runs/text_files.gin and
MIXTURE_OR_TASK_MODULE, through the entry points' flags (no Python task code)."""

from __future__ import annotations

import json
import textwrap

import pytest

from t5x_ext import train as train_lib
from t5x_ext.data import providers as run_data
from t5x_ext.launch import flags as cli

INFER_FLAGS = [
  "--gin_file=runs/infer.gin",
  "--gin.MODEL_DIR='/tmp/unused'",
  "--gin.MIXTURE_OR_TASK_NAME='pydocs_causal_lm_v1'",
  "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
]
WORDS = ["zanzibar", "quokka", "marmalade", "telescope", "harbour", "lantern", "pebble"]


def _write_jsonl(path, n, seed):
  lines = []
  for i in range(n):
    words = [WORDS[(seed + i * 3 + j) % len(WORDS)] for j in range(40)]
    lines.append(json.dumps({"id": i, "body": " ".join(words)}))
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_pretraining_on_jsonl_files_from_flags_only(tmp_path):
  _write_jsonl(tmp_path / "train-0.jsonl", 40, 0)
  _write_jsonl(tmp_path / "train-1.jsonl", 40, 1)
  val = _write_jsonl(tmp_path / "val.jsonl", 8, 2)
  model_dir = tmp_path / "run"
  result = train_lib.main(
    [
      "--gin_file=local/tiny_model.gin",
      "--gin_file=runs/pretrain.gin",
      "--gin_file=runs/text_files.gin",
      f"--gin.TEXT_FILES={{'train': '{tmp_path}/train-*.jsonl', 'validation': '{val}'}}",
      "--gin.TEXT_KEY='body'",
      "--gin.OBJECTIVE='span_corruption'",
      "--gin.TEXT_TASK_PREFIX='mydocs'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
      f"--gin.MODEL_DIR='{model_dir}'",
      "--gin.TRAIN_STEPS=2",
      "--gin.BATCH_SIZE=2",
      "--gin.train_script.train.progress_bar=False",
    ]
  )
  assert int(result.state.step) == 2 and (model_dir / "checkpoints" / "2").is_dir()
  assert "@text_files.text_files_task()" in (model_dir / "config.gin").read_text()
  # The task reads the JSONL field named by TEXT_KEY from the files named by TEXT_FILES.
  provider = run_data.get_provider("mydocs_span_corruption_v1")
  assert sorted(provider.source.splits) == ["train", "validation"]
  vocab = run_data.vocabulary_of(provider)
  (ex,) = list(provider.get_dataset({"inputs": 64, "targets": 16}, "validation").take(1))
  text = run_data.decode_ids(vocab, ex["inputs"].numpy())
  assert sum(w in text for w in WORDS) >= 3, text


def test_text_files_macro_is_required_and_checked(tmp_path):
  common = [
    "--gin_file=local/tiny_model.gin",
    "--gin_file=runs/pretrain.gin",
    "--gin_file=runs/text_files.gin",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
    f"--gin.MODEL_DIR='{tmp_path}'",
    "--gin.TRAIN_STEPS=1",
  ]
  with pytest.raises(ValueError, match="TEXT_FILES is not set"):
    train_lib.main(common)
  with pytest.raises(ValueError, match=r"TEXT_FILES\['train'\] = .*matches no file"):
    train_lib.main([*common, f"--gin.TEXT_FILES='{tmp_path}/nothing-*.txt'"])
  (tmp_path / "a.txt").write_text("one document\n")
  with pytest.raises(ValueError, match="OBJECTIVE = 'ul3'"):
    train_lib.main([*common, f"--gin.TEXT_FILES='{tmp_path}/a.txt'", "--gin.OBJECTIVE='ul3'"])


@pytest.fixture
def user_module(tmp_path, monkeypatch):
  """A Python module of the user's, registering a task over a text file when imported."""
  data = tmp_path / "corpus.txt"
  data.write_text("\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(7)) + "\n")
  name = f"user_tasks_{tmp_path.name.replace('-', '_')}"
  (tmp_path / f"{name}.py").write_text(
    textwrap.dedent(
      f"""
      import tasks
      tasks.register_text_files("usermod", {{"train": {str(data)!r}}})
      """
    )
  )
  monkeypatch.syspath_prepend(str(tmp_path))
  return name


def test_mixture_or_task_module_is_imported_before_the_task_is_looked_up(user_module):
  def configured():
    return run_data.get_provider(cli.macro_value("MIXTURE_OR_TASK_NAME")).name

  argv = [*INFER_FLAGS, "--gin.MIXTURE_OR_TASK_NAME='usermod_causal_lm_v1'"]
  with pytest.raises(ValueError, match="'usermod_causal_lm_v1' is not a registered"):
    cli.run(configured, argv)
  got = cli.run(configured, [*argv, f"--gin.MIXTURE_OR_TASK_MODULE='{user_module}'"])
  assert got == "usermod_causal_lm_v1"


def test_unknown_task_module_names_the_macro():
  with pytest.raises(ValueError, match="MIXTURE_OR_TASK_MODULE = 'no_such_mod_xyz'"):
    cli.run(lambda: None, [*INFER_FLAGS, "--gin.MIXTURE_OR_TASK_MODULE='no_such_mod_xyz'"])
