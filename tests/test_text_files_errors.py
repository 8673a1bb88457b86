"""Bad lines in a user's JSONL/text files: a prompt error naming the file, the line and the
problem; an option that skips and counts them; an empty split fails at registration. Every
case runs under a timeout: these used to hang in tf.data's iterator teardown."""

import json
import os
import subprocess
import sys

import pytest

import tasks
from t5x_ext.data import pipeline
from t5x_ext.launch import flags as cli
from tasks import text_files

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _doc(i):
  return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(120))


def _write_jsonl(path, n=40, bad=None):
  """n JSONL lines; `bad` maps a 1-based line number to raw bytes put there instead."""
  bad = bad or {}
  with open(path, "wb") as f:
    for i in range(1, n + 1):
      f.write(bad.get(i, json.dumps({"text": _doc(i)}).encode()) + b"\n")
  return str(path)


def _first_batches(name, n=3):
  it = pipeline.get_batches(
    name, {"inputs": 64, "targets": 16}, batch_size=2, pack=False, repeat=False, shuffle=False
  )
  return [next(it) for _ in range(n)]


def _register(path, **kwargs):
  (name,) = tasks.register_text_files(
    "bad_data_test",
    {"train": path},
    format="jsonl",
    objectives={"span_corruption": tasks.pretraining.OBJECTIVES["span_corruption"]},
    **kwargs,
  )
  return name


@pytest.mark.parametrize(
  "raw,problem",
  [
    (json.dumps({"txt": "x"}).encode(), "no field text_key='text' (keys: ['txt'])"),
    (b'{"text": "unterminated', "invalid JSON (Unterminated string"),
    (b'{"text": "caf\xe9"}', "not UTF-8 (byte 13 of the line"),
    (b"[1, 2]", "a JSON list, not an object"),
    (json.dumps({"text": 5}).encode(), "field 'text' is a int, not a string"),
  ],
)
def test_bad_line_names_file_line_and_problem(tmp_path, raw, problem):
  path = _write_jsonl(tmp_path / "train.jsonl", n=6, bad={3: raw})
  with pytest.raises(ValueError) as info:
    _first_batches(_register(path), n=50)
  assert str(info.value).startswith(f"bad input data: {path}:3: {problem}"), str(info.value)


def test_skip_bad_lines_counts_per_file(tmp_path):
  path = _write_jsonl(tmp_path / "train.jsonl", n=30, bad={2: b"{oops", 9: b'{"txt": 1}'})
  text_files.SKIPPED_LINES.clear()
  batches = _first_batches(_register(path, skip_bad_lines=True), n=20)
  assert len(batches) == 20
  assert text_files.SKIPPED_LINES[path] == 2


def test_empty_split_fails_at_registration(tmp_path):
  (tmp_path / "a.jsonl").write_text("\n  \n")
  (tmp_path / "b.jsonl").write_text("")
  pattern = str(tmp_path / "*.jsonl")
  with pytest.raises(
    ValueError, match=r"split 'train' is empty: its files \[.*\*\.jsonl'\] \(2 matched\)"
  ):
    _register(pattern)


def test_command_line_exits_promptly_with_the_message(tmp_path):
  train = _write_jsonl(tmp_path / "train.jsonl", n=200, bad={57: json.dumps({"txt": "x"}).encode()})
  val = _write_jsonl(tmp_path / "val.jsonl", n=20)
  env = {k: v for k, v in os.environ.items() if k != cli.TRACEBACK_ENV}
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "t5x_ext.train",
      "--gin_file=local/ul2_tiny.gin",
      "--gin_file=runs/text_files.gin",
      f"--gin.TEXT_FILES={{'train': '{train}', 'validation': '{val}'}}",
      "--gin.OBJECTIVE='span_corruption'",
      f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
      "--gin.BATCH_SIZE=2",
      "--gin.TRAIN_STEPS=400",
      "--gin.EVAL_PERIOD=0",
    ],
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
  )
  assert proc.returncode == cli.USER_ERROR_EXIT, proc.stderr[-3000:]
  assert f"error: bad input data: {train}:57: no field text_key='text'" in proc.stderr
  assert "Traceback" not in proc.stderr
