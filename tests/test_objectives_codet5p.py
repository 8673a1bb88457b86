"""CodeT5+'s first-stage mixture (arXiv:2305.07922 Sec. 3.1) against references written here.

One pipeline run of 6,000 examples (~2,000 per denoiser, inputs/targets 512) feeds the
statistics: span denoising at 15% with mean span 3, the seq2seq causal LM's pivot uniform in
[10%, 90%] of the chunk, the causal LM's encoder input exactly the `[CLM]` prefix, equal
rates. Every example is also traced back to a contiguous piece of the documents.
"""

from __future__ import annotations

import collections
import logging
import math

import numpy as np
import pytest
import seqio

import tasks
from t5x_ext import objectives
from t5x_ext.experiments import ablation_runs
from t5x_ext.objectives import codet5p, planning
from tests import objectives_util as U

NUM_EXAMPLES = 6000
SPAN, SEQ2SEQ, CLM = range(3)


@pytest.fixture(scope="module")
def vocab():
  return U.vocabulary()


def _run(denoisers, vocab, num_examples, *, seed=0, docs_seed=0):
  docs = U.synthetic_docs(num_examples // 2 + 100, docs_seed)
  ds = objectives.mixture_of_denoisers(
    U.docs_dataset(docs), U.LENGTHS, U.features(vocab), denoisers, seed=seed, append_eos=True
  )
  return docs, list(ds.take(num_examples).as_numpy_iterator())


@pytest.fixture(scope="module")
def run(vocab):
  docs, examples = _run(codet5p.CODET5P_DENOISERS, vocab, NUM_EXAMPLES)
  assert len(examples) == NUM_EXAMPLES
  by = collections.defaultdict(list)
  for ex in examples:
    by[int(ex["denoiser_id"])].append(ex)
  return docs, examples, by


def _body(ex, eos_id, prefix_len=0):
  """inputs without the prefix and EOS, targets without EOS (asserting EOS: nothing cut)."""
  assert ex["inputs"][-1] == eos_id and ex["targets"][-1] == eos_id
  return ex["inputs"][prefix_len:-1], ex["targets"][:-1]


class _Stream:
  """Finds token sequences in the concatenated documents (a sorted index of 4-grams)."""

  def __init__(self, docs):
    self.s = np.concatenate(docs).astype(np.int64)
    self.keys = self._keys(self.s)
    self.order = np.argsort(self.keys, kind="stable")
    self.sorted = self.keys[self.order]

  @staticmethod
  def _keys(s):
    k = U.BASE_SIZE + U.EXTRA_IDS
    return ((s[:-3] * k + s[1:-2]) * k + s[2:-1]) * k + s[3:]

  def contains(self, chunk) -> bool:
    chunk = np.asarray(chunk, np.int64)
    key = self._keys(chunk[:4])[0]
    lo, hi = np.searchsorted(self.sorted, [key, key + 1])
    n = len(chunk)
    return any(np.array_equal(self.s[i : i + n], chunk) for i in self.order[lo:hi])


# ------------------------------------------------------------------------ the configuration


def test_the_mixture_and_its_settable_rates():
  span, seq2seq, clm = codet5p.CODET5P_DENOISERS
  assert (span.kind, span.noise_density, span.mean_span_length, span.mode) == ("span", 0.15, 3, "")
  assert (seq2seq.kind, seq2seq.prefix_split, seq2seq.mode) == ("prefix_lm", "pivot", "")
  assert (clm.kind, clm.mode) == ("causal_lm", "[CLM]")
  assert objectives.normalized_rates(codet5p.CODET5P_DENOISERS) == pytest.approx([1 / 3] * 3)
  other = codet5p.codet5p_denoisers(span_rate=2, seq2seq_rate=1, clm_rate=1)
  assert objectives.normalized_rates(other) == pytest.approx([0.5, 0.25, 0.25])
  assert "[CLM]" in objectives.MODES and "pivot" in objectives.PREFIX_SPLITS
  # The pivot split ignores noise_density (as "uniform" does); unknown splits still fail.
  planning.check_denoisers([objectives.Denoiser("s", "prefix_lm", prefix_split="pivot")])
  with pytest.raises(ValueError, match="'pivott'"):
    planning.check_denoisers([objectives.Denoiser("s", "prefix_lm", prefix_split="pivott")])


def test_pivot_bounds_match_the_definition_for_every_length():
  d = codet5p.CODET5P_DENOISERS[SEQ2SEQ]
  for length in range(planning.MIN_CHUNK_LENGTH, 3000):
    # Reference: pivots p (inputs length) with 0.1 L <= p <= 0.9 L, exactly, in integers;
    # at least one token on each side.
    pivots = [p for p in range(1, length) if 10 * p >= length and 10 * p <= 9 * length]
    t_lo, t_hi = planning._prefix_bounds(d, length)
    assert list(range(length - t_hi, length - t_lo + 1)) == pivots, length


# ------------------------------------------------------------------------------- the stream


def test_rates_are_equal_and_lengths_fit(run, vocab):
  _, examples, by = run
  for k in range(3):
    share = len(by[k]) / len(examples)
    assert abs(share - 1 / 3) <= 0.03, (k, share)
    assert len(by[k]) >= 1500
  for ex in examples:
    assert len(ex["inputs"]) <= U.LENGTHS["inputs"] and len(ex["targets"]) <= U.LENGTHS["targets"]


def _span_examples(run, vocab):
  """(noise tokens N, span lengths) of every span example, checking its sentinels."""
  size = vocab.vocab_size
  out = []
  for ex in run[2][SPAN]:
    inputs, targets = _body(ex, vocab.eos_id)
    s_in = inputs[U.is_sentinel(inputs, size)]
    np.testing.assert_array_equal(s_in, size - 1 - np.arange(len(s_in)))  # <extra_id_0>, ...
    np.testing.assert_array_equal(targets[U.is_sentinel(targets, size)], s_in)
    bounds = np.flatnonzero(U.is_sentinel(targets, size)).tolist() + [len(targets)]
    lengths = np.diff(bounds) - 1
    assert len(lengths) == len(s_in) >= 1 and (lengths >= 1).all()
    out.append((inputs, targets, lengths))
  return out


def test_span_denoising_statistics(run, vocab):
  stream = _Stream(run[0])
  noise = total = spans = 0
  for i, (inputs, targets, lengths) in enumerate(_span_examples(run, vocab)):
    noise += int(lengths.sum())
    total += int(lengths.sum()) + len(inputs) - len(lengths)
    spans += len(lengths)
    # Reference for the per-example count: N = round(0.15 L) noise tokens in N / 3 spans,
    # stochastically rounded, so n is floor(N / 3) or the next integer.
    n_noise, length = int(lengths.sum()), int(lengths.sum()) + len(inputs) - len(lengths)
    assert n_noise == max(1, math.floor(0.15 * length + 0.5)), (n_noise, length)
    assert math.floor(n_noise / 3) <= len(lengths) <= math.floor(n_noise / 3) + 1
    if i < 300:
      assert stream.contains(U.reconstruct(inputs, targets, vocab.vocab_size)), i
  assert abs(noise / total - 0.15) <= 0.01, noise / total
  assert abs(noise / spans - 3.0) <= 0.1, noise / spans


@pytest.mark.xfail(
  strict=True,
  reason="corruption._sorted_cuts draws i.i.d. order statistics, not T5's uniform "
  "segmentation: ties are rarer, so about 25% of spans have length 1 where T5 has 33%",
)
def test_span_lengths_follow_t5s_uniform_segmentation(run, vocab):
  ones = expected = 0.0
  for _, _, lengths in _span_examples(run, vocab):
    n, n_noise = len(lengths), int(lengths.sum())
    ones += int((lengths == 1).sum())
    # T5's random_segmentation: a uniform composition of N into n positive parts, so each
    # part is 1 with probability C(N-2, n-2) / C(N-1, n-1) = (n - 1) / (N - 1).
    expected += n * (n - 1) / (n_noise - 1) if n_noise > 1 else n
  assert abs(ones / expected - 1) <= 0.05, (ones, expected)


def test_seq2seq_pivot_is_uniform_between_10_and_90_percent(run, vocab):
  docs, _, by = run
  stream = _Stream(docs)
  fractions, unit = [], []
  for i, ex in enumerate(by[SEQ2SEQ]):
    inputs, targets = _body(ex, vocab.eos_id)
    length, pivot = len(inputs) + len(targets), len(inputs)
    assert 10 * pivot >= length and 10 * pivot <= 9 * length, (pivot, length)
    lo, hi = math.ceil(length / 10), (9 * length) // 10
    fractions.append(pivot / length)
    if length >= 100:
      unit.append((pivot - lo + 0.5) / (hi - lo + 1))  # discrete uniform -> (0, 1)
    if i < 300:
      assert stream.contains(np.concatenate([inputs, targets])), i
  fractions, unit = np.asarray(fractions), np.sort(unit)
  assert abs(fractions.mean() - 0.5) <= 0.02
  assert fractions.min() >= 0.1 and fractions.max() <= 0.9
  # Uniform over [0.1, 0.9]: its 5th and 95th percentiles are 0.14 and 0.86.
  assert abs(np.percentile(fractions, 5) - 0.14) <= 0.02
  assert abs(np.percentile(fractions, 95) - 0.86) <= 0.02
  # Kolmogorov-Smirnov against Uniform(0, 1), alpha = 0.01 (critical value 1.63 / sqrt(n)).
  n = len(unit)
  ecdf_hi, ecdf_lo = np.arange(1, n + 1) / n, np.arange(n) / n
  ks = max(np.max(ecdf_hi - unit), np.max(unit - ecdf_lo))
  assert n >= 1500 and ks < 1.63 / math.sqrt(n), (ks, n)


def test_causal_lm_encoder_input_is_exactly_the_clm_prefix(run, vocab):
  docs, _, by = run
  stream = _Stream(docs)
  want = list(vocab.encode("[CLM]")) + [vocab.eos_id]
  assert len(want) > 2
  plan = objectives.validate_denoisers(
    codet5p.CODET5P_DENOISERS, vocabulary=vocab, sequence_length=U.LENGTHS
  )[CLM]
  full = 0
  for i, ex in enumerate(by[CLM]):
    assert list(ex["inputs"]) == want
    targets = ex["targets"][:-1]
    assert ex["targets"][-1] == vocab.eos_id and 2 <= len(targets) <= plan.chunk_length
    full += len(targets) == plan.chunk_length
    if i < 300:
      assert stream.contains(targets), i
  assert full / len(by[CLM]) > 0.9  # whole chunks, but for the ends of document batches


def test_other_rates_change_the_shares(vocab):
  denoisers = codet5p.codet5p_denoisers(span_rate=0.5, seq2seq_rate=0.25, clm_rate=0.25)
  _, examples = _run(denoisers, vocab, 2000, seed=1, docs_seed=1)
  counts = collections.Counter(int(ex["denoiser_id"]) for ex in examples)
  for k, rate in enumerate((0.5, 0.25, 0.25)):
    assert abs(counts[k] / len(examples) - rate) <= 0.04, (k, counts)


# ------------------------------------------------------------------------- tasks and rows


def test_registered_per_corpus_and_in_the_ablation():
  from tasks import pretraining

  for corpus in ("pydocs", "c4"):
    task = seqio.get_mixture_or_task(f"{corpus}_codet5p_v1")
    assert tasks.task_denoisers(task) == codet5p.CODET5P_DENOISERS
  spec = ablation_runs.get_run("codet5p_ed")
  assert spec.architecture == ablation_runs.ENCODER_DECODER and not spec.causal
  assert spec.family_prefix == "none"
  name = spec.task_name("pydocs")
  assert name == "pydocs_codet5p_v1" and name in seqio.TaskRegistry.names()
  # The ablation's lengths fit every denoiser of the mixture, with the embedded vocabulary.
  voc = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
  pretraining.validate(
    codet5p.CODET5P_DENOISERS,
    name,
    vocabulary=voc,
    sequence_length={"inputs": 512, "targets": 128},
  )


def test_embedded_task_examples():
  task = seqio.get_mixture_or_task("pydocs_codet5p_v1")
  voc = task.output_features["targets"].vocabulary
  ds = task.get_dataset({"inputs": 512, "targets": 128}, split="validation", shuffle=False)
  seen = set()
  want = list(voc.encode("[CLM]")) + [voc.eos_id]
  for ex in ds.take(60).as_numpy_iterator():
    k = int(ex["denoiser_id"])
    seen.add(k)
    if k == CLM:
      assert list(ex["inputs"]) == want
    assert len(ex["inputs"]) <= 512 and len(ex["targets"]) <= 128
  assert seen == {SPAN, SEQ2SEQ, CLM}


def test_token_mode_registers_codet5p_only_with_a_clm_id(caplog):
  from tasks import pretraining, pydocs, vocab

  ids = {"[NLU]": 8000, "[NLG]": 8001, "[S2S]": 8002}
  with caplog.at_level(logging.WARNING):
    names = pretraining.register_objectives(
      "tok3", pydocs.source(), vocab.default_vocabulary(), mode_prefix="token", mode_token_ids=ids
    )
  assert "tok3_codet5p_v1" not in names and "tok3_ul2_mod_v1" in names
  assert "tok3_codet5p_v1" in caplog.text and "[CLM]" in caplog.text
  names = pretraining.register_objectives(
    "tok4",
    pydocs.source(),
    vocab.default_vocabulary(),
    mode_prefix="token",
    mode_token_ids={**ids, "[CLM]": 8003},
  )
  assert "tok4_codet5p_v1" in names
  ds = seqio.get_mixture_or_task("tok4_codet5p_v1").get_dataset(
    {"inputs": 512, "targets": 128}, split="validation", shuffle=False
  )
  clm = [ex for ex in ds.take(60).as_numpy_iterator() if int(ex["denoiser_id"]) == CLM]
  assert clm and all(list(ex["inputs"]) == [8003, 1] for ex in clm)
  # Named explicitly, a missing id is an error, as for any mode.
  with pytest.raises(ValueError, match="tok5_codet5p_v1"):
    pretraining.register_objectives(
      "tok5",
      pydocs.source(),
      vocab.default_vocabulary(),
      mode_prefix="token",
      mode_token_ids=ids,
      objectives_map={"codet5p": codet5p.CODET5P_DENOISERS},
    )
