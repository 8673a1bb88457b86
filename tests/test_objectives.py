"""Configuration, validation, planning, seeding and packing of `t5x_ext.objectives`."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import seqio

from t5x_ext import objectives
from t5x_ext.objectives import Denoiser
from tests import objectives_util as U


@pytest.fixture(scope="module")
def vocab():
  return U.vocabulary()


def _examples(denoisers, vocab, n, *, seed=0, docs_seed=0, lengths=U.LENGTHS, **kw):
  docs = U.synthetic_docs(n, docs_seed)
  ds = objectives.mixture_of_denoisers(
    U.docs_dataset(docs), lengths, U.features(vocab), denoisers, seed=seed, **kw
  )
  return list(ds.take(n).as_numpy_iterator())


# --- the published configurations -------------------------------------------------------


def test_ul2_denoisers_are_the_papers_seven_in_order():
  got = [(d.kind, d.mean_span_length, d.noise_density, d.mode) for d in objectives.UL2_DENOISERS]
  assert got == [
    ("span", 3, 0.15, "[NLU]"),
    ("span", 8, 0.15, "[NLU]"),
    ("span", 3, 0.5, "[NLG]"),
    ("span", 8, 0.5, "[NLG]"),
    ("span", 64, 0.15, "[NLG]"),
    ("span", 64, 0.5, "[NLG]"),
    ("prefix_lm", 0.0, 0.25, "[S2S]"),
  ]
  rates = objectives.normalized_rates(objectives.UL2_DENOISERS)
  assert rates[-1] == pytest.approx(0.2)
  assert sum(rates[:2]) == pytest.approx(0.4) and sum(rates[2:6]) == pytest.approx(0.4)
  with pytest.raises(dataclasses.FrozenInstanceError):
    objectives.UL2_DENOISERS[0].rate = 1.0


def test_ul2r_and_baselines():
  kinds = [(d.kind, d.mean_span_length, d.noise_density) for d in objectives.UL2R_DENOISERS]
  assert kinds == [("span", 3, 0.15), ("span", 32, 0.5), ("prefix_lm", 0.0, 0.25)]
  assert objectives.normalized_rates(objectives.UL2R_DENOISERS) == pytest.approx([0.25, 0.25, 0.5])
  (t5,) = objectives.T5_SPAN_CORRUPTION
  assert (t5.kind, t5.mean_span_length, t5.noise_density, t5.mode) == ("span", 3, 0.15, "")
  assert objectives.PREFIX_LM[0].kind == "prefix_lm" and objectives.CAUSAL_LM[0].kind == "causal_lm"


# --- bad configurations fail early, naming the denoiser and the numbers -------------------


def _span(**kw):
  base = dict(name="bad", kind="span", mean_span_length=3, noise_density=0.15, mode="[NLU]")
  base.update(kw)
  return Denoiser(**base)


@pytest.mark.parametrize(
  "denoiser, pattern",
  [
    (_span(noise_density=0.0), r"'bad'.*noise_density must be in \(0, 1\), got 0\.0"),
    (_span(noise_density=1.2), r"'bad'.*noise_density must be in \(0, 1\), got 1\.2"),
    (_span(mean_span_length=0), r"'bad'.*mean_span_length must be > 0, got 0"),
    (_span(mean_span_length=-2.5), r"'bad'.*mean_span_length must be > 0, got -2\.5"),
    (_span(mode="[XYZ]"), r"'bad'.*unknown mode '\[XYZ\]'"),
    (_span(kind="mlm"), r"'bad'.*unknown kind 'mlm'"),
    (_span(rate=-1.0), r"'bad'.*rate must be a finite number >= 0, got -1\.0"),
    (
      Denoiser("S", "prefix_lm", noise_density=0.7, prefix_split="paper"),
      r"'S'.*noise_density must be <= 0\.5, got 0\.7",
    ),
    (Denoiser("S", "prefix_lm", noise_density=0.25, prefix_split="beta"), r"'S'.*'beta'"),
  ],
)
def test_bad_denoiser_settings_fail(denoiser, pattern, vocab):
  with pytest.raises(ValueError, match=pattern):
    objectives.validate_denoisers([denoiser], vocabulary=vocab)
  # The preprocessor itself refuses too, before building any graph.
  with pytest.raises(ValueError, match=pattern):
    objectives.mixture_of_denoisers(U.docs_dataset([]), U.LENGTHS, U.features(vocab), [denoiser])


def test_rates_must_sum_to_a_positive_number(vocab):
  zero = [dataclasses.replace(d, rate=0.0) for d in objectives.UL2_DENOISERS]
  with pytest.raises(ValueError, match=r"sum to a positive number.*R_mu3_r0\.15=0\.0.*sum 0\.0"):
    objectives.validate_denoisers(zero, vocabulary=vocab)


def test_duplicate_names_and_empty_mixture_fail():
  with pytest.raises(ValueError, match="duplicate name"):
    objectives.validate_denoisers([_span(), _span()])
  with pytest.raises(ValueError, match="at least one Denoiser"):
    objectives.validate_denoisers([])


def test_lengths_too_short_for_a_denoiser(vocab):
  # X(64, 0.15) needs chunks of >= 427 tokens to hold one 64-token span on average.
  with pytest.raises(ValueError, match=r"'X_mu64_r0\.15'.*>= 427 tokens.*at most \d+ tokens"):
    objectives.validate_denoisers(
      objectives.UL2_DENOISERS, vocabulary=vocab, sequence_length={"inputs": 128, "targets": 128}
    )
  with pytest.raises(ValueError, match=r"'S'.*too short"):
    objectives.validate_denoisers(
      objectives.UL2_DENOISERS[-1:], vocabulary=vocab, sequence_length={"inputs": 6, "targets": 8}
    )
  with pytest.raises(ValueError, match=r"'R_mu3_r0\.15'.*needs an 'inputs' length"):
    objectives.validate_denoisers(
      objectives.UL2_DENOISERS[:1], vocabulary=vocab, sequence_length={"targets": 512}
    )


def test_more_spans_than_sentinels_plans_down_or_fails():
  few = U.vocabulary(extra_ids=10)
  plans = objectives.validate_denoisers(
    objectives.UL2_DENOISERS[:1], vocabulary=few, sequence_length=U.LENGTHS
  )
  (plan,) = plans
  assert plan.sentinel_limited and plan.max_spans <= 10
  # Unlimited it would take a full 512-input chunk; 10 spans of ~3 hold ~200 tokens.
  assert plan.chunk_length < 250
  # X(3, 0.5) at 512 needs far more than 100 sentinels: planned down to exactly 100.
  (x3,) = objectives.validate_denoisers(
    objectives.UL2_DENOISERS[2:3], vocabulary=U.vocabulary(), sequence_length=U.LENGTHS
  )
  assert x3.sentinel_limited and x3.max_spans == 100
  # One extra id: X(64, 0.5) gets exactly one 64-token span per 128-token chunk.
  (one,) = objectives.validate_denoisers(
    objectives.UL2_DENOISERS[5:6], vocabulary=U.vocabulary(1), sequence_length=U.LENGTHS
  )
  assert one.sentinel_limited and one.max_spans == 1 and one.chunk_length == 128
  # No extra ids at all: span corruption is impossible and says so.
  with pytest.raises(ValueError, match=r"'R_mu3_r0\.15'.*0 extra ids"):
    objectives.validate_denoisers(objectives.UL2_DENOISERS[:1], vocabulary=U.vocabulary(0))


def test_token_mode_needs_an_id_per_mode(vocab):
  with pytest.raises(ValueError, match=r"'S'.*mode '\[S2S\]' has no id"):
    objectives.validate_denoisers(
      objectives.UL2_DENOISERS,
      vocabulary=vocab,
      mode_prefix="token",
      mode_token_ids={"[NLU]": 900, "[NLG]": 901},
    )
  with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 1100\)"):
    objectives.validate_denoisers(
      objectives.UL2_DENOISERS[:1],
      vocabulary=vocab,
      mode_prefix="token",
      mode_token_ids={"[NLU]": 5000},
    )
  with pytest.raises(ValueError, match="mode_prefix must be one of"):
    objectives.validate_denoisers(objectives.UL2_DENOISERS, vocabulary=vocab, mode_prefix="emoji")


# --- planning --------------------------------------------------------------------------


def test_planned_lengths_fit_every_draw(vocab):
  plans = objectives.validate_denoisers(
    objectives.UL2_DENOISERS, vocabulary=vocab, sequence_length=U.LENGTHS
  )
  for d, p in zip(objectives.UL2_DENOISERS, plans):
    assert p.max_inputs_length <= 511 and p.max_targets_length <= 511, d.name
    # Tight: at least one feature is (nearly) full, so no budget is wasted.
    assert max(p.max_inputs_length, p.max_targets_length) >= 505 or p.sentinel_limited, d.name
  # Longer spans / denser noise consume longer raw chunks.
  by_name = {d.name: p.chunk_length for d, p in zip(objectives.UL2_DENOISERS, plans)}
  assert by_name["X_mu64_r0.5"] > by_name["X_mu8_r0.5"] > by_name["R_mu3_r0.15"]


def test_decoder_only_causal_lm_needs_only_targets(vocab):
  of = {"targets": seqio.Feature(vocab)}
  docs = U.synthetic_docs(20, 1)
  ds = objectives.mixture_of_denoisers(
    U.docs_dataset(docs), {"targets": 256}, of, objectives.CAUSAL_LM, seed=1
  )
  exs = list(ds.as_numpy_iterator())
  assert all(set(ex) == {"targets", "denoiser_id"} for ex in exs)
  assert max(len(ex["targets"]) for ex in exs) == 255
  np.testing.assert_array_equal(
    np.concatenate([ex["targets"] for ex in exs[:2]]),
    docs[0][: sum(len(ex["targets"]) for ex in exs[:2])],
  )


@pytest.mark.parametrize("concatenate", [True, False])
def test_tiny_and_empty_documents(vocab, concatenate):
  docs = [np.zeros([0], np.int32), np.asarray([7], np.int32), np.asarray([8, 9], np.int32)]
  docs += [np.arange(10, 13, dtype=np.int32)]
  ds = objectives.mixture_of_denoisers(
    U.docs_dataset(docs), U.LENGTHS, U.features(vocab), seed=0, concatenate_documents=concatenate
  )
  exs = list(ds.as_numpy_iterator())
  # Concatenated: one 6-token chunk; per document: [8, 9] and [10, 11, 12].
  assert len(exs) == (1 if concatenate else 2)
  for ex in exs:
    assert len(ex["targets"]) >= 1
  empty = objectives.mixture_of_denoisers(U.docs_dataset([]), U.LENGTHS, U.features(vocab))
  assert list(empty.as_numpy_iterator()) == []


def test_sequence_length_is_required(vocab):
  with pytest.raises(ValueError, match="sequence_length"):
    objectives.mixture_of_denoisers(U.docs_dataset([]), None, U.features(vocab))


# --- prefixes --------------------------------------------------------------------------


def test_token_mode_prefix(vocab):
  ids = {"[NLU]": 990, "[NLG]": 991, "[S2S]": 992}
  exs = _examples(objectives.UL2_DENOISERS, vocab, 300, mode_prefix="token", mode_token_ids=ids)
  for ex in exs:
    d = objectives.UL2_DENOISERS[int(ex["denoiser_id"])]
    assert ex["inputs"][0] == ids[d.mode]


def test_reserved_mode_ids_in_extra_range_shrink_the_sentinels(vocab):
  # Mode tokens taken from the bottom of the extra ids: sentinels stop above them.
  ids = {"[NLU]": 1000, "[NLG]": 1001, "[S2S]": 1002}
  plans = objectives.validate_denoisers(
    objectives.UL2_DENOISERS,
    vocabulary=vocab,
    sequence_length=U.LENGTHS,
    mode_prefix="token",
    mode_token_ids=ids,
  )
  assert max(p.max_spans for p in plans) <= 1100 - 1 - 1002


def test_text_prefix_with_sentencepiece():
  spm = U.spm_vocabulary()
  d = dataclasses.replace(objectives.T5_SPAN_CORRUPTION[0], mode="[NLU]")
  docs = U.synthetic_docs(5, 2, vocab_hi=26)
  ds = objectives.mixture_of_denoisers(
    U.docs_dataset(docs), U.LENGTHS, U.features(spm), [d], seed=0
  )
  want = list(spm.encode("[NLU]"))
  assert len(want) >= 2
  for ex in ds.as_numpy_iterator():
    assert list(ex["inputs"][: len(want)]) == want


# --- seeds -----------------------------------------------------------------------------


def test_same_seed_same_examples_other_seed_differs(vocab):
  a = _examples(objectives.UL2_DENOISERS, vocab, 200, seed=7)
  b = _examples(objectives.UL2_DENOISERS, vocab, 200, seed=7)
  c = _examples(objectives.UL2_DENOISERS, vocab, 200, seed=8)
  assert len(a) == len(b) == 200
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert any(
    len(x["inputs"]) != len(z["inputs"]) or (x["inputs"] != z["inputs"]).any() for x, z in zip(a, c)
  )


def _register_task(name, docs, vocab):
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return U.docs_dataset(docs)

  return seqio.TaskRegistry.add(
    name,
    source=seqio.FunctionDataSource(
      dataset_fn, splits=["train"], num_input_examples={"train": len(docs)}
    ),
    preprocessors=[
      functools.partial(objectives.mixture_of_denoisers, denoisers=objectives.UL2_DENOISERS),
      seqio.preprocessors.append_eos_after_trim,
    ],
    output_features=U.features(vocab),
  )


def _take(task, n, **kw):
  ds = task.get_dataset(U.LENGTHS, split="train", shuffle=False, **kw)
  return list(ds.take(n).as_numpy_iterator())


def test_seqio_task_seed_and_shards(vocab):
  # Equal lengths, so only randomness (not document length) can change the chunking.
  docs = U.synthetic_docs(60, 5, lo=3000, hi=3001)
  task = _register_task("t5x_ext_test_mod_seeds", docs, vocab)
  a = _take(task, 50, seed=3)
  b = _take(task, 50, seed=3)
  c = _take(task, 50, seed=4)
  assert len(a) == len(b) == len(c) == 50
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  # ... and the seed reaches the random preprocessors: another one draws other examples.
  assert any(not np.array_equal(x["inputs"], z["inputs"]) for x, z in zip(a, c))
  # Shards get the same seed stream from SeqIO; the document fingerprint mixed into each
  # seed makes their random choices differ, not only their text: the sequences of drawn
  # denoisers differ.
  s0 = _take(task, 50, seed=3, shard_info=seqio.ShardInfo(0, 2))
  s1 = _take(task, 50, seed=3, shard_info=seqio.ShardInfo(1, 2))
  assert len(s0) == len(s1) == 50
  ids0 = [int(x["denoiser_id"]) for x in s0]
  ids1 = [int(x["denoiser_id"]) for x in s1]
  assert ids0 != ids1


# --- packing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "converter, expected",
  [
    (seqio.EncDecFeatureConverter(pack=True), "encoder_segment_ids"),
    (seqio.PrefixLMFeatureConverter(pack=True), "decoder_causal_attention"),
  ],
)
def test_packs_through_seqio_feature_converters(vocab, converter, expected):
  # Short documents make short examples, so packing must put several in one row.
  docs = U.synthetic_docs(200, 6, lo=20, hi=300)
  ds = objectives.mixture_of_denoisers(
    U.docs_dataset(docs),
    U.LENGTHS,
    U.features(vocab),
    objectives.UL2_DENOISERS,
    seed=0,
    concatenate_documents=False,
  )
  ds = seqio.preprocessors.append_eos_after_trim(ds, U.features(vocab), U.LENGTHS)
  packed = converter(ds, U.LENGTHS)
  batches = list(packed.take(20).as_numpy_iterator())
  assert len(batches) == 20
  for b in batches:
    assert expected in b
    seg = b.get("encoder_segment_ids", b.get("decoder_segment_ids"))
    assert seg.max() >= 1
  # Packing actually packs: some row holds more than one example.
  seg_key = "decoder_segment_ids"
  assert max(b[seg_key].max() for b in batches) >= 2


# --- EOS in the batched step --------------------------------------------------------------


def _eos_features(vocab, inputs_eos=True, targets_eos=True, with_inputs=True):
  feats = {"targets": seqio.Feature(vocab, add_eos=targets_eos)}
  if with_inputs:
    feats["inputs"] = seqio.Feature(vocab, add_eos=inputs_eos)
  return feats


@pytest.mark.parametrize(
  "denoisers, lengths, eos, with_inputs, concatenate",
  [
    (objectives.UL2_DENOISERS, U.LENGTHS, (True, True), True, True),
    (objectives.UL2_DENOISERS, U.LENGTHS, (True, True), True, False),
    (objectives.UL2R_DENOISERS, U.LENGTHS, (False, True), True, True),
    (objectives.T5_SPAN_CORRUPTION, {"inputs": 128, "targets": 64}, (True, False), True, True),
    (objectives.CAUSAL_LM, {"targets": 256}, (False, True), False, True),
  ],
)
def test_append_eos_equals_seqio_append_eos_after_trim(
  vocab, denoisers, lengths, eos, with_inputs, concatenate
):
  feats = _eos_features(vocab, *eos, with_inputs=with_inputs)
  docs = U.synthetic_docs(150, 4, lo=2, hi=3000)

  def run(append_eos):
    ds = objectives.mixture_of_denoisers(
      U.docs_dataset(docs),
      lengths,
      feats,
      denoisers,
      seed=5,
      concatenate_documents=concatenate,
      append_eos=append_eos,
    )
    if not append_eos:
      ds = seqio.preprocessors.append_eos_after_trim(ds, feats, lengths)
    return list(ds.as_numpy_iterator())

  fused, chained = run(True), run(False)
  assert len(fused) == len(chained) > 100
  for x, y in zip(fused, chained):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  # The case checks something: EOS really ends the features that add it, and only those.
  for key, add in zip(("inputs", "targets"), eos):
    if key in feats:
      ends = {int(x[key][-1]) == vocab.eos_id for x in fused}
      assert ends == {add}, key


@pytest.mark.parametrize("blocks", [1, 2, 8])
def test_running_sum_matches_cumsum(blocks):
  import tensorflow as tf

  from t5x_ext.objectives import corruption

  width = blocks * corruption._SCAN_BLOCK
  rng = np.random.default_rng(blocks)
  x = rng.integers(-1, 2, size=(7, width)).astype(np.float32)
  x[:, 0] = 1  # partial sums of both signs
  got = corruption._running_sum(tf.constant(x)).numpy()
  np.testing.assert_array_equal(got, np.cumsum(x, axis=1))
  big = np.ones((2, 160 * corruption._SCAN_BLOCK), np.float32)  # sums far beyond one block
  np.testing.assert_array_equal(
    corruption._running_sum(tf.constant(big)).numpy(), np.cumsum(big, 1)
  )


def test_eos_id_zero_is_kept(vocab):
  """A vocabulary whose EOS is id 0 (the pad id elsewhere) still gets its EOS."""
  import tensorflow as tf

  from t5x_ext.objectives import corruption, mixture

  denoisers = objectives.UL2_DENOISERS
  plans = objectives.validate_denoisers(denoisers, vocabulary=vocab, sequence_length=U.LENGTHS)
  prefixes = mixture.mode_prefix_tokens(denoisers, vocabulary=vocab)
  spec = corruption.MixtureSpec.build(denoisers, plans, prefixes, vocab.vocab_size)
  chunks = tf.ragged.constant([list(range(3, 103)), list(range(3, 400))], tf.int32)
  ids = tf.constant([0, 6], tf.int32)  # an R row and an S row
  seed = tf.constant([1, 2], tf.int64)
  plain = corruption.build_examples(chunks, ids, spec, seed)
  ended = corruption.build_examples(chunks, ids, spec, seed, inputs_eos=0, targets_eos=0)
  for key in ("inputs", "targets"):
    for a, b in zip(plain[key].to_list(), ended[key].to_list()):
      assert b == a + [0]
