"""Tests of t5x_ext.data: feature converters with denoiser ids, and the batch iterator."""

import json

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5x_ext.data import feature_converters as fc
from t5x_ext.data import pipeline

VOCAB = seqio.PassThroughVocabulary(size=1000, eos_id=1)
EXAMPLES = [
  {"inputs": [5, 6, 1], "targets": [7, 1], "denoiser_id": 2},
  {"inputs": [8, 1], "targets": [9, 9, 1], "denoiser_id": 0},
  {"inputs": [4, 4, 4, 1], "targets": [3, 1], "denoiser_id": 1},
]


def _ds(examples, with_id=True):
  def gen():
    for e in examples:
      yield {k: v for k, v in e.items() if with_id or k != "denoiser_id"}

  sig = {"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)}
  if with_id:
    sig["denoiser_id"] = tf.TensorSpec([], tf.int32)
  return tf.data.Dataset.from_generator(gen, output_signature=sig)


def _rows(name, pack, lengths, with_id=True, examples=EXAMPLES):
  conv = fc.get_feature_converter(name, pack=pack)
  return list(conv(_ds(examples, with_id), lengths).as_numpy_iterator())


def test_encdec_packed_ids_follow_segments():
  rows = _rows("EncDecFeatureConverter", True, {"inputs": 8, "targets": 6})
  np.testing.assert_array_equal(rows[0]["decoder_target_tokens"], [7, 1, 9, 9, 1, 0])
  np.testing.assert_array_equal(rows[0]["decoder_denoiser_ids"], [3, 3, 1, 1, 1, 0])
  np.testing.assert_array_equal(rows[1]["decoder_denoiser_ids"], [2, 2, 0, 0, 0, 0])


def test_encdec_unpacked_and_default_id():
  rows = _rows("EncDecFeatureConverter", False, {"inputs": 8, "targets": 6})
  assert [list(r["decoder_denoiser_ids"][:3]) for r in rows] == [[3, 3, 0], [1, 1, 1], [2, 2, 0]]
  rows = _rows("EncDecFeatureConverter", True, {"inputs": 8, "targets": 6}, with_id=False)
  np.testing.assert_array_equal(rows[0]["decoder_denoiser_ids"], [1, 1, 1, 1, 1, 0])


@pytest.mark.parametrize("name", ["PrefixLMFeatureConverter", "DecoderFeatureConverter"])
@pytest.mark.parametrize("pack", [True, False])
def test_prefix_lm_ids_only_on_targets(name, pack):
  rows = _rows(name, pack, {"inputs": 8, "targets": 6})
  for r in rows:
    ids, w = r["decoder_denoiser_ids"], r["decoder_loss_weights"]
    assert ids.shape == (14,)
    # Exactly the loss-bearing (target) tokens carry an id.
    np.testing.assert_array_equal(ids > 0, w > 0)
  if pack:
    # Row 0 packs example 0 (inputs 3, targets 2) and example 1 (2 + 3).
    np.testing.assert_array_equal(
      rows[0]["decoder_denoiser_ids"][:10], [0, 0, 0, 3, 3, 0, 0, 1, 1, 1]
    )
  else:
    np.testing.assert_array_equal(rows[2]["decoder_denoiser_ids"][:6], [0, 0, 0, 0, 2, 2])


def test_decoder_lm_targets_only():
  ex = [{"targets": e["targets"], "denoiser_id": e["denoiser_id"]} for e in EXAMPLES]

  def gen():
    yield from ex

  ds = tf.data.Dataset.from_generator(
    gen,
    output_signature={
      "targets": tf.TensorSpec([None], tf.int32),
      "denoiser_id": tf.TensorSpec([], tf.int32),
    },
  )
  rows = list(
    fc.get_feature_converter("DecoderFeatureConverter")(ds, {"targets": 6}).as_numpy_iterator()
  )
  np.testing.assert_array_equal(rows[0]["decoder_denoiser_ids"], [3, 3, 1, 1, 1, 0])
  assert "decoder_causal_attention" not in rows[0]


def test_unknown_converter_is_named():
  with pytest.raises(ValueError, match="feature_converter_name='Nope'"):
    fc.get_feature_converter("Nope")


# ---- the batch iterator over a small registered task with a seeded random preprocessor ----


def _numbers_source(split, shuffle_files=False, seed=None):
  del shuffle_files, seed
  n = 200 if split == "train" else 13
  return tf.data.Dataset.range(n).map(
    lambda i: {"targets": tf.cast(tf.range(i % 17 + 3) + 3 + i % 50, tf.int32)}
  )


@seqio.map_over_dataset(num_seeds=2)
def _random_split(ex, seeds):
  n = tf.size(ex["targets"])
  k = tf.random.stateless_uniform([], seeds[0], 1, n, dtype=tf.int32)
  d = tf.random.stateless_uniform([], seeds[1], 0, 3, dtype=tf.int32)
  return {"inputs": ex["targets"][:k], "targets": ex["targets"][k:], "denoiser_id": d}


@pytest.fixture
def numbers_task():
  name = "test_numbers_random_split"
  seqio.TaskRegistry.add(
    name,
    source=seqio.FunctionDataSource(_numbers_source, splits=("train", "validation")),
    preprocessors=[_random_split, seqio.preprocessors.append_eos_after_trim],
    output_features={
      "inputs": seqio.Feature(VOCAB, add_eos=True),
      "targets": seqio.Feature(VOCAB, add_eos=True),
    },
  )
  return name


def _get(name, **kw):
  args = dict(split="train", batch_size=4, feature_converter_name="EncDecFeatureConverter", seed=3)
  args.update(kw)
  return pipeline.get_batches(name, {"inputs": 32, "targets": 32}, **args)


def test_batches_shapes_and_determinism(numbers_task):
  it = _get(numbers_task)
  b = next(it)
  assert b["encoder_input_tokens"].shape == (4, 32)
  assert b["decoder_denoiser_ids"].shape == (4, 32)
  assert b["encoder_segment_ids"].max() > 1  # packed
  again = next(_get(numbers_task))
  for k in b:
    np.testing.assert_array_equal(b[k], again[k])
  other = next(_get(numbers_task, seed=4))
  assert not np.array_equal(b["decoder_target_tokens"], other["decoder_target_tokens"])


def test_restore_continues_exactly(numbers_task):
  straight = _get(numbers_task)
  expected = [next(straight) for _ in range(12)]  # 48 rows: wraps past one epoch (repeat)
  first = _get(numbers_task)
  for _ in range(5):
    next(first)
  state = json.loads(json.dumps(first.state()))
  resumed = _get(numbers_task)
  resumed.restore(state)
  for want in expected[5:]:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert resumed.state()["batches"] == 12


def test_restore_rejects_other_stream(numbers_task):
  it = _get(numbers_task)
  next(it)
  with pytest.raises(ValueError, match="seed"):
    _get(numbers_task, seed=9).restore(it.state())


def test_shards_differ(numbers_task):
  a = next(_get(numbers_task, shard_id=0, num_shards=2))
  b = next(_get(numbers_task, shard_id=1, num_shards=2))
  assert not np.array_equal(a["decoder_target_tokens"], b["decoder_target_tokens"])
  with pytest.raises(ValueError, match="shard_id=2"):
    next(_get(numbers_task, shard_id=2, num_shards=2))


def test_eval_is_finite_and_padded(numbers_task):
  it = _get(numbers_task, split="validation", repeat=False, pack=False, batch_size=5)
  batches = list(it)
  assert len(batches) == 3  # 13 examples
  assert it.num_valid == 3
  assert batches[-1]["decoder_loss_weights"][3:].sum() == 0
  assert batches[-1]["decoder_loss_weights"][:3].sum() > 0


def test_infer_batches_line_up(numbers_task):
  out = list(pipeline.get_infer_batches(numbers_task, {"inputs": 32, "targets": 32}, batch_size=5))
  assert [len(ex) for ex, _ in out] == [5, 5, 3]
  for examples, batch in out:
    for i, ex in enumerate(examples):
      n = len(ex["targets"])
      np.testing.assert_array_equal(batch["decoder_target_tokens"][i, :n], ex["targets"])
      assert "inputs_pretokenized" in ex


def test_bad_arguments_are_named(numbers_task):
  with pytest.raises(ValueError, match="no_such_task"):
    pipeline.get_batches("no_such_task", {"inputs": 8, "targets": 8}, batch_size=2)
  with pytest.raises(ValueError, match=r"task_feature_lengths\['inputs'\]=0"):
    pipeline.get_batches(numbers_task, {"inputs": 0, "targets": 8}, batch_size=2)


# ---- the real UL2 task of the embedded corpus ----


@pytest.mark.parametrize("converter", ["EncDecFeatureConverter", "PrefixLMFeatureConverter"])
def test_ul2_batches_ids_are_constant_per_packed_segment(converter):
  import tasks

  lengths = {"inputs": 512, "targets": 512}
  it = pipeline.get_batches(
    "pydocs_ul2_mod_v1", lengths, batch_size=4, feature_converter_name=converter, seed=1
  )
  k = len(tasks.OBJECTIVES["ul2_mod"])
  seen = set()
  for _ in range(3):
    b = next(it)
    ids, segs, w = b["decoder_denoiser_ids"], b["decoder_segment_ids"], b["decoder_loss_weights"]
    np.testing.assert_array_equal(ids > 0, w > 0)
    assert ids.max() <= k
    for row in range(ids.shape[0]):
      for s in set(segs[row][w[row] > 0].tolist()):
        vals = set(ids[row][(segs[row] == s) & (w[row] > 0)].tolist())
        assert len(vals) == 1, (row, s, vals)
        seen |= vals
  assert len(seen) >= 3  # several denoisers appear in 12 packed rows


def test_ul2_restore_is_exact():
  lengths = {"inputs": 512, "targets": 512}

  def make():
    return pipeline.get_batches("pydocs_ul2_mod_v1", lengths, batch_size=2, seed=5)

  straight = make()
  want = [next(straight) for _ in range(6)]
  first = make()
  next(first), next(first)
  resumed = make()
  resumed.restore(first.state())
  for w in want[2:]:
    got = next(resumed)
    for key in w:
      np.testing.assert_array_equal(got[key], w[key], err_msg=key)


def test_infer_batches_of_a_finetuning_task_keep_the_text():
  import tasks

  out = pipeline.get_infer_batches(
    "pydocs_topic_classification_v1", {"inputs": 128, "targets": 8}, batch_size=4, max_examples=6
  )
  (ex1, b1), (ex2, b2) = list(out)
  assert len(ex1) == 4 and len(ex2) == 2
  labels = set(tasks.finetune.TOPIC_PACKAGES.values())
  assert all(e["targets_pretokenized"] in labels for e in ex1 + ex2)
  assert all(e["inputs_pretokenized"].startswith("topic: ") for e in ex1)
  assert b2["decoder_loss_weights"][2:].sum() == 0


def test_tf_checkpoint_restore_is_exact(numbers_task, tmp_path):
  straight = _get(numbers_task)
  want = [next(straight) for _ in range(9)]
  first = _get(numbers_task)
  for _ in range(4):
    next(first)
  path = first.save_checkpoint(str(tmp_path / "data" / "ckpt"))
  resumed = _get(numbers_task)
  resumed.restore_checkpoint(path)
  assert resumed.state()["batches"] == 4
  for w in want[4:]:
    got = next(resumed)
    for key in w:
      np.testing.assert_array_equal(got[key], w[key], err_msg=key)
