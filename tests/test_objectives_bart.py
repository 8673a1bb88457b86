"""BART's noises (`t5x_ext.objectives.bart`, `bart_noise`) against references written here.

The references follow fairseq's `DenoisingDataset` definitions token by token in numpy
(sentence shuffling by `randperm`, span lengths drawn until the word budget is covered,
starts by `randperm` over the word starts, each span extended word by word so that
overlapping spans merge, insertions at `randperm` slots); the pipeline's statistics over
thousands of examples of the embedded corpus, tokenized with this project's SentencePiece
vocabulary, must match the reference's on the same chunks. The noise record
(`noise_record=True`) lets every example be checked exactly: kept tokens, masks, random
tokens, deletions, insertions and the rotation offset.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5x_ext import objectives
from t5x_ext.objectives import bart, bart_noise
from tests import objectives_util as U

SHORT = {"inputs": 128, "targets": 128}


@pytest.fixture(scope="module")
def vocab():
  from tasks import vocab as tasks_vocab

  return tasks_vocab.default_vocabulary()


@pytest.fixture(scope="module")
def docs(vocab):
  from tasks import corpus

  texts = [d["text"] for d in corpus.split_documents("train")[:160]]
  return [np.asarray(x, np.int32) for x in vocab.tokenizer.encode(texts) if len(x) > 8]


@pytest.fixture(scope="module")
def tables(vocab):
  """Independent word-start / sentence-end tables from the pieces (the module doc's rule)."""
  sp = vocab.tokenizer
  ws = np.ones([vocab.vocab_size], bool)
  se = np.zeros([vocab.vocab_size], bool)
  for i in range(sp.get_piece_size()):
    if sp.is_control(i) or sp.is_unknown(i):
      continue
    piece = sp.id_to_piece(i)
    ws[i] = piece[0] == "\u2581"
    core = piece.lstrip("\u2581")
    while core and core[-1] in "\"')]}`*":
      core = core[:-1]
    se[i] = core[-1:] in (".", "!", "?")
  return ws, se


def _examples(vocab, docs, denoisers, n, *, lengths=SHORT, seed=0, passes=1, **kw):
  ds = objectives.mixture_of_denoisers(
    U.docs_dataset(docs * passes),
    lengths,
    U.features(vocab),
    denoisers,
    seed=seed,
    noise_record=True,
    append_eos=True,
    **kw,
  )
  return list(ds.take(n).as_numpy_iterator())


def _one(name="b", mode="", **noise):
  return (objectives.Denoiser(name, "bart", mode=mode, bart=objectives.BartNoise(**noise)),)


# --- the reference ----------------------------------------------------------------------


def _ceil(x):
  return int(math.ceil(x - 1e-9))


def reference(tokens, nz, rng, ws_table, se_table, mask_id, random_ids):
  """fairseq's noise on one chunk (no BOS/EOS; the chunk's first token starts a word).

  Returns:
    (noised tokens, stats: words, covered words, masks from spans, random masks from spans,
    sentences, permuted?).
  """
  tokens = np.asarray(tokens).copy()
  n = len(tokens)
  ws = ws_table[tokens].copy()
  ws[0] = True
  stats = {}
  ends = [i for i in range(n) if i == n - 1 or (se_table[tokens[i]] and ws[i + 1])]
  stats["sentences"] = len(ends)
  stats["permuted"] = False
  if nz.permute_sentences > 0:
    starts = [0] + [e + 1 for e in ends[:-1]]
    s = len(ends)
    k = _ceil(s * nz.permute_sentences)
    subs = rng.permutation(s)[:k]
    ordering = np.arange(s)
    ordering[subs] = subs[rng.permutation(k)]
    order = np.concatenate([np.arange(starts[i], ends[i] + 1) for i in ordering])
    stats["permuted"] = bool((order != np.arange(n)).any())
    tokens, ws = tokens[order], ws[order]
  if nz.token_level:
    ws = np.ones(n, bool)
  words = int(ws.sum())
  stats.update(words=words, covered_words=0, span_masks=0, span_random=0)
  num_inserts = 0
  budget = _ceil(words * nz.mask_ratio)
  if budget > 0:
    if nz.mask_length == "span-poisson":
      lengths = []
      while sum(lengths) < budget:
        lengths.append(int(rng.poisson(nz.poisson_lambda)))
      lengths[-1] -= sum(lengths) - budget
      num_inserts = sum(1 for x in lengths if x == 0)
      lengths = np.asarray([x for x in lengths if x > 0])
    else:
      lengths = np.ones(budget, int)
    word_pos = np.flatnonzero(ws)
    idx = word_pos[rng.permutation(len(word_pos))[: len(lengths)]]
    rand = rng.random(len(idx)) < nz.mask_random
    source = tokens.copy()
    keep = np.ones(n, bool)
    covered = np.zeros(n, bool)
    covered[idx] = True
    is_ws = np.append(ws, True).astype(np.int64)
    is_ws[-1] = 10**6  # spans stop at the chunk's end

    def put(where, flags):
      source[where] = mask_id
      source[where[flags]] = rng.choice(random_ids, size=int(flags.sum()))

    if nz.replace_length == 0:
      keep[idx] = False
    else:
      put(idx, rand)
    left = lengths - 1
    while idx.size:
      left = left - is_ws[idx + 1]
      go = left >= 0
      idx, rand, left = idx[go] + 1, rand[go], left[go]
      covered[idx] = True
      if nz.replace_length != -1:
        keep[idx] = False
      else:
        put(idx, rand)
    stats["covered_words"] = int((covered & ws).sum())
    if nz.replace_length == 1:
      stats["span_masks"] = int((covered & keep).sum())
      stats["span_random"] = int((covered & keep & (source != mask_id)).sum())
    tokens = source[keep]
  for count in (num_inserts, _ceil((len(tokens) + num_inserts) * nz.insert_ratio)):
    # fairseq inserts the zero-length spans' masks, then `insert_ratio` more, each pass
    # at `randperm` slots with `ceil(count * mask_random)` of them random.
    if count == 0:
      continue
    total = len(tokens) + count
    slots = rng.permutation(total)[:count]
    out = np.full(total, -1)
    n_rand = _ceil(count * nz.mask_random)
    out[slots[n_rand:]] = mask_id
    out[slots[:n_rand]] = rng.choice(random_ids, size=n_rand)
    out[out == -1] = tokens
    tokens = out
  if nz.rotate_ratio > 0 and rng.random() < nz.rotate_ratio:
    r = int(rng.integers(len(tokens)))
    tokens = np.concatenate([tokens[r:], tokens[:r]])
  return tokens, stats


def _record_stats(ex, nz, ws_table, prefix_len=0):
  """The same statistics from a pipeline example's noise record."""
  t = ex["targets"][:-1]  # EOS
  order, fate = ex["noise_order"], ex["noise_fate"]
  ws = ws_table[t].copy()
  ws[0] = True
  ws = ws[order]
  if nz.token_level:
    ws = np.ones(len(t), bool)
  return {
    "words": int(ws.sum()),
    "covered_words": int(((fate != 0) & ws).sum()),
    "span_masks": int(((fate == 1) | (fate == 2)).sum()) if nz.replace_length == 1 else 0,
    "span_random": int((fate == 2).sum()) if nz.replace_length == 1 else 0,
    "permuted": bool((order != np.arange(len(t))).any()),
  }


# --- the named settings ------------------------------------------------------------------


def test_released_and_paper_settings():
  (large,) = objectives.BART_LARGE
  assert large.kind == "bart" and large.mode == ""
  assert large.bart == objectives.BartNoise(
    mask_ratio=0.3,
    mask_random=0.1,
    poisson_lambda=3.5,
    replace_length=1,
    mask_length="span-poisson",
    permute_sentences=1.0,
    rotate_ratio=0.0,
    insert_ratio=0.0,
  )
  assert objectives.BART_PAPER[0].bart.poisson_lambda == 3.0
  t1 = {k: v[0].bart for k, v in objectives.BART_TABLE1.items()}
  assert t1["token_deletion"].replace_length == 0 and t1["token_deletion"].token_level
  assert t1["token_masking"].replace_length == 1 and t1["token_masking"].token_level
  assert t1["document_rotation"] == objectives.BartNoise(rotate_ratio=1.0)
  assert t1["sentence_shuffling"] == objectives.BartNoise(permute_sentences=1.0)
  assert "span-poisson(3.5)" in large.describe() and "permute=1" in large.describe()


@pytest.mark.parametrize(
  "noise, match",
  [
    ({"mask_ratio": 1.5}, "mask_ratio"),
    ({"mask_length": "span"}, "mask_length"),
    ({"replace_length": 2}, "replace_length"),
    ({"poisson_lambda": 0.0, "mask_ratio": 0.3}, "poisson_lambda"),
  ],
)
def test_bad_settings_fail_early(noise, match):
  with pytest.raises(ValueError, match=match):
    objectives.check_denoisers(_one("bad", **noise))
  with pytest.raises(ValueError, match="BartNoise"):
    objectives.check_denoisers((objectives.Denoiser("x", "bart"),))


def test_mask_token_is_the_lowest_extra_id_and_sentinels_stop_above_it(vocab):
  assert bart.default_mask_id(vocab) == 8000 == vocab.vocab_size - vocab.extra_ids
  mixed = objectives.UL2_DENOISERS + objectives.BART_LARGE
  plans = objectives.validate_denoisers(
    mixed, vocabulary=vocab, sequence_length={"inputs": 512, "targets": 512}
  )
  assert max(p.max_spans for p in plans) <= vocab.extra_ids - 1
  with pytest.raises(ValueError, match="mode token"):
    objectives.validate_denoisers(
      _one(mode="[NLU]", mask_ratio=0.3),
      vocabulary=vocab,
      mode_prefix="token",
      mode_token_ids={"[NLU]": 8000},
    )
  ids = bart.random_token_ids(vocab, [8000])
  assert ids.min() == 3 and ids.max() == 7999 and 8000 not in ids


# --- planning: nothing truncated, the reserve for zero-length spans ------------------------


def test_plan_bounds_inputs_by_insertions_and_zero_length_spans(vocab):
  lengths = {"inputs": 512, "targets": 512}
  (plan,) = objectives.validate_denoisers(
    objectives.BART_LARGE, vocabulary=vocab, sequence_length=lengths
  )
  reserve = bart.zero_span_reserve(objectives.BART_LARGE[0].bart, plan.chunk_length)
  assert plan.chunk_length + reserve <= 511 < plan.chunk_length + 1 + reserve + 1
  assert plan.max_targets_length == plan.chunk_length
  (plan,) = objectives.validate_denoisers(
    _one(insert_ratio=0.1), vocabulary=vocab, sequence_length=lengths
  )
  assert plan.chunk_length + math.ceil(plan.chunk_length * 0.1) <= 511
  assert plan.max_inputs_length <= 511
  (plan,) = objectives.validate_denoisers(
    _one(permute_sentences=1.0), vocabulary=vocab, sequence_length=lengths
  )
  assert plan.chunk_length == 511


# --- exact per-example checks from the record ---------------------------------------------

CONFIGS = {
  "released": objectives.BART_LARGE[0].bart,
  "all_noises": objectives.BartNoise(
    mask_ratio=0.3,
    mask_random=0.2,
    insert_ratio=0.1,
    rotate_ratio=0.5,
    permute_sentences=0.5,
    poisson_lambda=2.0,
  ),
  "token_masking": objectives.BartNoise(mask_ratio=0.3, mask_length="subword", mask_random=0.1),
  "mask_every_token": objectives.BartNoise(mask_ratio=0.3, replace_length=-1, mask_random=0.3),
  "word_deletion": objectives.BartNoise(mask_ratio=0.3, mask_length="word", replace_length=0),
  "token_level_poisson": objectives.BartNoise(mask_ratio=0.3, whole_words=False),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_record_explains_every_input_token(vocab, docs, name):
  nz = CONFIGS[name]
  den = _one(name, mode="[NLG]", **dataclasses.asdict(nz))
  prefix = vocab.encode("[NLG]")
  random_ids = set(bart.random_token_ids(vocab, [8000]).tolist())
  for ex in _examples(vocab, docs[:40], den, 200):
    t, x = ex["targets"], ex["inputs"]
    assert t[-1] == 1 and x[-1] == 1 and len(t) <= 128 and len(x) <= 128
    assert list(x[: len(prefix)]) == prefix
    t, x = t[:-1], x[len(prefix) : -1]
    order, fate, src = ex["noise_order"], ex["noise_fate"], ex["noise_source"]
    assert sorted(order) == list(range(len(t)))
    permuted = t[order]
    assert len(src) == len(x)
    shown = src >= 0
    f = fate[src[shown]]
    xs = x[shown]
    np.testing.assert_array_equal(xs[f == 0], permuted[src[shown]][f == 0])
    assert (xs[f == 1] == 8000).all()
    assert set(xs[f == 2].tolist()) <= random_ids
    assert set(x[~shown].tolist()) <= random_ids | {8000}
    # Every kept or masked position shows once; deleted ones never.
    counts = np.bincount(src[shown], minlength=len(t))
    np.testing.assert_array_equal(counts, (fate != 3).astype(int))
    if nz.replace_length == 1:  # one mask per merged span: heads are word starts
      assert not ((fate[1:] == 3) & (fate[:-1] == 0)).any()
    if nz.replace_length == 0:
      assert not ((fate == 1) | (fate == 2)).any()
    # Without rotation, the shown positions are in permuted order.
    s = src[shown]
    if int(ex["noise_rotation"]) == 0:
      assert (np.diff(s) > 0).all()
    else:
      r = int(ex["noise_rotation"])
      unrotated = np.concatenate([src[-r:], src[:-r]])
      us = unrotated[unrotated >= 0]
      assert (np.diff(us) > 0).all()


def test_reconstruction_of_the_original_from_input_and_record(vocab, docs):
  den = _one(permute_sentences=1.0, rotate_ratio=1.0, insert_ratio=0.05, mask_random=0.5)
  n = 0
  for ex in _examples(vocab, docs[:40], den, 200):
    x, src, order = ex["inputs"][:-1], ex["noise_source"], ex["noise_order"]
    original = np.full(len(order), -1)
    original[order[src[src >= 0]]] = x[src >= 0]
    np.testing.assert_array_equal(original, ex["targets"][:-1])
    n += 1
  assert n == 200


# --- statistics against the reference, thousands of examples --------------------------------


def _compare(vocab, docs, tables, nz, n, seed=0):
  ws_table, se_table = tables
  den = _one(**dataclasses.asdict(nz))
  exs = _examples(vocab, docs, den, n, seed=seed, passes=4)
  assert len(exs) == n
  rng = np.random.default_rng(seed)
  random_ids = bart.random_token_ids(vocab, [8000])
  ours, ref = [], []
  for ex in exs:
    ours.append(_record_stats(ex, nz, ws_table))
    _, st = reference(ex["targets"][:-1], nz, rng, ws_table, se_table, 8000, random_ids)
    ref.append(st)
  agg = lambda rows, k: np.asarray([r[k] for r in rows], np.float64)  # noqa: E731
  return exs, ours, ref, agg


def test_released_setting_matches_the_reference(vocab, docs, tables):
  nz = objectives.BART_LARGE[0].bart
  exs, ours, ref, agg = _compare(vocab, docs, tables, nz, 3000)
  words = agg(ours, "words")
  np.testing.assert_array_equal(words, agg(ref, "words"))
  # Realised share of masked words: under 0.3 (overlapping spans merge), as fairseq's.
  a = agg(ours, "covered_words").sum() / words.sum()
  b = agg(ref, "covered_words").sum() / words.sum()
  assert 0.25 < a < 0.3 and abs(a - b) < 0.004, (a, b)
  # Masks per word (merged spans) and the share of them that are random tokens.
  ma, mb = agg(ours, "span_masks").sum(), agg(ref, "span_masks").sum()
  assert abs(ma - mb) / mb < 0.02, (ma, mb)
  ra = agg(ours, "span_random").sum() / ma
  assert abs(ra - 0.1) < 4 * math.sqrt(0.09 / ma), ra
  # Every sentence permuted: the chunk changes unless it has one sentence (or 1/S! luck).
  pa, pb = agg(ours, "permuted").mean(), agg(ref, "permuted").mean()
  assert pa > 0.5 and abs(pa - pb) < 0.03, (pa, pb)
  # Every token the noise put in (masks, random tokens) is the mask or an ordinary id.
  noise = []
  for e in exs:
    src = e["noise_source"]
    put = (src < 0) | (e["noise_fate"][np.maximum(src, 0)] != 0)
    noise.append(e["inputs"][:-1][put])
  noise = np.concatenate(noise)
  assert noise.min() >= 3 and not ((noise >= 8000) & (noise != 8000)).any()
  assert 0.05 < (noise != 8000).mean() < 0.15


def test_span_lengths_are_poisson_with_the_budget_covered_exactly():
  cdf, q = bart.poisson_table(3.5)
  budget = tf.constant([4000] * 8 + [7, 1], tf.int32)
  lengths, spans, zeros = bart_noise._span_lengths(
    budget,
    tf.ones([10], tf.bool),
    tf.constant(np.tile(cdf[None].astype(np.float32), [10, 1])),
    tf.fill([10], np.float32(np.log(q))),
    tf.constant([3, 4], tf.int64),
  )
  lengths, spans, zeros = lengths.numpy(), spans.numpy(), zeros.numpy()
  np.testing.assert_array_equal(lengths.sum(1), budget.numpy())
  assert ((lengths > 0).sum(1) == spans).all()
  # Untrimmed lengths and the zero draws between them: Poisson(3.5) as a whole.
  body = np.concatenate([row[: s - 1] for row, s in zip(lengths[:8], spans[:8])])
  n_all = body.size + zeros[:8].sum()
  mean = body.sum() / n_all
  assert abs(mean - 3.5) < 4 * math.sqrt(3.5 / n_all), mean
  zero_share = zeros[:8].sum() / n_all
  assert abs(zero_share - math.exp(-3.5)) < 4 * math.sqrt(0.03 / n_all), zero_share
  ref = np.random.default_rng(0).poisson(3.5, size=200_000)
  ref = ref[ref > 0]
  assert abs(body.var() - ref.var()) < 0.15 * ref.var()


@pytest.mark.parametrize("name", ["token_masking", "word_deletion"])
def test_single_unit_masks_hit_the_budget_exactly(vocab, docs, tables, name):
  nz = CONFIGS[name]
  _, ours, ref, agg = _compare(vocab, docs, tables, nz, 800)
  budget = np.asarray([_ceil(w * 0.3) for w in agg(ours, "words")])
  np.testing.assert_array_equal(agg(ours, "covered_words"), budget)
  np.testing.assert_array_equal(agg(ref, "covered_words"), budget)


def test_permutation_happens_with_the_project_vocabulary(vocab, docs, tables):
  nz = objectives.BartNoise(permute_sentences=1.0)
  exs, ours, ref, agg = _compare(vocab, docs, tables, nz, 1000)
  sentences = agg(ref, "sentences")
  assert sentences.mean() > 3  # boundaries are found in this vocabulary's text
  expected = np.mean([1 - 1 / math.factorial(int(s)) for s in sentences])
  got = agg(ours, "permuted").mean()
  assert abs(got - expected) < 0.03, (got, expected)
  # Sentences move whole: the input is the targets cut at sentence ends and reordered.
  ws_table, se_table = tables
  for ex in exs[:200]:
    t = ex["targets"][:-1]
    ws = np.append(ws_table[t][1:], True)
    ends = {i for i in range(len(t)) if i == len(t) - 1 or (se_table[t[i]] and ws[i])}
    order = ex["noise_order"]
    jumps = np.flatnonzero(np.diff(order) != 1)
    assert all(int(order[j]) in ends for j in jumps)


def test_rotation_offsets_are_uniform(vocab, docs):
  den = _one(rotate_ratio=0.5)
  exs = _examples(vocab, docs, den, 2000, passes=3)
  off = np.asarray([int(e["noise_rotation"]) for e in exs])
  length = np.asarray([len(e["inputs"]) - 1 for e in exs])
  rotated = off > 0
  # P(rotated with a non-zero offset) = 0.5 * (1 - 1 / length).
  expected = np.mean(0.5 * (1 - 1 / length))
  assert abs(rotated.mean() - expected) < 4 * math.sqrt(0.25 / len(exs))
  frac = off[rotated] / length[rotated]
  hist = np.histogram(frac, bins=10, range=(0, 1))[0]
  e = rotated.sum() / 10
  chi2 = ((hist - e) ** 2 / e).sum()
  assert chi2 < 30, hist  # 9 degrees of freedom: p < 0.001 beyond ~27.9
  for ex in exs[:50]:
    r, x, t = int(ex["noise_rotation"]), ex["inputs"][:-1], ex["targets"][:-1]
    np.testing.assert_array_equal(x, np.roll(t, -r))


def test_insertions_count_and_ids(vocab, docs):
  den = _one(insert_ratio=0.2, mask_random=0.5)
  random_ids = set(bart.random_token_ids(vocab, [8000]).tolist())
  for ex in _examples(vocab, docs[:40], den, 300):
    m = len(ex["targets"]) - 1
    inserted = ex["inputs"][:-1][ex["noise_source"] < 0]
    n = _ceil(m * 0.2)
    assert len(inserted) == n
    assert (inserted == 8000).sum() == n - _ceil(n * 0.5)
    assert set(inserted[inserted != 8000].tolist()) <= random_ids


def test_seed_reproduces_and_mixes_with_ul2(vocab, docs):
  mixed = tuple(
    dataclasses.replace(d, rate=0.5 / len(objectives.UL2R_DENOISERS))
    for d in objectives.UL2R_DENOISERS
  ) + (dataclasses.replace(objectives.BART_LARGE[0], mode="[NLG]", rate=0.5),)
  a = _examples(vocab, docs[:30], mixed, 200, seed=3)
  b = _examples(vocab, docs[:30], mixed, 200, seed=3)
  c = _examples(vocab, docs[:30], mixed, 200, seed=4)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x["inputs"], z["inputs"]) for x, z in zip(a, c))
  kinds = np.asarray([mixed[int(e["denoiser_id"])].kind for e in a])
  assert 0.3 < (kinds == "bart").mean() < 0.7
  nlg = vocab.encode("[NLG]")
  for e in a:
    assert len(e["inputs"]) <= 128 and len(e["targets"]) <= 128
    if mixed[int(e["denoiser_id"])].kind == "bart":
      assert list(e["inputs"][: len(nlg)]) == nlg
      assert len(e["noise_order"]) == len(e["targets"]) - 1
    else:
      assert len(e["noise_order"]) == 0
      # Span corruption's sentinels never reach the mask id.
      assert not (e["inputs"] == 8000).any() and not (e["targets"] == 8000).any()


def test_bart_task_is_registered_per_corpus(vocab):
  from tasks import pretraining

  assert pretraining.OBJECTIVES["bart"] == objectives.BART_LARGE
  source = seqio.FunctionDataSource(
    lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
      {"text": ["One sentence here. Another one follows! And a third? Yes." * 8] * 4}
    ),
    splits=["train"],
  )
  names = pretraining.register_objectives(
    "barttest", source, vocab, objectives_map={"bart": objectives.BART_LARGE}
  )
  assert names == ["barttest_bart_v1"]
  task = seqio.get_mixture_or_task("barttest_bart_v1")
  assert pretraining.task_denoisers(task) == objectives.BART_LARGE
  ex = next(task.get_dataset(SHORT, split="train", shuffle=False, seed=0).as_numpy_iterator())
  assert (ex["inputs"] == 8000).any() and ex["targets"][-1] == 1


def test_inspector_and_html_view_show_masks_deletions_and_sentences(vocab):
  import io

  from t5x_ext.data import display
  from t5x_ext.data import inspect as inspector
  from tasks import pretraining

  text = " ".join(f"Sentence number {i} says something here." for i in range(30))
  source = seqio.FunctionDataSource(
    lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices([text] * 4).map(
      lambda t: {"text": t}
    ),
    splits=["train"],
  )
  pretraining.register_objectives(
    "bartview", source, vocab, objectives_map={"bart": objectives.BART_LARGE}
  )
  page = display.task_examples_html("bartview_bart_v1", SHORT, split="train")
  assert page.count(">M</span>") >= 3  # the mask chips (legend included)
  assert "line-through" in page  # text a span deleted, struck through in the targets
  assert page.count("&#167;") >= 4  # original sentence numbers in inputs and targets
  out = io.StringIO()
  inspector.inspect("bartview_bart_v1", SHORT, n=1, stats_examples=8, out=out)
  printed = out.getvalue()
  assert "⟦M⟧" in printed and "noise:" in printed and "sentence jumps" in printed
  assert inspector.render([5, 8000, 1], vocab, 8000).endswith("⟦M⟧ </s>")


def test_batches_without_bart_rows_or_without_other_rows(vocab):
  # One short document per batch: one chunk, so each batch has only BART rows or none.
  docs = [np.arange(3 + i, 40 + i, dtype=np.int32) for i in range(40)]
  mixed = objectives.UL2R_DENOISERS[:1] + objectives.BART_LARGE
  exs = _examples(vocab, docs, mixed, 40, batch_size=1)
  kinds = {mixed[int(e["denoiser_id"])].kind for e in exs}
  assert kinds == {"span", "bart"} and len(exs) == 40
  for e in exs:
    assert len(e["inputs"]) > 1 and e["targets"][-1] == 1


def test_bart_denoise_is_the_one_denoiser_mixture(vocab, docs):
  nz = objectives.BartNoise(mask_ratio=0.3, permute_sentences=1.0, insert_ratio=0.1)
  a = objectives.bart_denoise(
    U.docs_dataset(docs[:20]), SHORT, U.features(vocab), nz, seed=5, append_eos=True
  )
  b = objectives.mixture_of_denoisers(
    U.docs_dataset(docs[:20]),
    SHORT,
    U.features(vocab),
    (objectives.Denoiser("bart", "bart", bart=nz),),
    seed=5,
    append_eos=True,
  )
  for x, y in zip(a.take(50).as_numpy_iterator(), b.take(50).as_numpy_iterator()):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])
    np.testing.assert_array_equal(x["targets"], y["targets"])
