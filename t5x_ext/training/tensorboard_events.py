"""TensorBoard event files after a resume: drop what the restored checkpoint did not keep.

A run that resumes from step S after having logged steps past S (it was killed between
checkpoints) would show those steps twice in TensorBoard: once from the lost future, once
from the replay. `truncate_after(logdir, S)` rewrites the event files of `logdir` without the
events of steps after S, as `metrics.JsonlWriter(truncate_after=S)` does for
`train.jsonl`. Records are copied as they are (no re-encoding); each file is replaced
atomically, so a kill during the rewrite leaves either the old or the new file.

On an object store (`gs://`), where TensorFlow's own GCS filesystem cannot reach an emulator
and streams no appends, `ScalarEventWriter` writes the scalars' event file through
`etils.epath`: it keeps the file's bytes and uploads them whole at each flush, and starts a
new file past `ROLL_BYTES` (TensorBoard reads every event file of a directory in order).

Uses the `tensorboard` package's record reader and writer; no TensorFlow.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping

from t5x_ext.training import run_paths

ROLL_BYTES = 4 << 20  # an object-store event file is uploaded whole: start a new one past this


def _event_files(logdir: str) -> list[str]:
  root = run_paths.path(logdir)
  if not root.is_dir():
    return []
  return sorted(os.fspath(p) for p in root.iterdir() if "tfevents" in p.name and not p.is_dir())


def _records(path: str) -> Iterator[bytes]:
  """The records of an event file (TFRecord framing: length, crc, data, crc)."""
  data = run_paths.path(path).read_bytes()
  pos = 0
  while pos + 12 <= len(data):
    (length,) = struct.unpack("<Q", data[pos : pos + 8])
    end = pos + 12 + length + 4
    if end > len(data):  # a record cut short by a crash
      return
    yield data[pos + 12 : pos + 12 + length]
    pos = end


def truncate_after(logdir: str, step: int) -> int:
  """Removes every event with a step greater than `step` from the event files in `logdir`.

  Args:
    logdir: a directory of event files (e.g. MODEL_DIR/tensorboard/train); missing is fine.
    step: the last step to keep (the restored checkpoint's step).

  Returns:
    The number of events removed.
  """
  from tensorboard.compat.proto import event_pb2
  from tensorboard.summary.writer import record_writer

  removed = 0
  for path in _event_files(logdir):
    kept, dropped = [], 0
    for record in _records(path):
      event = event_pb2.Event.FromString(record)
      if event.step > step and not event.HasField("file_version"):
        dropped += 1
      else:
        kept.append(record)
    if not dropped:
      continue
    removed += dropped
    if run_paths.is_object_store(path):  # one upload: the object is replaced whole
      buf = io.BytesIO()
      writer = record_writer.RecordWriter(buf)
      for record in kept:
        writer.write(record)
      run_paths.path(path).write_bytes(buf.getvalue())
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
  return removed


class ScalarEventWriter:
  """TensorBoard scalars written through `etils.epath` (for object-store MODEL_DIRs).

  Has the `write_scalars`/`flush`/`close` of the metric writers. Each process writes its
  own file, `events.out.tfevents.<time>.<host>.<pid>.<n>`.
  """

  def __init__(self, logdir: str | os.PathLike):
    """Prepares the writer; the first file is uploaded at the first flush.

    Args:
      logdir: the event directory (e.g. gs://bucket/run/tensorboard/train).
    """
    self.logdir = run_paths.path(logdir)
    self.logdir.mkdir(parents=True, exist_ok=True)
    self._files = 0
    self._new_file()

  def _new_file(self) -> None:
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer import record_writer

    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = self.logdir / f"{name}.{self._files}"
    self._files += 1
    self._buf = io.BytesIO()
    self._writer = record_writer.RecordWriter(self._buf)
    version = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
    self._writer.write(version.SerializeToString())
    self._dirty = True

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Adds one event with a scalar per name.

    Args:
      step: the training step.
      scalars: name -> number.
    """
    from tensorboard.compat.proto import event_pb2, summary_pb2

    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    event = event_pb2.Event(
      wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
    )
    self._writer.write(event.SerializeToString())
    self._dirty = True

  def flush(self) -> None:
    """Uploads the current file (whole); starts a new one when it has grown past ROLL_BYTES."""
    if self._dirty:
      self.path.write_bytes(self._buf.getvalue())
      self._dirty = False
    if self._buf.tell() > ROLL_BYTES:
      self._new_file()
      self._dirty = False  # uploaded with its first scalars

  def close(self) -> None:
    """Uploads what is left."""
    self.flush()
