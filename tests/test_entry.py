"""Several processes decoding a split (`t5x_ext.training.hosts`, used by eval and infer).

Two processes are simulated by two threads that share one CPU device: `hosts.allgather`, the
scaffold's one collective, is replaced by a barrier that stacks both threads' arrays. Each
thread decodes its own shard; the SeqIO metric must see every example of the split exactly
once, on both processes.
"""

from __future__ import annotations

import threading

import jax
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf
from tiny_network import tiny_config

import tasks  # noqa: F401 - registered before conftest snapshots the registries
from t5x_ext import eval as eval_cmd
from t5x_ext.evaluation import seqio_metrics as seqio_metrics_lib
from t5x_ext.model import models
from t5x_ext.training import hosts, partitioning
from t5x_ext.training.trainer import Trainer

LENGTHS = {"inputs": 16, "targets": 6}
NUM_EXAMPLES = 13  # 7 + 6 over two shards: one shard has a batch more than the other


class _Vocab(seqio.PassThroughVocabulary):
  """Ids in, ids out; decoded as their numbers, so targets read back as text."""

  def _decode(self, ids):
    return " ".join(str(int(i)) for i in ids)


def _source(split, shuffle_files=False, seed=None):
  del split, shuffle_files, seed
  i = tf.data.Dataset.range(NUM_EXAMPLES)
  return i.map(
    lambda i: {
      "inputs": tf.cast(tf.range(i % 5 + 3) + 2 + i, tf.int32),
      "targets": tf.cast(tf.stack([10 + i, 11 + i]), tf.int32),
    }
  )


@pytest.fixture
def numbers_task():
  """A task whose metric records the targets and predictions it is given, per thread."""
  seen: dict[str, tuple[list, list]] = {}

  def recording_metric(targets, predictions):
    seen[threading.current_thread().name] = (list(targets), list(predictions))
    return {"n": len(targets)}

  vocab = _Vocab(size=64, eos_id=1)
  seqio.TaskRegistry.add(
    "test_entry_numbers",
    source=seqio.FunctionDataSource(_source, splits=("validation",)),
    preprocessors=[seqio.preprocessors.append_eos_after_trim],
    output_features={
      "inputs": seqio.Feature(vocab, add_eos=True),
      "targets": seqio.Feature(vocab, add_eos=True),
    },
    metric_fns=[recording_metric],
  )
  return seqio.get_mixture_or_task("test_entry_numbers"), seen


@pytest.fixture
def two_processes(monkeypatch):
  """Runs `fn(shard_id)` in threads "p0" and "p1" with `hosts.allgather` across them."""
  barrier, slots = threading.Barrier(2, timeout=60), {}

  def allgather(x):
    name = threading.current_thread().name
    if name not in ("p0", "p1"):  # the test's own thread: one process
      return np.asarray(x)[None]
    slots[name] = np.asarray(x)
    barrier.wait()
    out = np.stack([slots["p0"], slots["p1"]])
    barrier.wait()
    return out

  monkeypatch.setattr(hosts, "allgather", allgather)

  def run(fn):
    results, errors = {}, []

    def target(shard_id):
      try:
        results[shard_id] = fn(shard_id)
      except BaseException as e:  # noqa: BLE001 - reported below
        errors.append(e)
        barrier.abort()

    threads = [threading.Thread(target=target, args=(i,), name=f"p{i}") for i in range(2)]
    for t in threads:
      t.start()
    for t in threads:
      t.join(timeout=240)
    if errors:
      raise errors[0]
    return results

  return run


@pytest.fixture(scope="module")
def trainer_and_params():
  """A tiny encoder-decoder at its random init (the metric only counts examples)."""
  model = models.EncoderDecoderModel(tiny_config())
  trainer = Trainer(model, optax.identity(), partitioning.make_mesh({"data": -1}))
  batch = {
    "encoder_input_tokens": np.zeros((2, LENGTHS["inputs"]), np.int32),
    "decoder_input_tokens": np.zeros((2, LENGTHS["targets"]), np.int32),
    "decoder_target_tokens": np.zeros((2, LENGTHS["targets"]), np.int32),
  }
  return trainer, trainer.init_state(jax.random.key(0), batch).params


def _metrics(trainer, params, task, shard, max_examples=None):
  # Two rows per process and decode, also for the one-process reference: one compile.
  return seqio_metrics_lib.seqio_metrics(
    trainer,
    params,
    task,
    LENGTHS,
    split="validation",
    batch_size=2 * shard[1],
    decode_len=LENGTHS["targets"],
    max_examples=max_examples,
    seed=0,
    shard=shard,
  )


def test_each_process_decodes_its_shard_and_metrics_see_the_split_once(
  numbers_task, two_processes, trainer_and_params, monkeypatch
):
  task, seen = numbers_task
  trainer, params = trainer_and_params
  # One process: the reference.
  single = _metrics(trainer, params, task, (0, 1))
  assert single == {"test_entry_numbers/n": NUM_EXAMPLES}
  ref_targets, ref_predictions = seen.pop("MainThread")
  assert len(set(ref_targets)) == NUM_EXAMPLES

  decoded: dict[str, list[int]] = {"p0": [], "p1": []}
  predict = hosts.predict

  def counting_predict(trainer, params, batch, *args, **kwargs):
    rows = batch["encoder_input_tokens"]
    decoded[threading.current_thread().name].append(int(np.sum(rows.any(axis=1))))
    return predict(trainer, params, batch, *args, **kwargs)

  monkeypatch.setattr(hosts, "predict", counting_predict)
  results = two_processes(lambda s: _metrics(trainer, params, task, (s, 2)))
  # Both processes report the metric of the whole split, computed on all 13 examples once.
  assert results == {0: single, 1: single}
  for name in ("p0", "p1"):
    targets, predictions = seen[name]
    assert sorted(targets) == sorted(ref_targets)
    assert sorted(zip(targets, predictions)) == sorted(zip(ref_targets, ref_predictions))
  # Each decoded only its shard (batches of 2 rows): 7 and 6 examples, and the shorter shard
  # decoded one all-padding batch so that the four global decodes line up.
  assert [sum(decoded["p0"]), sum(decoded["p1"])] == [7, 6]
  assert decoded["p1"] == [2, 2, 2, 0] and len(decoded["p0"]) == 4


def test_max_examples_is_shared_between_the_processes(
  numbers_task, two_processes, trainer_and_params
):
  task, seen = numbers_task
  trainer, params = trainer_and_params
  results = two_processes(lambda s: _metrics(trainer, params, task, (s, 2), max_examples=5))
  assert results[0] == results[1] == {"test_entry_numbers/n": 5}
  assert len(set(seen["p0"][0])) == 5


def test_gather_keeps_one_copy_per_shard(two_processes):
  # Processes 0 and 1 are replicas (same shard): their results count once.
  results = two_processes(lambda s: hosts.gather_shards([f"from {s}"], 0))
  assert results[0] == results[1] == [["from 0"]]
  results = two_processes(lambda s: hosts.gather_shards({"rows": s}, 1 - s))
  assert results[0] == results[1] == [{"rows": 1}, {"rows": 0}]


def test_lockstep_pads_the_shorter_shard(two_processes):
  items = {0: [1, 2, 3], 1: [4]}
  results = two_processes(lambda s: list(hosts.lockstep(items[s], lambda: 0)))
  assert results == {0: [1, 2, 3], 1: [4, 0, 0]}


def test_zero_batch_has_the_template_shapes_and_dtypes():
  template = {"a": np.ones((2, 3), np.int32), "b": jax.ShapeDtypeStruct((2, 5), np.float32)}
  zeros = hosts.zero_batch(template)
  assert {k: (v.shape, v.dtype) for k, v in zeros.items()} == {
    "a": ((2, 3), np.int32),
    "b": ((2, 5), np.float32),
  }
  assert not any(v.any() for v in zeros.values())
  assert hosts.zero_batch(template, rows=4)["a"].shape == (4, 3)


def test_one_process_needs_no_collective():
  assert list(hosts.lockstep([1, 2], lambda: 0)) == [1, 2]
  assert hosts.gather_shards("x", 0) == ["x"]
  assert [hosts.shard_share(13, s, 2) for s in (0, 1)] == [7, 6]
  assert hosts.shard_share(None, 0, 2) is None


def test_main_names_what_to_include_when_nothing_is_configured():
  from t5x_ext import infer as infer_lib

  with pytest.raises(
    ValueError,
    match=r"configure neither t5x_ext\.evaluation\.suite\.run_suite nor t5x_ext\.eval\.evaluate; "
    r"include 'runs/eval_suite\.gin' or 'runs/eval\.gin'",
  ):
    eval_cmd.main(["--gin_file=local/tiny_model.gin"])
  with pytest.raises(ValueError, match=r"MODEL_DIR is not set \(declared .* gin/runs/infer\.gin\)"):
    infer_lib.main(["--gin_file=local/tiny_model.gin"])
