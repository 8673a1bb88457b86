"""A MODEL_DIR in a bucket: every output lands in the bucket, and nothing on the local disk.

The bucket is a real object store, `gcp-storage-emulator` (tests/gcs_emulator.py), reached
through `STORAGE_EMULATOR_HOST` as Google's clients reach an emulator.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from t5x_ext.training import run_lock
from tests.gcs_emulator import gcs_emulator  # noqa: F401 (the fixture)


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
  """Runs the test in an empty directory, which it must leave without run outputs."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  return cwd


def test_epath_reaches_the_emulator(gcs_emulator, empty_cwd):  # noqa: F811
  """etils.epath writes, lists and reads `gs://` through gcsfs and the emulator."""
  from etils import epath

  root = epath.Path(gcs_emulator.fresh_prefix("epath"))
  (root / "metrics").mkdir(parents=True, exist_ok=True)
  (root / "metrics" / "train.jsonl").write_text('{"step": 1}\n')
  assert (root / "metrics" / "train.jsonl").read_text() == '{"step": 1}\n'
  assert [p.name for p in root.iterdir()] == ["metrics"]
  prefix = root.as_posix().removeprefix(gcs_emulator.root + "/")
  assert gcs_emulator.list_objects(prefix) == [f"{prefix}/metrics/train.jsonl"]
  assert gcs_emulator.read(f"{prefix}/metrics/train.jsonl") == b'{"step": 1}\n'
  assert os.listdir(empty_cwd) == []


def test_objects_written_by_another_process_are_seen(gcs_emulator):  # noqa: F811
  """No stale listing: gcsfs's listings cache is off (run_paths), so a checkpoint that another
  process (or tensorstore) finished after this one listed the directory is found."""
  from t5x_ext.training import run_paths

  root = run_paths.path(gcs_emulator.fresh_prefix("listing"))
  (root / "1").mkdir(parents=True, exist_ok=True)
  (root / "1" / "commit_success.txt").write_text("done")
  assert [p.name for p in root.iterdir()] == ["1"]
  code = (
    "from t5x_ext.training import run_paths; "
    f"run_paths.path('{root}/2/commit_success.txt').write_text('done')"
  )
  env = {**_base_env(), **gcs_emulator.env}
  subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
  assert sorted(p.name for p in root.iterdir()) == ["1", "2"]
  assert (root / "2" / "commit_success.txt").exists()


def test_orbax_checkpoints_reach_the_emulator(gcs_emulator, empty_cwd):  # noqa: F811
  """Orbax saves and restores through tensorstore's gcs driver, into the emulator's bucket."""
  import orbax.checkpoint as ocp
  from etils import epath

  root = epath.Path(gcs_emulator.fresh_prefix("orbax"))
  state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
  with ocp.CheckpointManager(root / "checkpoints") as mgr:
    mgr.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    mgr.wait_until_finished()
    assert mgr.all_steps() == [7]
    restored = mgr.restore(7, args=ocp.args.Composite(state=ocp.args.StandardRestore(state)))
  np.testing.assert_array_equal(restored["state"]["w"], state["w"])
  prefix = root.as_posix().removeprefix(gcs_emulator.root + "/")
  names = gcs_emulator.list_objects(prefix)
  assert f"{prefix}/checkpoints/7/_CHECKPOINT_METADATA" in names
  assert any(n.startswith(f"{prefix}/checkpoints/7/state/") and "ocdbt" in n for n in names)
  assert os.listdir(empty_cwd) == []


# ---- the run lock on an object store: a lease

_LEASE_HOLDER = textwrap.dedent(
  """
  import sys, time
  from t5x_ext.training import run_lock
  run_lock.RunLock(sys.argv[1]).acquire()
  print("locked", flush=True)
  time.sleep(120)
  """
)


def _start_lease_holder(model_dir, env):
  proc = subprocess.Popen(
    [sys.executable, "-c", _LEASE_HOLDER, model_dir],
    stdout=subprocess.PIPE,
    text=True,
    env={**_base_env(), **env},
  )
  assert proc.stdout.readline().strip() == "locked"
  return proc


def _base_env():
  """This process's environment without the client settings the fixture added.

  A subprocess gets only STORAGE_EMULATOR_HOST, as a user's shell would: the library
  derives the rest (t5x_ext.training.run_paths).
  """
  drop = {"EPATH_USE_TF", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "TENSORSTORE_GCS_HTTP_URL"}
  return {k: v for k, v in os.environ.items() if k not in drop}


def _lease_file(root):
  from etils import epath

  return epath.Path(root) / run_lock.LOCK_NAME


def test_lease_refuses_a_second_run_and_is_deleted_on_release(gcs_emulator):  # noqa: F811
  root = gcs_emulator.fresh_prefix("lease")
  proc = _start_lease_holder(root, gcs_emulator.env)
  try:
    held = json.loads(_lease_file(root).read_text())
    assert held["pid"] == proc.pid and held["host"] == socket.gethostname()
    with pytest.raises(run_lock.RunLockError, match=rf"in use by another run \(pid {proc.pid} "):
      run_lock.RunLock(root).acquire()
  finally:
    proc.kill()
    proc.wait(timeout=30)
  # The holder was killed on this host: its lease is taken over at once, not after lease_s.
  lock = run_lock.RunLock(root)
  with lock:
    assert lock.took_over is not None and lock.took_over["pid"] == proc.pid
    with pytest.raises(run_lock.RunLockError, match=f"pid {os.getpid()}"):
      run_lock.RunLock(root).acquire()  # a second lock in the same process is refused too
  assert not _lease_file(root).exists()
  with run_lock.RunLock(root) as again:
    assert again.took_over is None  # released cleanly: no takeover


def test_lease_of_another_host_holds_until_it_lapses(gcs_emulator, caplog):  # noqa: F811
  root = gcs_emulator.fresh_prefix("lease")
  other = {"pid": 4242, "host": "another-vm", "started": "2026-01-01T00:00:00+00:00"}
  lease = _lease_file(root)
  lease.parent.mkdir(parents=True, exist_ok=True)
  lease.write_text(json.dumps({**other, "renewed_unix": time.time() - 10, "lease_s": 120}))
  with pytest.raises(run_lock.RunLockError, match="pid 4242 on another-vm.*renewed 1[0-9] s ago"):
    run_lock.RunLock(root).acquire()
  lease.write_text(json.dumps({**other, "renewed_unix": time.time() - 200, "lease_s": 120}))
  with caplog.at_level("WARNING"), run_lock.RunLock(root) as lock:
    assert lock.took_over["host"] == "another-vm"
  assert "stopped renewing it" in caplog.text


def test_lease_is_renewed_while_held(gcs_emulator):  # noqa: F811
  root = gcs_emulator.fresh_prefix("lease")
  with run_lock.RunLock(root, lease_s=0.4):
    first = json.loads(_lease_file(root).read_text())["renewed_unix"]
    time.sleep(0.5)
    assert json.loads(_lease_file(root).read_text())["renewed_unix"] > first


# ---- metric writers on an object store (no append there)


def test_jsonl_and_event_writers_on_a_bucket(gcs_emulator, tmp_path):  # noqa: F811
  """train.jsonl and the TensorBoard scalars land in the bucket, and a resume cuts them back."""
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.compat.proto import event_pb2

  from t5x_ext.training import metric_writers, tensorboard_events

  root = gcs_emulator.fresh_prefix("writers")
  jsonl = metric_writers.JsonlWriter(f"{root}/metrics/train.jsonl")
  events = tensorboard_events.ScalarEventWriter(f"{root}/tensorboard/train")
  for step in (1, 2, 3, 4):
    jsonl.write_scalars(step, {"loss": 1.0 / step})
    events.write_scalars(step, {"loss": 1.0 / step})
    if step == 2:
      jsonl.flush()
      events.flush()
      assert [r["step"] for r in metric_writers.read_jsonl(f"{root}/metrics/train.jsonl")] == [1, 2]
  jsonl.close()
  events.close()
  # A resume from step 3: the lines and events of step 4 go.
  metric_writers.JsonlWriter(f"{root}/metrics/train.jsonl", truncate_after=3).close()
  assert [r["step"] for r in metric_writers.read_jsonl(f"{root}/metrics/train.jsonl")] == [1, 2, 3]
  assert tensorboard_events.truncate_after(f"{root}/tensorboard/train", 3) == 1
  (name,) = [n for n in gcs_emulator.list_objects(root) if "tfevents" in n]
  local = tmp_path / "events.out.tfevents.copy"
  local.write_bytes(gcs_emulator.read(name))
  records = event_file_loader.RawEventFileLoader(str(local)).Load()
  steps = [event_pb2.Event.FromString(r).step for r in records]
  assert steps == [0, 1, 2, 3]  # the file_version record, then the steps kept


# ---- the main job, eval, infer and the ablation smoke with MODEL_DIR in the bucket

MAIN_JOB = [
  "--gin_file=local/ul2_tiny.gin",  # found on the package's gin path from any directory
  "--gin.BATCH_SIZE=2",
  "--gin.LOG_EVERY=1",
  "--gin.CHECKPOINT_EVERY=2",
  "--gin.EVAL_PERIOD=2",
  "--gin.EVAL_BATCHES=1",
  "--gin.train_script.train.samples_per_mode=0",
  "--gin.train_script.train.progress_bar=False",
]


TEST_TIMEOUT_S = 900  # about 90 CPU-s; minutes of wall time on a loaded 2-core machine


@pytest.fixture
def deadline():
  """Fails the test with a TimeoutError, instead of hanging the suite, past TEST_TIMEOUT_S."""

  def expire(signum, frame):
    raise TimeoutError(f"test ran past {TEST_TIMEOUT_S} s")

  previous = signal.signal(signal.SIGALRM, expire)
  signal.alarm(TEST_TIMEOUT_S)
  yield
  signal.alarm(0)
  signal.signal(signal.SIGALRM, previous)


def _objects(gcs_emulator, root: str) -> set[str]:  # noqa: F811
  """The bucket's object names under `root`, relative to it."""
  prefix = root.removeprefix(gcs_emulator.root + "/") + "/"
  return {n.removeprefix(prefix) for n in gcs_emulator.list_objects(prefix)}


def _local_files(cwd) -> list[str]:
  return sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))


@pytest.mark.slow
def test_main_job_eval_infer_and_ablation_keep_every_output_in_the_bucket(
  gcs_emulator,  # noqa: F811
  empty_cwd,
  deadline,
):
  from t5x_ext import eval as eval_lib
  from t5x_ext import infer as infer_lib
  from t5x_ext import train as train_lib
  from t5x_ext.experiments import ablation
  from t5x_ext.training import metric_writers
  from tests.test_ablation import _argv as ablation_argv

  root = gcs_emulator.fresh_prefix("main")
  # 1. Two steps through the command line, as a user starts it: only STORAGE_EMULATOR_HOST
  #    names the emulator (the library derives what epath, gcsfs and tensorstore need).
  proc = subprocess.run(
    [sys.executable, "-m", "t5x_ext.train", *MAIN_JOB, f"--gin.MODEL_DIR='{root}'"]
    + ["--gin.TRAIN_STEPS=2"],
    cwd=empty_cwd,
    env={**_base_env(), **gcs_emulator.env},
    capture_output=True,
    text=True,
    timeout=400,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  objects = _objects(gcs_emulator, root)
  assert {"config.gin", "metrics/train.jsonl", "metrics/eval.jsonl"} <= objects
  assert "checkpoints/2/commit_success.txt" in objects
  assert ".lock" not in objects  # the lease is deleted on a clean exit
  assert _local_files(empty_cwd) == []

  # 2. Resume to step 4 (in this process), then eval and infer find its checkpoints.
  result = train_lib.main([*MAIN_JOB, f"--gin.MODEL_DIR='{root}'", "--gin.TRAIN_STEPS=4"])
  assert int(result.state.step) == 4
  rows = metric_writers.read_jsonl(f"{root}/metrics/train.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  evals = eval_lib.main(
    [
      "--gin_file=local/tiny_model.gin",
      "--gin_file=runs/eval.gin",
      "--gin.MIXTURE_OR_TASK_NAME='pydocs_ul2_mod_v1'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 128}",
      "--gin.BATCH_SIZE=2",
      f"--gin.MODEL_DIR='{root}'",
      "--gin.eval_script.evaluate.max_batches=1",
      "--gin.eval_script.evaluate.max_predict_examples=0",
    ]
  )
  assert evals["step"] == 4
  out = infer_lib.main(
    [
      "--gin_file=local/tiny_model.gin",
      "--gin_file=runs/infer.gin",
      "--gin.MIXTURE_OR_TASK_NAME='pydocs_ul2_mod_v1'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 128}",
      "--gin.BATCH_SIZE=2",
      f"--gin.MODEL_DIR='{root}'",
      "--gin.PROMPTS=['The garbage collector']",
      "--gin.infer_script.infer.decode_len=4",
    ]
  )
  assert out == f"{root}/inference/prompts.jsonl"
  objects = _objects(gcs_emulator, root)
  for name in (
    "config.gin",
    "metrics/train.jsonl",
    "metrics/eval.jsonl",
    "checkpoints/2/commit_success.txt",
    "checkpoints/4/commit_success.txt",
    "inference/prompts.jsonl",
  ):
    assert name in objects, (name, sorted(objects))
  assert any(n.startswith("tensorboard/train/events.out.tfevents.") for n in objects)
  assert any(n.startswith("tensorboard/eval/events.out.tfevents.") for n in objects)
  eval_rows = metric_writers.read_jsonl(f"{root}/metrics/eval.jsonl")
  assert [r["step"] for r in eval_rows] == [2, 4, 4]  # periodic at 2 and 4, then the command
  (pred,) = [json.loads(line) for line in gcs_emulator.read(out).decode().splitlines()]
  assert pred["inputs"] == "The garbage collector"

  # 3. The ablation smoke (one run, two steps, its eval) in the bucket.
  abl = gcs_emulator.fresh_prefix("ablation")
  record = ablation.main(ablation_argv(abl, runs=("sc_ed",), extra="{}"))
  assert record["invocation"]["trained"] == ["sc_ed_seed0"]
  objects = _objects(gcs_emulator, abl)
  for name in (
    "config.gin",
    ablation.RESULTS_JSON,
    ablation.RESULTS_MD,
    ablation.RESULTS_PNG,
    "ablation_invocations.jsonl",
    f"runs/sc_ed_seed0/{ablation.TRAIN_MARKER}",
    "runs/sc_ed_seed0/checkpoints/2/commit_success.txt",
    "runs/sc_ed_seed0/metrics/train.jsonl",
  ):
    assert name in objects, (name, sorted(objects))
  assert any(n.startswith(f"runs/sc_ed_seed0/{ablation.EVAL_DIR}/") for n in objects)
  assert _local_files(empty_cwd) == []
