"""TensorBoard event files after a resume: drop what the restored checkpoint did not keep.

A run that resumes from step S after having logged steps past S (it was killed between
checkpoints) would show those steps twice in TensorBoard: once from the lost future, once
from the replay. `truncate_after(logdir, S)` rewrites the event files of `logdir` without the
events of steps after S, as `metrics.JsonlWriter(truncate_after=S)` does for
`train.jsonl`. Records are copied as they are (no re-encoding); each file is replaced
atomically, so a kill during the rewrite leaves either the old or the new file.

Uses the `tensorboard` package's record reader and writer; no TensorFlow.
"""

from __future__ import annotations

import os


def _event_files(logdir: str) -> list[str]:
  if not os.path.isdir(logdir):
    return []
  return sorted(
    os.path.join(logdir, name)
    for name in os.listdir(logdir)
    if "tfevents" in name and os.path.isfile(os.path.join(logdir, name))
  )


def truncate_after(logdir: str, step: int) -> int:
  """Removes every event with a step greater than `step` from the event files in `logdir`.

  Args:
    logdir: a directory of event files (e.g. MODEL_DIR/tensorboard/train); missing is fine.
    step: the last step to keep (the restored checkpoint's step).

  Returns:
    The number of events removed.
  """
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.compat.proto import event_pb2
  from tensorboard.summary.writer import record_writer

  removed = 0
  for path in _event_files(logdir):
    kept, dropped = [], 0
    for record in event_file_loader.RawEventFileLoader(path).Load():
      event = event_pb2.Event.FromString(record)
      if event.step > step and not event.HasField("file_version"):
        dropped += 1
      else:
        kept.append(record)
    if not dropped:
      continue
    # The temporary name lacks "tfevents", so TensorBoard never reads a half-written copy.
    tmp = os.path.join(os.path.dirname(path), f".rewrite-{os.getpid()}")
    with open(tmp, "wb") as f:
      writer = record_writer.RecordWriter(f)
      for record in kept:
        writer.write(record)
      writer.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    removed += dropped
  return removed
