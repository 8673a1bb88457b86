"""Two processes on loopback (jax.distributed, gloo CPU collectives) train together through
`python -m t5x_ext.train --multiprocess`, each reading its own SeqIO shard, and resume."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

from t5x_ext.training import metric_writers as metrics

REPO = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_two_processes(model_dir, steps, evaluate=True):
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  procs = []
  for pid in range(2):
    cmd = [
      sys.executable,
      "-m",
      "t5x_ext.train",
      "--multiprocess",
      f"--coordinator_address=localhost:{port}",
      "--num_processes=2",
      f"--process_id={pid}",
      "--gin_file=gin/local/ul2_tiny.gin",
      f"--gin.MODEL_DIR='{model_dir}'",
      "--gin.MIXTURE_OR_TASK_NAME='pydocs_span_corruption_v1'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
      "--gin.BATCH_SIZE=4",
      f"--gin.TRAIN_STEPS={steps}",
      "--gin.LOG_EVERY=1",
      "--gin.CHECKPOINT_EVERY=2",
      "--gin.train_script.train.progress_bar=False",
      "--gin.train_script.train.samples_per_mode=0",
      f"--gin.EVAL_PERIOD={10 if evaluate else 0}",  # 10: only at the last step
    ]
    procs.append(
      subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
      )
    )
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  return [out for out, _ in outs]


def test_two_processes_train_and_resume(tmp_path):
  # The first run does not evaluate (seconds per process); the resumed one does, at its end.
  out0, out1 = _run_two_processes(tmp_path, 4, evaluate=False)
  # Only process 0 logs and writes metrics; the checkpoint is complete.
  assert "step 4:" in out0 and "step 4:" not in out1
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [
    "2",
    "4",
  ]
  rows = metrics.read_jsonl(tmp_path / "metrics" / "train.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  # Both processes restore step 4 (including their own data shard's position) and go on.
  out0, _ = _run_two_processes(tmp_path, 6)
  assert "Resumed from step 4" in out0
  assert "eval @ 6:" in out0
  rows = metrics.read_jsonl(tmp_path / "metrics" / "train.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert rows[-1]["loss"] < rows[0]["loss"]
