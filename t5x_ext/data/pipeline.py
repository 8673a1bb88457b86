"""Numpy batches from a SeqIO task or mixture, with a checkpointable position.

This is what the trainer consumes:

  it = get_batches("pydocs_ul2_mod_v1", {"inputs": 512, "targets": 512}, split="train",
                   batch_size=32, feature_converter_name="EncDecFeatureConverter", seed=0)
  batch = next(it)             # dict of np.ndarray, [B, L] int32 (see docs/internals.md)
  state = it.state()           # {"batches": n, ...}: small, JSON-serializable
  it2 = get_batches(...same arguments...); it2.restore(state)   # continues exactly

Why this restores exactly: given the seed, the whole pipeline (shuffle, the denoisers'
stateless random ops, mixture sampling, packing) is deterministic, so the position is the
number of batches consumed; `restore` rebuilds the dataset and skips that many batches. Skipping
still runs the preprocessing for the skipped batches (about 1,000 rows/s of 512+512 tokens on
one CPU core), which is cheap for short runs but grows with the position. For long runs,
`save_checkpoint(path)` / `restore_checkpoint(path)` save the tf.data iterator itself
(shuffle and prefetch buffers included) and restore in about a second.

Evaluation: `repeat=False, shuffle=False` gives a finite iterator; the last batch is padded
with all-zero rows (zero loss weight) to `batch_size`, and `it.num_valid` says how many rows
of the most recent batch are real. Inference: `get_infer_batches` yields the task's examples
(ids and decoded text) next to each unpacked batch, for predictions JSONL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from t5x_ext.data import feature_converters
from t5x_ext.errors import UserError

# What `tasks.text_files` puts in front of an error in a user's file (file:line: problem);
# that error reaches us as the message of a TF error, with a Python traceback inside it.
DATA_ERROR_MARK = "[input data error] "


def _next_or_data_error(iterator):
  """`next(iterator)`; an error in the input files becomes a UserError with its one line."""
  try:
    return next(iterator)
  except tf.errors.OpError as e:
    message = str(e.message)
    if DATA_ERROR_MARK not in message:
      raise
  # Raised outside the `except`, without the TF error as its context: that error's traceback
  # holds the tf.data iterator, which would then live as long as the exception (to the
  # interpreter's exit, where its py_function threads can block it forever).
  del iterator
  detail = message.split(DATA_ERROR_MARK, 1)[1].split("\n", 1)[0].strip()
  raise UserError(f"bad input data: {detail}")


def _get_provider(name: str):
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    # Make sure this project's tasks are registered before failing (a test fixture or a
    # notebook may have cleared the registry after `import tasks` ran).
    import tasks

    tasks.register_all()
    try:
      return seqio.get_mixture_or_task(name)
    except ValueError as e:
      raise UserError(
        f"mixture_or_task_name={name!r} is not a registered SeqIO task or mixture"
      ) from e


def _check_lengths(task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
  lengths = dict(task_feature_lengths)
  for k, v in lengths.items():
    if not isinstance(v, int | np.integer) or v <= 0:
      raise UserError(f"task_feature_lengths[{k!r}]={v!r} must be a positive integer")
  return {k: int(v) for k, v in lengths.items()}


def _task_dataset(
  provider,
  lengths: Mapping[str, int],
  *,
  split: str,
  shuffle: bool,
  seed: int | None,
  shard_id: int,
  num_shards: int,
  repeat: bool,
  use_cached: bool,
) -> tf.data.Dataset:
  if not 0 <= shard_id < num_shards:
    raise ValueError(f"shard_id={shard_id} must be in [0, num_shards={num_shards})")
  return provider.get_dataset(
    lengths,
    split=split,
    use_cached=use_cached,
    shuffle=shuffle,
    seed=seed,
    shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards) if num_shards > 1 else None,
    num_epochs=None if repeat else 1,
  )


@dataclasses.dataclass
class BatchIterator(Iterator[dict[str, np.ndarray]]):
  """An iterator of numpy batches whose position can be saved and restored.

  Build it with `get_batches`. Attributes: `batches` (consumed so far), `num_valid` (real rows
  in the most recent batch), `spec` (the arguments that define the stream, saved in `state()`
  so a restore into a differently configured iterator fails instead of silently diverging).
  """

  make_dataset: Any  # () -> tf.data.Dataset of unbatched converted examples
  batch_size: int
  spec: dict
  drop_remainder: bool
  batches: int = 0
  num_valid: int = 0
  _it: Any = None

  def _start(self, skip: bool = True) -> None:
    ds = self.make_dataset().batch(self.batch_size, drop_remainder=self.drop_remainder)
    if self.batches and skip:
      ds = ds.skip(self.batches)
    self._it = iter(ds.prefetch(tf.data.AUTOTUNE))

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      self._start()
    try:
      raw = _next_or_data_error(self._it)
    except StopIteration:
      raise
    except BaseException:
      self.close()  # the stream ends with its error: stop tf.data's threads now
      raise
    batch = {k: v.numpy() for k, v in raw.items()}
    n = len(next(iter(batch.values())))
    self.num_valid = n
    if n < self.batch_size:  # only without drop_remainder: pad with zero rows
      batch = {
        k: np.concatenate([v, np.zeros((self.batch_size - n, *v.shape[1:]), v.dtype)])
        for k, v in batch.items()
      }
    self.batches += 1
    return batch

  def close(self) -> None:
    """Drops the tf.data iterator, which stops its worker threads (map, prefetch,
    `tf.py_function`) now rather than at interpreter exit, where they can block it forever.

    The position (`batches`) is kept: a later `next()` starts a new iterator there.
    """
    it, self._it = self._it, None
    del it

  def state(self) -> dict:
    """The position: a small JSON-serializable dict for the checkpoint.

    Returns:
      `{"batches": int, "spec": {...}}`.
    """
    return {"batches": self.batches, "spec": dict(self.spec)}

  def restore(self, state: Mapping[str, Any]) -> None:
    """Moves this iterator to a saved position (the next batch is the one after it).

    Args:
      state: what `state()` returned, possibly after a JSON round trip.

    Raises:
      ValueError: if the state came from an iterator over a different stream.
    """
    saved = dict(state.get("spec", {}))
    mine = {k: v for k, v in self.spec.items()}
    # JSON turns tuples/dict keys into lists/strings; compare on a normalized form.
    if saved and _normalize(saved) != _normalize(mine):
      diff = {
        k: (saved.get(k), mine.get(k))
        for k in set(saved) | set(mine)
        if _normalize(saved.get(k)) != _normalize(mine.get(k))
      }
      raise UserError(f"data iterator state does not match this pipeline: {diff} (saved, now)")
    self.batches = int(state["batches"])
    self._it = None

  def save_checkpoint(self, path: str) -> str:
    """Saves the tf.data iterator itself (buffers included) for a restore without skipping.

    For long runs, where `restore`'s skipping would replay many batches: about 7 MB and under
    a second for the embedded UL2 task at batch 8. Pipelines with Python generators or
    `tf.py_function` (JSONL files) cannot be saved this way; use `state`/`restore` there.

    Args:
      path: file prefix of the TF checkpoint (its directory is created).

    Returns:
      The path `restore_checkpoint` takes.
    """
    if self._it is None:
      self._start()
    ckpt = tf.train.Checkpoint(iterator=self._it)
    saved = ckpt.write(path)
    with tf.io.gfile.GFile(saved + ".batches", "w") as f:
      f.write(str(self.batches))
    return saved

  def restore_checkpoint(self, path: str) -> None:
    """Restores what `save_checkpoint` wrote, into an iterator built with the same arguments.

    Args:
      path: what `save_checkpoint` returned.
    """
    self._start(skip=False)
    tf.train.Checkpoint(iterator=self._it).read(path).assert_consumed()
    with tf.io.gfile.GFile(path + ".batches") as f:
      self.batches = int(f.read())


def _normalize(x):
  if isinstance(x, Mapping):
    return {str(k): _normalize(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
  if isinstance(x, list | tuple):
    return [_normalize(v) for v in x]
  return x


def get_batches(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  *,
  split: str = "train",
  batch_size: int,
  feature_converter_name: str = "EncDecFeatureConverter",
  pack: bool = True,
  shuffle: bool | None = None,
  seed: int | None = 0,
  shard_id: int = 0,
  num_shards: int = 1,
  repeat: bool = True,
  use_cached: bool = False,
) -> BatchIterator:
  """Batches of model features from a SeqIO task or mixture, as numpy dicts.

  Args:
    mixture_or_task_name: a registered SeqIO task or mixture (`import tasks` registers ours).
    task_feature_lengths: e.g. `{"inputs": 512, "targets": 512}`; decoder-only layouts use
      `{"targets": L}` (causal) or both (prefix LM).
    split: dataset split.
    batch_size: rows per batch on this shard (per host).
    feature_converter_name: "EncDecFeatureConverter", "PrefixLMFeatureConverter",
      "DecoderFeatureConverter" or "LMFeatureConverter"; all add `decoder_denoiser_ids`.
    pack: pack several examples per row (training); unpacked rows have no segment ids.
    shuffle: shuffle examples; defaults to `repeat` (train streams shuffle, eval does not).
    seed: seed of shuffling, mixture sampling and the denoisers; an int makes the stream
      reproducible and restorable. None draws a fresh seed (then `restore` is not exact).
    shard_id: this host's shard (multi-host: `jax.process_index()`).
    num_shards: number of shards (multi-host: `jax.process_count()`).
    repeat: repeat forever (training). With False the iterator ends after one pass and the last
      batch is padded with zero rows (see `BatchIterator.num_valid`).
    use_cached: read SeqIO's offline cache of the task.

  Returns:
    A `BatchIterator`.

  Raises:
    ValueError: for an unknown task, converter, split-less arguments or bad lengths.
  """
  if batch_size <= 0:
    raise UserError(f"batch_size={batch_size} must be positive")
  lengths = _check_lengths(task_feature_lengths)
  provider = _get_provider(mixture_or_task_name)
  converter = feature_converters.get_feature_converter(feature_converter_name, pack=pack)
  if shuffle is None:
    shuffle = repeat

  def make_dataset() -> tf.data.Dataset:
    ds = _task_dataset(
      provider,
      lengths,
      split=split,
      shuffle=shuffle,
      seed=seed,
      shard_id=shard_id,
      num_shards=num_shards,
      repeat=repeat,
      use_cached=use_cached,
    )
    return converter(ds, lengths)

  spec = dict(
    mixture_or_task_name=mixture_or_task_name,
    task_feature_lengths=lengths,
    split=split,
    batch_size=batch_size,
    feature_converter_name=feature_converter_name,
    pack=pack,
    shuffle=shuffle,
    seed=seed,
    shard_id=shard_id,
    num_shards=num_shards,
    repeat=repeat,
  )
  return BatchIterator(make_dataset, batch_size, spec, drop_remainder=repeat)


def _decode_example(ex: Mapping[str, Any], output_features: Mapping[str, seqio.Feature]) -> dict:
  out = {}
  for k, v in ex.items():
    if isinstance(v, bytes):
      out[k] = v.decode("utf-8")
    elif isinstance(v, np.ndarray) and v.dtype == object:
      out[k] = [x.decode("utf-8") if isinstance(x, bytes) else x for x in v.tolist()]
    elif isinstance(v, np.ndarray):
      out[k] = v.tolist()
    elif isinstance(v, np.generic):
      out[k] = v.item()
    else:
      out[k] = v
  for k, feat in output_features.items():
    if k in out and f"{k}_pretokenized" not in out and isinstance(out[k], list):
      out[f"{k}_pretokenized"] = feat.vocabulary.decode([t for t in out[k] if t > 0])
  return out


def get_infer_batches(
  mixture_or_task_name: str,
  task_feature_lengths: Mapping[str, int],
  *,
  split: str = "validation",
  batch_size: int,
  feature_converter_name: str = "EncDecFeatureConverter",
  seed: int | None = 0,
  shard_id: int = 0,
  num_shards: int = 1,
  max_examples: int | None = None,
) -> Iterator[tuple[list[dict], dict[str, np.ndarray]]]:
  """One pass over a task, yielding its examples next to their (unpacked) batches.

  Args:
    mixture_or_task_name: a registered SeqIO task or mixture.
    task_feature_lengths: as in `get_batches`.
    split: dataset split.
    batch_size: rows per batch; the last batch is padded with zero rows.
    feature_converter_name: as in `get_batches`.
    seed: seed of the task's random preprocessors (fixed so predictions are reproducible).
    shard_id: this host's shard.
    num_shards: number of shards.
    max_examples: stop after this many examples (None: the whole split).

  Yields:
    `(examples, batch)`: `examples` is a list of up to `batch_size` dicts (the task's features
    as Python values plus `inputs_pretokenized`/`targets_pretokenized` text, decoded from the
    ids where the task does not keep it); `batch` holds `batch_size` rows, of which the first
    `len(examples)` are these examples in order.
  """
  lengths = _check_lengths(task_feature_lengths)
  provider = _get_provider(mixture_or_task_name)
  converter = feature_converters.get_feature_converter(feature_converter_name, pack=False)
  raw = _task_dataset(
    provider,
    lengths,
    split=split,
    shuffle=False,
    seed=seed,
    shard_id=shard_id,
    num_shards=num_shards,
    repeat=False,
    use_cached=False,
  )
  if max_examples is not None:
    raw = raw.take(max_examples)
  # Unpacked conversion is one row per example in order, so the two streams line up.
  ds = tf.data.Dataset.zip((raw, converter(raw, lengths)))
  output_features = provider.output_features
  examples, rows = [], []
  it = ds.as_numpy_iterator()
  while True:
    try:
      raw_ex, row = _next_or_data_error(it)
    except StopIteration:
      break
    examples.append(_decode_example(raw_ex, output_features))
    rows.append(row)
    if len(rows) == batch_size:
      yield examples, _stack(rows, batch_size)
      examples, rows = [], []
  if rows:
    yield examples, _stack(rows, batch_size)


def _stack(rows: list[dict], batch_size: int) -> dict[str, np.ndarray]:
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  n = len(rows)
  if n < batch_size:
    batch = {
      k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)])
      for k, v in batch.items()
    }
  return batch
