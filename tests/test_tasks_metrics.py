"""Tests of the fine-tuning metric functions."""

import sys

import pytest

from tasks import metrics


def test_accuracy():
  assert metrics.accuracy(["a", "b", "c", "d"], ["a", "b ", "x", "y"]) == {"accuracy": 50.0}
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.accuracy(["a", "b"], ["a"])


def test_rouge_own_implementation():
  s = metrics.rouge_scores("the cat sat on the mat", "the cat sat on the mat")
  assert s == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
  s = metrics.rouge_scores("the cat sat on the mat", "a dog")
  assert s == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
  s = metrics.rouge_scores("a b c d", "a c b d")
  # unigrams all match; bigrams: none of (a c),(c b),(b d) in ref; LCS = 3 (a b d / a c d)
  assert s["rouge1"] == pytest.approx(1.0)
  assert s["rouge2"] == pytest.approx(0.0)
  assert s["rougeL"] == pytest.approx(0.75)
  agg = metrics.rouge(["a b c d", "x y"], ["a b c d", "q"])
  assert agg["rouge1"] == pytest.approx(50.0)


PAIRS = [
  ("the cat sat on the mat", "the cat sat on the mat"),
  ("The Cat, sat ON the mat!", "a cat sat on a mat."),
  ("a b c d", "a c b d"),
  ("x y", "q"),
  ("", "anything at all"),
  ("numbers 1 2 3 and 42", "42 and 3 2 1 numbers"),
  ("Summaries repeat repeat repeat words", "repeat words repeat"),
  ("hello-world: it's 9am", "hello world its 9 am"),
]


def _random_pairs(n=60, seed=0):
  import random

  rng = random.Random(seed)
  words = ["the", "a", "cat", "mat", "sat", "on", "dog", "ran", "far", "x1", "2024", "and"]
  return [
    (
      " ".join(rng.choices(words, k=rng.randint(0, 12))),
      " ".join(rng.choices(words, k=rng.randint(0, 12))),
    )
    for _ in range(n)
  ]


def test_rouge_implementations_agree_without_stemming(monkeypatch):
  pytest.importorskip("rouge_score")
  pairs = PAIRS + _random_pairs()
  targets, predictions = [t for t, _ in pairs], [p for _, p in pairs]
  package = metrics.rouge(targets, predictions, use_stemmer=False)
  package_pairs = [metrics.rouge([t], [p], use_stemmer=False) for t, p in pairs]
  # The same calls without the package fall back to the own implementation.
  monkeypatch.setitem(sys.modules, "rouge_score", None)
  assert metrics.rouge(targets, predictions, use_stemmer=False) == pytest.approx(package)
  for (t, p), expected in zip(pairs, package_pairs, strict=True):  # pair by pair too
    assert metrics.rouge([t], [p]) == pytest.approx(expected), (t, p)


def test_rouge_stemming_is_the_only_difference():
  pytest.importorskip("rouge_score")
  # Words the Porter stemmer leaves alone: identical with and without stemming.
  plain = (["the cat sat on the mat"], ["a cat sat on a mat"])
  assert metrics.rouge(*plain) == pytest.approx(metrics.rouge(*plain, use_stemmer=False))
  # "cats"/"sitting" stem to "cat"/"sit": only the stemmed scores count them as matches.
  stemmed = (["the cats were sitting"], ["the cat was sitting"])
  with_stem, without = metrics.rouge(*stemmed), metrics.rouge(*stemmed, use_stemmer=False)
  assert with_stem["rouge1"] > without["rouge1"]
  assert without["rouge1"] == pytest.approx(100 * metrics.rouge_scores(*stemmed)["rouge1"])
