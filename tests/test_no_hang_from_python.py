"""Called from Python (not `python -m`), a run stopped by a bad input line still exits.

Without `main_guard`'s `os._exit`, the interpreter's exit used to wait forever on tf.data's
threads (a `tf.py_function` needs the GIL the exiting thread holds): the input pipeline is
now torn down when the error is raised.
"""

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
  """
  import sys
  import tasks
  import t5x_ext.train
  from t5x_ext import errors

  tasks.register_text_files("hangcheck", sys.argv[1], format="jsonl", text_key="text")
  try:
    t5x_ext.train.main([
      "--gin_file=local/ul2_tiny.gin",
      f"--gin.MODEL_DIR='{sys.argv[2]}'",
      "--gin.MIXTURE_OR_TASK_NAME='hangcheck_ul2_mod_v1'",
      "--gin.TRAIN_STEPS=4",
    ])
  except errors.UserError as e:
    print("RAISED", str(e).splitlines()[0], flush=True)
  # The exception's frames are still alive here (sys.exc_info is gone, but nothing
  # collected them): the exit must not wait on the pipeline they refer to.
  """
)


@pytest.mark.parametrize(
  "bad_line",
  [b'{"text": broken\n', b'{"text": "caf\xe9"}\n'],
  ids=["invalid_json", "not_utf8"],
)
def test_bad_line_from_python_exits(tmp_path, bad_line):
  corpus = tmp_path / "corpus.jsonl"
  good = [
    json.dumps({"text": f"document {i} with a few words in it"}).encode() + b"\n" for i in range(70)
  ]
  corpus.write_bytes(b"".join(good[:60]) + bad_line + b"".join(good[60:]))
  script = tmp_path / "run.py"
  script.write_text(SCRIPT)
  proc = subprocess.run(
    [sys.executable, str(script), str(corpus), str(tmp_path / "run")],
    capture_output=True,
    text=True,
    timeout=180,  # it hung for good before; the run itself takes ~30 s on 2 busy cores
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  raised = [line for line in proc.stdout.splitlines() if line.startswith("RAISED")]
  assert len(raised) == 1 and raised[0].startswith(f"RAISED bad input data: {corpus}:61: ")
  assert ("invalid JSON" if b"broken" in bad_line else "not UTF-8") in raised[0]
