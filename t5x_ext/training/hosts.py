"""Several processes, one mesh: each host's rows, decoding in lockstep, gathering results.

Every process of a multi-host run calls these at the same time with the same shapes: one
global computation per call. On one process they reduce to plain numpy.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from t5x_ext.training import partitioning

# -------------------------------------------------------------------------- prediction


def local_rows(x: Any) -> np.ndarray:
  """This process's rows of a global batch-sharded array, in order.

  Args:
    x: a global `jax.Array` (or anything `jax.device_get` takes).

  Returns:
    A numpy array of this process's rows (all rows on one process).
  """
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, rows = set(), []
    for s in shards:
      start = s.index[0].start or 0
      if start not in seen:
        seen.add(start)
        rows.append(np.asarray(s.data))
    return np.concatenate(rows)
  return np.asarray(jax.device_get(x))


def row_multiple(mesh: Any) -> int:
  """The multiple a process-local batch must have to split over the mesh's batch axes.

  A global batch is split into `data x fsdp` slices; this process loads its `num_shards`-th
  part of them (`partitioning.process_batch_shard`), so its rows must divide by the slices
  it holds.

  Args:
    mesh: the mesh.

  Returns:
    `data_parallel_size(mesh) // num_shards` (the whole data-parallel size on one process).
  """
  dp = partitioning.data_parallel_size(mesh)
  _, num_shards = partitioning.process_batch_shard(mesh)
  return max(dp // num_shards, 1)


def pad_rows(batch: Mapping[str, np.ndarray], multiple: int) -> tuple[dict[str, np.ndarray], int]:
  """`batch` with zero rows appended up to a multiple of `multiple` rows (at least one).

  Zero rows are what the padding batches of evaluation and `lockstep` already feed the
  model: all-padding inputs and targets, which decode and score to values nobody reads.

  Args:
    batch: numpy arrays with a common leading (row) dimension.
    multiple: the row multiple (see `row_multiple`).

  Returns:
    `(padded batch, number of real rows)`; the batch itself when no row is missing.
  """
  batch = {k: np.asarray(v) for k, v in batch.items()}
  rows = {v.shape[0] for v in batch.values()}
  if len(rows) > 1:
    raise ValueError(f"batch features have different row counts: {sorted(rows)}")
  n = rows.pop() if rows else 0
  missing = -n % multiple if n else multiple
  if not missing:
    return batch, n
  return {
    k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)]) for k, v in batch.items()
  }, n


def run_rows(
  trainer: Any, fn: Callable[[dict[str, jax.Array]], Any], batch: Mapping[str, np.ndarray]
) -> Any:
  """Runs `fn` on this process's rows of any count, sharded over the trainer's mesh.

  The rows are padded with zero rows to a multiple of this process's share of the batch
  sharding (`row_multiple`), placed as global arrays, passed to `fn` under the trainer's
  axis rules, and every output is cut back to this process's real rows. Decoding and
  scoring (samples, infer, eval, the suite, probes, rank classification) come through here,
  so a batch of 3 rows runs on a mesh with 4 or 8 batch slices.

  Args:
    trainer: a `Trainer` (its mesh, rules and `shard_batch`).
    fn: global batch -> a pytree of arrays with the batch on axis 0.
    batch: this process's numpy rows (the features `fn` reads).

  Returns:
    `fn`'s outputs as numpy arrays of this process's real rows.
  """
  padded, n = pad_rows(batch, row_multiple(trainer.mesh))
  global_batch = trainer.shard_batch(padded)
  with partitioning.axis_rules(trainer.mesh, trainer.rules):
    out = fn(global_batch)
  return jax.tree.map(lambda x: local_rows(x)[:n], out)


def predict(
  trainer: Any,
  params: Any,
  batch: Mapping[str, np.ndarray],
  rng: jax.Array | None = None,
  *,
  decode: bool = True,
  with_scores: bool = False,
  **decode_kw: Any,
) -> tuple[np.ndarray | None, np.ndarray | None]:
  """Decodes and/or scores one process-local numpy batch on the trainer's mesh.

  Every process calls it with the same number of rows at the same time (one global
  computation); see `lockstep`. Any number of rows works: `run_rows` pads them to the batch
  sharding and cuts the outputs back.

  Args:
    trainer: a `Trainer` (its mesh, rules, model and `shard_batch`).
    params: the sharded params.
    batch: this process's rows (`decoder_denoiser_ids` is dropped: the model does not read it).
    rng: sampling key (greedy and beam search ignore it).
    decode: decode (`model.predict_batch`).
    with_scores: score the targets (`model.score_batch`).
    **decode_kw: `predict_batch` keywords (decode_len, method, temperature, ...).

  Returns:
    `(tokens [rows, decode_len] or None, scores [rows] or None)`, this process's rows.
  """
  model_batch = {k: v for k, v in batch.items() if k != "decoder_denoiser_ids"}

  def fn(global_batch):
    pred = scores = None
    if decode:
      pred = trainer.model.predict_batch(params, global_batch, rng, **decode_kw)
    if with_scores:
      scores = trainer.model.score_batch(params, global_batch)
    return pred, scores

  return run_rows(trainer, fn, model_batch)


# ------------------------------------------------------------------ several processes


def allgather(x: np.ndarray) -> np.ndarray:
  """Every process's `x`, stacked in process order (the one collective of this module).

  Args:
    x: a numpy array of the same shape and dtype on every process.

  Returns:
    `[process_count, *x.shape]`.
  """
  if jax.process_count() == 1:
    return np.asarray(x)[None]
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=False))


def zero_batch(template: Mapping[str, Any], rows: int | None = None) -> dict[str, np.ndarray]:
  """A batch of zeros with the template's shapes and dtypes: the padding batch.

  Zero rows carry no loss weight and decode to nothing kept, so a shard that has run out
  runs them while the others finish (`lockstep`), an init sees no real data, and a short
  split pads to a fixed number of batches.

  Args:
    template: feature -> array (numpy, `jax.Array` or `jax.ShapeDtypeStruct`).
    rows: the leading (batch) dimension, when it differs from the template's.

  Returns:
    feature -> numpy zeros.
  """
  out = {}
  for k, v in template.items():
    shape, dtype = tuple(np.shape(v)), getattr(v, "dtype", None) or np.asarray(v).dtype
    if rows is not None:
      shape = (int(rows), *shape[1:])
    out[k] = np.zeros(shape, dtype)
  return out


def lockstep(items: Iterable[Any], pad: Callable[[], Any]) -> Iterator[Any]:
  """This process's items while any process still has one; `pad()` once this one is out.

  The processes agree on every step (`allgather`), so a shard with fewer batches runs the
  same global computations as the longest one, on padding.

  Args:
    items: this process's (finite) items, e.g. `(examples, batch)` pairs.
    pad: makes the item of a process that has run out (e.g. `([], zero_batch)`).

  Yields:
    This process's items, then padding until every process has run out.
  """
  it = iter(items)
  while True:
    item = next(it, None)
    have = allgather(np.asarray(item is not None, np.int32))
    if not np.any(have):
      return
    yield pad() if item is None else item


def gather_shards(payload: Any, shard_id: int) -> list[Any]:
  """Every shard's `payload` (any picklable value) on every process, once per shard.

  Processes that are replicas along the batch (same `shard_id`) send the same payload; one
  copy is kept, so results gathered from a split count each example once.

  Args:
    payload: this process's results.
    shard_id: this process's shard (`partitioning.process_batch_shard`).

  Returns:
    The payloads, ordered by shard id.
  """
  data = np.frombuffer(pickle.dumps((int(shard_id), payload)), np.uint8)
  sizes = allgather(np.asarray(data.size, np.int32)).reshape(-1)
  if sizes.size == 1:
    return [payload]
  buf = np.zeros(int(sizes.max()), np.uint8)
  buf[: data.size] = data
  rows = allgather(buf)
  by_shard: dict[int, Any] = {}
  for row, size in zip(rows, sizes):
    sid, value = pickle.loads(row[: int(size)].tobytes())
    by_shard.setdefault(sid, value)
  return [by_shard[k] for k in sorted(by_shard)]


def shard_share(total: int | None, shard_id: int, num_shards: int) -> int | None:
  """This shard's part of `total` examples (the first `total % num_shards` get one more).

  Args:
    total: examples over all shards (None: all).
    shard_id: this shard.
    num_shards: the number of shards.

  Returns:
    The examples this shard takes, or None for all.
  """
  if total is None:
    return None
  return total // num_shards + (1 if shard_id < total % num_shards else 0)
