"""Statistics of the UL2 mixture over >= 1,000 examples per denoiser (inputs/targets 512).

One pipeline run (module fixture) feeds every test: the mixture with its batched EOS
(`append_eos=True`), exactly as tasks use it. `test_objectives.py` checks that this equals
the mixture followed by `seqio.preprocessors.append_eos_after_trim`.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest
import seqio

from t5x_ext import objectives
from tests import objectives_util as U

NUM_EXAMPLES = 13_000  # X-denoisers have rate 0.1: ~1,300 examples each.


@pytest.fixture(scope="module")
def vocab():
  return U.vocabulary()


def _run(denoisers, vocab, num_examples, *, seed=0, docs_seed=0, lengths=U.LENGTHS):
  docs = U.synthetic_docs(num_examples // 2 + 100, docs_seed)
  ds = objectives.mixture_of_denoisers(
    U.docs_dataset(docs), lengths, U.features(vocab), denoisers, seed=seed, append_eos=True
  )
  return docs, list(ds.take(num_examples).as_numpy_iterator())


@pytest.fixture(scope="module")
def ul2_run(vocab):
  docs, examples = _run(objectives.UL2_DENOISERS, vocab, NUM_EXAMPLES)
  assert len(examples) == NUM_EXAMPLES
  return docs, examples


def _by_denoiser(examples):
  out = collections.defaultdict(list)
  for ex in examples:
    out[int(ex["denoiser_id"])].append(ex)
  return out


def _strip(ex, prefix_len, eos_id):
  """Removes EOS (asserting it is there: nothing was cut) and the mode prefix."""
  inputs, targets = ex["inputs"], ex["targets"]
  assert inputs[-1] == eos_id and targets[-1] == eos_id
  return inputs[prefix_len:-1], targets[:-1]


def test_every_denoiser_has_enough_examples_and_frequencies_match_rates(ul2_run):
  _, examples = ul2_run
  counts = collections.Counter(int(ex["denoiser_id"]) for ex in examples)
  rates = objectives.normalized_rates(objectives.UL2_DENOISERS)
  for k, d in enumerate(objectives.UL2_DENOISERS):
    assert counts[k] >= 1000, (d.name, counts[k])
    assert abs(counts[k] / len(examples) - rates[k]) <= 0.03, (d.name, counts[k], rates[k])


def test_lengths_fit_without_truncation(ul2_run, vocab):
  _, examples = ul2_run
  for ex in examples:
    # append_eos_after_trim trims to length - 1 then adds EOS; EOS last and a length
    # below the limit show that nothing was trimmed away (reconstruction checks the rest).
    assert len(ex["inputs"]) <= U.LENGTHS["inputs"]
    assert len(ex["targets"]) <= U.LENGTHS["targets"]
    assert ex["inputs"][-1] == vocab.eos_id and ex["targets"][-1] == vocab.eos_id
    assert ex["inputs"].dtype == np.int32 and ex["targets"].dtype == np.int32
    assert ex["denoiser_id"].shape == ()


def test_mode_prefix_per_denoiser(ul2_run, vocab):
  _, examples = ul2_run
  expected = {
    "R": vocab.encode("[NLU]"),
    "X": vocab.encode("[NLG]"),
    "S": vocab.encode("[S2S]"),
  }
  # The three prefixes must differ, or this test could not tell modes apart.
  assert len({tuple(v) for v in expected.values()}) == 3
  for ex in examples:
    d = objectives.UL2_DENOISERS[int(ex["denoiser_id"])]
    want = expected[d.name[0]]
    assert list(ex["inputs"][: len(want)]) == list(want), d.name


def test_span_statistics_sentinels_and_reconstruction(ul2_run, vocab):
  docs, examples = ul2_run
  size = vocab.vocab_size
  by = _by_denoiser(examples)
  for k, d in enumerate(objectives.UL2_DENOISERS):
    if d.kind != "span":
      continue
    plen = len(vocab.encode(d.mode))
    noise = total = spans = 0
    last_noise = 0
    for ex in by[k]:
      inputs, targets = _strip(ex, plen, vocab.eos_id)
      s_in = inputs[U.is_sentinel(inputs, size)]
      s_tg = targets[U.is_sentinel(targets, size)]
      n = len(s_in)
      # Sentinels: <extra_id_0> = size - 1 first, descending, one per span, same in both.
      assert n >= 1
      np.testing.assert_array_equal(s_in, size - 1 - np.arange(n))
      np.testing.assert_array_equal(s_tg, s_in)
      assert s_in.min() >= size - U.EXTRA_IDS
      assert U.is_sentinel(targets[:1], size).all(), "targets must start with a sentinel"
      n_noise = len(targets) - n
      noise += n_noise
      total += n_noise + len(inputs) - n
      spans += n
      last_noise += int(U.is_sentinel(inputs[-1:], size).all())
    density = noise / total
    assert abs(density - d.noise_density) <= 0.02, (d.name, density)
    mean_span = noise / spans
    assert abs(mean_span / d.mean_span_length - 1) <= 0.15, (d.name, mean_span)
    # The random roll: the chunk ends in a noise span only sometimes.
    assert 0 < last_noise < len(by[k]), (d.name, last_noise)


def _chunks(examples, vocab):
  """Each example's original chunk, rebuilt from inputs and targets."""
  for ex in examples:
    d = objectives.UL2_DENOISERS[int(ex["denoiser_id"])]
    inputs, targets = _strip(ex, len(vocab.encode(d.mode)), vocab.eos_id)
    if d.kind == "span":
      yield d.name, U.reconstruct(inputs, targets, vocab.vocab_size)
    else:
      yield d.name, np.concatenate([inputs, targets])


def test_reconstruction_gives_back_the_documents(ul2_run, vocab):
  """Default (concatenated documents): the rebuilt chunks, in order, are the token
  stream of all documents, except a 1-token tail at the end of a document batch."""
  docs, examples = ul2_run
  stream = np.concatenate(docs)
  batch = objectives.mixture.DEFAULT_BATCH_SIZE
  batch_ends = set(np.cumsum([len(d) for d in docs])[batch - 1 :: batch] - 1)
  offset = 0
  for name, chunk in _chunks(examples, vocab):
    if offset in batch_ends and not np.array_equal(chunk, stream[offset : offset + len(chunk)]):
      offset += 1  # the dropped 1-token tail
    np.testing.assert_array_equal(chunk, stream[offset : offset + len(chunk)], name)
    offset += len(chunk)
  assert offset > 0.9 * sum(len(d) for d in docs[: len(docs) // 2])


def test_reconstruction_per_document(vocab):
  """concatenate_documents=False: chunks never cross documents; each document is rebuilt."""
  docs = U.synthetic_docs(400, 11)
  ds = objectives.mixture_of_denoisers(
    U.docs_dataset(docs), U.LENGTHS, U.features(vocab), seed=0, concatenate_documents=False
  )
  ds = seqio.preprocessors.append_eos_after_trim(ds, U.features(vocab), U.LENGTHS)
  examples = list(ds.as_numpy_iterator())
  doc_i, offset = 0, 0
  for name, chunk in _chunks(examples, vocab):
    if len(docs[doc_i]) - offset < objectives.MIN_CHUNK_LENGTH:
      doc_i, offset = doc_i + 1, 0  # a 1-token tail is dropped
    np.testing.assert_array_equal(chunk, docs[doc_i][offset : offset + len(chunk)], name)
    offset += len(chunk)
    if offset == len(docs[doc_i]):
      doc_i, offset = doc_i + 1, 0
  if doc_i < len(docs) and len(docs[doc_i]) - offset < objectives.MIN_CHUNK_LENGTH:
    doc_i += 1
  assert doc_i == len(docs)  # every document was used up


def test_s_denoiser_target_fraction_is_the_documented_mean(ul2_run, vocab):
  _, examples = ul2_run
  k = [d.kind for d in objectives.UL2_DENOISERS].index("prefix_lm")
  d = objectives.UL2_DENOISERS[k]
  plen = len(vocab.encode(d.mode))
  fr = []
  tgt = tot = 0
  for ex in _by_denoiser(examples)[k]:
    inputs, targets = _strip(ex, plen, vocab.eos_id)
    assert not U.is_sentinel(np.concatenate([inputs, targets]), vocab.vocab_size).any()
    tgt += len(targets)
    tot += len(targets) + len(inputs)
    length = len(targets) + len(inputs)
    fr.append(len(targets) / length)
    assert 1 <= len(targets) <= np.floor(0.5 * length + 0.5)
  assert abs(tgt / tot - 0.25) <= 0.02, tgt / tot
  # "paper" split: fraction ~ Uniform(0, 0.5), so it spreads over that whole range.
  assert np.percentile(fr, 90) > 0.4 and np.percentile(fr, 10) < 0.1


@pytest.mark.parametrize("split, mean", [("uniform", 0.5), ("fixed", 0.25)])
def test_s_denoiser_other_splits(vocab, split, mean):
  d = dataclasses.replace(objectives.UL2_DENOISERS[-1], prefix_split=split)
  _, examples = _run((d,), vocab, 1000, docs_seed=3)
  plen = len(vocab.encode(d.mode))
  fr = []
  for ex in examples:
    inputs, targets = _strip(ex, plen, vocab.eos_id)
    fr.append(len(targets) / (len(targets) + len(inputs)))
  assert abs(np.mean(fr) - mean) <= 0.02, (split, np.mean(fr))
  if split == "fixed":
    assert np.std(fr) < 0.05
  else:
    assert np.std(fr) > 0.2  # uniform over (0, 1): std ~0.29


def test_causal_lm_has_prefix_only_inputs(vocab):
  d = dataclasses.replace(objectives.CAUSAL_LM[0], mode="[S2S]")
  _, examples = _run((d,), vocab, 200, docs_seed=4)
  want = list(vocab.encode("[S2S]"))
  for ex in examples:
    assert list(ex["inputs"][:-1]) == want
    assert len(ex["targets"]) <= U.LENGTHS["targets"]
  # Full-length chunks are the norm: targets use the whole budget (511 + EOS).
  assert max(len(ex["targets"]) for ex in examples) == U.LENGTHS["targets"]
