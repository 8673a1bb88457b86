"""A MODEL_DIR in a bucket: every output lands in the bucket, and nothing on the local disk.

The bucket is a real object store, `gcp-storage-emulator` (tests/gcs_emulator.py), reached
through `STORAGE_EMULATOR_HOST` as Google's clients reach an emulator.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

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
