"""TensorBoard shows each step once after a resume (t5x_ext.training.tensorboard_events)."""

import collections

from clu import metric_writers
from tensorboard.backend.event_processing import event_accumulator

from t5x_ext.training import tensorboard_events


def _write(logdir, steps):
  writer = metric_writers.SummaryWriter(str(logdir))
  for step in steps:
    writer.write_scalars(step, {"loss": float(step)})
  writer.close()


def _scalar_steps(logdir):
  acc = event_accumulator.EventAccumulator(str(logdir), purge_orphaned_data=False)
  acc.Reload()
  return collections.Counter(e.step for e in acc.Tensors("loss"))


def test_resumed_run_shows_each_step_once(tmp_path):
  _write(tmp_path, range(1, 11))  # the first run logged steps 1..10, its checkpoint is step 5
  assert tensorboard_events.truncate_after(str(tmp_path), 5) == 5
  _write(tmp_path, range(6, 9))  # the resumed run logs 6..8
  steps = _scalar_steps(tmp_path)
  assert sorted(steps) == list(range(1, 9)) and set(steps.values()) == {1}


def test_nothing_to_drop_leaves_files_untouched(tmp_path):
  _write(tmp_path, range(1, 4))
  (path,) = tmp_path.iterdir()
  before = path.read_bytes()
  assert tensorboard_events.truncate_after(str(tmp_path), 3) == 0
  assert path.read_bytes() == before
  assert tensorboard_events.truncate_after(str(tmp_path / "missing"), 0) == 0
